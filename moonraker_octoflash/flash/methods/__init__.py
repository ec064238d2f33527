"""The flash methods: one module each, registered here by name.

A method says how a board is written: its name and label, the USB devices
and profile connections it serves, its steps (with their human-readable
names), the checks it makes before writing, how it runs its steps (writes,
waits for the board), and how to recover a board it left half-written.
Everything that lists methods asks this registry: the JSON Schemas' enums
(``schemas.load_schema``), the command line's ``--method`` choices, the
Moonraker component's request schemas, ``docs/flashing.md``'s table and the
page's labels (``GET /server/octoflash/presets`` → ``flash_methods``).

Adding a method is one module in this folder (a subclass of
``FlashMethod`` with a module-level ``METHOD``) and its name in ``MODULES``.
The modules are imported on the first question, so the schemas, the
discovery and the planner may ask without import cycles.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from .base import FlashMethod, PlanPart

# Registration: the modules of this folder, in the order methods are listed.
MODULES: Tuple[str, ...] = ("dfu", "katapult", "rp2040_boot")
# The modules whose method offers itself to presets that do not list it
# (``FlashMethod.offer``), by the architecture of the preset's chip
# (``mcus.McuFacts.arch``).  Making a preset asks (and imports) only these;
# tests/test_flash_methods.py checks that no other method offers.
OFFERING: Dict[str, Tuple[str, ...]] = {"rp2040": ("rp2040_boot",)}

_REGISTRY: Dict[str, FlashMethod] = {}


def _load() -> Dict[str, FlashMethod]:
    if not _REGISTRY:
        loaded: Dict[str, FlashMethod] = {}
        for module in MODULES:
            method: FlashMethod = importlib.import_module(f"{__name__}.{module}").METHOD
            if method.name in loaded:
                raise RuntimeError(f"flash method {method.name!r} is registered twice")
            loaded[method.name] = method
        _REGISTRY.update(loaded)
    return _REGISTRY


def all_methods() -> List[FlashMethod]:
    return list(_load().values())


def method_names() -> List[str]:
    """Every method's name, as the schemas, the CLI and the API accept it."""
    return list(_load())


def get_method(name: str) -> FlashMethod:
    try:
        return _load()[name]
    except KeyError:
        raise KeyError(f"unknown flash method {name!r}; known: {', '.join(_load())}") from None


def find_method(name: Optional[str]) -> Optional[FlashMethod]:
    return _load().get(name or "")


def labels() -> Dict[str, str]:
    return {m.name: m.label for m in all_methods()}


def usb_kinds() -> Dict[Tuple[int, int], str]:
    """USB ids of the boot loaders the methods write through, by device kind."""
    kinds: Dict[Tuple[int, int], str] = {}
    for m in all_methods():
        kinds.update(m.usb_ids)
    return kinds


def device_labels() -> Dict[str, str]:
    found: Dict[str, str] = {}
    for m in all_methods():
        found.update(m.device_labels)
    return found


def step_names() -> Dict[str, str]:
    """Every method's step kinds with their human-readable names."""
    names: Dict[str, str] = {}
    for m in all_methods():
        names.update(m.step_names)
    return names


def write_kinds() -> frozenset:
    """Step kinds (and progress stages) during which a board's flash is written."""
    kinds: set = set()
    for m in all_methods():
        kinds |= set(m.write_kinds)
    return frozenset(kinds)


def offered_methods(preset: object) -> Tuple[Mapping[str, object], ...]:
    """Entries the methods offer a preset on their own (e.g. the RP2040 boot ROM)."""
    from ...errors import ValidationError
    from ...mcus import find_mcu
    try:
        modules = OFFERING.get(find_mcu(str(getattr(preset, "mcu", ""))).arch, ())
    except ValidationError:
        return ()
    listed = {m.get("method") for m in getattr(preset, "flash_methods", ())}
    offered = []
    for module in modules:
        m: FlashMethod = importlib.import_module(f"{__name__}.{module}").METHOD
        if m.name in listed:
            continue
        entry = m.offer(preset)
        if entry is not None:
            offered.append(entry)
    return tuple(offered)


def to_json() -> List[Dict[str, object]]:
    """What the page and the API show of each method."""
    return [m.describe() for m in all_methods()]


def __getattr__(name: str) -> Any:
    """``FlashMethod`` and ``PlanPart`` from ``base``, imported when first asked for."""
    if name in ("FlashMethod", "PlanPart"):
        from . import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FlashMethod", "PlanPart", "MODULES", "all_methods", "method_names", "get_method",
           "find_method", "labels", "usb_kinds", "device_labels", "step_names", "write_kinds",
           "offered_methods", "to_json"]
