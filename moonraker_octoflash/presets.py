"""The build presets shipped as data (``presets/*.json``), checked by JSON Schema."""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from .errors import NotFoundError
from .schemas import check

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


@dataclasses.dataclass(frozen=True)
class McuInfo:
    mcu: str
    name: str
    flash_size: int
    dfu_layout: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Preset:
    id: str
    title: str
    board: str
    target: str                      # "klipper" or "katapult"
    mcu: str                         # e.g. "stm32f446xx"
    app_address: int                 # where this image is linked
    description: str
    kconfig: Dict[str, str]
    flash_methods: Tuple[Dict[str, Any], ...]
    bootloader_app_start: Optional[int] = None   # Katapult presets: where applications start
    unconfirmed: Tuple[str, ...] = ()
    dfu_instructions: str = ""
    sources: Dict[str, str] = dataclasses.field(default_factory=dict)  # symbol -> where from
    klipper_configs: Tuple[str, ...] = ()   # Klipper config/*.cfg files this preset covers
    origin: str = "curated"                 # "curated", "klipper-config" or "mcu"

    def __post_init__(self) -> None:
        # Methods that serve a chip without being listed (the RP2040 boot ROM) add
        # themselves, after the listed ones: the registry is imported at first use.
        from .flash.methods import offered_methods
        extra = offered_methods(self)
        if extra:
            object.__setattr__(self, "flash_methods", tuple(self.flash_methods) + extra)

    @property
    def family(self) -> str:
        """The board family, the id without its variant (``btt-octopus``, ``btt-ebb-sb``)."""
        family = self.id
        for marker in ("-katapult", "-klipper", "-f4", "-h7"):
            family = family.split(marker)[0]
        return family

    def flash_method(self, name: str) -> Optional[Dict[str, Any]]:
        for m in self.flash_methods:
            if m["method"] == name:
                return m
        return None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "id": self.id, "title": self.title, "board": self.board,
            "target": self.target, "mcu": self.mcu,
            "app_address": f"0x{self.app_address:08x}",
            "description": self.description,
            "kconfig": dict(self.kconfig),
            "flash_methods": [dict(m) for m in self.flash_methods],
            "unconfirmed": list(self.unconfirmed),
            "origin": self.origin,
        }
        if self.sources:
            data["sources"] = dict(self.sources)
        if self.klipper_configs:
            data["klipper_configs"] = list(self.klipper_configs)
        if self.bootloader_app_start is not None:
            data["bootloader_app_start"] = f"0x{self.bootloader_app_start:08x}"
        mcu = mcu_info(self.mcu)
        if mcu is not None:
            data["flash_size"] = mcu.flash_size
        return data


def _load_file(path: str) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, McuInfo]]:
    """The file's presets as ``Preset`` arguments (made when first asked for), and its MCUs."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    check("preset", doc, os.path.basename(path))
    mcus = {k: McuInfo(mcu=k, name=v["name"], flash_size=v["flash_size"],
                       dfu_layout=v.get("dfu_layout"))
            for k, v in doc["mcus"].items()}
    instructions = doc.get("dfu_instructions", {})
    presets: Dict[str, Dict[str, Any]] = {}
    for p in doc["presets"]:
        # The most specific family wins: btt-octopus-f429 over btt-octopus,
        # btt-ebb-sb before btt-ebb.
        family = max((k for k in instructions if p["id"].startswith(k + "-")), key=len,
                     default=None)
        if not any(m["method"] == "dfu" for m in p["flash_methods"]):
            family = None
        presets[p["id"]] = dict(
            id=p["id"], title=p["title"], board=p["board"], target=p["target"],
            mcu=p["mcu"], app_address=int(p["app_address"], 16),
            description=p["description"], kconfig=dict(p["kconfig"]),
            flash_methods=tuple(p["flash_methods"]),
            bootloader_app_start=(int(p["bootloader_app_start"], 16)
                                  if "bootloader_app_start" in p else None),
            unconfirmed=tuple(p.get("unconfirmed", ())),
            dfu_instructions=instructions.get(family, "") if family else "",
            sources=dict(p.get("sources", {})),
            klipper_configs=tuple(p.get("klipper_configs", ())))
    return presets, mcus


@functools.cache
def _load_all() -> Tuple[Dict[str, Dict[str, Any]], Dict[str, McuInfo]]:
    presets: Dict[str, Dict[str, Any]] = {}
    mcus: Dict[str, McuInfo] = {}
    for path in sorted(glob.glob(os.path.join(PRESET_DIR, "*.json"))):
        p, m = _load_file(path)
        presets.update(p)
        mcus.update(m)
    return presets, mcus


# Each preset is made at its first use: a Moonraker with two profiles makes two,
# and asks the flash methods (``Preset.__post_init__``) about those two only.
_made: Dict[str, Preset] = {}


def _preset(preset_id: str) -> Preset:
    preset = _made.get(preset_id)
    if preset is None:
        preset = _made[preset_id] = Preset(**_load_all()[0][preset_id])
    return preset


def load_presets() -> Dict[str, Preset]:
    """All presets, by id, in file order."""
    return {preset_id: _preset(preset_id) for preset_id in _load_all()[0]}


def get_preset(preset_id: str) -> Preset:
    presets = _load_all()[0]
    if preset_id not in presets:
        raise NotFoundError(
            f"Unknown preset '{preset_id}'. Known presets: {', '.join(presets)}") from None
    return _preset(preset_id)


def mcu_info(mcu: str) -> Optional[McuInfo]:
    return _load_all()[1].get(mcu)


def list_presets() -> List[Preset]:
    return list(load_presets().values())
