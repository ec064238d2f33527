"""Running a flash plan: checks, Klipper stopped, the write, the board back, Klipper started.

Klipper is started again on every exit path once a stop was attempted —
success, refusal, failure, timeout and cancellation (a hung tool is killed
by ``run_tool`` when its task is cancelled).  Klipper that is not running is
not stopped (and not started afterwards).  With ``FlashContext.writer_lock``
the whole run, from before Klipper is stopped until it was started again,
holds the machine-wide writer lock (``writer_lock.py``): a second writer in
another process is refused before anything is touched.  The result says what happened
and, when the board's flash was touched and the board did not come back,
how to recover it: DFU mode, then the Katapult preset.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Set

from ..artifacts import CONFIG_NAME, read_data_dictionary_file
from ..discovery.klipper import find_mcu, klipper_mcus
from ..discovery.serial import parse_by_id_name
from ..discovery.snapshot import DeviceSnapshot, profile_is_usb_can_bridge
from ..errors import FlashError, OctoflashError
from ..events import Progress, ProgressCallback, null_progress
from ..kconfig import parse_config
from ..service import KlipperService, NullService
from ..tools import TOOL_SECONDS, ToolTimeout
from . import results as R
from .checks import CheckRefused, run_checks
from .methods import get_method
from .plan import KATAPULT_DEVICE, FlashPlan, FlashStep, order_for_flash, transport_text
from .results import FlashResult, StepRecord, WriteFailed
from .writer_lock import WriterBusy, WriterLock

if TYPE_CHECKING:
    from ..discovery.uevents import DeviceEvents

Discover = Callable[[], Awaitable[DeviceSnapshot]]
# What a stop_klipper step record says, by what the stop did.
_STOP_RECORD = {"stopped": ("done", "Klipper stopped"),
                "not_running": ("skipped", "not needed: Klipper was not running"),
                "left_stopped": ("skipped", "not needed: Klipper was left stopped by an "
                                            "interrupted flash; it is started when this one ends")}
KlipperStatus = Callable[[], Awaitable[Mapping[str, Any]]]
WatchCan = Callable[[str, str, Optional[str], float], Awaitable[Optional[str]]]
# Opens a listener for the machine's device announcements (``discovery.uevents``), or
# gives None where there are none to hear.
DeviceEventsSource = Callable[[], Optional["DeviceEvents"]]


@dataclasses.dataclass
class FlashContext:
    """What a flash needs from whoever runs it (CLI, Moonraker component, tests).

    ``discover``: a fresh ``DeviceSnapshot`` (with Klipper's MCUs when the
    caller has them); used for the checks and to wait for devices.  Without
    it the flash relies on the tools and the by-id folder alone.
    ``klipper_status``: Klipper's ``mcu``/``mcu NAME`` objects, to compare
    ``mcu_version`` with the artifact once Klipper is back.
    """
    service: KlipperService = dataclasses.field(default_factory=NullService)
    on_progress: ProgressCallback = null_progress
    discover: Optional[Discover] = None
    klipper_status: Optional[KlipperStatus] = None
    result: Optional[FlashResult] = None           # the current/last result, also on cancel
    results: List[FlashResult] = dataclasses.field(default_factory=list)
    writer_lock: Optional[WriterLock] = None       # one writer per machine (CLI and component)
    # ``watch_can(uuid, interface, application, timeout)``: the application node ``uuid``
    # answered as, asking the bus again every few ms until it does, or None after
    # ``timeout``; a wait for a rebooting CAN node then ends as soon as the node is back.
    # Without it such a wait probes with ``discover``.
    watch_can: Optional[WatchCan] = None
    # ``device_events()``: the machine's announcements of devices that come and go; a
    # wait for a USB device then probes again as soon as one is announced, and still at
    # ``poll_delay`` without one.  Without it, a wait probes at ``poll_delay`` alone.
    device_events: Optional[DeviceEventsSource] = None


class _Restart:
    """Stops Klipper once (when it runs) and starts it again whatever happens.

    ``outcome`` says what the stop step did: ``stopped``, ``not_running``
    (no stop needed, and Klipper is not started afterwards) or
    ``left_stopped`` (an interrupted flash had stopped it: it is started
    when this run ends).
    """

    def __init__(self, ctx: FlashContext, emit: Callable[..., None]) -> None:
        self.ctx = ctx
        self.emit = emit
        self.attempted = False
        self.restarted: Optional[bool] = None
        self.error: Optional[str] = None
        self.outcome: Optional[str] = None
        self.left_by: Optional[str] = None

    async def _running(self, timeout: float) -> bool:
        try:
            return bool(await asyncio.wait_for(self.ctx.service.is_active(), timeout))
        except asyncio.TimeoutError:
            return True     # cannot tell: stop it to be safe
        except OctoflashError:
            return True

    async def take_over(self, previous: Mapping[str, Any], timeout: float) -> None:
        """A writer that died (killed, power cut) had stopped Klipper: start it when we end."""
        if not previous.get("klipper_stopped") or await self._running(timeout):
            return
        self.attempted = True
        self.outcome = "left_stopped"
        who = previous.get("job_id") or f"{previous.get('kind') or 'a process'} " \
                                         f"pid {previous.get('pid')}"
        self.left_by = str(who)
        await self._note(True)
        self.emit("stop_klipper", f"Klipper was left stopped by an interrupted flash ({who}); "
                                  "it is started again when this flash ends")

    async def ensure_stopped(self, timeout: float) -> str:
        """Stop Klipper if it runs; the outcome says what was done."""
        if self.outcome is not None:
            return self.outcome
        if not await self._running(timeout):
            self.outcome = "not_running"
            self.emit("stop_klipper", "Klipper is not running: no need to stop it")
            return self.outcome
        await self.stop(timeout)
        self.outcome = "stopped"
        return self.outcome

    @property
    def klipper_stopped(self) -> bool:
        return self.outcome in ("stopped", "left_stopped")

    async def _note(self, stopped: bool) -> None:
        lock = self.ctx.writer_lock
        if lock is not None and lock.held:
            await lock.update(klipper_stopped=stopped)

    async def stop(self, timeout: float) -> None:
        self.attempted = True
        await self._note(True)
        self.emit("stop_klipper", f"Stopping Klipper ({self.ctx.service.describe()})")
        try:
            await asyncio.wait_for(self.ctx.service.stop(), timeout)
        except asyncio.TimeoutError:
            raise WriteFailed(f"Klipper did not stop within {timeout:g} s") from None
        except Exception:
            # A stop that was refused (no permission) leaves Klipper running:
            # then there is nothing to start again afterwards.
            try:
                if await asyncio.wait_for(self.ctx.service.is_active(), timeout):
                    self.attempted = False
                    await self._note(False)
            except Exception:
                pass
            raise

    async def start(self, timeout: float) -> None:
        """Start Klipper; a second cancellation waits for the start to finish first."""
        if not self.attempted or self.restarted is not None:
            return
        self.emit("start_klipper", f"Starting Klipper ({self.ctx.service.describe()})")
        task = asyncio.ensure_future(asyncio.wait_for(self.ctx.service.start(), timeout))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    break
                cancelled = True
            except BaseException:
                break
        try:
            task.result()
            self.restarted = True
            await self._note(False)
        except BaseException as exc:   # report it; the flash result must still be returned
            self.restarted = False
            self.error = f"Klipper could not be started again: {exc or type(exc).__name__}"
        if cancelled:
            raise asyncio.CancelledError()


class _PlanRun:
    def __init__(self, plan: FlashPlan, ctx: FlashContext, result: FlashResult) -> None:
        self.plan = plan
        self.ctx = ctx
        self.result = result
        self.config = plan.config
        self.katapult_device: Optional[str] = None
        self.katapult_ports_before: Set[str] = set()
        self.write_started = False
        self.in_bootloader = False
        self.bootloader_requested = False
        self.status_block_size = 64
        self.state: Dict[str, Any] = {}     # a method's own notes between its steps
        self.devices: Optional[DeviceSnapshot] = None   # the last scan this run used
        self.no_device_events = False     # they could not be listened to: not tried again

    # --- events ----------------------------------------------------------------------
    def emit(self, stage: str, message: str, percent: Optional[float] = None,
             kind: str = "step") -> None:
        self.ctx.on_progress(Progress(stage, message, percent, kind))

    def on_tool_progress(self, event: Progress) -> None:
        if event.kind == "output":
            self.result.log.append(event.message)
        self.ctx.on_progress(event)

    async def snapshot(self) -> Optional[DeviceSnapshot]:
        if self.ctx.discover is None:
            return None
        self.devices = await self.ctx.discover()
        return self.devices

    def plan_devices(self) -> Optional[DeviceSnapshot]:
        """The plan's own scan while it is young enough to stand for the board now.

        A job plans and checks within a fraction of a second, with nothing
        in between that changes a board (no stop, no request): scanning
        again would only repeat the plan's CAN window.  What the checks
        compare (the MCU Klipper or the USB device reports, the board's
        state) is the plan's basis too; what a board does after them (it
        is swapped, rebooted) is checked where it matters, against the
        board itself right before the first block: Katapult's MCU type and
        application start (``katapult_status``), the DFU device's layout
        (``wait_dfu``).  An older plan (``plan_scan_reuse`` seconds: a
        command line that waited for its "y") gets a fresh scan.
        """
        devices = self.plan.devices
        if devices is None or self.ctx.discover is None:
            return None
        age = time.time() - devices.taken_at
        if not 0 <= age <= self.config.plan_scan_reuse:
            return None
        return devices

    def recent_devices(self) -> Optional[DeviceSnapshot]:
        """The last scan this run used, while it is at most ``plan_scan_reuse`` s old."""
        devices = self.devices
        if devices is None or not 0 <= time.time() - devices.taken_at <= \
                self.config.plan_scan_reuse:
            return None
        return devices

    # --- the run -----------------------------------------------------------------------
    async def checks(self) -> None:
        self.emit("check", f"Checking '{self.plan.profile_name}': the image and the board "
                           "before writing")
        devices = self.plan_devices()
        if devices is not None:
            self.devices = devices
            self.emit("check", f"the board as the plan's scan saw it "
                               f"{time.time() - devices.taken_at:.1f} s ago", kind="output")
        else:
            devices = await self.snapshot()
        for check in await run_checks(self.plan, devices):
            self.emit("check", check.message, kind="output")

    async def steps(self, restart: Optional[_Restart]) -> None:
        transport = self.plan.transport
        how = get_method(self.plan.method).transports_short.get(transport) or \
            transport_text(transport)
        self.emit("flash", f"Flashing '{self.plan.profile_name}' ({how})")
        for index, step in enumerate(self.plan.steps):
            record = self.result.steps[index]
            if step.kind in ("start_klipper", "check_version"):
                continue
            if step.kind == "stop_klipper":
                if restart is None:
                    record.status, record.message = "skipped", "not needed"
                    continue
                shared = restart.outcome is not None
                await self._timed(record, restart.ensure_stopped(step.timeout or 60.0))
                self.result.klipper_stopped = restart.klipper_stopped
                record.status, record.message = _STOP_RECORD[restart.outcome or "stopped"]
                if shared and restart.outcome == "stopped":
                    record.message = "Klipper was stopped once for every board of this run"
                elif restart.outcome == "left_stopped":
                    record.message += f" ({restart.left_by})"
                continue
            await self._timed(record, self._run_step(step, record))

    async def _note_step(self, kind: str) -> None:
        """Keep the writer lock's record telling how to recover if this process dies now."""
        lock = self.ctx.writer_lock
        if lock is None or not lock.held:
            return
        method = get_method(self.plan.method)
        if kind in ("wait_return", "start_klipper", "check_version") and self.write_started:
            recovery: Optional[str] = (
                "The write had finished. If the board does not run the new firmware, "
                "power-cycle it; if it still does not come back: "
                + (recovery_text(self.plan, write_started=True, in_bootloader=False) or ""))
        else:
            recovery = recovery_text(
                self.plan, write_started=self.write_started or kind in method.write_kinds,
                in_bootloader=self.in_bootloader or kind in method.bootloader_kinds)
        await lock.update(stage=kind, profile=self.plan.profile_name, recovery=recovery)

    async def _timed(self, record: StepRecord, work: Awaitable[Any]) -> None:
        record.status, record.started = "running", time.time()
        self.emit(record.kind, record.title)
        spent: List[float] = []
        token = TOOL_SECONDS.set(spent)
        try:
            try:
                await self._note_step(record.kind)
            except BaseException:
                if asyncio.iscoroutine(work):
                    work.close()       # never started
                raise
            await work
        except asyncio.CancelledError:
            record.status = "cancelled"
            raise
        except BaseException as exc:
            record.status, record.message = "failed", str(exc).split("\n")[0]
            raise
        finally:
            TOOL_SECONDS.reset(token)
            record.duration = time.time() - record.started
            record.tool_seconds = round(sum(spent), 4) if spent else None
        if record.status == "running":
            record.status = "done"

    def argv(self, step: FlashStep) -> List[str]:
        assert step.argv is not None
        if KATAPULT_DEVICE in step.argv:
            if not self.katapult_device:
                raise WriteFailed("The Katapult serial port is not known yet")
            return [self.katapult_device if a == KATAPULT_DEVICE else a for a in step.argv]
        return list(step.argv)

    async def _run_step(self, step: FlashStep, record: StepRecord) -> None:
        if step.kind == "wait_return":
            await self._wait_return(step, float(step.timeout or 60.0))
            return
        await get_method(self.plan.method).run_step(self, step, record)

    # --- waiting for devices -----------------------------------------------------------
    async def poll(self, what: str, timeout: float, probe: Callable[[], Awaitable[Any]],
                   *, rest: bool = True) -> Any:
        """``probe()`` until it finds something or ``timeout`` passes.  ``rest``: pause
        between probes (``poll_delay``), ended early by a device announcement
        (``FlashContext.device_events``); a probe that itself waits for its event (a CAN
        watch) needs none."""
        start = time.monotonic()
        deadline = start + timeout
        # Listening starts before the first probe: a device announced while a probe
        # runs ends the pause after it at once.
        events = self._listen() if rest else None
        try:
            while True:
                found = await probe()
                if found:
                    return found
                now = time.monotonic()
                if now >= deadline:
                    return None
                if rest:
                    pause = min(self.config.poll_delay(now - start), deadline - now)
                    if events is not None:
                        await events.wait(pause)
                    else:
                        await asyncio.sleep(pause)
        finally:
            if events is not None:
                events.close()

    def _listen(self) -> Optional[DeviceEvents]:
        """The machine's device announcements for one wait, or None (none to hear, or
        they cannot be opened: the wait then probes at its interval, as it always may)."""
        if self.ctx.device_events is None or self.no_device_events:
            return None
        try:
            return self.ctx.device_events()
        except OSError as exc:
            self.no_device_events = True    # said once; the other waits do not try
            self.emit("wait", f"Cannot listen for the kernel's device events ({exc}); "
                              "looking for the board at the usual interval", kind="output")
            return None

    async def _wait_return(self, step: FlashStep, timeout: float) -> None:
        params = await self._expected_return(step)
        record = self.result.steps[self.plan.steps.index(step)]
        record.message = f"waiting for {_awaited_text(params)}"
        expect = params.get("expect")
        if self.ctx.discover is None:
            path = params.get("path")
            if expect == "serial" and path:
                found = await self.poll("serial", timeout,
                                         lambda: asyncio.to_thread(os.path.exists, path))
                self.result.board_back = bool(found)
                self.result.board_detail = path if found else None
            else:
                record.message = "not checked: this run has no USB/CAN discovery to see it"
            return

        watch = self.ctx.watch_can
        if expect == "can" and watch is not None and params.get("uuid"):
            uuid, interface = str(params["uuid"]), str(params.get("interface") or "can0")
            start = time.monotonic()

            async def answered() -> Optional[str]:
                left = timeout - (time.monotonic() - start)
                app = await watch(uuid, interface, "Klipper", max(0.05, min(left, 1.0)))
                return f"node {uuid} answers on {interface} as Klipper" if app else None
            detail = await self.poll("return", timeout, answered, rest=False)
            self.result.board_back = bool(detail)
            self.result.board_detail = detail
            if detail:
                record.message = f"back: {detail}"
                self.emit("wait_return", f"Board is back: {detail}", kind="output")
            return

        seen: List[DeviceSnapshot] = []
        # A USB-CAN bridge enumerates before the host brings its interface up:
        # give the interface a moment before saying it is not up.
        bridge_seen: List[float] = []

        async def probe() -> Optional[str]:
            devices = await self.snapshot()
            if devices is None:
                return None
            seen[:] = [devices]
            found = _returned(devices, params) or \
                get_method(self.plan.method).returned(devices, params)
            if found and found.endswith(" not up") and expect == "canbridge-usb":
                bridge_seen.append(time.monotonic())
                if bridge_seen[-1] - bridge_seen[0] < INTERFACE_UP_GRACE:
                    return None
            return found
        detail = await self.poll("return", timeout, probe)
        self.result.board_back = bool(detail)
        self.result.board_detail = detail
        if detail:
            record.message = f"back: {detail}"
            self.emit("wait_return", f"Board is back: {detail}", kind="output")
            if expect == "canbridge-usb":
                self._bridge_notes(params, seen[0])

    async def _expected_return(self, step: FlashStep) -> Dict[str, Any]:
        """What the board will look like with the firmware just written.

        The plan waits for the device the profile names; but a Klipper build
        that makes the board a USB-CAN bridge comes back as a gs_usb adapter
        (1d50:606f) with a CAN interface and no serial port, and a build that
        is no bridge comes back as a USB serial port.  The resolved config of
        the build says which (``CONFIG_USBCANBUS``).
        """
        params: Dict[str, Any] = dict(step.params)
        expect = params.get("expect")
        if self.plan.profile.target != "klipper" or expect not in ("serial", "canbridge"):
            return params
        bridge = await asyncio.to_thread(builds_usb_can_bridge, self.plan)
        chip = self._chip_serial()
        interface = self.plan.profile.canbus_interface or "can0"
        if expect == "serial" and bridge:
            return {"expect": "canbridge-usb", "chip_serial": chip, "interface": interface,
                    "path": params.get("path")}
        if expect == "canbridge" and not bridge and chip:
            return {"expect": "klipper-usb", "chip_serial": chip}
        return params

    def _chip_serial(self) -> Optional[str]:
        """The board's chip id (its USB serial number), from whatever named it."""
        wait = self.plan.step("wait_katapult_usb")
        for path in (self.plan.profile.serial, self.katapult_device):
            if path:
                _kind, _mcu, chip = parse_by_id_name(os.path.basename(str(path)))
                if chip:
                    return chip
        return wait.params.get("chip_serial") if wait is not None else None

    def _bridge_notes(self, params: Mapping[str, Any], devices: DeviceSnapshot) -> None:
        """A board reached by serial: that now runs as a USB-CAN bridge."""
        bridge = devices.usb_by_serial("canbridge", params.get("chip_serial"))
        uuid = bridge.canbus_uuid if bridge is not None else None
        interface = params.get("interface") or "can0"
        if not self.plan.profile.canbus_uuid:
            self.result.warnings.append(
                f"'{self.plan.profile_name}' now runs as a USB-CAN bridge: it has no serial "
                f"port any more. Set canbus_uuid: {uuid or '(see octoflash scan)'} in the "
                "profile and in printer.cfg's [mcu] section (instead of serial:), so that "
                "Klipper and the next flash find it.")
        if not devices.can_interface_up(interface):
            self.result.warnings.append(
                f"{interface} is not up yet; Klipper needs it. Check the host's CAN interface "
                f"set-up (e.g. /etc/network/interfaces.d/{interface}).")


def builds_usb_can_bridge(plan: FlashPlan) -> bool:
    """Blocking: does the build make the board a USB-CAN bridge?

    The build's resolved config (``CONFIG_USBCANBUS``) is the truth; without
    one (a record made by hand), the data dictionary in klipper.bin
    (``CANBUS_BRIDGE``), then the profile's symbols.
    """
    art = plan.artifact
    try:
        with open(art.path(CONFIG_NAME), encoding="utf-8") as f:
            symbols = parse_config(f.read())
    except OSError:
        symbols = None
    if symbols is not None and symbols.get("CONFIG_MCU", "n") != "n":   # a resolved config
        return symbols.get("CONFIG_USBCANBUS") == "y" or any(
            k.startswith("CONFIG_STM32_USBCANBUS") and v == "y" for k, v in symbols.items())
    if art.target == "klipper":
        try:
            info = read_data_dictionary_file(art.path())
        except OSError:
            info = None
        if info is not None:
            return bool(info.get("config", {}).get("CANBUS_BRIDGE"))
    return profile_is_usb_can_bridge(plan.profile)


def _awaited_text(params: Mapping[str, Any]) -> str:
    expect = params.get("expect")
    if expect == "canbridge-usb":
        return (f"the USB-CAN bridge (1d50:606f) with chip id {params.get('chip_serial') or '?'}"
                " that the new firmware makes of the board")
    if expect == "klipper-usb":
        return (f"Klipper's USB serial port (1d50:614e) with chip id "
                f"{params.get('chip_serial')}")
    if expect == "canbridge":
        return f"the USB-CAN bridge and {params.get('interface') or 'can0'}"
    if expect == "can":
        return f"node {params.get('uuid')} on {params.get('interface')}"
    if expect == "serial":
        return str(params.get("path"))
    if expect == "katapult":
        return "Katapult (or the application it starts)"
    return "the board to leave DFU mode"


# Seconds a USB-CAN bridge that is back may wait for its CAN interface to come up.
INTERFACE_UP_GRACE = 3.0


def _returned(devices: DeviceSnapshot, params: Mapping[str, Any]) -> Optional[str]:
    """A description of the board as it came back, or None if not back yet."""
    expect = params.get("expect")
    uuid, interface = params.get("uuid"), params.get("interface")
    if expect == "canbridge-usb":
        chip = params.get("chip_serial")
        dev = devices.usb_by_serial("canbridge", chip) if chip else None
        if dev is None:
            return None
        up = devices.can_interface_up(interface or "can0")
        return (f"USB-CAN bridge {dev.usb_id} on USB {dev.port_path}, canbus_uuid "
                f"{dev.canbus_uuid or '?'}, {interface or 'can0'} {'up' if up else 'not up'}")
    if expect == "klipper-usb":
        chip = params.get("chip_serial")
        for port in devices.serial_ports:
            if port.kind == "klipper" and chip and port.serial == chip:
                return port.path
        return None
    if expect == "canbridge":
        dev = devices.usb_by_uuid("canbridge", uuid)
        if dev is not None and devices.can_interface_up(interface or "can0"):
            return f"USB-CAN bridge {dev.usb_id} on USB {dev.port_path}, {interface} up"
        return None
    if expect == "can":
        node = devices.can_node(uuid, interface)
        if node is not None and node.application == "Klipper":
            return f"node {uuid} answers on {interface} as Klipper"
        return None
    if expect == "serial":
        seen = devices.serial_port(params.get("path"))
        return f"{seen.path}" if seen is not None and seen.kind != "katapult" else None
    if expect == "katapult":
        mcu = params.get("mcu")
        for dev in devices.usb_of_kind("katapult"):
            if not mcu or dev.mcu == mcu:
                return f"Katapult {dev.usb_id} on USB {dev.port_path}"
        # Katapult found an application in flash and started it.
        bridge = devices.usb_by_uuid("canbridge", uuid) if uuid else None
        if bridge is not None:
            return f"Katapult started the USB-CAN bridge on USB {bridge.port_path}"
        node = devices.can_node(uuid, interface) if uuid else None
        if node is not None:
            return f"node {uuid} answers on {interface} as {node.application}"
        app = devices.serial_port(params.get("path"))
        return f"{app.path}" if app is not None else None
    return None


# --- results and recovery ------------------------------------------------------------
def recovery_text(plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                  write_complete: bool = False, board_back: bool = False) -> Optional[str]:
    """How to get the board running again after a flash that did not end well (the method's).

    ``write_complete``: the tool reported the whole image written (and
    verified, where the tool does); then nothing is half-written and the
    text is about a board that does not come back (``board_back`` False) or
    comes back running other firmware (``board_back`` True).
    """
    return get_method(plan.method).recovery(plan, write_started=write_started,
                                            in_bootloader=in_bootloader,
                                            write_complete=write_complete, board_back=board_back)


def _not_back_message(plan: FlashPlan, result: FlashResult, timeout: float) -> str:
    """A complete write whose board did not come back: what was written, what was awaited."""
    written = ("Written and verified by Katapult" if result.verified_sha else
               "Written completely")
    step = plan.step("wait_return")
    record = result.steps[plan.steps.index(step)] if step is not None else None
    awaited = ""
    if record is not None and record.message.startswith("waiting for "):
        awaited = f" (waited for {record.message[len('waiting for '):]})"
    return f"{written}, but the board did not come back within {timeout:g} s{awaited}."


def _fail(result: FlashResult, run: _PlanRun, exc: BaseException) -> None:
    if isinstance(exc, CheckRefused):
        result.state = R.REFUSED
        result.check = exc.check
        result.message = str(exc).split("\n")[0]
        result.hint = exc.hint
        result.recovery = recovery_text(run.plan, write_started=False,
                                        in_bootloader=run.in_bootloader)
        return
    if isinstance(exc, asyncio.CancelledError):
        result.state = R.CANCELLED
        result.message = ("Cancelled during the write: the board's flash is incomplete."
                          if run.write_started else "Cancelled before anything was written.")
    elif isinstance(exc, ToolTimeout):
        result.state = R.FAILED
        result.message = str(exc).split("\n")[0]
        result.log.extend(exc.log_tail)
    elif isinstance(exc, WriteFailed):
        result.state = R.FAILED
        run.write_started = run.write_started and exc.write_started
        result.message = str(exc.args[0]) if exc.args else str(exc)
        result.hint = exc.hint
        result.log.extend(exc.log_tail)
    elif isinstance(exc, OctoflashError):
        result.state = R.FAILED
        result.message = exc.args[0] if exc.args else str(exc)
        result.hint = exc.hint
    else:
        result.state = R.FAILED
        result.message = f"Unexpected error: {type(exc).__name__}: {exc}"
    result.written = run.write_started
    result.recovery = recovery_text(run.plan, write_started=run.write_started,
                                    in_bootloader=run.in_bootloader)
    if isinstance(exc, FlashError) and exc.recovery and not run.write_started:
        # The step knew better where the board is (e.g. a board that is not running
        # Katapult came back in DFU mode).
        result.recovery = exc.recovery


async def _check_version(plan: FlashPlan, ctx: FlashContext, result: FlashResult) -> None:
    step = plan.step("check_version")
    if step is None:
        return
    record = result.steps[plan.steps.index(step)]
    if ctx.klipper_status is None:
        record.status, record.message = "skipped", "Klipper's status is not available here"
        return
    record.status = "running"
    obj, expected = step.params["object"], step.params["expected"]
    timeout = float(step.timeout or 60.0)
    start = time.monotonic()
    deadline = start + timeout
    reported = None
    ctx.on_progress(Progress("check_version", f"Waiting for Klipper to report {obj}"))
    while True:
        try:
            status = await ctx.klipper_status()
        except Exception:   # Klipper not connected yet
            status = {}
        # Klipper keeps printer.cfg's case (``mcu Toolhead``); the profile may
        # not (``toolhead``): look the board up the way Klipper matches names.
        found = find_mcu(klipper_mcus(status or {}), obj)
        reported = found.mcu_version if found is not None else None
        now = time.monotonic()
        if reported or now >= deadline:
            break
        await asyncio.sleep(min(plan.config.poll_delay(now - start), deadline - now))
    result.version_reported = reported
    if reported is None:
        record.status, record.message = "failed", f"no report within {timeout:g} s"
        result.warnings.append(f"Klipper did not report {obj} within {timeout:g} s, so the new "
                               "version could not be confirmed.")
        return
    obj = found.object_name if found is not None else obj   # as Klipper spells it
    result.version_matches = reported == expected
    record.status = "done" if result.version_matches else "failed"
    record.message = f"{obj} reports {reported}"
    if not result.version_matches:
        result.state = R.FAILED
        result.message = (f"Written, but Klipper reports {obj} running {reported}, not "
                          f"{expected}: the board did not start the new firmware.")
        result.recovery = recovery_text(plan, write_started=True, in_bootloader=False,
                                        write_complete=True, board_back=True)


def _new_result(plan: FlashPlan) -> FlashResult:
    return FlashResult(profile=plan.profile_name, warnings=list(plan.warnings),
                       version_expected=plan.artifact.version if plan.profile.target == "klipper"
                       else None,
                       steps=[StepRecord(s.kind, s.title) for s in plan.steps])


async def _execute(plan: FlashPlan, ctx: FlashContext, result: FlashResult,
                   restart: Optional[_Restart], *, checked: bool = False) -> None:
    """Run one plan into ``result``; re-raises cancellation after recording it."""
    run = _PlanRun(plan, ctx, result)
    ctx.result = result
    try:
        if not checked:
            await run.checks()
        await run.steps(restart)
    except BaseException as exc:
        _fail(result, run, exc)
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
            raise
        return
    result.written = True
    result.state = R.DONE
    if result.board_back is False:
        result.state = R.FAILED
        wait = plan.step("wait_return")
        timeout = wait.timeout if wait is not None else 0
        result.message = _not_back_message(plan, result, timeout or 0)
        result.recovery = recovery_text(plan, write_started=True, in_bootloader=False,
                                        write_complete=True)
    else:
        result.message = f"Wrote {plan.file_name} ({plan.artifact.version})" + (
            f"; {result.board_detail}" if result.board_detail else "")


def _finish_klipper(result: FlashResult, restart: _Restart, steps_of: FlashPlan) -> None:
    result.klipper_restarted = restart.restarted
    for index, step in enumerate(steps_of.steps):
        record = result.steps[index]
        if step.kind == "start_klipper":
            if restart.restarted is None:
                record.status = "skipped"
                record.message = ("not needed: Klipper was not running before the flash"
                                  if restart.outcome == "not_running" else
                                  "not needed: Klipper was not stopped")
            else:
                record.status = "done" if restart.restarted else "failed"
                record.message = restart.error or ""
        elif step.kind == "check_version" and record.status == "pending" and \
                not restart.restarted:
            record.status, record.message = "skipped", "Klipper is not running"
    if restart.error:
        result.warnings.append(restart.error + " Start it yourself: sudo systemctl start klipper")


async def _take_lock(ctx: FlashContext, results: Sequence[FlashResult]) -> bool:
    """Take the machine-wide writer lock; on refusal every result says who holds it."""
    lock = ctx.writer_lock
    if lock is None:
        return True
    try:
        await lock.acquire()
    except WriterBusy as exc:
        for result in results:
            result.state = R.REFUSED
            result.check = "writer_lock"
            result.message = str(exc)
            result.hint = "Wait for that flash to end (see its job or terminal), then flash again."
            result.finished = time.time()
        ctx.results.extend(results)
        ctx.on_progress(Progress("done", str(exc)))
        return False
    return True


async def _take_over(ctx: FlashContext, restart: _Restart, timeout: float) -> None:
    if ctx.writer_lock is not None:
        await restart.take_over(ctx.writer_lock.previous, timeout)


async def _let_go(ctx: FlashContext) -> None:
    if ctx.writer_lock is not None:
        await ctx.writer_lock.release()


async def execute_plan(plan: FlashPlan, ctx: FlashContext) -> FlashResult:
    """Run one plan; returns its ``FlashResult`` (also stored in ``ctx.result``).

    Cancellation is re-raised after Klipper was started again; the
    cancelled result is in ``ctx.result``.
    """
    result = _new_result(plan)
    ctx.result = result
    restart = _Restart(ctx, lambda stage, msg: ctx.on_progress(Progress(stage, msg)))
    if not await _take_lock(ctx, [result]):
        return result
    try:
        try:
            await _take_over(ctx, restart, plan.config.timeouts.stop_klipper)
            await _execute(plan, ctx, result, restart if plan.needs_klipper_stop else None)
        finally:
            try:
                await restart.start(plan.config.timeouts.start_klipper)
            finally:
                _finish_klipper(result, restart, plan)
                result.finished = time.time()
                ctx.results.append(result)
    finally:
        await _let_go(ctx)
    if result.state == R.DONE and restart.restarted:
        await _check_version(plan, ctx, result)
    ctx.on_progress(Progress("done", result.summary()))
    return result


async def execute_plans(plans: Sequence[FlashPlan], ctx: FlashContext) -> List[FlashResult]:
    """Several boards in one run: CAN nodes first, the bridge last, Klipper stopped once.

    Every board's checks run before Klipper is stopped, so a refused board
    stops nothing; the others are flashed in order, each to its own result.
    """
    ordered = order_for_flash(plans)
    results = [_new_result(p) for p in ordered]
    restart = _Restart(ctx, lambda stage, msg: ctx.on_progress(Progress(stage, msg)))
    config = ordered[0].config if ordered else None
    if config is not None and not await _take_lock(ctx, results):
        return results
    runnable: List[int] = []
    try:
        if config is not None:
            await _take_over(ctx, restart, config.timeouts.stop_klipper)
        for index, (plan, result) in enumerate(zip(ordered, results)):
            ctx.result = result
            run = _PlanRun(plan, ctx, result)
            try:
                await run.checks()
            except asyncio.CancelledError:
                _fail(result, run, asyncio.CancelledError())
                raise
            except Exception as exc:
                _fail(result, run, exc)
                continue
            runnable.append(index)
        needs_stop = any(ordered[i].needs_klipper_stop for i in runnable)
        if needs_stop and config is not None:
            try:
                await restart.ensure_stopped(config.timeouts.stop_klipper)
            except Exception as exc:
                for i in runnable:
                    results[i].state = R.FAILED
                    results[i].message = f"Klipper could not be stopped, nothing was written: {exc}"
                raise
        for i in runnable:
            results[i].klipper_stopped = restart.klipper_stopped
            await _execute(ordered[i], ctx, results[i], restart, checked=True)
    except asyncio.CancelledError:
        for result in results:
            if result.state == R.FAILED and not result.message:
                result.state, result.message = R.CANCELLED, "Cancelled before this board was flashed."
        raise
    except OctoflashError:
        pass
    finally:
        try:
            if config is not None:
                await restart.start(config.timeouts.start_klipper)
        finally:
            for plan, result in zip(ordered, results):
                _finish_klipper(result, restart, plan)
                result.finished = time.time()
            ctx.results.extend(results)
            await _let_go(ctx)
    for plan, result in zip(ordered, results):
        if result.state == R.DONE and restart.restarted:
            await _check_version(plan, ctx, result)
    return results
