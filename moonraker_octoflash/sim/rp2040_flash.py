"""A double of Klipper's ``lib/rp2040_flash/rp2040_flash`` writing a simulated RP2040.

It reproduces what the real program (Klipper's ``lib/rp2040_flash/main.c``,
read at commit 34aa2a76, the version with RP2350 support) prints and returns:

- usage: ``rp2040_flash <uf2 image> [bus addr]``; any other argument count,
  or a bus/address that is not a number: ``Usage: %s <uf2 image> [bus addr]``,
  exit 1;
- a file it cannot open: ``Could not open image file X`` then ``Could not
  load flash image, exiting``, exit 1;
- ``Loaded UF2 image with N pages``, counting only the blocks it keeps: UF2
  magics right, the family-id flag set with the RP2040 family (0xe48bff56,
  also for the RP2350), not "not main flash", 256-byte payload, page aligned,
  from 0x10000000 to the end of the RP2350's 32 MiB window; the others are
  skipped without a word;
- no board in BOOTSEL (or none at the bus/address given): ``No rp2040 in
  BOOTSEL mode was found``, exit **0**; the same, and nothing more, when the
  board is there but libusb may not open it (fault ``usb_access_denied``:
  ``picoboot_open_device`` prints its "Failed to open device" only in a
  verbose build, and main.c's ``verbose`` is never set);
- ``Found rp2040 device on USB bus B address A``, ``Flashing...``,
  ``Resetting interface``, ``Locking``, ``Exiting XIP mode``, ``Erasing``
  (every 4 KiB sector a kept page touches), ``Flashing`` (each page),
  ``Rebooting device``, exit 0 — the board then runs what its flash holds;
- a PICOBOOT command that fails: ``Command write failed with status 4:
  invalid address`` (fault ``rp2040_write_error``: half the pages land), exit 1.

Everything goes to stderr, as in the real program.  The simulated USB bus
is bus 1; a board's address is its current USB address.
"""
from __future__ import annotations

import struct
import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from .board import SimulatedBoard, SimulatedMachine

FLASH_START = 0x10000000
FLASH_END_RP2350 = 0x12000000
PAGE_SIZE = 256
SECTOR = 4096
RP2040_FAMILY_ID = 0xE48BFF56
UF2_MAGIC = (0x0A324655, 0x9E5D5157, 0x0AB16F30)
FLAG_NOT_MAIN_FLASH = 0x00000001
FLAG_FAMILY_ID_PRESENT = 0x00002000


def load_pages(data: bytes) -> Dict[int, bytes]:
    """The pages main.c's load_flash_data keeps, by address."""
    pages: Dict[int, bytes] = {}
    for offset in range(0, len(data) - 511, 512):
        m0, m1, flags, address, size, _n, _count, family = struct.unpack_from(
            "<IIIIIIII", data, offset)
        (m_end,) = struct.unpack_from("<I", data, offset + 508)
        if (m0, m1, m_end) != UF2_MAGIC:
            continue
        if not flags & FLAG_FAMILY_ID_PRESENT or family != RP2040_FAMILY_ID:
            continue
        if flags & FLAG_NOT_MAIN_FLASH or size != PAGE_SIZE:
            continue
        if address % PAGE_SIZE or address > FLASH_END_RP2350 - PAGE_SIZE or address < FLASH_START:
            continue
        pages[address] = data[offset + 32:offset + 32 + PAGE_SIZE]
    return pages


def _usage(prog: str, err: TextIO) -> int:
    err.write(f"Usage: {prog} <uf2 image> [bus addr]\n")
    return 1


def _target(argv: Sequence[str]) -> Optional[Tuple[int, int]]:
    if len(argv) != 3:
        return None
    return int(argv[1], 10), int(argv[2], 10)


def _find(machine: SimulatedMachine, target: Optional[Tuple[int, int]]) -> Optional[SimulatedBoard]:
    for board in machine.boards():
        if board.mode != "bootsel":
            continue
        if target is not None and target != (1, int(board.usb_address or 0)):
            continue
        if board.has_fault("usb_access_denied"):
            continue        # libusb_open refused: picoboot_open_device skips it in silence
        return board
    return None


def _runs(pages: Dict[int, bytes]) -> List[Tuple[int, bytes]]:
    """Consecutive pages joined, so the simulated flash is written in a few pieces."""
    runs: List[Tuple[int, bytes]] = []
    for address in sorted(pages):
        if runs and runs[-1][0] + len(runs[-1][1]) == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + pages[address])
        else:
            runs.append((address, pages[address]))
    return runs


def main(argv: Optional[Sequence[str]] = None, err: TextIO = sys.stderr) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "lib/rp2040_flash/rp2040_flash"
    machine = SimulatedMachine.from_env()
    machine.log_invocation("rp2040_flash", argv)
    if len(argv) not in (1, 3):
        return _usage(prog, err)
    try:
        with open(argv[0], "rb") as f:
            data = f.read()
    except OSError:
        err.write(f"Could not open image file {argv[0]}\n")
        err.write("Could not load flash image, exiting\n")
        return 1
    pages = load_pages(data)
    err.write(f"Loaded UF2 image with {len(pages)} pages\n")
    try:
        target = _target(argv)
    except ValueError:
        return _usage(prog, err)
    board = _find(machine, target)
    if board is None:
        err.write("No rp2040 in BOOTSEL mode was found\n")
        return 0
    err.write(f"Found rp2040 device on USB bus 1 address {board.usb_address}\n")
    err.write("Flashing...\n")
    for line in ("Resetting interface", "Locking", "Exiting XIP mode", "Erasing"):
        err.write(line + "\n")
    err.flush()
    sectors = sorted({a - a % SECTOR for a in pages})
    for sector in sectors:
        board.erase(sector, SECTOR)
    time.sleep(machine.tool_delay)
    err.write("Flashing\n")
    err.flush()
    runs = _runs(pages)
    if board.has_fault("rp2040_write_error"):
        half = runs[0][1][:max(PAGE_SIZE, len(runs[0][1]) // 2 // PAGE_SIZE * PAGE_SIZE)]
        board.write_flash(runs[0][0], half, name=argv[0], erase=False, complete=False)
        err.write("Command write failed with status 4: invalid address\n")
        return 1
    for address, chunk in runs:
        board.write_flash(address, chunk, name=argv[0], erase=False)
    time.sleep(machine.tool_delay)
    err.write("Rebooting device\n")
    err.flush()
    board.reset()
    return 0


if __name__ == "__main__":   # pragma: no cover - run through the machine's wrapper
    sys.exit(main())
