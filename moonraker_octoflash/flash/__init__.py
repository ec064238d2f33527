"""Flashing: plans, checks before writing, the methods (``methods/``: DFU, Katapult, the
RP2040 boot ROM), the executor.

    plan = make_plan(profile, artifact, devices=snapshot, config=FlashConfig(...))
    result = await execute_plan(plan, FlashContext(service=..., discover=...))
"""
from .config import FlashConfig, PhaseTimeouts
from .executor import FlashContext, execute_plan, execute_plans
from .plan import FlashPlan, FlashStep, make_plan, order_for_flash
from .results import FlashResult

__all__ = ["FlashConfig", "PhaseTimeouts", "FlashContext", "execute_plan", "execute_plans",
           "FlashPlan", "FlashStep", "make_plan", "order_for_flash", "FlashResult"]
