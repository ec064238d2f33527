"""Flashing: plans, checks before writing, the methods (``methods/``: DFU, Katapult, the
RP2040 boot ROM), the executor.

    plan = make_plan(profile, artifact, devices=snapshot, config=FlashConfig(...))
    result = await execute_plan(plan, FlashContext(service=..., discover=...))

The names below are imported from their modules on first use, so that
importing one part (``flash.methods`` for the schemas' enums) does not
import the executor and every flasher.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"FlashConfig": "config", "PhaseTimeouts": "config",
          "FlashContext": "executor", "execute_plan": "executor", "execute_plans": "executor",
          "FlashPlan": "plan", "FlashStep": "plan", "make_plan": "plan",
          "order_for_flash": "plan", "FlashResult": "results"}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
