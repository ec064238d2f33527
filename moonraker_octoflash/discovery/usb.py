"""USB devices that matter for flashing, found through pyusb.

Klipper over USB serial and Klipper's USB-CAN bridge are recognised by
their ids, and so is every boot loader a flash method writes through (its
``usb_ids``, ``flash/methods``): the STM32 ROM loader in DFU mode, Katapult,
the RP2040/RP2350 boot ROM in BOOTSEL mode.  Serial
numbers, names and a DFU device's memory map are read from sysfs
(``/sys/bus/usb/devices/PORT/``, readable by every user, as Katapult's
flashtool does); only what sysfs lacks is read through pyusb, which opens
the device and needs the udev rule (``permissions.py``).  An access error
there becomes a warning naming the device and the fix.  This runs in a
worker thread (``discovery.scan`` takes care of that).  The pyusb backend is injectable so
the simulated boards (``sim/usb_backend.py``) are found by the same code.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from .permissions import is_access_error, permission_fix
from .identity import (USB_ID_CANBRIDGE, USB_ID_DFU, USB_ID_KATAPULT, USB_ID_KLIPPER,
                       canbus_uuid_from_chip_id)

KINDS: Dict[Tuple[int, int], str] = {
    USB_ID_DFU: "dfu",
    USB_ID_KATAPULT: "katapult",
    USB_ID_KLIPPER: "klipper",
    USB_ID_CANBRIDGE: "canbridge",
}

# Kinds whose serial number is the chip id Klipper derives a CAN uuid from.
_CHIP_ID_KINDS = ("katapult", "klipper", "canbridge")


def known_kinds() -> Dict[Tuple[int, int], str]:
    """Klipper's own ids and the flash methods' boot loaders (registry imported at first use)."""
    from ..flash.methods import usb_kinds
    kinds = dict(KINDS)
    kinds.update(usb_kinds())
    return kinds


_LAYOUT_RE = re.compile(r"^@(?P<name>[^/]*)/(?P<start>0x[0-9A-Fa-f]+)/(?P<sectors>.*)$")
_SECTOR_RE = re.compile(r"^(?P<count>\d+)\*(?P<size>\d+)(?P<unit>[ KM ]?)(?P<flags>[a-g]?)$")
_MCU_RE = re.compile(r"^(stm32|rp2040|lpc|atsam|at90|atmega|gd32)", re.IGNORECASE)


@dataclasses.dataclass
class DfuLayout:
    """A DfuSe memory map string such as ``@Internal Flash  /0x08000000/04*016Kg,...``."""
    name: str
    start: int
    sectors: List[Tuple[int, int]]      # (address, size) of each erasable sector

    @property
    def size(self) -> int:
        return sum(size for _addr, size in self.sectors)

    def sectors_touching(self, address: int, length: int) -> List[Tuple[int, int]]:
        end = address + length
        return [(a, s) for a, s in self.sectors if a < end and a + s > address]


def parse_dfu_layout(text: Optional[str]) -> Optional[DfuLayout]:
    """Parse a DfuSe alt-setting name; None if it is not a memory map."""
    if not text:
        return None
    m = _LAYOUT_RE.match(text.strip())
    if not m:
        return None
    address = start = int(m.group("start"), 16)
    sectors: List[Tuple[int, int]] = []
    for part in m.group("sectors").split(","):
        sm = _SECTOR_RE.match(part.strip())
        if not sm:
            return None
        unit = {"K": 1024, "M": 1024 * 1024}.get(sm.group("unit").strip(), 1)
        size = int(sm.group("size")) * unit
        for _ in range(int(sm.group("count"))):
            sectors.append((address, size))
            address += size
    return DfuLayout(name=m.group("name").strip(), start=start, sectors=sectors)


@dataclasses.dataclass
class UsbDevice:
    kind: str                       # dfu, katapult, klipper, canbridge, rp2040_boot, ...
    vendor_id: int
    product_id: int
    bus: Optional[int]
    address: Optional[int]
    port_path: Optional[str]        # "1-1.3", as dfu-util -p and sysfs name it
    serial: Optional[str]
    manufacturer: Optional[str]
    product: Optional[str]
    mcu: Optional[str] = None       # Klipper/Katapult put the MCU in the product string
    dfu_layout: Optional[str] = None
    flash_size: Optional[int] = None
    canbus_uuid: Optional[str] = None     # derived from the chip id (bridge, Katapult)
    serial_paths: List[str] = dataclasses.field(default_factory=list)

    @property
    def usb_id(self) -> str:
        return f"{self.vendor_id:04x}:{self.product_id:04x}"

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["usb_id"] = self.usb_id
        return data


SYSFS_USB = "/sys/bus/usb/devices"
_SYSFS_NAMES = {"serial_number": "serial", "manufacturer": "manufacturer", "product": "product"}


class _Reader:
    """A device's strings: from sysfs first (no permission needed, nothing opened), through
    pyusb only when sysfs does not have them; an access error is remembered, not hidden."""

    def __init__(self, dev: Any, port_path: Optional[str], sysfs: Optional[str]) -> None:
        self.dev = dev
        self.dir = os.path.join(sysfs, port_path) if sysfs and port_path else None
        self.denied: Optional[BaseException] = None

    def sysfs(self, name: str) -> Optional[str]:
        if self.dir is None:
            return None
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace") as f:
                return f.read().rstrip("\n")
        except OSError:
            return None

    def string(self, attr: str) -> Optional[str]:
        value = self.sysfs(_SYSFS_NAMES[attr])
        if value is not None:
            return value
        try:
            got = getattr(self.dev, attr)
        except Exception as exc:   # no langid, device gone: unknown; no permission: say so
            self.note(exc)
            return None
        return got if isinstance(got, str) else None

    def note(self, exc: BaseException) -> None:
        """Remember an access error.  pyusb turns libusb's LIBUSB_ERROR_ACCESS into "The
        device has no langid (permission issue, …)": ask for the langids once more,
        directly, to tell a refusal from a device without strings."""
        if self.denied is not None:
            return
        if is_access_error(exc):
            self.denied = exc
            return
        if isinstance(exc, ValueError) and "langid" in str(exc):
            import usb.util
            try:
                usb.util.get_langids(self.dev)
            except Exception as again:
                if is_access_error(again):
                    self.denied = again

    def interface_name(self) -> Optional[str]:
        """The active (alt 0 after enumeration) name of interface 0, as sysfs shows it."""
        if self.dir is None:
            return None
        return self.sysfs(os.path.join(f"{os.path.basename(self.dir)}:1.0", "interface"))


def _port_path(dev: Any) -> Optional[str]:
    try:
        ports = dev.port_numbers
    except Exception:
        ports = None
    if not ports or dev.bus is None:
        return None
    return f"{dev.bus}-{'.'.join(str(p) for p in ports)}"


def _dfu_flash_layout(dev: Any, reader: Optional[_Reader] = None) -> Optional[str]:
    """The alt-0 name of a DfuSe device (the internal flash memory map)."""
    import usb.util  # local: importing pyusb is cheap, but keep module import light
    if reader is not None:
        name = reader.interface_name()
        if name and name.startswith("@"):
            return name
    try:
        for cfg in dev:
            for intf in cfg:
                if intf.bInterfaceClass != 0xFE or intf.bInterfaceSubClass != 0x01:
                    continue
                if intf.bAlternateSetting != 0 or not intf.iInterface:
                    continue
                name = usb.util.get_string(dev, intf.iInterface)
                if name:
                    return name
    except Exception as exc:
        if reader is not None:
            reader.note(exc)
        return None
    return None


def describe_device(dev: Any, sysfs: Optional[str] = None,
                    warnings: Optional[List[str]] = None) -> Optional[UsbDevice]:
    """What one USB device is; an access error while reading it goes to ``warnings``
    naming the device and the fix."""
    kind = known_kinds().get((dev.idVendor, dev.idProduct))
    if kind is None:
        return None
    port_path = _port_path(dev)
    reader = _Reader(dev, port_path, sysfs)
    serial = reader.string("serial_number")
    product = reader.string("product")
    info = UsbDevice(kind=kind, vendor_id=dev.idVendor, product_id=dev.idProduct,
                     bus=dev.bus, address=dev.address, port_path=port_path,
                     serial=serial, manufacturer=reader.string("manufacturer"),
                     product=product)
    if kind == "dfu":
        info.dfu_layout = _dfu_flash_layout(dev, reader)
        layout = parse_dfu_layout(info.dfu_layout)
        if layout is not None:
            info.flash_size = layout.size
    elif kind in _CHIP_ID_KINDS:
        if product and _MCU_RE.match(product):
            info.mcu = product
        if serial:
            info.canbus_uuid = canbus_uuid_from_chip_id(serial)
    if reader.denied is not None and warnings is not None:
        where = f" at USB port {port_path}" if port_path else ""
        warnings.append(f"No permission to read USB device {info.usb_id} ({kind}){where}: its "
                        "serial number and details are unknown, so it cannot be matched to a "
                        f"profile. {permission_fix(info.usb_id)}")
    return info


def list_usb_devices(backend: Any = None,
                     sysfs: Optional[str] = SYSFS_USB) -> Tuple[List[UsbDevice], List[str]]:
    """Blocking: the recognised USB devices and any warnings (no libusb, ...)."""
    import usb.core
    warnings: List[str] = []
    try:
        found = list(usb.core.find(find_all=True, backend=backend))
    except usb.core.NoBackendError:
        return [], ["pyusb found no USB backend: install libusb-1.0 "
                    "(Debian: sudo apt install libusb-1.0-0) to see USB devices"]
    except Exception as exc:   # USBError on a broken bus: report, keep the rest of the scan
        return [], [f"USB scan failed: {exc}"]
    devices: List[UsbDevice] = []
    for dev in found:
        try:
            info = describe_device(dev, sysfs, warnings)
        except Exception as exc:
            warnings.append(f"USB device {dev.idVendor:04x}:{dev.idProduct:04x}: {exc}")
            continue
        if info is not None:
            devices.append(info)
    return devices, warnings
