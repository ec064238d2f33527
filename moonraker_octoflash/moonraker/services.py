"""The Moonraker-backed parts the core is handed: job history and Klipper's service."""
from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import UnavailableError
from ..jobs import JobStorage
from ..service import KlipperService

if TYPE_CHECKING:
    from moonraker.server import Server

JOB_KEY_PREFIX = "job."
# Seconds between looks at Klipper's connection while a stop or start is awaited,
# besides the events that end the wait at once.
EVENT_RECHECK = 1.0


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


# Moonraker's events about Klipper, and how far each says Moonraker has got with it.
_VIEWS = {"server:klippy_disconnect": "disconnected", "server:klippy_identified": "identified",
          "server:klippy_started": "started", "server:klippy_ready": "ready"}


class MoonrakerKlipperService(KlipperService):
    """Stops and starts Klipper: a stop waits until Moonraker sees Klipper go, a start
    until Moonraker has Klipper back.  Klipper counts as running when Moonraker has
    it or it answers on its own socket (for up to 0.25 s after a start, only there).

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
        # Moonraker says when it loses Klipper and when it has it again: a wait
        # for either ends at that event instead of at the next poll.
        self._changed: Optional[asyncio.Event] = None
        # The last of these events: how far Moonraker has got with Klipper.
        self.moonraker_view = "disconnected"
        for event in _VIEWS:
            server.register_event_handler(event, functools.partial(self._on_klippy_event, event))

    async def _on_klippy_event(self, event: str, *args: Any) -> None:
        self.moonraker_view = _VIEWS[event]
        if self._changed is not None:
            self._changed.set()

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
        """Moonraker has Klipper, or Klipper answers on its socket: after a start,
        Moonraker connects again up to 0.25 s later, and meanwhile Klipper runs."""
        if self._kconn.is_connected():
            return True
        from ..klipper_socket import answers
        from .klipper_state import klipper_socket_path
        return await answers(klipper_socket_path(self._kconn))

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
        if not await self._wait(self._moonraker_has_klipper, self.reconnect_timeout):
            if self._kconn.is_connected():
                seen = "Moonraker is connected to it, but it has not finished starting"
            elif await self.is_active():
                seen = "it answers on its socket, but Moonraker has not connected to it"
            else:
                seen = "it is not running"
            raise UnavailableError(
                f"Moonraker did not have Klipper back within {self.reconnect_timeout:g} s of "
                f"starting it ({seen}; see klippy.log and moonraker.log)")

    def _moonraker_has_klipper(self) -> bool:
        """Has Moonraker got as far with Klipper as Klipper has got itself?  Its clients
        (Mainsail, macros calling octoflash, scripts) use Klipper through it, so a start
        ends here and not when Klipper first answers on its own socket, 0.25-0.5 s before.

        Moonraker asks a connected Klipper for its state 0.25 s after connecting
        (``klippy_identified``).  Once Klipper has left startup Moonraker says
        ``klippy_started``; for a Klipper that is ready it then registers the
        macros' remote methods and says ``klippy_ready``, while one in error or
        shutdown is as far as it gets at started.  A Klipper still in startup (a board
        it cannot reach yet) stays so for as long as it takes: then identified is as
        far as Moonraker goes, and the version check that follows waits for the board.
        """
        kconn = self._kconn
        if not kconn.is_connected():
            return False
        view = self.moonraker_view
        if view == "ready":
            return True
        if view == "started":
            return str(getattr(kconn.state, "name", kconn.state)).lower() != "ready"
        info = getattr(kconn, "klippy_info", None) or {}
        return view == "identified" and info.get("state") == "startup"

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Until ``condition()`` holds, woken by Moonraker's Klipper events (see
        ``__init__``); it is also looked at every ``EVENT_RECHECK`` seconds, should an
        event come from somewhere this does not listen to."""
        deadline = time.monotonic() + timeout
        if self._changed is None:
            self._changed = asyncio.Event()
        changed = self._changed
        while True:
            changed.clear()
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return condition()
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, EVENT_RECHECK))
            except asyncio.TimeoutError:
                pass
