"""Where Moonraker lives on a printer: its instances, checkout, virtualenv and services.

KIAUH's layout is the reference: one Moonraker checkout (``~/moonraker``)
and virtualenv (``~/moonraker-env``) shared by every instance; one data
folder per instance (``~/printer_data``, ``~/printer_1_data``,
``~/<name>_data``) and one systemd unit per instance (``moonraker``,
``moonraker-1``, ``moonraker-<name>``) whose ``EnvironmentFile`` sets
``MOONRAKER_ARGS="<checkout>/moonraker/moonraker.py -d <data folder>"`` and
whose ``ExecStart`` runs ``<virtualenv>/bin/python $MOONRAKER_ARGS``.

Only the standard library is used: the installer runs this before the
package is installed anywhere.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

SYSTEMD_DIR = "/etc/systemd/system"
UNIT_PATTERN = re.compile(r"^moonraker(?:-([0-9A-Za-z_]+))?\.service$")
DATA_PATTERN = re.compile(r"^(?:printer_data|printer_([0-9A-Za-z_]+)_data|([0-9A-Za-z_]+)_data)$")
MARKER = os.path.join("moonraker", "components", "klippy_apis.py")


def systemd_dir() -> str:
    """The folder holding Moonraker's units (``OCTOFLASH_SYSTEMD_DIR`` moves it, for tests)."""
    return os.environ.get("OCTOFLASH_SYSTEMD_DIR") or SYSTEMD_DIR


def is_checkout(path: str) -> bool:
    """True for a Moonraker checkout (the folder holding ``moonraker/components``)."""
    return os.path.isfile(os.path.join(path, MARKER))


@dataclass(frozen=True)
class Instance:
    """One Moonraker instance: a data folder, the unit that runs it, and its code."""

    suffix: str            # "" for printer_data, "1", "voron"
    data_dir: str
    moonraker_dir: str     # the checkout
    venv_dir: str
    unit_file: Optional[str]

    @property
    def name(self) -> str:
        return os.path.basename(self.data_dir)

    @property
    def service(self) -> str:
        return f"moonraker-{self.suffix}" if self.suffix else "moonraker"

    @property
    def config_dir(self) -> str:
        return os.path.join(self.data_dir, "config")

    @property
    def moonraker_conf(self) -> str:
        return os.path.join(self.config_dir, "moonraker.conf")

    @property
    def printer_cfg(self) -> str:
        return os.path.join(self.config_dir, "printer.cfg")

    def matches(self, wanted: str) -> bool:
        """``--instance`` accepts the data folder's name, the service's name or the suffix."""
        wanted = wanted.strip().rstrip("/")
        return wanted in (self.name, self.service, self.suffix or "printer",
                          self.data_dir, f"{self.service}.service")


def read_unit(unit_file: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(checkout, virtualenv, data folder) named by a Moonraker unit, each None when unsaid."""
    values: Dict[str, str] = {}
    env_files: List[str] = []
    try:
        with open(unit_file, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if not sep:
                    continue
                if key == "EnvironmentFile":
                    env_files.append(value.lstrip("-").strip())
                elif key in ("ExecStart", "WorkingDirectory"):
                    values[key] = value.strip()
    except OSError:
        return None, None, None
    env: Dict[str, str] = {}
    for path in env_files:
        env.update(_read_env_file(path))
    words = _split(values.get("ExecStart", ""))
    expanded: List[str] = []
    for word in words:
        match = re.fullmatch(r"\$\{?(\w+)\}?", word)
        expanded.extend(_split(env.get(match.group(1), "")) if match else [word])
    venv = checkout = data = None
    if expanded and os.path.basename(expanded[0]).startswith("python"):
        bin_dir = os.path.dirname(expanded[0])
        if os.path.basename(bin_dir) == "bin":
            venv = os.path.dirname(bin_dir)
    for i, word in enumerate(expanded):
        if word.endswith(os.path.join("moonraker", "moonraker.py")):
            checkout = os.path.dirname(os.path.dirname(word))
        if word in ("-d", "--datapath") and i + 1 < len(expanded):
            data = expanded[i + 1]
    if checkout is None and values.get("WorkingDirectory") and \
            is_checkout(values["WorkingDirectory"]):
        checkout = values["WorkingDirectory"]
    if data is None:
        for path in env_files:
            if os.path.basename(os.path.dirname(path)) == "systemd":
                data = os.path.dirname(os.path.dirname(path))
    return checkout, venv, data


def _read_env_file(path: str) -> Dict[str, str]:
    env: Dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and not key.startswith("#"):
                    words = _split(value)
                    env[key.strip()] = words[0] if len(words) == 1 else value.strip().strip('"')
    except OSError:
        pass
    return env


def _split(text: str) -> List[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def find_instances(home: str, units: Optional[str] = None) -> List[Instance]:
    """Every Moonraker instance of ``home``: from the units first, then the data folders.

    A data folder counts when it holds ``config/moonraker.conf``.  Units
    that name no checkout or virtualenv get KIAUH's (``~/moonraker``,
    ``~/moonraker-env``).
    """
    units = units or systemd_dir()
    default_checkout = os.path.join(home, "moonraker")
    default_venv = os.path.join(home, "moonraker-env")
    found: Dict[str, Instance] = {}
    try:
        unit_names = sorted(os.listdir(units))
    except OSError:
        unit_names = []
    for unit in unit_names:
        match = UNIT_PATTERN.match(unit)
        if not match:
            continue
        suffix = match.group(1) or ""
        unit_file = os.path.join(units, unit)
        checkout, venv, data = read_unit(unit_file)
        if data is None:
            data = os.path.join(home, f"printer_{suffix}_data" if suffix else "printer_data")
            if suffix and not os.path.isdir(data) and \
                    os.path.isdir(os.path.join(home, f"{suffix}_data")):
                data = os.path.join(home, f"{suffix}_data")
        data = os.path.abspath(os.path.expanduser(data))
        found[data] = Instance(suffix, data, checkout or default_checkout,
                               venv or default_venv, unit_file)
    try:
        entries = sorted(os.listdir(home))
    except OSError:
        entries = []
    for entry in entries:
        match = DATA_PATTERN.match(entry)
        data = os.path.join(home, entry)
        if not match or data in found or \
                not os.path.isfile(os.path.join(data, "config", "moonraker.conf")):
            continue
        suffix = match.group(1) or match.group(2) or ""
        found[data] = Instance(suffix, data, default_checkout, default_venv, None)
    return sorted(found.values(), key=_order)


def _order(instance: Instance) -> Tuple[int, str]:
    if not instance.suffix:
        return (0, "")
    if instance.suffix.isdigit():
        return (1, f"{int(instance.suffix):06d}")
    return (2, instance.suffix)


def find_checkout(python_prefix: Optional[str] = None,
                  home: Optional[str] = None) -> Tuple[Optional[str], List[str]]:
    """Moonraker's checkout for this Python: beside its virtualenv, else named by a unit.

    Returns the checkout (or None) and every place looked at, for the
    message when nothing is found.
    """
    prefix = os.path.abspath(python_prefix or sys.prefix)
    home = home or os.path.expanduser("~")
    looked: List[str] = []
    beside = [os.path.join(os.path.dirname(prefix), "moonraker")]
    if prefix.endswith("-env"):
        beside.insert(0, prefix[: -len("-env")])
    for candidate in dict.fromkeys(beside):
        looked.append(candidate)
        if is_checkout(candidate):
            return candidate, looked
    for instance in find_instances(home):
        if instance.unit_file is None:
            continue
        looked.append(f"{instance.moonraker_dir} (from {instance.unit_file})")
        if os.path.abspath(instance.venv_dir) == prefix and is_checkout(instance.moonraker_dir):
            return instance.moonraker_dir, looked
    for instance in find_instances(home):
        if instance.unit_file is not None and is_checkout(instance.moonraker_dir):
            return instance.moonraker_dir, looked
    return None, looked
