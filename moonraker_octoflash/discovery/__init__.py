"""Device discovery: one call that sees USB, serial ports, CAN nodes and Klipper's MCUs.

``await scan(...)`` runs the blocking parts (pyusb, the by-id folder, the
CAN listening window) in worker threads at the same time, so one pass takes
about the CAN window (0.5 s by default) and never holds the event loop.
Every source is injectable so that the simulated machine (``sim/``) is seen
through exactly this code.
"""
from __future__ import annotations

import importlib
import os

# the serial reader is imported when scan() runs
from .identity import DEFAULT_BY_ID_DIR

# typing only for type checkers: the simulated tools, a process each and hundreds
# of them in a test run, import this module at their start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, Mapping, Optional, Tuple

    from .can import CanInterface, CanNode, InterfaceSource
    from .klipper import KlipperMcu
    from .serial import SerialPort
    from .snapshot import (BOOT_ROM, BOOTLOADER, DFU, NOT_FOUND, RUNNING, BoardStatus,
                           DeviceSnapshot, profile_is_usb_can_bridge)
    from .usb import DfuLayout, UsbDevice, parse_dfu_layout

_USB_SYSFS = "/sys/bus/usb/devices"       # usb.SYSFS_USB, without importing usb

__all__ = [
    "scan", "DeviceSnapshot", "BoardStatus", "UsbDevice", "SerialPort", "CanNode",
    "CanInterface", "KlipperMcu", "DfuLayout", "parse_dfu_layout",
    "profile_is_usb_can_bridge", "RUNNING", "BOOTLOADER", "DFU", "BOOT_ROM", "NOT_FOUND",
]

# The names this package exports, by the module that defines them: imported on first
# use, so that a part (``discovery.identity`` for the USB ids, ``discovery.snapshot``)
# is imported without asyncio and every source.
_LAZY = {
    "CanInterface": "can", "CanNode": "can", "InterfaceSource": "can",
    "KlipperMcu": "klipper", "SerialPort": "serial",
    "BOOT_ROM": "snapshot", "BOOTLOADER": "snapshot", "DFU": "snapshot",
    "NOT_FOUND": "snapshot", "RUNNING": "snapshot", "BoardStatus": "snapshot",
    "DeviceSnapshot": "snapshot", "profile_is_usb_can_bridge": "snapshot",
    "DfuLayout": "usb", "UsbDevice": "usb", "parse_dfu_layout": "usb",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


async def _query_can(interfaces: List[CanInterface], bustype: str, listen_time: float,
                     expect: Optional[List[str]] = None) -> Tuple[List[CanNode], List[str]]:
    import asyncio

    from .can import query_interface
    up = [i for i in interfaces if i.up]
    if not up:
        return [], []
    results = await asyncio.gather(*(
        asyncio.to_thread(query_interface, i.name, bustype=bustype, listen_time=listen_time,
                          expect=expect)
        for i in up))
    nodes: List[CanNode] = []
    warnings: List[str] = []
    for found, warns in results:
        nodes.extend(found)
        warnings.extend(warns)
    return nodes, warnings


async def scan(*, usb_backend: Any = None,
               by_id_dir: str = DEFAULT_BY_ID_DIR,
               can_interfaces: InterfaceSource = None,
               can_bustype: str = "socketcan",
               can_listen_time: float = 0.5,
               klipper_status: Optional[Mapping[str, Any]] = None,
               sysfs_net: str = "/sys/class/net",
               usb_sysfs: Optional[str] = _USB_SYSFS,
               usb: bool = True, can: bool = True,
               can_expect: Optional[List[str]] = None) -> DeviceSnapshot:
    """Look for every board, in threads; returns a ``DeviceSnapshot``.

    ``can_interfaces``: None = every CAN interface of the system that is up
    (``/sys/class/net/*/type`` 280), a list of names, or a function giving
    them.  ``klipper_status``: Klipper's ``mcu``/``mcu NAME``/``configfile``
    objects, when the caller has them.  ``usb=False``/``can=False`` skip a
    source (the CAN window is the slow part).  ``can_expect``: CAN uuids the
    caller looks for (a flash, its board's); an interface stops listening as
    soon as every one of them has answered, instead of at the window's end.
    """
    import asyncio
    import time

    from .can import resolve_interfaces
    from .klipper import klipper_mcus, klipper_state
    from .serial import list_serial_ports
    from .snapshot import DeviceSnapshot
    from .usb import list_usb_devices
    start = time.monotonic()
    snapshot = DeviceSnapshot(by_id_dir=by_id_dir)

    async def do_usb() -> Tuple[List[UsbDevice], List[str]]:
        if not usb:
            return [], []
        return await asyncio.to_thread(list_usb_devices, usb_backend, usb_sysfs)

    async def do_can() -> Tuple[List[CanInterface], List[CanNode], List[str]]:
        if not can:
            return [], [], []
        interfaces = await asyncio.to_thread(resolve_interfaces, can_interfaces, sysfs_net)
        nodes, warns = await _query_can(interfaces, can_bustype, can_listen_time, can_expect)
        return interfaces, nodes, warns

    (usb_devices, usb_warns), (ports, port_warns), (ifaces, nodes, can_warns) = \
        await asyncio.gather(do_usb(), asyncio.to_thread(list_serial_ports, by_id_dir), do_can())
    _match_ports(usb_devices, ports)
    snapshot.usb = usb_devices
    snapshot.serial_ports = ports
    snapshot.can_interfaces = ifaces
    snapshot.can_nodes = nodes
    snapshot.klipper_mcus = klipper_mcus(klipper_status)
    snapshot.klipper_state = klipper_state(klipper_status)
    snapshot.warnings = usb_warns + port_warns + can_warns
    snapshot.duration = time.monotonic() - start
    return snapshot


def _match_ports(devices: List[UsbDevice], ports: List[SerialPort]) -> None:
    """Attach each by-id entry to the USB device with the same serial and vendor."""
    for dev in devices:
        if dev.kind not in ("klipper", "katapult") or not dev.serial:
            continue
        dev.serial_paths = [p.path for p in ports
                            if p.serial == dev.serial and p.kind == dev.kind]
        for p in ports:
            if p.path in dev.serial_paths and not p.mcu and dev.mcu:
                p.mcu = dev.mcu


def by_id_path(by_id_dir: str, name: str) -> str:
    return os.path.join(by_id_dir, name)
