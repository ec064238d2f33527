"""Modules imported off Moonraker's event loop.

A module's first import reads and runs its code: tens of milliseconds for
the builder or the flash pipeline, several times that on a Raspberry Pi.
The component's start-up task and the first flash import what they are about
to use in a worker thread first, so that Moonraker's loop goes on answering
meanwhile; the imports in their code then find the modules loaded.
"""
from __future__ import annotations

import asyncio
import importlib
import sys
from typing import Iterable, Sequence


def import_all(names: Iterable[str]) -> None:
    """Import every module of ``names`` (full dotted names)."""
    for name in names:
        importlib.import_module(name)


def _loaded(name: str) -> bool:
    """Imported to the end (a module another thread is still importing is in
    ``sys.modules`` already, with its spec marked as initializing)."""
    module = sys.modules.get(name)
    return module is not None and not getattr(getattr(module, "__spec__", None),
                                              "_initializing", False)


async def import_in_thread(names: Sequence[str]) -> None:
    """``import_all(names)`` in a worker thread; nothing to do once they are loaded."""
    if not all(_loaded(name) for name in names):
        await asyncio.to_thread(import_all, tuple(names))
