"""Klipper as octoflash sees it: one reader of its MCUs, config sections and print state.

The component and the update-manager entries both read Klipper through
this one object.  Its ``status`` holds the latest ``mcu`` / ``mcu NAME``,
``configfile`` (the MCU sections of ``settings`` and ``config``),
``webhooks`` and ``print_stats`` status; it is read when Klipper is ready,
and also while it is connected but not ready (startup, error): a board
Klipper cannot reach keeps it in startup, and that is when the others'
versions and the missing one's "not connected" matter most.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Protocol, Tuple

# discovery's readers are imported when Klipper is first read (after Moonraker's start).
if TYPE_CHECKING:
    from moonraker.server import Server

    from ..discovery.klipper import KlipperMcu

    from ..profiles import Profile

log = logging.getLogger("octoflash")

KLIPPER_QUERY_TIMEOUT = 5.0
# While Klipper is in startup (retrying a board it cannot reach, for up to
# 90 s) its MCUs are read this often: the reachable ones report on their own
# time, and the state ends without an event when Klipper gives up (error).
STARTUP_POLL_INTERVAL = 2.0


def klipper_socket_path(klippy: Any) -> Optional[str]:
    """Klipper's own API socket, as Moonraker's ``[server] klippy_uds_address`` names it
    (``klippy_connection.uds_address``); None when this Moonraker does not say."""
    path = getattr(klippy, "uds_address", None)
    return str(path) if path else None


class KlippyConnection(Protocol):
    """What octoflash reads of Moonraker's ``klippy_connection`` component."""

    klippy_info: Dict[str, Any]
    state: Any            # an enum: .name is startup, ready, error, shutdown, ...

    def is_connected(self) -> bool: ...

    def is_ready(self) -> bool: ...


class KlippyApis(Protocol):
    """What octoflash asks of Moonraker's ``klippy_apis`` component."""

    async def get_object_list(self, default: Any = ...) -> List[str]: ...

    async def query_objects(self, objects: Mapping[str, Any],
                            default: Any = ...) -> Dict[str, Any]: ...


class KlipperState:
    """Reads Klipper through Moonraker; sends ``octoflash:klipper_mcus`` on news."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.eventloop = server.get_event_loop()
        self.status: Dict[str, Any] = {}
        self.host_version: Optional[str] = None
        self._startup_watch: Optional[asyncio.Task] = None

    # Moonraker's own components, as every component reaches them (the
    # update-manager internals are in moonraker_internals.py).
    @property
    def klippy(self) -> KlippyConnection:
        connection: KlippyConnection = self.server.lookup_component("klippy_connection")
        return connection

    @property
    def klippy_apis(self) -> KlippyApis:
        apis: KlippyApis = self.server.lookup_component("klippy_apis")
        return apis

    def is_connected(self) -> bool:
        return bool(self.klippy.is_connected())

    def close(self) -> None:
        if self._startup_watch is not None:
            self._startup_watch.cancel()

    def on_started(self) -> None:
        # ready is handled by on_ready; error and shutdown end up here only
        if not self.klippy.is_ready():
            self.eventloop.create_task(self.refresh())

    def mcus(self) -> List[KlipperMcu]:
        from ..discovery.klipper import klipper_mcus
        return klipper_mcus(self.status)

    def state_name(self) -> str:
        """Moonraker's view of Klipper: startup, ready, error, shutdown, disconnected."""
        return str(getattr(self.klippy.state, "name", self.klippy.state)).lower()

    async def on_identified(self) -> None:
        # Klipper answered its first info request.  Moonraker tells nothing
        # more until Klipper leaves startup, which with an unreachable board
        # takes up to 90 s: read the MCUs meanwhile.
        if self._startup_watch is None or self._startup_watch.done():
            self._startup_watch = self.eventloop.create_task(self._watch_startup())

    async def _watch_startup(self) -> None:
        while True:
            await asyncio.sleep(STARTUP_POLL_INTERVAL)
            if not self.klippy.is_connected() or self.state_name() != "startup":
                return
            await self.refresh()

    async def on_ready(self) -> None:
        self.eventloop.create_task(self.refresh())

    async def on_disconnect(self) -> None:
        # What runs on the boards is unknown until Klipper reports again (a
        # flash happens now); which board is which ([mcu] sections) stays.
        self.status = {k: v for k, v in self.status.items()
                               if k == "configfile"}

    @staticmethod
    def _wanted(objects: List[str]) -> Dict[str, Any]:
        from ..discovery.klipper import is_mcu_section
        query: Dict[str, Any] = {name: None for name in objects if is_mcu_section(name)}
        # settings: typed, with defaults, but keyed in lower case;
        # config: the section names as printer.cfg writes them
        query["configfile"] = ["settings", "config"]
        query["webhooks"] = None
        query["print_stats"] = ["state", "filename"]
        return query

    @staticmethod
    def _mcu_sections_only(status: Dict[str, Any]) -> Dict[str, Any]:
        from ..discovery.klipper import is_mcu_section
        configfile = status.get("configfile") or {}
        status["configfile"] = {
            part: {k: v for k, v in (configfile.get(part) or {}).items() if is_mcu_section(k)}
            for part in ("settings", "config")}
        return status

    async def refresh(self) -> Dict[str, Any]:
        """Read the MCUs, their config sections and the host version from Klipper.

        Works in every state in which Klipper answers: in startup it lists
        its objects and reports ``{}`` for a board it has not reached yet.
        """
        if not self.klippy.is_connected():
            return self.status
        ready = self.klippy.is_ready()
        try:
            objects = await asyncio.wait_for(self.klippy_apis.get_object_list(default=[]),
                                             KLIPPER_QUERY_TIMEOUT)
            status = await asyncio.wait_for(
                self.klippy_apis.query_objects(self._wanted(objects), default={}),
                KLIPPER_QUERY_TIMEOUT)
        except (asyncio.TimeoutError, Exception) as exc:
            log.info("octoflash: could not read Klipper's MCUs: %s", exc)
            return self.status
        if status:
            self._mcu_sections_only(status)
            changed = status != self.status
            self.status = status
            info = self.klippy.klippy_info or {}
            self.host_version = info.get("software_version") or self.host_version
            if ready or changed:
                self.server.send_event("octoflash:klipper_mcus", dict(self.status))
        return self.status

    async def read(self) -> Dict[str, Any]:
        """Klipper's MCUs as they are now, for a flash's plan and its version check.

        Through Moonraker when it has Klipper (``refresh``); otherwise from
        Klipper's own socket, as a Klipper that was just started answers there
        up to 0.25 s before Moonraker connects to it again.  That read
        is returned and not kept: Moonraker's ready event refreshes ``status``
        as always.  With no Klipper answering, the last known ``status``.
        """
        if self.klippy.is_connected():
            return await self.refresh()
        path = klipper_socket_path(self.klippy)
        if not path:
            return self.status
        from ..klipper_socket import Connection, KlipperSocketError
        try:
            async with Connection(path, KLIPPER_QUERY_TIMEOUT) as klipper:
                objects = (await klipper.request("objects/list")).get("objects") or []
                result = await klipper.request("objects/query",
                                               {"objects": self._wanted(list(objects))})
        except KlipperSocketError:
            return self.status
        status = result.get("status")
        if not isinstance(status, dict) or not status:
            return self.status
        return self._mcu_sections_only(status)

    async def print_state(self) -> Tuple[str, str]:
        """(state, filename) of ``print_stats``, asked from Klipper when it is there
        (from its own socket while Moonraker is not connected to it)."""
        if not self.klippy.is_connected():
            return await self._print_state_from_socket()
        try:
            status = await asyncio.wait_for(
                self.klippy_apis.query_objects({"print_stats": ["state", "filename"]}, default={}),
                KLIPPER_QUERY_TIMEOUT)
            stats = status.get("print_stats") or {}
        except (asyncio.TimeoutError, Exception):
            stats = self.server.lookup_component("job_state").get_last_stats()
        return str(stats.get("state") or "unknown"), str(stats.get("filename") or "")

    async def _print_state_from_socket(self) -> Tuple[str, str]:
        path = klipper_socket_path(self.klippy)
        if not path:
            return "disconnected", ""
        from ..klipper_socket import KlipperSocketError, query
        try:
            status = await query(path, {"print_stats": ["state", "filename"]},
                                 KLIPPER_QUERY_TIMEOUT)
        except KlipperSocketError:
            return "disconnected", ""
        stats = status.get("print_stats") or {}
        return str(stats.get("state") or "unknown"), str(stats.get("filename") or "")

    def uses(self, profile: Profile) -> bool:
        """Is this profile's board one of Klipper's MCUs (so Klipper must stop to flash it)?"""
        if profile.klipper_mcu:
            return True
        return self.mcu_of(profile, self.mcus()) is not None

    @staticmethod
    def mcu_of(profile: Profile, mcus: List[KlipperMcu]) -> Optional[KlipperMcu]:
        """The MCU that is this profile's board: by its name (any case), else uuid or serial."""
        if profile.klipper_mcu:
            from ..discovery.klipper import find_mcu
            found = find_mcu(mcus, profile.klipper_mcu)
            if found is not None:
                return found
        from ..discovery.identity import normalize_uuid
        uuid = normalize_uuid(profile.canbus_uuid)
        for candidate in mcus:
            if uuid and candidate.canbus_uuid == uuid:
                return candidate
            if profile.serial and candidate.serial and \
                    os.path.basename(candidate.serial) == os.path.basename(profile.serial):
                return candidate
        return None
