"""The Moonraker-backed parts the core is handed: job history and Klipper's service."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import UnavailableError
from ..jobs import JobStorage
from ..service import KlipperService

if TYPE_CHECKING:
    from moonraker.server import Server

JOB_KEY_PREFIX = "job."


class MoonrakerJobStorage(JobStorage):
    """Job history in the ``octoflash`` namespace, one key per job."""

    def __init__(self, namespace: Any) -> None:
        self.ns = namespace

    async def load_all(self) -> List[Dict[str, Any]]:
        items = await self.ns.items()
        return [dict(v) for k, v in items if k.startswith(JOB_KEY_PREFIX) and isinstance(v, dict)]

    async def save(self, job: Dict[str, Any]) -> None:
        await self.ns.insert(JOB_KEY_PREFIX + job["job_id"], job)

    async def delete(self, job_id: str) -> None:
        try:
            await self.ns.delete(JOB_KEY_PREFIX + job_id)
        except Exception:
            pass


class MoonrakerKlipperService(KlipperService):
    """Stops and starts Klipper, and waits until Moonraker sees it go and come back.

    By default through Moonraker's machine component (systemd); a ``Machine``
    may hand its own ``control`` (how Klipper is stopped and started there).
    """

    name = "klipper (through Moonraker)"

    def __init__(self, server: Server, reconnect_timeout: float = 60.0,
                 control: Optional[KlipperService] = None) -> None:
        self.server = server
        self.reconnect_timeout = reconnect_timeout
        self.control = control
        if control is not None:
            self.name = control.name

    @property
    def _kconn(self) -> Any:
        return self.server.lookup_component("klippy_connection")

    def control_problem(self) -> Optional[str]:
        """Why Moonraker cannot stop Klipper here, or None."""
        if self.control is not None:
            return self.control.control_problem()
        machine = self.server.lookup_component("machine")
        provider = machine.get_provider_type()
        if provider == "none":
            return ("Moonraker cannot stop and start Klipper here ([machine] provider: none), "
                    "and flashing a board Klipper is using needs Klipper stopped. Set "
                    "'provider: systemd_dbus' (or systemd_cli) in [machine], or stop Klipper "
                    "yourself (sudo systemctl stop klipper) and flash again.")
        return None

    async def is_active(self) -> bool:
        return bool(self._kconn.is_connected())

    async def stop(self) -> None:
        problem = self.control_problem()
        if problem:
            raise UnavailableError(problem)
        if self.control is not None:
            await self.control.stop()
        else:
            machine = self.server.lookup_component("machine")
            try:
                await machine.do_service_action("stop", self._kconn.unit_name)
            except self.server.error as exc:
                raise UnavailableError(f"Moonraker could not stop Klipper: {exc}") from None
        await self._wait(lambda: not self._kconn.is_connected(), 15.0)

    async def start(self) -> None:
        if self.control is not None:
            await self.control.start()
        else:
            machine = self.server.lookup_component("machine")
            try:
                await machine.do_service_action("start", self._kconn.unit_name)
            except self.server.error as exc:
                raise UnavailableError(
                    f"Moonraker could not start Klipper again: {exc}. Start it with "
                    "'sudo systemctl start klipper'.") from None
        await self._wait(lambda: self._kconn.is_connected(), self.reconnect_timeout)

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            await asyncio.sleep(0.2)
        return condition()
