"""What a simulated board makes of an image written into its flash.

A real chip just runs whatever bytes are there; the simulation needs to know
what they are to decide what the board does after a reset.  Klipper images
carry their data dictionary (zlib-compressed JSON); anything else written at
the start of flash is taken as a Katapult bootloader, and a file named
``deployer.bin`` as Katapult's deployer.  A simulated Katapult image may
name its application start with the marker ``OCTOFLASH-SIM:app_start=0x…``
(and its version as ``KATAPULT <version> OCTOFLASH-SIM``); without one the
MCU's usual offset is used.
"""
from __future__ import annotations

import json
import re
import zlib
TYPE_CHECKING = False   # typing is imported only by type checkers (see sim/board.py)
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

FLASH_BASE = 0x08000000
_APP_START_RE = re.compile(rb"OCTOFLASH-SIM:app_start=(0x[0-9A-Fa-f]+)")
_VERSION_RE = re.compile(rb"KATAPULT (\S+) OCTOFLASH-SIM")
_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


def find_data_dictionary(data: bytes) -> Optional[Dict[str, Any]]:
    """Klipper's data dictionary embedded in an image, or None."""
    pos = 0
    while True:
        idx = data.find(b"\x78", pos)
        if idx < 0:
            return None
        pos = idx + 1
        if data[idx:idx + 2] not in _ZLIB_HEADERS:
            continue
        try:
            raw = zlib.decompressobj().decompress(data[idx:])
            parsed = json.loads(raw)
        except (zlib.error, ValueError):
            continue
        if isinstance(parsed, dict) and parsed.get("app") == "Klipper":
            return parsed


def default_app_start(mcu: str) -> int:
    """Where Katapult starts applications when the image does not say: the
    Octopus guide's offsets (32 KiB, 128 KiB on the H7), Katapult's 8 KiB on
    the STM32G0 and its 16 KiB on the RP2040/RP235x (whose flash is at
    0x10000000)."""
    if mcu.startswith("rp2"):
        return 0x10000000 + 0x4000
    if mcu.startswith("stm32g0"):
        return FLASH_BASE + 0x2000
    return FLASH_BASE + (0x20000 if mcu.startswith("stm32h7") else 0x8000)


def classify_image(data: bytes, name: str, mcu: str) -> Dict[str, Any]:
    """A description of an image: kind (klipper, katapult, deployer) and facts."""
    dictionary = find_data_dictionary(data)
    if dictionary is not None:
        config = dictionary.get("config") or {}
        return {
            "kind": "klipper",
            "version": dictionary.get("version", ""),
            "mcu": config.get("MCU", ""),
            "bridge": bool(config.get("CANBUS_BRIDGE")),
            "canbus": "CANBUS_FREQUENCY" in config,
        }
    base = name.rsplit("/", 1)[-1].lower()
    marker = _APP_START_RE.search(data)
    app_start = int(marker.group(1), 16) if marker else default_app_start(mcu)
    if base == "deployer.bin":
        return {"kind": "deployer", "app_start": app_start}
    version = _VERSION_RE.search(data)
    return {"kind": "katapult", "app_start": app_start,
            "version": version.group(1).decode(errors="replace") if version else ""}
