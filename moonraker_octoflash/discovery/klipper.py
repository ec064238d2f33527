"""The MCUs Klipper knows, from its status objects.

Input is what Moonraker's ``printer.objects.query`` returns for ``mcu``,
every ``mcu NAME`` and ``configfile`` (``settings``): the running firmware's
``mcu_version`` and ``mcu_constants.MCU`` per MCU, and from the config the
``serial`` or ``canbus_uuid`` that tells which board each MCU is.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional

from .identity import normalize_uuid


@dataclasses.dataclass
class KlipperMcu:
    name: str                           # "mcu" or the NAME of [mcu NAME]
    object_name: str                    # "mcu" or "mcu NAME"
    serial: Optional[str] = None
    canbus_uuid: Optional[str] = None
    canbus_interface: Optional[str] = None
    mcu_version: Optional[str] = None
    mcu_type: Optional[str] = None      # mcu_constants.MCU, e.g. stm32f446xx
    connected: bool = False             # Klipper reported a version: it talks to it

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def mcu_object_names(status: Mapping[str, Any]) -> List[str]:
    return sorted(k for k in status if k == "mcu" or k.startswith("mcu "))


def klipper_mcus(status: Optional[Mapping[str, Any]]) -> List[KlipperMcu]:
    """Every ``mcu``/``mcu NAME`` in a Klipper status dict (missing parts are None)."""
    if not status:
        return []
    settings: Mapping[str, Any] = {}
    configfile = status.get("configfile")
    if isinstance(configfile, Mapping):
        settings = configfile.get("settings") or {}
    result: List[KlipperMcu] = []
    names = set(mcu_object_names(status))
    # An [mcu NAME] in the config whose status object is missing (Klipper not
    # ready) still names a board.
    names.update(k for k in settings if k == "mcu" or k.startswith("mcu "))
    for obj in sorted(names):
        data = status.get(obj) or {}
        section = settings.get(obj.lower()) or settings.get(obj) or {}
        constants = data.get("mcu_constants") or {}
        version = data.get("mcu_version") or None
        name = "mcu" if obj == "mcu" else obj[4:].strip()
        result.append(KlipperMcu(
            name=name, object_name=obj,
            serial=section.get("serial") or None,
            canbus_uuid=normalize_uuid(section.get("canbus_uuid")),
            canbus_interface=section.get("canbus_interface") or
            ("can0" if section.get("canbus_uuid") else None),
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
