"""MCU profiles: a preset, the user's Kconfig changes, how the board is reached.

A profile comes from an ``[octoflash NAME]`` section of moonraker.conf, from
the API (JSON) or from the command line.  Every source is turned into the
same JSON shape and checked by ``schemas/profile.schema.json``, so a
profile is valid or refused the same way wherever it comes from.
"""
from __future__ import annotations

import configparser
import dataclasses
import glob
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import NotFoundError, OctoflashError, ValidationError
from .mcus import preset_for_mcu
from .presets import Preset, get_preset
from .schemas import check

# Options an [octoflash NAME] section may hold, and their JSON names.
SECTION_OPTIONS = (
    "preset", "mcu", "target", "description", "kconfig", "klipper_mcu", "canbus_uuid",
    "canbus_interface", "serial", "dfu_serial", "flash_method", "auto_update",
)
# "# CONFIG_X is not set" as make menuconfig writes it; in moonraker.conf
# Moonraker's own parser drops that line as a comment before octoflash sees
# it, so "CONFIG_X=n" (or "CONFIG_X is not set" without the #) is the form
# to use there.
_NOT_SET_RE = r"(?:#\s*)?(CONFIG_[A-Za-z0-9_]+) is not set"   # compiled at first use
_KCONFIG_LINES_MAX = 128


@dataclasses.dataclass
class Profile:
    name: str
    preset: Preset
    kconfig_overrides: Dict[str, str] = dataclasses.field(default_factory=dict)
    klipper_mcu: Optional[str] = None       # "mcu" or the NAME of [mcu NAME]
    canbus_uuid: Optional[str] = None
    canbus_interface: Optional[str] = None
    serial: Optional[str] = None            # /dev/serial/by-id/... path
    dfu_serial: Optional[str] = None        # USB serial number in DFU mode
    flash_method: Optional[str] = None      # "dfu" or "katapult"; None = preset's first
    auto_update: bool = False
    description: str = ""
    source: str = "config"                  # "config", "api" or "cli"

    @property
    def target(self) -> str:
        return self.preset.target

    @property
    def mcu(self) -> str:
        return self.preset.mcu

    @property
    def connection(self) -> Optional[str]:
        """How the board running this firmware is reached: can, serial, dfu or None."""
        if self.canbus_uuid:
            return "can"
        if self.serial:
            return "serial"
        first = self.preset.flash_methods[0]["method"] if self.preset.flash_methods else None
        if self.dfu_serial or (self.flash_method or first) == "dfu":
            return "dfu"
        return None

    @property
    def mcu_key(self) -> str:
        """The MCU a profile started from (``stm32g0b1``), or "" for a preset's profile."""
        return self.preset.id[len("mcu-"):] if self.preset.origin == "mcu" else ""

    @property
    def klipper_object(self) -> Optional[str]:
        """Klipper's status object for this board (``mcu`` or ``mcu NAME``)."""
        if not self.klipper_mcu:
            return None
        return "mcu" if self.klipper_mcu == "mcu" else f"mcu {self.klipper_mcu}"

    def kconfig(self) -> Dict[str, str]:
        """The symbols to request: the preset's, then the user's changes."""
        merged = dict(self.preset.kconfig)
        merged.update(self.kconfig_overrides)
        return merged

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"name": self.name}
        if self.preset.origin == "mcu":
            data.update(mcu=self.mcu_key, target=self.preset.target)
        else:
            data["preset"] = self.preset.id
        if self.description:
            data["description"] = self.description
        if self.kconfig_overrides:
            data["kconfig"] = dict(self.kconfig_overrides)
        for key in ("klipper_mcu", "canbus_uuid", "canbus_interface", "serial",
                    "dfu_serial", "flash_method"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        data["auto_update"] = self.auto_update
        return data

    def describe(self) -> Dict[str, Any]:
        """``to_json`` plus what a client shows: source, target, MCU, board."""
        data = self.to_json()
        data.update(source=self.source, target=self.target, mcu=self.mcu,
                    board=self.preset.board, connection=self.connection,
                    read_only=self.source == "config")
        return data


def profile_from_json(data: Mapping[str, Any], *, source: str = "api") -> Profile:
    """Build a profile from its JSON form; raise ValidationError naming any problem."""
    if not isinstance(data, Mapping):
        raise ValidationError("A profile must be a JSON object")
    name = data.get("name", "?")
    check("profile", dict(data), f"profile '{name}'")
    overrides = {k: v for k, v in (data.get("kconfig") or {}).items()}
    where = f"profile '{name}'"
    if ("preset" in data) == ("mcu" in data):
        raise ValidationError(f"{where}: give either preset (a board from octoflash presets) "
                              "or mcu (a processor such as stm32g0b1, with the board's kconfig "
                              "lines)" + (", not both" if "preset" in data else ""))
    if "mcu" in data:
        preset = preset_for_mcu(data["mcu"], data.get("target", "klipper"), overrides, where)
    else:
        if "target" in data:
            raise ValidationError(f"{where}: target goes with mcu; a preset already says "
                                  "what it builds")
        try:
            preset = get_preset(data["preset"])
        except NotFoundError as exc:
            raise ValidationError(f"{where}: {exc}") from None
    profile = Profile(
        name=data["name"], preset=preset, kconfig_overrides=overrides,
        klipper_mcu=data.get("klipper_mcu"), canbus_uuid=data.get("canbus_uuid"),
        canbus_interface=data.get("canbus_interface"), serial=data.get("serial"),
        dfu_serial=data.get("dfu_serial"), flash_method=data.get("flash_method"),
        auto_update=bool(data.get("auto_update", False)),
        description=data.get("description", ""), source=source)
    _check_consistency(profile)
    return profile


def _check_consistency(p: Profile) -> None:
    where = f"profile '{p.name}'"
    if p.canbus_uuid and p.serial:
        raise ValidationError(
            f"{where}: give either canbus_uuid (a CAN or USB-CAN bridge board) or serial "
            "(a USB serial board), not both")
    if p.canbus_interface and not p.canbus_uuid:
        raise ValidationError(f"{where}: canbus_interface needs canbus_uuid")
    if p.canbus_uuid and not p.canbus_interface:
        p.canbus_interface = "can0"
    if p.flash_method and p.preset.flash_method(p.flash_method) is None:
        allowed = ", ".join(m["method"] for m in p.preset.flash_methods)
        raise ValidationError(
            f"{where}: preset {p.preset.id} cannot be written with '{p.flash_method}' "
            f"(it can be written with: {allowed})")
    for symbol in p.kconfig_overrides:
        if symbol in ("CONFIG_MCU",):
            raise ValidationError(
                f"{where}: {symbol} is set by the preset's processor model; choose another preset instead")


def parse_kconfig_lines(text: str, where: str) -> Dict[str, str]:
    """Parse ``CONFIG_X=value`` lines (as in a .config file) into a dict.

    ``# CONFIG_X is not set`` is accepted as ``n``.  A line that is not of
    that shape is refused with its text, so nothing unexpected can reach
    the rendered file.
    """
    symbols: Dict[str, str] = {}
    lines = [raw.strip() for raw in text.splitlines() if raw.strip()]
    if len(lines) > _KCONFIG_LINES_MAX:
        raise ValidationError(f"{where}: {len(lines)} kconfig lines; at most "
                              f"{_KCONFIG_LINES_MAX} are allowed")
    for line in lines:
        m = re.fullmatch(_NOT_SET_RE, line)
        if m:
            symbols[m.group(1)] = "n"
            continue
        if "=" not in line:
            raise ValidationError(
                f"{where}: kconfig line {line!r} is not of the form CONFIG_NAME=value")
        key, value = (part.strip() for part in line.split("=", 1))
        if not key.startswith("CONFIG_"):
            key = "CONFIG_" + key
        if key in symbols:
            raise ValidationError(f"{where}: {key} is set twice in kconfig")
        symbols[key] = value
    return symbols


def name_clash(name: str, names: Iterable[str]) -> Optional[str]:
    """Another profile name that differs from ``name`` only in letter case."""
    folded = name.casefold()
    for other in names:
        if other != name and other.casefold() == folded:
            return other
    return None


def _parse_bool(value: str, where: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise ValidationError(f"{where}: auto_update must be True or False, not {value!r}")


def options_to_json(name: str, options: Mapping[str, str]) -> Dict[str, Any]:
    """Turn an [octoflash NAME] section's text options into the profile's JSON form."""
    where = f"[octoflash {name}]"
    unknown = sorted(set(options) - set(SECTION_OPTIONS))
    if unknown:
        raise ValidationError(
            f"{where}: unknown option(s) {', '.join(unknown)}; "
            f"known options are {', '.join(SECTION_OPTIONS)}")
    data: Dict[str, Any] = {"name": name}
    for key, value in options.items():
        value = value.strip()
        if key == "kconfig":
            data["kconfig"] = parse_kconfig_lines(value, where)
        elif key == "auto_update":
            data["auto_update"] = _parse_bool(value, where)
        elif key == "klipper_mcu":
            # Accept "mcu", "toolhead" and "mcu toolhead" alike.
            parts = value.split()
            data[key] = parts[-1] if parts else value
        elif value != "":
            data[key] = value
    if "preset" not in data and "mcu" not in data:
        raise ValidationError(f"{where}: the 'preset' option (or 'mcu' with the board's "
                              "kconfig lines) is required")
    return data


def profile_from_options(name: str, options: Mapping[str, str], *,
                         source: str = "config") -> Profile:
    """Build a profile from an ``[octoflash NAME]`` section (option -> text)."""
    return profile_from_json(options_to_json(name, options), source=source)


# --- reading moonraker.conf outside Moonraker (the command line) -----------

def _read_moonraker_config(path: str, parser: configparser.ConfigParser,
                           seen: List[str]) -> None:
    """Read a Moonraker config file the way Moonraker does.

    Whole-line comments and inline comments (a ``#`` or ``;`` after a space)
    are dropped, and ``[include glob]`` sections pull in other files.
    """
    real = os.path.realpath(path)
    if real in seen:
        raise ValidationError(f"{path}: recursive [include]")
    seen.append(real)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    buffer: List[str] = []
    for line in lines:
        if not line.strip() or line.lstrip()[0] in "#;":
            continue
        line = line.expandtabs(4)
        cut = re.search(r" +[#;]", line)
        if cut:
            line = line[:cut.start()]
        m = re.match(r"^\[([^]]+)\]\s*$", line)
        if m and m.group(1).startswith("include "):
            parser.read_string("\n".join(buffer), path)
            buffer = []
            pattern = m.group(1)[8:].strip()
            base = os.path.dirname(os.path.abspath(path))
            matches = sorted(glob.glob(os.path.join(base, os.path.expanduser(pattern))))
            if not matches:
                raise ValidationError(f"{path}: no files match [include {pattern}]")
            for inc in matches:
                _read_moonraker_config(inc, parser, seen)
            continue
        buffer.append(line)
    parser.read_string("\n".join(buffer), path)


def load_profiles_from_config(path: str) -> Tuple[Dict[str, Profile], List[str], Dict[str, str]]:
    """Profiles of every ``[octoflash NAME]`` section in a moonraker.conf.

    Returns ``(profiles, warnings, options)`` where ``options`` is the
    ``[octoflash]`` section itself.  A broken profile section is a warning
    naming it; the other profiles still load.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise NotFoundError(
            f"No Moonraker config at {path}; pass --config PATH to name yours")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment]
    try:
        _read_moonraker_config(path, parser, [])
    except configparser.Error as exc:
        raise ValidationError(f"{path}: {exc}") from None
    profiles: Dict[str, Profile] = {}
    warnings: List[str] = []
    main: Dict[str, str] = {}
    for section in parser.sections():
        if section == "octoflash":
            main = dict(parser.items(section))
            continue
        if not section.startswith("octoflash "):
            continue
        name = section[len("octoflash "):].strip()
        other = name_clash(name, profiles)
        if other is not None:
            warnings.append(f"[{section}]: a profile named '{other}' exists already; names "
                            "that differ only in letter case are not allowed. This profile "
                            "is not loaded.")
            continue
        try:
            profiles[name] = profile_from_options(name, dict(parser.items(section)))
        except OctoflashError as exc:
            warnings.append(str(exc))
    return profiles, warnings, main
