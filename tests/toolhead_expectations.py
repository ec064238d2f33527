"""What the curated toolhead presets must resolve to, written out by hand.

Transcribed from the boards' sources (Klipper's config headers for the
EBB boards: STM32G0B1, 8 MHz crystal, CAN on PB0/PB1) and from Klipper's
and Katapult's Kconfig for what follows from those choices, not derived
from the preset JSON.  Used by the simulated builds
(test_toolhead_presets_build.py) and the real ones (test_realfw.py).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Optional

SPEEDS = {"1m": "1000000", "500k": "500000"}

# family: (MCU, interface, status LED pin or None)
FAMILIES = {
    "btt-ebb": ("stm32g0b1xx", "can", "PA13"),
    "btt-ebb-sb": ("stm32g0b1xx", "can", None),
    "btt-ebb-sb2209-rp2040": ("rp2040", "can", None),
    "ldo-nitehawk-sb": ("rp2040", "usb", None),
}


def toolhead_ids() -> List[str]:
    ids: List[str] = []
    for family, (_mcu, iface, _led) in FAMILIES.items():
        speeds = list(SPEEDS) if iface == "can" else [""]
        for speed in speeds:
            tail = f"-{speed}" if speed else ""
            ids += [f"{family}-katapult{tail}", f"{family}-klipper{tail}"]
            ids.append(f"{family}-klipper{tail}-nobootloader")
    return ids


TOOLHEAD_IDS = toolhead_ids()


def _split(preset_id: str):
    for family in sorted(FAMILIES, key=len, reverse=True):
        if preset_id.startswith(family + "-"):
            rest = preset_id[len(family) + 1:].split("-")
            speed = next((SPEEDS[p] for p in rest if p in SPEEDS), None)
            return family, rest[0], speed, rest[-1] == "nobootloader"
    raise KeyError(preset_id)


def expected_toolhead(preset_id: str) -> Dict[str, str]:
    family, target, speed, bare = _split(preset_id)
    mcu, iface, led = FAMILIES[family]
    want: Dict[str, str] = {"CONFIG_MCU": f'"{mcu}"', "CONFIG_INITIAL_PINS": '""'}
    if speed:
        want.update({"CONFIG_CANBUS_FREQUENCY": speed, "CONFIG_CANBUS": "y",
                     "CONFIG_CANSERIAL": "y", "CONFIG_USBCANBUS": "n"})
    if mcu == "stm32g0b1xx":
        want.update({"CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32G0B1": "y",
                     "CONFIG_STM32_CLOCK_REF_8M": "y", "CONFIG_STM32_MMENU_CANBUS_PB0_PB1": "y",
                     "CONFIG_STM32_CANBUS_PB0_PB1": "y"})
        if target == "katapult":
            want.update({"CONFIG_STM32_FLASH_START_2000": "y", "CONFIG_STM32_APP_START_2000": "y",
                         "CONFIG_LAUNCH_APP_ADDRESS": "0x8002000",
                         "CONFIG_FLASH_APPLICATION_ADDRESS": "0x8002000",
                         "CONFIG_BUILD_DEPLOYER": "y", "CONFIG_ENABLE_DOUBLE_RESET": "y",
                         "CONFIG_ENABLE_LED": "y" if led else "n"})
            if led:
                want["CONFIG_STATUS_LED_PIN"] = f'"{led}"'
        else:
            want.update({"CONFIG_LOW_LEVEL_OPTIONS": "y",
                         "CONFIG_STM32_FLASH_START_0000" if bare else "CONFIG_STM32_FLASH_START_2000": "y",
                         "CONFIG_FLASH_APPLICATION_ADDRESS": "0x8000000" if bare else "0x8002000"})
        return want
    # src/rp2040/Kconfig: "No bootloader" on the RP2040 is FLASH_START_0100 (the boot
    # stage 2 fills the first 256 bytes); "16KiB bootloader" is FLASH_START_4000.
    want.update({"CONFIG_MACH_RPXXXX": "y", "CONFIG_MACH_RP2040": "y",
                 "CONFIG_RPXXXX_FLASH_START_0100" if bare else "CONFIG_RPXXXX_FLASH_START_4000": "y",
                 "CONFIG_FLASH_APPLICATION_ADDRESS": "0x10000100" if bare else "0x10004000"})
    if iface == "can":
        want.update({"CONFIG_RPXXXX_CANBUS": "y", "CONFIG_RPXXXX_CANBUS_GPIO_RX": "4",
                     "CONFIG_RPXXXX_CANBUS_GPIO_TX": "5"})
    else:
        want.update({"CONFIG_RPXXXX_USB": "y", "CONFIG_USBSERIAL": "y"})
    if target == "katapult":
        want.update({"CONFIG_RP2040_FLASH_W25Q080": "y", "CONFIG_FLASH_START": "0x10000000",
                     "CONFIG_LAUNCH_APP_ADDRESS": "0x10004000", "CONFIG_BUILD_DEPLOYER": "y",
                     "CONFIG_ENABLE_DOUBLE_RESET": "y"})
    elif bare:
        # FLASH_START_0100 selects RP2040_HAVE_STAGE2, which shows the flash chip choice.
        want.update({"CONFIG_LOW_LEVEL_OPTIONS": "y", "CONFIG_RPXXXX_HAVE_BOOTLOADER": "n",
                     "CONFIG_RP2040_HAVE_STAGE2": "y", "CONFIG_RP2040_FLASH_W25Q080": "y"})
    else:
        want.update({"CONFIG_LOW_LEVEL_OPTIONS": "y", "CONFIG_RPXXXX_HAVE_BOOTLOADER": "y",
                     "CONFIG_RP2040_HAVE_STAGE2": "n"})
    return want


def expected_files(preset_id: str) -> List[str]:
    family, target, _speed, bare = _split(preset_id)
    rp2040 = FAMILIES[family][0] == "rp2040"
    if target == "katapult":
        return ["katapult.bin", "deployer.bin"] + (["katapult.uf2"] if rp2040 else [])
    return ["klipper.uf2"] if rp2040 and bare else ["klipper.bin"]


def expected_app_address(preset_id: str) -> int:
    family, target, _speed, bare = _split(preset_id)
    base = 0x10000000 if FAMILIES[family][0] == "rp2040" else 0x08000000
    if target == "katapult":
        return base
    if bare:
        return base + (0x100 if base == 0x10000000 else 0)
    return base + (0x4000 if base == 0x10000000 else 0x2000)


def uf2_payload(data: bytes):
    """(first address, the bytes) of a UF2 file's 256-byte blocks, in address order."""
    blocks = sorted(struct.unpack_from("<I", data, n + 12)[0:1] + (data[n + 32:n + 288],)
                    for n in range(0, len(data) - 511, 512))
    return blocks[0][0], b"".join(chunk for _address, chunk in blocks)


def vector_table_problem(image: Path, start: int, size: int) -> Optional[str]:
    """Why the image's Cortex-M vector table does not point into [start, start+size).

    The table is at the start of the image, or after the RP2040's 256-byte
    boot stage 2 for an image that starts at the beginning of its flash.
    """
    data = image.read_bytes()
    if image.suffix == ".uf2":
        start, data = uf2_payload(data)
    offsets = [0, 0x100] if start & 0xffff == 0 and start >= 0x10000000 else [0]
    for offset in offsets:
        if len(data) < offset + 8:
            continue
        sp, reset = struct.unpack_from("<II", data, offset)
        if 0x20000000 <= sp <= 0x20100000 and reset & 1 \
                and start <= (reset & ~1) < start + size:
            return None
    sp, reset = struct.unpack_from("<II", data, 0)
    return (f"{image.name}: stack 0x{sp:08x}, reset 0x{reset:08x}: not a vector table for "
            f"0x{start:08x}..0x{start + size:08x}")
