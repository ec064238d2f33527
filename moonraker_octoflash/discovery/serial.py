"""Serial ports under ``/dev/serial/by-id``, named by udev after the USB strings.

``usb-Klipper_stm32f446xx_<chip id>-if00`` is Klipper, ``usb-katapult_…``
is Katapult.  The chip id in the name is the USB serial number, which is how
these entries are matched to the USB devices pyusb found.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .identity import DEFAULT_BY_ID_DIR

_BY_ID_RE = re.compile(r"^usb-(?P<vendor>[^_]+)_(?P<product>.+)_(?P<serial>[^_]+)-if(?P<intf>\d+)$")


@dataclasses.dataclass
class SerialPort:
    path: str                     # the by-id path (stable across reboots)
    name: str
    kind: str                     # klipper, katapult or other
    target: Optional[str]         # the tty it points to
    mcu: Optional[str] = None
    serial: Optional[str] = None  # USB serial number (chip id)

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def parse_by_id_name(name: str) -> Tuple[str, Optional[str], Optional[str]]:
    """(kind, mcu, serial) from a by-id file name."""
    m = _BY_ID_RE.match(name)
    if not m:
        return "other", None, None
    vendor = m.group("vendor").lower()
    kind = vendor if vendor in ("klipper", "katapult") else "other"
    return kind, m.group("product"), m.group("serial")


def katapult_by_id_name(mcu: str, serial: str) -> str:
    return f"usb-katapult_{mcu}_{serial}-if00"


def klipper_by_id_name(mcu: str, serial: str) -> str:
    return f"usb-Klipper_{mcu}_{serial}-if00"


def list_serial_ports(by_id_dir: str = DEFAULT_BY_ID_DIR) -> Tuple[List[SerialPort], List[str]]:
    """Blocking: the by-id entries; a missing folder just means no USB serial devices."""
    try:
        names = sorted(os.listdir(by_id_dir))
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"Cannot read {by_id_dir}: {exc.strerror or exc}"]
    ports: List[SerialPort] = []
    for name in names:
        path = os.path.join(by_id_dir, name)
        try:
            target: Optional[str] = os.path.realpath(path) if os.path.islink(path) else None
        except OSError:
            target = None
        kind, mcu, serial = parse_by_id_name(name)
        ports.append(SerialPort(path=path, name=name, kind=kind, target=target,
                                mcu=mcu if kind != "other" else None, serial=serial))
    return ports, []
