"""The MCUs Klipper knows, from its status objects.

Input is what Moonraker's ``printer.objects.query`` returns for ``mcu``,
every ``mcu NAME`` and ``configfile`` (``settings`` and, when asked,
``config``): the running firmware's ``mcu_version`` and
``mcu_constants.MCU`` per MCU, and from the config the ``serial`` or
``canbus_uuid`` that tells which board each MCU is.

Klipper names things three ways, and a reader must not mix them up:

* status objects keep the section name as written: ``mcu Toolhead``;
* ``configfile.config`` keeps it too, with the options as written (text);
* ``configfile.settings`` lower-cases section and option names
  (``mcu toolhead``) and adds the defaults Klipper used (``baud``,
  ``canbus_interface``).

So a section is matched to its object case-insensitively, and a board
is named after the object (or, with no object, the ``config`` section),
never after the lower-cased settings key.  An object Klipper lists but
has not identified yet (startup, board unreachable) is ``{}``: known,
not connected.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .identity import normalize_uuid


@dataclasses.dataclass
class KlipperMcu:
    name: str                           # "mcu" or the NAME of [mcu NAME], as Klipper spells it
    object_name: str                    # "mcu" or "mcu NAME"
    serial: Optional[str] = None
    canbus_uuid: Optional[str] = None
    canbus_interface: Optional[str] = None
    mcu_version: Optional[str] = None
    mcu_type: Optional[str] = None      # mcu_constants.MCU, e.g. stm32f446xx
    connected: bool = False             # Klipper reported a version: it talks to it

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def is_mcu_section(name: str) -> bool:
    """``mcu`` or ``mcu NAME`` (Klipper's prefix is case-sensitive; so is this)."""
    return name == "mcu" or name.startswith("mcu ")


def mcu_object_names(status: Mapping[str, Any]) -> List[str]:
    return sorted((k for k in status if is_mcu_section(k)), key=mcu_key)


def mcu_key(name: str) -> str:
    """How Klipper compares section names: ``mcu Toolhead`` and ``mcu toolhead`` are one."""
    return " ".join(str(name).split()).lower()


def klipper_object_for(name: Optional[str]) -> Optional[str]:
    """``mcu`` / ``mcu NAME`` for a profile's ``klipper_mcu`` (``mcu``, ``NAME`` or ``mcu NAME``)."""
    if not name:
        return None
    name = str(name).strip()
    return name if name == "mcu" or name.startswith("mcu ") else f"mcu {name}"


def same_mcu(a: Optional[str], b: Optional[str]) -> bool:
    """Do two names (``Toolhead``, ``mcu toolhead`` ...) mean the same Klipper MCU?"""
    left, right = klipper_object_for(a), klipper_object_for(b)
    return left is not None and right is not None and mcu_key(left) == mcu_key(right)


def find_mcu(mcus: Iterable[KlipperMcu], name: Optional[str]) -> Optional[KlipperMcu]:
    """The MCU a profile's ``klipper_mcu`` names, whatever the case it was written in."""
    for mcu in mcus:
        if same_mcu(mcu.object_name, name):
            return mcu
    return None


def _sections(configfile: Mapping[str, Any], part: str) -> Dict[str, Tuple[str, Mapping[str, Any]]]:
    """The MCU sections of ``configfile.settings`` or ``.config``: mcu_key -> (name, options)."""
    found: Dict[str, Tuple[str, Mapping[str, Any]]] = {}
    sections = configfile.get(part)
    if not isinstance(sections, Mapping):
        return found
    for name, options in sections.items():
        if is_mcu_section(str(name)) and isinstance(options, Mapping):
            found.setdefault(mcu_key(name), (str(name), options))
    return found


def klipper_mcus(status: Optional[Mapping[str, Any]]) -> List[KlipperMcu]:
    """Every ``mcu``/``mcu NAME`` in a Klipper status dict (missing parts are None)."""
    if not status:
        return []
    configfile = status.get("configfile")
    if not isinstance(configfile, Mapping):
        configfile = {}
    settings = _sections(configfile, "settings")
    config = _sections(configfile, "config")
    # The status objects name the MCUs.  A section with no object of the same
    # name (Klipper not ready, or the object was not asked for) still names a
    # board: spelled as printer.cfg spells it when ``config`` was read, else
    # as ``settings`` has it.
    names: Dict[str, str] = {mcu_key(n): n for n in mcu_object_names(status)}
    for key, (name, _options) in list(config.items()) + list(settings.items()):
        names.setdefault(key, name)
    result: List[KlipperMcu] = []
    for key in sorted(names):
        obj = names[key]
        data = status.get(obj)
        data = data if isinstance(data, Mapping) else {}
        # settings first (typed, with Klipper's defaults); config when Klipper
        # stopped before it built settings (a config error)
        section: Mapping[str, Any] = (settings.get(key) or config.get(key) or ("", {}))[1]
        constants = data.get("mcu_constants") or {}
        version = data.get("mcu_version") or None
        uuid = normalize_uuid(section.get("canbus_uuid"))
        result.append(KlipperMcu(
            name="mcu" if obj == "mcu" else obj[4:].strip(),
            object_name=obj,
            serial=section.get("serial") or None,
            canbus_uuid=uuid,
            canbus_interface=section.get("canbus_interface") or ("can0" if uuid else None),
            mcu_version=version,
            mcu_type=constants.get("MCU") if isinstance(constants, Mapping) else None,
            connected=bool(version)))
    return result


def klipper_state(status: Optional[Mapping[str, Any]]) -> Optional[str]:
    """``webhooks.state`` (ready, startup, shutdown, error) when it was queried."""
    if not status:
        return None
    hooks = status.get("webhooks")
    if isinstance(hooks, Mapping):
        state = hooks.get("state")
        return str(state) if state else None
    return None
