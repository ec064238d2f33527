"""The simulated machine behind the ``Machine`` seam (demo and tests).

Named in ``[octoflash]`` as ``machine: moonraker_octoflash.sim.machine:open_machine
FOLDER``; the product builds it through ``machine.load_machine`` and never
imports this package itself.
"""
from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any, Dict, Optional

from ..errors import UnavailableError
from ..service import KlipperService
from .board import SimulatedMachine
from .klipper_service import SimulatedKlipperService

CONTROL_SOCKET = "klippy-control.sock"


class SimulatedKlipperControl(KlipperService):
    """Stops and starts the simulated Klipper.

    When a Klipper stand-in runs for this machine (its control socket exists
    in the machine's folder) it is asked to stop and start, and Moonraker
    sees it go and come back; otherwise only the machine's "Klipper runs"
    flag changes (the command-line tests, without a stand-in).
    """

    name = "simulated klipper"

    def __init__(self, machine: SimulatedMachine) -> None:
        self.machine = machine
        self.socket = os.path.join(machine.directory, CONTROL_SOCKET)
        self.flag = SimulatedKlipperService(machine)

    def _standin(self) -> bool:
        return os.path.exists(self.socket)

    async def _control(self, action: str) -> None:
        # The stand-in's module is large: imported in a thread, not on Moonraker's loop
        # (the first stop of a flash held it for 30-120 ms).
        klippy = await asyncio.to_thread(importlib.import_module, f"{__package__}.klippy")
        CommandError, control_request = klippy.CommandError, klippy.control_request
        try:
            await control_request(self.socket, action)
        except (OSError, CommandError, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"simulated Klipper: cannot {action}: {exc}") from None

    async def stop(self) -> None:
        if self._standin():
            await self._control("stop")
        else:
            await self.flag.stop()

    async def start(self) -> None:
        if self._standin():
            await self._control("start")
        else:
            await self.flag.start()

    async def is_active(self) -> bool:
        return await self.flag.is_active()


class SimulatedMachineSeam:
    """A ``machine.Machine`` over a ``SimulatedMachine`` folder."""

    name = "simulated machine"

    def __init__(self, folder: str, settings: Any = None) -> None:
        self.machine = SimulatedMachine(folder)
        self.settings = settings
        self.by_id_dir: Optional[str] = self.machine.by_id_dir
        self._nodes: Any = None

    def scan_options(self, listen_time: Optional[float] = None) -> Dict[str, Any]:
        return self.machine.scan_options(listen_time=0.2 if listen_time is None else listen_time)

    def tool_paths(self) -> Dict[str, str]:
        return self.machine.tool_paths()

    def cross_compiler(self, mcu: str) -> Optional[str]:
        return None          # the simulated trees compile with a stand-in

    def klipper_control(self) -> Optional[KlipperService]:
        return SimulatedKlipperControl(self.machine)

    def device_events(self) -> Any:
        """The simulated boards' re-enumerations (``sim/uevents.py``)."""
        from .uevents import SimulatedDeviceEvents
        return SimulatedDeviceEvents(self.machine)

    async def open(self) -> None:
        # python-can's virtual bus reaches only this process: the simulated
        # CAN nodes answer from inside it while octoflash works.
        if self._nodes is None:
            self._nodes = await asyncio.to_thread(self.machine.can_nodes)

    async def close(self) -> None:
        if self._nodes is not None:
            nodes, self._nodes = self._nodes, None
            await asyncio.to_thread(nodes.stop)


def open_machine(folder: str, settings: Any = None) -> SimulatedMachineSeam:
    """The factory named by ``machine: moonraker_octoflash.sim.machine:open_machine FOLDER``."""
    if not folder:
        raise UnavailableError("the simulated machine needs its folder: "
                               "machine: moonraker_octoflash.sim.machine:open_machine FOLDER")
    return SimulatedMachineSeam(os.path.abspath(os.path.expanduser(folder)), settings)


def machine_option(folder: str) -> str:
    """The ``[octoflash] machine`` option that names the simulated machine in ``folder``."""
    return f"moonraker_octoflash.sim.machine:open_machine {folder}"
