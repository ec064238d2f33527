"""Presets read from the compile instructions in a Klipper checkout's config/*.cfg.

Most of Klipper's board configs start with a comment saying how to build
the firmware, e.g. 'the firmware should be compiled for the STM32G0B1 with
a "8KiB bootloader" "8 MHz crystal" and "USB (on PA11/PA12)" or "CAN bus
(on PB0/PB1)"'.  Each such header becomes one preset per interface it
names, marked with the file it came from.  Only what can be read with
certainty is offered: a header that names several processors, an MCU
octoflash cannot build for, an interface or bootloader it cannot map to a
Kconfig symbol, or no bootloader or interface at all gives no preset, and
the file is counted as skipped with the reason.  Curated presets win: a
header of a file a curated preset covers (its ``klipper_configs``) is not
offered again.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ValidationError
from .mcus import MCUS, McuFacts, preset_for_mcu
from .presets import Preset, list_presets

HEADER_LINES_MAX = 60          # a header is the comment block at the top of the file
DEFAULT_CAN_SPEED = "1000000"  # Klipper's default CONFIG_CANBUS_FREQUENCY


@dataclasses.dataclass(frozen=True)
class HeaderFacts:
    """What one header says, before it becomes presets."""
    file: str
    board: str
    mcu: str                       # the McuFacts key, e.g. "stm32g0b1"
    bootloader: int                # offset in bytes; 0 = no bootloader
    crystal: Optional[str]         # "8M", "25M", "INTERNAL" or None when not said
    interfaces: Tuple[str, ...]    # "usb:PA11/PA12", "can:PB0/PB1", "serial:USART1"


@dataclasses.dataclass
class KlipperConfigPresets:
    """The result of reading a checkout: presets, and what was skipped and why."""
    presets: List[Preset]
    files_read: int
    skipped: Dict[str, str]        # file -> reason
    covered: List[str]             # files whose boards a curated preset covers

    def to_json(self) -> Dict[str, Any]:
        return {"presets": [as_json(p) for p in self.presets], "files_read": self.files_read,
                "files_skipped": len(self.skipped), "skipped": dict(self.skipped),
                "covered_by_curated": list(self.covered)}


def as_json(preset: Preset) -> Dict[str, Any]:
    """A header preset's JSON, with the profile that builds it (``mcu`` and ``kconfig``)."""
    data = preset.to_json()
    key = next(f.key for f in MCUS.values() if f.mcu == preset.mcu)
    own = {k: v for k, v in preset.kconfig.items()
           if not k.startswith("CONFIG_MACH_") and k != "CONFIG_LOW_LEVEL_OPTIONS"}
    data["profile"] = {"mcu": key, "target": preset.target, "kconfig": own}
    return data


class Uncertain(Exception):
    """The header cannot be read with certainty; the message says why."""


def header_paragraphs(text: str) -> List[str]:
    """The comment block at the top of a config file, one line of text per paragraph."""
    paragraphs: List[List[str]] = [[]]
    for raw in text.splitlines()[:HEADER_LINES_MAX]:
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body:
            paragraphs[-1].append(body)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [re.sub(r"\s+", " ", " ".join(p)).strip() for p in paragraphs if p]


def header_text(text: str) -> str:
    """The comment block at the top of a config file, as one line of text."""
    return " ".join(header_paragraphs(text))


_INSTRUCTION_RE = re.compile(r'compiled for (?:the |an? )?((?:[^".]|"[^"]*"|\.\d)*)', re.I)
_MCU_RE = re.compile(r"(?:ST |AVR |Atmel )?([A-Za-z0-9]+)")
_ANOTHER_MCU_RE = re.compile(r"\s*(?:,|or|/)\s*(?:an? |the )?(?:STM32|RP2|AT|LPC|SAM|GD32)", re.I)
_BOOTLOADER_RE = re.compile(r"(\d+)\s*KiB(?: bootloader)?(?: with| \+)? 512 byte offset"
                            r"|(\d+)\s*KiB bootloader|\bno bootloader", re.I)
_CRYSTAL_RE = re.compile(r"(\d+)\s*MHz crystal|internal clock", re.I)
_USB_PINS_RE = re.compile(r"\bUSB \(on (P[A-Z]\d+)/(P[A-Z]\d+)\)", re.I)
_USB_PLAIN_RE = re.compile(r"\bUSB (?:for )?communication", re.I)
_CAN_RE = re.compile(r"\bCAN ?bus \(on (P[A-Z]\d+)/(P[A-Z]\d+)\)", re.I)
_SERIAL_RE = re.compile(r"\bserial \(on (USART\d) (P[A-Z]\d+)/(P[A-Z]\d+)\)", re.I)
_BOARD_RE = re.compile(r"(?:pin mappings|configuration|config) for (?:the |an? )?(.+?)"
                       r"(?:\.(?:\s|$)| board\b|,| To use\b|$)", re.I)

# Interfaces Klipper's STM32 menu offers by name (src/stm32/Kconfig).
_STM32_SERIAL = {"USART1": ("PA10", "PA9"), "USART2": ("PA3", "PA2"), "USART3": ("PB11", "PB10")}
_STM32_CAN_MAIN = {"PA11/PA12": "CONFIG_STM32_CANBUS_PA11_PA12",
                   "PA11/PB9": "CONFIG_STM32_CANBUS_PA11_PB9"}
_STM32_CAN_MMENU = ("PB8/PB9", "PI9/PH13", "PB5/PB6", "PB12/PB13", "PD0/PD1", "PB0/PB1",
                    "PD12/PD13", "PC2/PC3")


def read_header(file_name: str, text: str) -> HeaderFacts:
    """The facts of one header; Uncertain when they cannot be read with certainty."""
    header = header_text(text)
    found = _INSTRUCTION_RE.findall(header)
    if not found:
        raise Uncertain("no compile instructions in its header")
    if len(found) > 1:
        raise Uncertain("its header gives more than one set of compile instructions")
    sentence = found[0]
    m = _MCU_RE.match(sentence)
    if not m:
        raise Uncertain("no processor named")
    token = m.group(1).lower()
    if _ANOTHER_MCU_RE.match(sentence[m.end():]):
        raise Uncertain("the header names more than one processor")
    facts = MCUS.get(token)
    if facts is None:
        raise Uncertain(f"processor {m.group(1)} is not one octoflash builds for")
    rest = sentence[m.end():]
    first = header_paragraphs(text)[0]
    return HeaderFacts(file=file_name, board=_board(first, file_name), mcu=facts.key,
                       bootloader=_bootloader(rest), crystal=_crystal(rest, facts),
                       interfaces=_interfaces(rest, facts))


def _board(header: str, file_name: str) -> str:
    m = _BOARD_RE.search(header)
    if m and 3 <= len(m.group(1)) <= 80:
        return m.group(1).strip()
    return os.path.splitext(file_name)[0]


def _bootloader(rest: str) -> int:
    offsets = set()
    for m in _BOOTLOADER_RE.finditer(rest):
        if m.group(1):
            offsets.add(int(m.group(1)) * 1024 + 512)
        elif m.group(2):
            offsets.add(int(m.group(2)) * 1024)
        else:
            offsets.add(0)
    if not offsets:
        raise Uncertain("the bootloader offset is not given")
    if len(offsets) > 1:
        raise Uncertain("more than one bootloader offset is given")
    return offsets.pop()


def _crystal(rest: str, facts: McuFacts) -> Optional[str]:
    found = set()
    for m in _CRYSTAL_RE.finditer(rest):
        found.add(f"{m.group(1)}M" if m.group(1) else "INTERNAL")
    if len(found) > 1:
        raise Uncertain("more than one clock reference is given")
    if found and facts.arch != "stm32":
        raise Uncertain("a crystal is given for a processor without that choice")
    return found.pop() if found else None


def _interfaces(rest: str, facts: McuFacts) -> Tuple[str, ...]:
    found: List[str] = []
    text = rest
    for m in _USB_PINS_RE.finditer(rest):
        found.append(f"usb:{m.group(1).upper()}/{m.group(2).upper()}")
    text = _USB_PINS_RE.sub(" ", text)
    if _USB_PLAIN_RE.search(text):
        found.append("usb:")
        text = _USB_PLAIN_RE.sub(" ", text)
    for m in _CAN_RE.finditer(text):
        found.append(f"can:{m.group(1).upper()}/{m.group(2).upper()}")
    text = _CAN_RE.sub(" ", text)
    for m in _SERIAL_RE.finditer(text):
        usart, rx, tx = m.group(1).upper(), m.group(2).upper(), m.group(3).upper()
        if _STM32_SERIAL.get(usart) != (rx, tx):
            raise Uncertain(f"serial on {usart} {rx}/{tx} is not an entry of Klipper's menu")
        found.append(f"serial:{usart}")
    text = _SERIAL_RE.sub(" ", text)
    if re.search(r"\b(USB|CAN|serial|UART)\b", text, re.I):
        raise Uncertain("an interface is named in a form that cannot be mapped to Kconfig")
    if not found:
        raise Uncertain("no communication interface is given")
    for iface in found:
        _interface_symbols(iface, facts)      # refuses the ones without a symbol
    return tuple(dict.fromkeys(found))


def _interface_symbols(iface: str, facts: McuFacts) -> Dict[str, str]:
    kind, _, pins = iface.partition(":")
    if facts.arch == "rp2040":
        if kind == "usb" and pins == "":
            return {"CONFIG_RPXXXX_USB": "y"}
        raise Uncertain(f"the interface {iface} has no RP2040 menu entry octoflash knows")
    if kind == "usb" and pins in ("", "PA11/PA12"):
        return {"CONFIG_STM32_USB_PA11_PA12": "y"}
    if kind == "serial":
        return {f"CONFIG_STM32_SERIAL_{pins}": "y"}
    if kind == "can" and pins in _STM32_CAN_MAIN:
        return {_STM32_CAN_MAIN[pins]: "y", "CONFIG_CANBUS_FREQUENCY": DEFAULT_CAN_SPEED}
    if kind == "can" and pins in _STM32_CAN_MMENU:
        symbol = "CONFIG_STM32_MMENU_CANBUS_" + pins.replace("/", "_")
        return {symbol: "y", "CONFIG_CANBUS_FREQUENCY": DEFAULT_CAN_SPEED}
    raise Uncertain(f"the interface {iface.replace(':', ' on ')} has no menu entry octoflash knows")


def _slug(file_name: str) -> str:
    stem = os.path.splitext(os.path.basename(file_name))[0].lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", stem)).strip("-")


_LABELS = {"usb": "USB", "can": "CAN", "serial": "serial"}


def presets_from_header(facts: HeaderFacts) -> List[Preset]:
    """One Klipper preset per interface the header names."""
    mcu = MCUS[facts.mcu]
    out: List[Preset] = []
    for iface in facts.interfaces:
        kind, _, pins = iface.partition(":")
        symbols: Dict[str, str] = {}
        sources: Dict[str, str] = {}
        unconfirmed: List[str] = []
        where = f"Klipper config/{facts.file} header"
        if mcu.arch == "stm32":
            offset = f"{facts.bootloader:X}" if facts.bootloader else "0000"
            symbols[f"CONFIG_STM32_FLASH_START_{offset}"] = "y"
            sources[f"CONFIG_STM32_FLASH_START_{offset}"] = where
            clock = facts.crystal or "8M"
            symbols[f"CONFIG_STM32_CLOCK_REF_{clock}"] = "y"
            sources[f"CONFIG_STM32_CLOCK_REF_{clock}"] = where if facts.crystal else (
                "not in the header: Klipper's default (8 MHz) when the clock prompt is hidden")
            if not facts.crystal:
                unconfirmed.append(f"CONFIG_STM32_CLOCK_REF_{clock}")
        else:
            offset = "4000" if facts.bootloader == 0x4000 else "0100" if facts.bootloader == 0 else ""
            if not offset:
                raise Uncertain(f"the RP2040 has no {facts.bootloader // 1024}KiB bootloader entry")
            symbols[f"CONFIG_RPXXXX_FLASH_START_{offset}"] = "y"
            sources[f"CONFIG_RPXXXX_FLASH_START_{offset}"] = where
        for symbol, value in _interface_symbols(iface, mcu).items():
            symbols[symbol] = value
            if symbol == "CONFIG_CANBUS_FREQUENCY":
                sources[symbol] = ("not in the header: Klipper's default; every node on the bus "
                                   "must use the bus's speed")
                unconfirmed.append(symbol)
            else:
                sources[symbol] = where
        suffix = f"-{kind}" if len(facts.interfaces) > 1 else ""
        pid = ("klipper-" + _slug(facts.file))[:64 - len(suffix)].rstrip("-") + suffix
        label = _LABELS[kind] + (f" on {pins}" if pins and kind != "serial" else
                                 f" on {pins}" if pins else "")
        base = preset_for_mcu(mcu.key, "klipper", symbols, f"config/{facts.file}")
        kconfig = dict(base.kconfig)
        kconfig.update(symbols)
        sources.update({k: f"the header names the {mcu.name}" for k in base.kconfig
                        if k.startswith("CONFIG_MACH_")})
        sources.setdefault("CONFIG_LOW_LEVEL_OPTIONS",
                           "Klipper src/Kconfig: the clock and CAN prompts exist only with it")
        boot = (f"behind a {facts.bootloader // 1024} KiB bootloader" if facts.bootloader
                else "with no bootloader")
        out.append(dataclasses.replace(
            base, id=pid, title=f"{facts.board}: Klipper over {label} (from Klipper's config)",
            board=facts.board,
            description=(f"Klipper for the {facts.board} ({mcu.name}) over {label}, {boot}, "
                         f"as the header of Klipper's config/{facts.file} describes it."
                         + (" Unconfirmed: " + ", ".join(unconfirmed) + "." if unconfirmed else "")),
            kconfig=kconfig, sources=sources, unconfirmed=tuple(unconfirmed),
            klipper_configs=(facts.file,), origin="klipper-config"))
    return out


def read_checkout(klipper_path: str, curated: Optional[Sequence[Preset]] = None
                  ) -> KlipperConfigPresets:
    """Presets from every ``config/*.cfg`` header of a Klipper checkout (blocking)."""
    folder = os.path.join(os.path.expanduser(klipper_path), "config")
    if not os.path.isdir(folder):
        raise ValidationError(f"No Klipper config folder at {folder}",
                              hint="Point klipper_path (--klipper-path) at a Klipper checkout.")
    curated = list_presets() if curated is None else curated
    covered_by: Dict[str, str] = {}
    taken = {p.id for p in curated}
    for p in curated:
        for name in p.klipper_configs:
            covered_by.setdefault(name, p.id)
    result = KlipperConfigPresets([], 0, {}, [])
    for path in sorted(glob.glob(os.path.join(folder, "*.cfg"))):
        name = os.path.basename(path)
        result.files_read += 1
        if name in covered_by:
            result.covered.append(name)
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(16384)
            presets = presets_from_header(read_header(name, text))
        except Uncertain as exc:
            result.skipped[name] = str(exc)
            continue
        except ValidationError as exc:
            result.skipped[name] = f"its instructions are incomplete: {exc}"
            continue
        for p in presets:
            if p.id not in taken:
                taken.add(p.id)
                result.presets.append(p)
    return result


def summary(result: KlipperConfigPresets) -> Mapping[str, int]:
    return {"files_read": result.files_read, "presets": len(result.presets),
            "files_skipped": len(result.skipped), "covered_by_curated": len(result.covered)}


def checkout_report(klipper_path: str) -> Dict[str, Any]:
    """``read_checkout`` as JSON for the API; a missing checkout is an ``error`` field."""
    try:
        return read_checkout(klipper_path).to_json()
    except ValidationError as exc:
        return {"presets": [], "files_read": 0, "files_skipped": 0, "skipped": {},
                "covered_by_curated": [], "error": str(exc)}
