"""A ``KlipperService`` for a simulated machine: stopping and starting is recorded
in the machine's folder, and a started Klipper claims the CAN nodes it runs on."""
from __future__ import annotations

import asyncio
from typing import List

from ..service import KlipperService
from .board import SimulatedMachine


class SimulatedKlipperService(KlipperService):
    name = "klipper (simulated)"

    def __init__(self, machine: SimulatedMachine, *, delay: float = 0.0) -> None:
        self.machine = machine
        self.delay = delay
        self.calls: List[str] = []

    async def stop(self) -> None:
        self.calls.append("stop")
        await asyncio.sleep(self.delay)
        await asyncio.to_thread(self.machine.set_klipper_running, False)

    async def start(self) -> None:
        self.calls.append("start")
        await asyncio.sleep(self.delay)
        await asyncio.to_thread(self.machine.set_klipper_running, True)

    async def is_active(self) -> bool:
        return await asyncio.to_thread(lambda: self.machine.klipper_running)
