"""A pyusb backend (``usb.backend.IBackend``) that shows the simulated boards.

Each board appears with the ids and strings the real firmware uses: the STM32
ROM loader (``0483:df11``, its DFU alt settings named after the flash
layout), Katapult (``1d50:6177``), Klipper USB serial (``1d50:614e``),
the Klipper USB-CAN bridge (``1d50:606f``) and the RP2040/RP2350 boot ROM
in BOOTSEL mode (``2e8a:0003`` / ``2e8a:000f``).  Only what discovery reads is
implemented: descriptors and string descriptors through control transfers.
"""
from __future__ import annotations

import array
from types import SimpleNamespace
from typing import Any, Dict, Iterator, List, Optional

import usb.backend
from usb.core import USBError

from ..discovery.identity import USB_ID_CANBRIDGE, USB_ID_DFU, USB_ID_KATAPULT, USB_ID_KLIPPER
from .board import DFU_EXTRA_ALTS

_GET_DESCRIPTOR = 0x06
_DESC_STRING = 0x03
_LANGID_EN_US = 0x0409


class _SimDevice:
    """What enumerate_devices yields: a frozen view of one board's USB identity."""

    def __init__(self, board_name: str, ident: Dict[str, Any]) -> None:
        self.board_name = board_name
        self.ident = ident
        self.vid, self.pid = ident["id"]
        self.strings: List[str] = [ident["manufacturer"], ident["product"], ident["serial"]]
        self.alt_names: List[str] = []
        if ident["id"] == USB_ID_DFU:
            self.alt_names = [ident["dfu_layout"]] + DFU_EXTRA_ALTS
            self.strings.extend(self.alt_names)

    def interfaces(self) -> List[List[Dict[str, int]]]:
        """Per interface number, its alt settings (class, subclass, protocol, string, endpoints)."""
        if self.ident["id"] == USB_ID_DFU:
            return [[{"cls": 0xFE, "sub": 0x01, "proto": 0x02, "str": 4 + alt, "eps": 0}
                     for alt in range(len(self.alt_names))]]
        if self.ident["id"] == USB_ID_CANBRIDGE:
            return [[{"cls": 0xFF, "sub": 0xFF, "proto": 0xFF, "str": 0, "eps": 2}]]
        if self.ident["manufacturer"] == "Raspberry Pi":
            # The boot ROM: a mass-storage drive (RPI-RP2) and the PICOBOOT interface.
            return [[{"cls": 0x08, "sub": 0x06, "proto": 0x50, "str": 0, "eps": 2}],
                    [{"cls": 0xFF, "sub": 0x00, "proto": 0x00, "str": 0, "eps": 2}]]
        # CDC ACM: a control interface and a data interface.
        return [[{"cls": 0x02, "sub": 0x02, "proto": 0x01, "str": 0, "eps": 1}],
                [{"cls": 0x0A, "sub": 0x00, "proto": 0x00, "str": 0, "eps": 2}]]


class SimulatedUsbBackend(usb.backend.IBackend):
    def __init__(self, machine: Any) -> None:
        super().__init__()
        self.machine = machine

    # --- enumeration and descriptors --------------------------------------
    def enumerate_devices(self) -> Iterator[_SimDevice]:
        self.machine.sync_links()
        for board in self.machine.boards():
            ident = board.usb_identity()
            if ident is not None:
                yield _SimDevice(board.name, ident)

    def get_parent(self, dev: _SimDevice) -> None:
        return None

    def get_device_descriptor(self, dev: _SimDevice) -> SimpleNamespace:
        ident = dev.ident
        port = ident["port_path"].split("-", 1)[1]
        ports = tuple(int(p) for p in port.split("."))
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=0x0200,
            bDeviceClass=0x02 if dev.vid == USB_ID_KLIPPER[0] and dev.pid in
            (USB_ID_KLIPPER[1], USB_ID_KATAPULT[1]) else 0x00,
            bDeviceSubClass=0, bDeviceProtocol=0, bMaxPacketSize0=64,
            idVendor=dev.vid, idProduct=dev.pid,
            bcdDevice=0x2200 if ident["id"] == USB_ID_DFU else 0x0100,
            iManufacturer=1, iProduct=2, iSerialNumber=3, bNumConfigurations=1,
            address=ident["address"], bus=1, port_number=ports[-1], port_numbers=ports,
            speed=3)

    def get_configuration_descriptor(self, dev: _SimDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError("configuration index out of range")
        intfs = dev.interfaces()
        return SimpleNamespace(
            bLength=9, bDescriptorType=2, wTotalLength=9 + 9 * sum(len(i) for i in intfs),
            bNumInterfaces=len(intfs), bConfigurationValue=1, iConfiguration=0,
            bmAttributes=0xC0, bMaxPower=50, extra_descriptors=[])

    def get_interface_descriptor(self, dev: _SimDevice, intf: int, alt: int,
                                 config: int) -> SimpleNamespace:
        intfs = dev.interfaces()
        if config != 0 or intf >= len(intfs) or alt >= len(intfs[intf]):
            raise IndexError("interface index out of range")
        d = intfs[intf][alt]
        return SimpleNamespace(
            bLength=9, bDescriptorType=4, bInterfaceNumber=intf, bAlternateSetting=alt,
            bNumEndpoints=d["eps"], bInterfaceClass=d["cls"], bInterfaceSubClass=d["sub"],
            bInterfaceProtocol=d["proto"], iInterface=d["str"], extra_descriptors=[])

    def get_endpoint_descriptor(self, dev: _SimDevice, ep: int, intf: int, alt: int,
                                config: int) -> SimpleNamespace:
        d = self.get_interface_descriptor(dev, intf, alt, config)
        if ep >= d.bNumEndpoints:
            raise IndexError("endpoint index out of range")
        address = (0x81 + intf * 2 + ep) if ep == 0 else (0x01 + intf * 2)
        return SimpleNamespace(bLength=7, bDescriptorType=5, bEndpointAddress=address,
                               bmAttributes=0x02, wMaxPacketSize=64, bInterval=0,
                               bRefresh=0, bSynchAddress=0, extra_descriptors=[])

    # --- the little I/O discovery does ------------------------------------------
    def open_device(self, dev: _SimDevice) -> _SimDevice:
        board = self.machine.board(dev.board_name)
        if board.usb_identity() is None:
            raise USBError("No such device (it was disconnected)", errno=19)
        if board.has_fault("usb_access_denied"):
            # What pyusb raises for libusb's LIBUSB_ERROR_ACCESS (no udev rule for the user).
            raise USBError("Access denied (insufficient permissions)", errno=13, error_code=-3)
        return dev

    def close_device(self, dev_handle: _SimDevice) -> None:
        pass

    def get_configuration(self, dev_handle: _SimDevice) -> int:
        return 1

    def set_configuration(self, dev_handle: _SimDevice, config_value: int) -> None:
        pass

    def claim_interface(self, dev_handle: _SimDevice, intf: int) -> None:
        pass

    def release_interface(self, dev_handle: _SimDevice, intf: int) -> None:
        pass

    def ctrl_transfer(self, dev_handle: _SimDevice, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: Any, timeout: int) -> int:
        if bmRequestType != 0x80 or bRequest != _GET_DESCRIPTOR or (wValue >> 8) != _DESC_STRING:
            raise USBError("Pipe error (request not supported by the simulated device)", errno=32)
        index = wValue & 0xFF
        if index == 0:
            payload = bytes([4, _DESC_STRING]) + _LANGID_EN_US.to_bytes(2, "little")
        else:
            if index > len(dev_handle.strings):
                raise USBError("Pipe error (no such string)", errno=32)
            text = dev_handle.strings[index - 1].encode("utf-16-le")
            payload = bytes([2 + len(text), _DESC_STRING]) + text
        buf: Optional[array.array] = data if isinstance(data, array.array) else None
        if buf is None:
            return 0
        count = min(len(buf), len(payload))
        for i in range(count):
            buf[i] = payload[i]
        return count
