"""The flash pipeline: discovery, the planner and the executor, wired for a job.

``jobs.JobRunner`` calls a ``FlashPipeline`` (``prepare`` = find the board
and plan, ``execute`` = carry the plan out); ``CoreFlashPipeline`` is the one
that drives the real modules, on the ``Machine`` it is given.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Optional, Set, Tuple

from ..errors import CheckFailed, FlashError, OctoflashError
from ..events import Progress
from ..imports import import_in_thread
from ..job_records import CURRENT_JOB_ID
from ..jobs import FlashPipeline

if TYPE_CHECKING:
    from ..machine import Machine
    from ..profiles import Profile

# The CAN uuids the scan of the flash running in this task looks for (``_scan_for``).
_CAN_EXPECT: contextvars.ContextVar[Tuple[str, ...]] = contextvars.ContextVar(
    "octoflash_can_expect", default=())


def with_address_from_klipper(profile: Profile, snapshot: Any) -> Profile:
    """The profile, with the board's CAN uuid or serial from Klipper's config when it names none.

    A profile may say only ``klipper_mcu: toolhead``; printer.cfg already
    tells how that board is reached, so the flash need not be refused for it.
    """
    if profile.canbus_uuid or profile.serial or not profile.klipper_mcu:
        return profile
    mcu = snapshot.klipper_mcu(profile.klipper_mcu) if snapshot is not None else None
    if mcu is None or not (mcu.canbus_uuid or mcu.serial):
        return profile
    if mcu.canbus_uuid:
        return dataclasses.replace(profile, canbus_uuid=mcu.canbus_uuid,
                                   canbus_interface=mcu.canbus_interface or "can0")
    return dataclasses.replace(profile, serial=mcu.serial)


# What a flash imports on first use (the package imports its parts lazily, so that
# listing presets stays cheap): imported in a worker thread before the first flash
# (imports.py) instead of on Moonraker's event loop, where it held the loop 30-100 ms.
_PARENT = __package__.rsplit(".", 1)[0]
FLASH_MODULES = tuple(
    [f"{__package__}.{name}" for name in (
        "plan", "executor", "checks", "katapult", "dfu", "writer_lock", "results",
        "methods.katapult", "methods.dfu", "methods.rp2040_boot")]
    + [f"{_PARENT}.discovery.{name}" for name in (
        "can", "klipper", "serial", "snapshot", "usb", "identity", "uevents")])


def can_watcher(scan_options: Callable[[], Dict[str, Any]],
                scan: Callable[[], Awaitable[Any]]) -> Callable[..., Awaitable[Optional[str]]]:
    """A ``FlashContext.watch_can`` on the bus ``scan_options()`` names (its ``can_bustype``):
    asks for the node every 20 ms (``discovery.can.watch_for_node``).  Where the bus cannot
    be opened from here, each call is one ``scan()`` instead, as the waits did before."""
    async def watch(uuid: str, interface: str, application: Optional[str],
                    timeout: float) -> Optional[str]:
        import threading

        from ..discovery.can import watch_for_node
        options = await asyncio.to_thread(scan_options)   # may read files
        stop = threading.Event()
        try:
            node = await asyncio.to_thread(
                watch_for_node, interface, uuid, timeout=timeout, application=application,
                bustype=str(options.get("can_bustype") or "socketcan"), stop=stop)
        except OSError:
            devices = await scan()
            found = devices.can_node(uuid, interface) if devices is not None else None
            if found is not None and (application is None or found.application == application):
                return str(found.application)
            await asyncio.sleep(0.1)     # the pace of the waits' scans (poll_delay)
            return None
        finally:
            stop.set()      # a cancelled wait ends the thread's loop too
        return node.application if node is not None else None
    return watch


def _claimed_by_klipper(status: Optional[Dict[str, Any]]) -> Set[str]:
    """The CAN uuids of the boards Klipper reports talking to (a version reported)."""
    if not status:
        return set()
    from ..discovery.klipper import klipper_mcus
    return {m.canbus_uuid for m in klipper_mcus(status) if m.connected and m.canbus_uuid}


class CoreFlashPipeline(FlashPipeline):
    """Wires discovery, the planner and the executor (flash engineer's modules).

    ``klipper_status`` returns Klipper's latest ``mcu``/``configfile`` status
    (the Moonraker adapter reads it through Moonraker; the command line has
    none); ``machine`` is where devices, tools and Klipper are found.
    """

    def __init__(self, settings: Any, service: Any, *,
                 klipper_status: Optional[Callable[[], Awaitable[Optional[Dict[str, Any]]]]] = None,
                 machine: Optional[Machine] = None,
                 writer_lock_path: Optional[str] = None,
                 writer_kind: str = "moonraker") -> None:
        self.settings = settings
        self.service = service
        self.klipper_status = klipper_status
        if machine is None:
            from ..machine import RealMachine
            machine = RealMachine(settings)
        self.machine: Machine = machine
        self.writer_lock_path = writer_lock_path
        self.writer_kind = writer_kind

    async def other_writer(self) -> Optional[str]:
        """Why a flash cannot start now because another process writes a board, or None."""
        if not self.writer_lock_path:
            return None
        from .writer_lock import busy_message, probe
        free, record = await probe(self.writer_lock_path)
        return None if free else busy_message(record)

    async def scan(self) -> Any:
        """A device snapshot.  Within a flash (``_scan_for``) the CAN query stops listening
        as soon as the profile's node has answered (``discovery.scan``'s ``can_expect``)."""
        from ..discovery import scan
        status = await self.klipper_status() if self.klipper_status is not None else None
        options = await asyncio.to_thread(self.machine.scan_options)   # may read files
        expect = _CAN_EXPECT.get()
        if expect:
            options = dict(options, can_expect=list(expect))
            if set(expect) <= _claimed_by_klipper(status):
                # Klipper talks to the node: it has a node id and keeps silent on the
                # query, and Klipper's own report says where the board is.  Listening
                # for it would only wait out the whole window.
                options["can_listen_time"] = 0.0
        return await scan(klipper_status=status, **options)

    async def watch_can(self, uuid: str, interface: str, application: Optional[str],
                        timeout: float) -> Optional[str]:
        """Until node ``uuid`` answers on ``interface`` (as ``application``), asking the bus
        again every 20 ms; the application it answered as, or None after ``timeout``."""
        watch = can_watcher(self.machine.scan_options, self.scan)
        token = _CAN_EXPECT.set((uuid,))     # for the fallback's scan
        try:
            return await watch(uuid, interface, application, timeout)
        finally:
            _CAN_EXPECT.reset(token)

    def _scan_for(self, profile: Any) -> Callable[[], Awaitable[Any]]:
        """The scan a flash of ``profile`` plans from and waits on: ``scan`` told (through a
        context variable, so other scans at the same time are untouched) which CAN uuid
        it looks for."""
        from ..discovery.identity import normalize_uuid
        uuid = normalize_uuid(getattr(profile, "canbus_uuid", None))
        expect = (uuid,) if uuid else ()

        async def discover() -> Any:
            token = _CAN_EXPECT.set(expect)
            try:
                return await self.scan()
            finally:
                _CAN_EXPECT.reset(token)
        return discover

    def flash_config(self) -> Any:
        from .config import FlashConfig
        config = FlashConfig.from_settings(self.settings) if self.settings is not None \
            else FlashConfig()
        tools = self.machine.tool_paths()
        if tools or self.machine.by_id_dir:
            config = config.with_tools(tools, self.machine.by_id_dir)
        return config

    async def prepare(self, profile: Profile, artifact: Any,
                      options: Dict[str, Any]) -> Any:
        await import_in_thread(FLASH_MODULES)
        from .plan import make_plan
        # the configuration (settings, tool paths: files) is read while the scan runs
        snapshot, config = await asyncio.gather(self._scan_for(profile)(),
                                                asyncio.to_thread(self.flash_config))
        profile = with_address_from_klipper(profile, snapshot)
        return make_plan(profile, artifact, method=options.get("method"), devices=snapshot,
                         config=config)

    async def execute(self, plan: Any, on_progress: Callable[[Progress], None]) -> Dict[str, Any]:
        """Run the plan; a refusal raises CheckFailed, a failure FlashError (with the result)."""
        from . import results as flash_results
        from .executor import FlashContext, execute_plan

        async def klipper_status() -> Dict[str, Any]:
            if self.klipper_status is None:
                return {}
            return dict(await self.klipper_status() or {})

        lock = None
        if self.writer_lock_path:
            from .writer_lock import WriterLock
            lock = WriterLock(self.writer_lock_path, kind=self.writer_kind,
                              job_id=CURRENT_JOB_ID.get(), profiles=[plan.profile_name])
        ctx = FlashContext(service=self.service, on_progress=on_progress,
                           discover=self._scan_for(plan.profile), watch_can=self.watch_can,
                           device_events=self.machine.device_events,
                           klipper_status=klipper_status if self.klipper_status else None,
                           writer_lock=lock)
        try:
            result = await execute_plan(plan, ctx)
        except asyncio.CancelledError as exc:
            if ctx.result is not None:
                exc.details = ctx.result.to_json()   # type: ignore[attr-defined]
            raise
        data = result.to_json()
        if result.state == flash_results.DONE:
            return data
        error: OctoflashError
        if result.state == flash_results.REFUSED:
            error = CheckFailed(result.message, hint=result.hint)
        else:
            error = FlashError(result.message or f"flash {result.state}",
                               recovery=result.recovery, hint=result.hint)
        setattr(error, "details", data)   # noqa: B010  (read by the runner)
        raise error
