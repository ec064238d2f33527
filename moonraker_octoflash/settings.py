"""The ``[octoflash]`` section: paths, timeouts and limits.

Read the same way by the Moonraker component and by the command line, so a
setting means the same thing in both.  Values arrive as text (as written in
moonraker.conf) and are checked here, with errors that name the option.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional

from .errors import ValidationError


# Paths that reach make: the checkouts (make's working folder, which its
# recipes use unquoted) and the build folder (OUT= and KCONFIG_CONFIG=).
# make expands "$(...)" in them and its recipes hand them to a shell, so
# they may hold only characters that mean nothing to either.
_MAKE_SAFE_PATH = r"/[A-Za-z0-9_./+@-]*"     # patterns compiled at first use
MAKE_PATH_OPTIONS = ("klipper_path", "katapult_path", "build_path")
_INTERFACE_RE = r"[A-Za-z0-9_.-]{1,15}"


def check_make_path(path: str, what: str) -> None:
    """Refuse a path make would misread (spaces, ``$``, quotes, ``;`` ...)."""
    if not re.fullmatch(_MAKE_SAFE_PATH, path) or "/../" in path + "/":
        bad = sorted({c for c in path if not re.fullmatch(r"[A-Za-z0-9_./+@-]", c)})
        shown = " ".join(repr(c) for c in bad[:8]) or "'..'"
        raise ValidationError(
            f"{what}: {path!r} cannot be handed to make: a path used for builds may hold "
            f"letters, digits and _ . / + @ - only (not {shown})",
            hint="Choose a folder whose name has none of those characters.")


@dataclasses.dataclass
class Settings:
    klipper_path: str = "~/klipper"
    katapult_path: str = "~/katapult"
    build_path: str = "{data_path}/octoflash"
    builds_kept: int = 3
    job_history: int = 50                # jobs kept in the history
    build_jobs: int = 0                  # 0 = one per CPU core
    build_nice: int = 10
    dfu_util_path: str = "dfu-util"
    flashtool_path: str = ""             # "" = <katapult_path>/scripts/flashtool.py
    flashtool_python: str = ""           # "" = the Python running octoflash
    serial_by_id_path: str = "/dev/serial/by-id"
    can_interfaces: List[str] = dataclasses.field(default_factory=list)   # [] = every CAN interface that is up
    can_listen_time: float = 0.5
    make_timeout: float = 1200.0
    flash_timeout: float = 300.0
    device_wait_timeout: float = 120.0
    reconnect_timeout: float = 60.0
    announcements: bool = True
    machine: str = ""                    # "" = this computer; demo/tests: module:factory ARG

    # option name -> (kind, minimum)
    _KINDS = {
        "builds_kept": ("int", 1), "job_history": ("int", 1), "build_jobs": ("int", 0), "build_nice": ("int", 0),
        "can_listen_time": ("float", 0.05), "make_timeout": ("float", 10.0),
        "flash_timeout": ("float", 5.0), "device_wait_timeout": ("float", 1.0),
        "reconnect_timeout": ("float", 1.0), "announcements": ("bool", None),
        "can_interfaces": ("list", None),
    }
    PATH_OPTIONS = ("klipper_path", "katapult_path", "build_path", "flashtool_path",
                    "serial_by_id_path")

    @classmethod
    def option_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, options: Mapping[str, Any], data_path: str) -> Settings:
        """Settings from ``[octoflash]`` options (text or typed values).

        ``{data_path}`` and ``~`` in paths are expanded; unknown options are
        an error naming them.
        """
        known = set(cls.option_names())
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValidationError(
                f"[octoflash]: unknown option(s) {', '.join(unknown)}; "
                f"known options are {', '.join(sorted(known))}")
        values: Dict[str, Any] = {}
        for name, raw in options.items():
            if raw is None:
                continue
            kind, minimum = cls._KINDS.get(name, ("str", None))
            values[name] = _convert(name, raw, kind, minimum)
        settings = cls(**values)
        settings._expand(data_path)
        return settings

    def _expand(self, data_path: str) -> None:
        for name in self.PATH_OPTIONS:
            value = getattr(self, name)
            if value:
                value = value.replace("{data_path}", data_path)
                setattr(self, name, os.path.abspath(os.path.expanduser(value)))
        if not self.flashtool_path:
            self.flashtool_path = os.path.join(self.katapult_path, "scripts", "flashtool.py")
        if not self.flashtool_python:
            self.flashtool_python = sys.executable
        if self.build_jobs == 0:
            self.build_jobs = os.cpu_count() or 1
        for name in MAKE_PATH_OPTIONS:
            check_make_path(getattr(self, name), f"[octoflash] {name}")
        from .machine import check_machine_spec
        check_machine_spec(self.machine)
        for interface in self.can_interfaces:
            if not re.fullmatch(_INTERFACE_RE, interface):
                raise ValidationError(f"[octoflash] can_interfaces: {interface!r} is not a "
                                      "network interface name such as can0")

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(name: str, raw: Any, kind: str, minimum: Optional[float]) -> Any:
    where = f"[octoflash] {name}"
    if kind == "list":
        if isinstance(raw, (list, tuple)):
            return [str(x) for x in raw]
        return [p for p in str(raw).replace(",", "\n").split() if p]
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValidationError(f"{where}: expected True or False, not {raw!r}")
    if kind in ("int", "float"):
        try:
            value = int(str(raw).strip()) if kind == "int" else float(str(raw).strip())
        except ValueError:
            raise ValidationError(f"{where}: expected a number, not {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ValidationError(f"{where}: must be at least {minimum:g}, not {value}")
        return value
    text = str(raw).strip()
    if "\n" in text:
        raise ValidationError(f"{where}: must be a single line")
    return text


def data_path_for_config(config_path: str) -> str:
    """Moonraker's data path for a config at ``<data_path>/config/moonraker.conf``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(os.path.expanduser(config_path))))
