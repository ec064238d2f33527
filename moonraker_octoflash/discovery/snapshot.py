"""What one discovery pass saw, and where each profile's board is in it."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional

from .can import CanInterface, CanNode
from .identity import dfu_serial_from_chip_id, normalize_uuid
from .klipper import KlipperMcu, same_mcu
from .serial import SerialPort, parse_by_id_name
from .usb import UsbDevice, parse_dfu_layout

# Board states a profile can be shown in.
RUNNING = "running"
BOOTLOADER = "bootloader"
DFU = "dfu"
BOOT_ROM = "boot_rom"          # an RP2040/RP2350 in its boot ROM (BOOTSEL)
NOT_FOUND = "not_found"


def profile_is_usb_can_bridge(profile: Any) -> bool:
    """True when the profile's firmware makes the board a USB-CAN bridge (which
    carries the CAN bus: flashing it takes the bus down)."""
    kconfig = getattr(profile, "kconfig", None)
    symbols = kconfig() if callable(kconfig) else \
        getattr(getattr(profile, "preset", None), "kconfig", {}) or {}
    return any("USBCANBUS" in key and value == "y" for key, value in symbols.items())


@dataclasses.dataclass
class BoardStatus:
    state: str                                  # running, bootloader, dfu, boot_rom, not_found
    detail: str
    device: Optional[Dict[str, Any]] = None     # the USB device / port / node seen

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DeviceSnapshot:
    usb: List[UsbDevice] = dataclasses.field(default_factory=list)
    serial_ports: List[SerialPort] = dataclasses.field(default_factory=list)
    can_interfaces: List[CanInterface] = dataclasses.field(default_factory=list)
    can_nodes: List[CanNode] = dataclasses.field(default_factory=list)
    klipper_mcus: List[KlipperMcu] = dataclasses.field(default_factory=list)
    klipper_state: Optional[str] = None
    warnings: List[str] = dataclasses.field(default_factory=list)
    by_id_dir: str = "/dev/serial/by-id"
    taken_at: float = dataclasses.field(default_factory=time.time)
    duration: float = 0.0

    # --- lookups ---------------------------------------------------------
    def usb_of_kind(self, kind: str) -> List[UsbDevice]:
        return [d for d in self.usb if d.kind == kind]

    def dfu_devices(self) -> List[UsbDevice]:
        return self.usb_of_kind("dfu")

    def dfu_device(self, serial: Optional[str]) -> Optional[UsbDevice]:
        if not serial:
            return None
        for d in self.dfu_devices():
            if d.serial and d.serial.lower() == serial.lower():
                return d
        return None

    def usb_by_uuid(self, kind: str, uuid: Optional[str]) -> Optional[UsbDevice]:
        uuid = normalize_uuid(uuid)
        for d in self.usb_of_kind(kind):
            if uuid and d.canbus_uuid == uuid:
                return d
        return None

    def usb_by_serial(self, kind: str, serial: Optional[str]) -> Optional[UsbDevice]:
        for d in self.usb_of_kind(kind):
            if serial and d.serial == serial:
                return d
        return None

    def serial_port(self, path: Optional[str]) -> Optional[SerialPort]:
        if not path:
            return None
        name = os.path.basename(path)
        for p in self.serial_ports:
            if p.path == path or p.name == name:
                return p
        return None

    def katapult_port(self, chip_serial: Optional[str]) -> Optional[SerialPort]:
        for p in self.serial_ports:
            if p.kind == "katapult" and chip_serial and p.serial == chip_serial:
                return p
        return None

    def can_node(self, uuid: Optional[str], interface: Optional[str] = None) -> Optional[CanNode]:
        uuid = normalize_uuid(uuid)
        for n in self.can_nodes:
            if uuid and n.uuid == uuid and (interface is None or n.interface == interface):
                return n
        return None

    def can_interface_up(self, name: str) -> bool:
        return any(i.name == name and i.up for i in self.can_interfaces)

    def klipper_mcu(self, name: Optional[str]) -> Optional[KlipperMcu]:
        """The MCU ``name`` means (``mcu``, ``NAME`` or ``mcu NAME``, in any case).

        Klipper matches section names whatever their case, so a profile's
        ``klipper_mcu: toolhead`` is the board printer.cfg calls ``[mcu Toolhead]``.
        """
        if not name:
            return None
        for m in self.klipper_mcus:
            if same_mcu(m.object_name, name):
                return m
        return None

    def klipper_mcu_for(self, profile: Any) -> Optional[KlipperMcu]:
        """The Klipper MCU that is this profile's board (by name, uuid or serial)."""
        found = self.klipper_mcu(getattr(profile, "klipper_object", None))
        if found is not None:
            return found
        uuid = normalize_uuid(getattr(profile, "canbus_uuid", None))
        serial = getattr(profile, "serial", None)
        for m in self.klipper_mcus:
            if uuid and m.canbus_uuid == uuid:
                return m
            if serial and m.serial and os.path.basename(m.serial) == os.path.basename(serial):
                return m
        return None

    # --- where is a profile's board? -----------------------------------
    def chip_serial_for(self, profile: Any) -> Optional[str]:
        """The board's chip id (USB serial), when something seen reveals it."""
        serial_path = getattr(profile, "serial", None)
        if serial_path:
            _kind, _mcu, chip = parse_by_id_name(os.path.basename(serial_path))
            if chip:
                return chip
        uuid = getattr(profile, "canbus_uuid", None)
        for kind in ("canbridge", "katapult"):
            dev = self.usb_by_uuid(kind, uuid)
            if dev is not None:
                return dev.serial
        return None

    def dfu_device_for(self, profile: Any) -> Optional[UsbDevice]:
        """The DFU device that is this profile's board, if one can be told apart."""
        wanted = getattr(profile, "dfu_serial", None)
        if wanted:
            return self.dfu_device(wanted)
        chip = self.chip_serial_for(profile)
        derived = dfu_serial_from_chip_id(chip) if chip else None
        if derived:
            found = self.dfu_device(derived)
            if found is not None:
                return found
        devices = self.dfu_devices()
        if len(devices) == 1 and _layout_fits(devices[0], getattr(profile, "mcu", None)):
            return devices[0]
        return None

    def boot_rom_device_for(self, profile: Any) -> Optional[UsbDevice]:
        """The RP2040/RP2350 boot ROM device (BOOTSEL) that is this profile's board, if one
        can be told apart: the one whose serial is the board's chip id, else the only one
        of the profile's chip.  (The RP2040's boot ROM reports a serial of its own, the same
        on every board, so there it is always the only one of its chip.)"""
        from ..mcus import rom_loader
        rom = rom_loader(getattr(profile, "mcu", None))
        if rom is None or rom.usb_kind == "dfu":
            return None
        devices = self.usb_of_kind(rom.usb_kind)
        chip = self.chip_serial_for(profile)
        if chip:
            for d in devices:
                if d.serial and d.serial.lower() == chip.lower():
                    return d
        return devices[0] if len(devices) == 1 else None

    def status_of(self, profile: Any) -> BoardStatus:
        """running / bootloader / dfu / boot_rom / not_found for one profile, with what was
        seen."""
        km = self.klipper_mcu_for(profile)
        if km is not None and km.connected:
            return BoardStatus(RUNNING, f"Klipper reports {km.object_name} running "
                               f"{km.mcu_version} ({km.mcu_type or 'MCU type unknown'})",
                               km.to_json())
        uuid = normalize_uuid(getattr(profile, "canbus_uuid", None))
        chip = self.chip_serial_for(profile)
        if uuid:
            node = self.can_node(uuid)
            if node is not None:
                state = BOOTLOADER if node.application == "Katapult" else RUNNING
                return BoardStatus(state, f"answers on {node.interface} as {node.application} "
                                   f"(uuid {node.uuid})", node.to_json())
            bridge = self.usb_by_uuid("canbridge", uuid)
            if bridge is not None:
                return BoardStatus(RUNNING, f"Klipper USB-CAN bridge on USB {bridge.port_path or ''}"
                                   .rstrip(), bridge.to_json())
            kat = self.usb_by_uuid("katapult", uuid)
            if kat is not None:
                return BoardStatus(BOOTLOADER, "Katapult on USB " +
                                   (kat.serial_paths[0] if kat.serial_paths else kat.serial or ""),
                                   kat.to_json())
        serial_path = getattr(profile, "serial", None)
        if serial_path:
            port = self.serial_port(serial_path)
            if port is not None and port.kind != "katapult":
                return BoardStatus(RUNNING, f"serial port {port.path}", port.to_json())
            if port is not None:
                return BoardStatus(BOOTLOADER, f"Katapult at {port.path}", port.to_json())
        kport = self.katapult_port(chip)
        if kport is not None:
            return BoardStatus(BOOTLOADER, f"Katapult at {kport.path}", kport.to_json())
        dfu = self.dfu_device_for(profile)
        if dfu is not None:
            named = getattr(profile, "dfu_serial", None)
            detail = f"in DFU mode (serial {dfu.serial})" if named else (
                f"a board is in DFU mode (serial {dfu.serial}); set dfu_serial to be sure it "
                "is this one")
            return BoardStatus(DFU, detail, dfu.to_json())
        boot = self.boot_rom_device_for(profile)
        if boot is not None:
            chip = self.chip_serial_for(profile)
            if chip and boot.serial and boot.serial.lower() == chip.lower():
                detail = f"in BOOTSEL mode (boot ROM {boot.usb_id}, serial {boot.serial})"
            else:
                detail = (f"a board is in BOOTSEL mode (boot ROM {boot.usb_id}); the boot ROM "
                          "does not say which board it is, so check that it is this one")
            return BoardStatus(BOOT_ROM, detail, boot.to_json())
        if km is not None:
            return BoardStatus(NOT_FOUND, f"Klipper knows it as {km.object_name} but does not "
                               "report it running", km.to_json())
        return BoardStatus(NOT_FOUND, "not seen on USB, serial or CAN")

    def to_json(self) -> Dict[str, Any]:
        return {
            "usb": [d.to_json() for d in self.usb],
            "serial_ports": [p.to_json() for p in self.serial_ports],
            "can_interfaces": [i.to_json() for i in self.can_interfaces],
            "can_nodes": [n.to_json() for n in self.can_nodes],
            "klipper_mcus": [m.to_json() for m in self.klipper_mcus],
            "klipper_state": self.klipper_state,
            "warnings": list(self.warnings),
            "by_id_dir": self.by_id_dir,
            "taken_at": self.taken_at,
            "duration": round(self.duration, 3),
        }


def _layout_fits(dev: UsbDevice, mcu: Optional[str]) -> bool:
    """False only when the DFU layout proves the device is another chip."""
    if not mcu or not dev.dfu_layout:
        return True
    from ..presets import mcu_info
    info = mcu_info(mcu)
    if info is None or not info.dfu_layout:
        return True
    mine, theirs = parse_dfu_layout(info.dfu_layout), parse_dfu_layout(dev.dfu_layout)
    if mine is None or theirs is None:
        return True
    return mine.sectors == theirs.sectors
