"""Profiles that start from an MCU instead of a preset.

A profile may name its processor (``mcu: stm32g0b1``) and give the Kconfig
symbols of its board itself.  From the MCU's facts and those symbols a
preset-like object is made here (``Preset`` with ``origin="mcu"``): the
processor symbols, where the image is linked and how it can be written.
Everything downstream (builds, checks, flashing, update entries) then sees
a profile exactly as if it named a curated preset.

Before that, the symbols are checked for the menu entries a build cannot do
without: the bootloader offset, the clock (STM32), the communication
interface, and for CAN the bus speed and pins.  Each missing one is named
with an example, so "a USB-CAN bridge without its CAN pins" is refused when
the profile is read instead of producing firmware that never talks.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ValidationError
from .presets import Preset

TARGETS = ("klipper", "katapult")


@dataclasses.dataclass(frozen=True)
class RomLoader:
    """The loader in the chip's mask ROM: always there, it cannot be damaged, so it is the
    way back for a board whose flash (Katapult included) is broken."""
    name: str            # "the STM32's ROM DFU loader"
    short: str           # "the STM32's ROM loader"
    via: str             # "over DFU": how a write through it is said
    usb_id: str          # what it shows as on USB: "0483:df11"
    usb_kind: str        # the discovery kind of that device: "dfu", "rp2040_boot"
    method: str          # the flash method that writes through it: "dfu", "rp2040_boot"
    mode: str            # what the board is said to be in: "DFU mode", "BOOTSEL mode"
    enter: str           # how a user gets the board there


STM32_DFU = RomLoader(
    "the STM32's ROM DFU loader", "the STM32's ROM loader", "over DFU", "0483:df11", "dfu", "dfu", "DFU mode",
    "fit the BOOT0 jumper (or hold BOOT) and press reset; the board shows as 0483:df11")


def _bootsel(chip: str, usb_id: str, kind: str) -> RomLoader:
    return RomLoader(
        f"the {chip}'s boot ROM (BOOTSEL)", f"the {chip}'s boot ROM", "through the boot ROM",
        usb_id, kind, "rp2040_boot", "BOOTSEL mode",
        "hold the BOOT button, press and release RESET (or plug in USB), then release BOOT; "
        f"the board shows as {usb_id}")


@dataclasses.dataclass(frozen=True)
class McuFacts:
    key: str             # what a profile writes: "stm32g0b1", "rp2040"
    mcu: str             # Kconfig's CONFIG_MCU: "stm32g0b1xx"
    name: str            # "STM32G0B1"
    arch: str            # "stm32" or "rp2040"
    model_symbol: str    # "CONFIG_MACH_STM32G0B1"
    flash_base: int
    flash_size: int      # Klipper's CONFIG_FLASH_SIZE for the chip
    rom: RomLoader = STM32_DFU   # the loader in its mask ROM


def _stm32(key: str, mcu: str, flash_size: int) -> McuFacts:
    name = key.upper()
    return McuFacts(key, mcu, name, "stm32", f"CONFIG_MACH_{name}", 0x08000000, flash_size)


# CONFIG_MCU names and flash sizes as Klipper's src/stm32/Kconfig and
# src/rp2040/Kconfig give them.
MCUS: Dict[str, McuFacts] = {f.key: f for f in (
    _stm32("stm32f072", "stm32f072xb", 0x20000),
    _stm32("stm32f103", "stm32f103xe", 0x10000),
    _stm32("stm32f401", "stm32f401xc", 0x40000),
    _stm32("stm32f405", "stm32f405xx", 0x80000),
    _stm32("stm32f407", "stm32f407xx", 0x80000),
    _stm32("stm32f429", "stm32f429xx", 0x80000),
    _stm32("stm32f446", "stm32f446xx", 0x80000),
    _stm32("stm32g0b1", "stm32g0b1xx", 0x20000),
    _stm32("stm32g474", "stm32g474xx", 0x40000),
    _stm32("stm32h723", "stm32h723xx", 0x40000),
    _stm32("stm32h743", "stm32h743xx", 0x200000),
    McuFacts("rp2040", "rp2040", "RP2040", "rp2040", "CONFIG_MACH_RP2040", 0x10000000, 0x200000,
             _bootsel("RP2040", "2e8a:0003", "rp2040_boot")),
    McuFacts("rp2350", "rp2350", "RP2350", "rp2040", "CONFIG_MACH_RP2350", 0x10000000, 0x200000,
             _bootsel("RP2350", "2e8a:000f", "rp2350_boot")),
)}

ARCH_SYMBOL = {"stm32": "CONFIG_MACH_STM32", "rp2040": "CONFIG_MACH_RPXXXX"}

# Patterns of symbol names (compiled by ``re`` at their first use, not at import).
_STM32_OFFSET_RE = r"CONFIG_STM32_FLASH_START_([0-9A-F]+)"
_STM32_APP_RE = r"CONFIG_STM32_APP_START_([0-9A-F]+)"
_RP_OFFSET_RE = r"CONFIG_RPXXXX_FLASH_START_([0-9A-F]+)"
_STM32_CLOCK_RE = r"CONFIG_STM32_CLOCK_REF_[0-9A-Z]+"
_STM32_IFACE_RE = (
    r"CONFIG_STM32_(USB_PA11_PA12(_REMAP)?|USB_PA25_PA26|SERIAL_[A-Z0-9_]+|CANBUS_PA11_P[AB][0-9]+(_REMAP)?"
    r"|MMENU_CANBUS_[A-Z0-9_]+|USBCANBUS_[A-Z0-9_]+|USB_PB14_PB15)")
_STM32_BRIDGE_PINS_RE = r"CONFIG_STM32_CMENU_CANBUS_[A-Z0-9_]+"
_RP_IFACE_RE = r"CONFIG_RPXXXX_(USB|SERIAL_UART[01]_PINS_[0-9_]+|CANBUS|USBCANBUS)"


def find_mcu(name: str) -> McuFacts:
    """The facts for ``name`` (``stm32g0b1``, ``STM32G0B1`` or Kconfig's ``stm32g0b1xx``)."""
    wanted = name.strip().lower()
    for facts in MCUS.values():
        if wanted in (facts.key, facts.mcu):
            return facts
    raise ValidationError(
        f"Unknown MCU {name!r}; known MCUs: {', '.join(MCUS)}",
        hint="Name the processor as Klipper's menu shows it (stm32g0b1, rp2040, ...), "
             "or start from a preset (octoflash presets).")


def flash_base(mcu: str) -> Optional[int]:
    """Where ``mcu``'s flash starts (its facts: 0x08000000 on the STM32, 0x10000000 on the
    RP2040), or None for an MCU octoflash has no facts for."""
    try:
        return find_mcu(mcu).flash_base
    except ValidationError:
        return None


def rom_loader(mcu: Optional[str]) -> Optional[RomLoader]:
    """The ROM loader of ``mcu`` (DFU on the STM32, BOOTSEL on the RP2040/RP2350), or None
    for an MCU octoflash has no facts for."""
    if not mcu:
        return None
    try:
        return find_mcu(mcu).rom
    except ValidationError:
        return None


def _chosen(symbols: Mapping[str, str], pattern: str) -> List[str]:
    return [k for k, v in symbols.items() if re.fullmatch(pattern, k) and v.strip() == "y"]


def missing_choices(facts: McuFacts, target: str, symbols: Mapping[str, str]) -> List[str]:
    """What a build for this MCU cannot do without, each with an example."""
    missing: List[str] = []
    can = False
    if facts.arch == "stm32":
        offset = "deployment application (CONFIG_STM32_FLASH_START_…" if target == "katapult" \
            else "bootloader offset (CONFIG_STM32_FLASH_START_…"
        if not _chosen(symbols, _STM32_OFFSET_RE):
            missing.append(f"the {offset}, e.g. CONFIG_STM32_FLASH_START_2000=y for 8 KiB, "
                           "CONFIG_STM32_FLASH_START_0000=y for none)")
        if not _chosen(symbols, _STM32_CLOCK_RE):
            missing.append("the crystal (CONFIG_STM32_CLOCK_REF_…, e.g. CONFIG_STM32_CLOCK_REF_8M=y)")
        iface = _chosen(symbols, _STM32_IFACE_RE)
        if not iface:
            missing.append("the communication interface (e.g. CONFIG_STM32_USB_PA11_PA12=y, "
                           "CONFIG_STM32_MMENU_CANBUS_PB0_PB1=y, CONFIG_STM32_USBCANBUS_PA11_PA12=y)")
        bridge = any("USBCANBUS" in k for k in iface)
        can = bridge or any("CANBUS" in k for k in iface)
        if bridge and not _chosen(symbols, _STM32_BRIDGE_PINS_RE):
            missing.append("the CAN pins of the USB-CAN bridge (CONFIG_STM32_CMENU_CANBUS_…, "
                           "e.g. CONFIG_STM32_CMENU_CANBUS_PD0_PD1=y; Klipper would otherwise "
                           "use PB8/PB9)")
        if target == "katapult" and not _chosen(symbols, _STM32_APP_RE):
            missing.append("where Katapult starts applications (CONFIG_STM32_APP_START_…, "
                           "e.g. CONFIG_STM32_APP_START_2000=y for 8 KiB)")
    else:
        if not _chosen(symbols, _RP_OFFSET_RE):
            what = "deployment application" if target == "katapult" else "bootloader offset"
            missing.append(f"the {what} (CONFIG_RPXXXX_FLASH_START_4000=y for a 16 KiB "
                           "Katapult, CONFIG_RPXXXX_FLASH_START_0100=y for none)")
        iface = _chosen(symbols, _RP_IFACE_RE)
        if not iface:
            missing.append("the communication interface (e.g. CONFIG_RPXXXX_USB=y, "
                           "CONFIG_RPXXXX_CANBUS=y)")
        can = any("CANBUS" in k for k in iface)
        if can:
            for pin in ("RX", "TX"):
                if f"CONFIG_RPXXXX_CANBUS_GPIO_{pin}" not in symbols:
                    missing.append(f"the CAN {pin} pin (CONFIG_RPXXXX_CANBUS_GPIO_{pin}, "
                                   f"e.g. {4 if pin == 'RX' else 5})")
    if can and "CONFIG_CANBUS_FREQUENCY" not in symbols:
        missing.append("the CAN bus speed (CONFIG_CANBUS_FREQUENCY, e.g. 1000000 or 500000: "
                       "the speed of the bus the board is on)")
    return missing


def _offset(symbols: Mapping[str, str], pattern: str) -> Optional[int]:
    chosen = _chosen(symbols, pattern)
    if len(chosen) != 1:
        return None
    m = re.fullmatch(pattern, chosen[0])
    return int(m.group(1), 16) if m else None


def _methods(facts: McuFacts, target: str, app: int, deployer: bool
             ) -> Tuple[Dict[str, Any], ...]:
    base = facts.flash_base
    methods: List[Dict[str, Any]] = []
    if target == "katapult":
        if facts.arch == "stm32":
            methods.append({"method": "dfu", "address": f"0x{base:08x}", "mass_erase": True,
                            "leave": True, "note": "Erases the whole chip, then writes Katapult."})
        if deployer:
            methods.append({"method": "katapult", "file": "deployer.bin",
                            "note": "Replaces an existing Katapult by writing deployer.bin through it."})
        return tuple(methods)
    behind_bootloader = app > base + 0x100
    if behind_bootloader:
        methods.append({"method": "katapult", "note": "flashtool.py through Katapult."})
    if facts.arch == "stm32":
        methods.append({"method": "dfu", "address": f"0x{app:08x}", "leave": True,
                        "note": ("Keeps the bootloader: only the application area is erased."
                                 if behind_bootloader else
                                 "Overwrites the start of flash, so any bootloader there is lost.")})
    return tuple(methods)


def preset_for_mcu(mcu: str, target: str, symbols: Mapping[str, str], where: str) -> Preset:
    """A preset-like object for a profile that starts from ``mcu``.

    ``symbols`` are the profile's own Kconfig lines; the processor symbols
    are added here.  Raises ValidationError naming every missing choice.
    """
    facts = find_mcu(mcu)
    if target not in TARGETS:
        raise ValidationError(f"{where}: target must be klipper or katapult, not {target!r}")
    arch_symbol = ARCH_SYMBOL[facts.arch]
    for symbol, value in symbols.items():
        if symbol.startswith("CONFIG_MACH_") and value.strip() == "y" \
                and symbol not in (arch_symbol, facts.model_symbol):
            raise ValidationError(
                f"{where}: {symbol}=y chooses another processor than the profile's mcu "
                f"({facts.key}); remove it or change mcu")
    missing = missing_choices(facts, target, symbols)
    if missing:
        raise ValidationError(
            f"{where}: a profile for {facts.name} ({target}) must say "
            + "; ".join(missing),
            hint="Add these kconfig lines (the values your board's documentation gives), "
                 "or start from a preset instead (octoflash presets).")
    kconfig: Dict[str, str] = {}
    if target == "klipper":
        kconfig["CONFIG_LOW_LEVEL_OPTIONS"] = "y"
    kconfig[arch_symbol] = "y"
    kconfig[facts.model_symbol] = "y"
    offset_re = _STM32_OFFSET_RE if facts.arch == "stm32" else _RP_OFFSET_RE
    offset = _offset(symbols, offset_re)
    if offset is None:
        raise ValidationError(f"{where}: choose exactly one bootloader offset "
                              f"({offset_re.replace('([0-9A-F]+)', '…')}=y)")
    bootloader_app_start: Optional[int] = None
    deployer = False
    if target == "katapult":
        app = facts.flash_base
        if facts.arch == "stm32":
            start = _offset(symbols, _STM32_APP_RE)
            if start is None:
                raise ValidationError(f"{where}: choose exactly one CONFIG_STM32_APP_START_…=y")
            bootloader_app_start = facts.flash_base + start
        else:
            bootloader_app_start = facts.flash_base + 0x4000   # Katapult on the RP2040 is 16 KiB
        deployer = offset not in (0, 0x100)
    else:
        app = facts.flash_base + offset
    what = "Katapult" if target == "katapult" else "Klipper"
    return Preset(
        id=f"mcu-{facts.key}", title=f"{what} for an {facts.name} board (from its MCU)",
        board=f"{facts.name} board", target=target, mcu=facts.mcu, app_address=app,
        description=f"{what} for {facts.name}, configured by the profile's own Kconfig symbols.",
        kconfig=kconfig, flash_methods=_methods(facts, target, app, deployer),
        bootloader_app_start=bootloader_app_start, origin="mcu")


def known_mcus() -> Sequence[str]:
    return list(MCUS)
