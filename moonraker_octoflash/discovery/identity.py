"""How one STM32 chip is named by each program that talks to it.

The same chip shows up under several names: Klipper and Katapult use the
chip's 96-bit unique id as their USB serial number (24 hex digits), the
STM32 ROM DFU loader shows a shorter 12-digit serial computed from the same
id, and on a CAN bus both Klipper and Katapult answer with a 6-byte uuid
hashed from it.  Knowing all three lets discovery tell that a DFU device, a
Katapult serial port and a CAN uuid are one board.
"""
from __future__ import annotations

import re

# typing only for type checkers: the simulated tools, a process each and hundreds
# of them in a test run, import this module at their start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

USB_ID_DFU = (0x0483, 0xDF11)          # STM32 ROM bootloader in DFU mode
USB_ID_KLIPPER = (0x1D50, 0x614E)      # Klipper, USB serial
USB_ID_CANBRIDGE = (0x1D50, 0x606F)    # Klipper USB-CAN bridge (gs_usb)
USB_ID_KATAPULT = (0x1D50, 0x6177)     # Katapult, USB serial

# Where udev names each USB serial port after its vendor, product and serial.
DEFAULT_BY_ID_DIR = "/dev/serial/by-id"

_MASK64 = (1 << 64) - 1
_FASTHASH_M = 0x880355F21E6D1965
_KLIPPER_UUID_SEED = 0xA16231A7
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


def _mix(h: int) -> int:
    h ^= h >> 23
    h = (h * 0x2127599BF4325C37) & _MASK64
    h ^= h >> 47
    return h


def fasthash64(data: bytes, seed: int) -> int:
    """Zilong Tan's fasthash64, the hash Klipper and Katapult derive CAN uuids with."""
    length = len(data)
    h = (seed ^ ((length * _FASTHASH_M) & _MASK64)) & _MASK64
    whole = length - length % 8
    for pos in range(0, whole, 8):
        v = int.from_bytes(data[pos:pos + 8], "little")
        h ^= _mix(v)
        h = (h * _FASTHASH_M) & _MASK64
    tail = data[whole:]
    if tail:
        v = int.from_bytes(tail, "little")
        h ^= _mix(v)
        h = (h * _FASTHASH_M) & _MASK64
    return _mix(h)


def normalize_uuid(uuid: Optional[str]) -> Optional[str]:
    """A CAN uuid as 12 lower-case hex digits, or None if it is not one."""
    if not uuid:
        return None
    text = uuid.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) != 12 or not _HEX_RE.fullmatch(text):
        return None
    return text


def canbus_uuid_from_chip_id(chip_id: str) -> Optional[str]:
    """The CAN uuid a board answers with, from its USB serial (the chip id in hex).

    Klipper hashes the raw chip id and uses the first six bytes of the
    little-endian result; Katapult does the same, so the uuid survives a
    switch between them.  Returns None for a serial that is not hex.
    """
    if not chip_id or len(chip_id) % 2 or not _HEX_RE.fullmatch(chip_id):
        return None
    digest = fasthash64(bytes.fromhex(chip_id), _KLIPPER_UUID_SEED)
    return digest.to_bytes(8, "little")[:6].hex()


def dfu_serial_from_chip_id(chip_id: str) -> Optional[str]:
    """The serial number the STM32 ROM DFU loader reports for this chip.

    ST's USB code builds it from the three 32-bit words of the unique id:
    ``%08X`` of word0 + word2, then the top 16 bits of word1 as ``%04X``.
    Used only as a hint for matching; a profile's ``dfu_serial`` wins.
    """
    if not chip_id or len(chip_id) != 24 or not _HEX_RE.fullmatch(chip_id):
        return None
    raw = bytes.fromhex(chip_id)
    w0, w1, w2 = (int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))
    return f"{(w0 + w2) & 0xFFFFFFFF:08X}{w1 >> 16:04X}"
