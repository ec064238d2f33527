"""Katapult: ``flashtool.py`` through the Katapult bootloader, over CAN or USB serial.

A board running Klipper is asked into Katapult (``-r``), Katapult's status
is read (``-s``: MCU type, application start) and checked against the
image, then the image is written and verified (``-f``).  A USB-CAN bridge
mainboard gets the request over CAN and the write over the Katapult serial
port it comes back as.  flashtool.py's output is read by ``flash/katapult.py``.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set

from ...discovery.identity import USB_ID_KATAPULT, normalize_uuid
from ...discovery.serial import SerialPort, katapult_by_id_name, list_serial_ports
from ...mcus import flash_base
from .base import CAN, KATAPULT_DEVICE, USB_CAN_BRIDGE, USB_SERIAL, FlashMethod, PlanInput, PlanPart
from .common import _katapult_preset_for, board_recovery, rom_of

if TYPE_CHECKING:
    from ...discovery.snapshot import DeviceSnapshot
    from ..checks import CheckResult
    from ..executor import _PlanRun
    from ..katapult import KatapultFlasher, NotKatapult
    from ..plan import FlashPlan, FlashStep
    from ..results import StepRecord

# flashtool.py's reader (``flash/katapult.py``), the checks, the planner, asyncio and the
# tool runner are imported where they are used, so that listing the methods (every preset
# asks them) stays cheap.

_DETECTED_RE = re.compile(r"^Detected UUID: (?P<uuid>[0-9a-fA-F]{12}), Application: (?P<app>\w+)")


class KatapultMethod(FlashMethod):
    name = "katapult"
    label = "Katapult (flashtool.py)"
    tool = "flashtool.py"
    summary = ("Katapult's flashtool.py through the Katapult bootloader, over CAN, USB serial "
               "or behind a USB-CAN bridge; no jumper needed.")
    enter = ("Nothing to do: octoflash asks the running firmware into Katapult; a double-click "
             "on reset enters it by hand.")
    usb_ids = {USB_ID_KATAPULT: "katapult"}
    device_labels = {"katapult": "Katapult"}
    device_kinds = ("katapult",)
    connections = ("can", "serial")
    transports = {
        USB_SERIAL: "Katapult over USB serial",
        CAN: "Katapult over CAN",
        USB_CAN_BRIDGE: "Katapult behind the USB-CAN bridge (request over CAN, write over USB "
                        "serial)",
    }
    transports_short = {USB_SERIAL: "Katapult over USB serial", CAN: "Katapult over CAN",
                        USB_CAN_BRIDGE: "Katapult behind the USB-CAN bridge"}
    step_names = {"request_bootloader": "Ask the board to enter Katapult",
                  "wait_katapult_usb": "Wait for the Katapult serial port",
                  "wait_katapult_can": "Wait for Katapult to answer on CAN",
                  "katapult_status": "Read Katapult's status",
                  "write_katapult": "Write through Katapult"}
    write_kinds = frozenset({"write_katapult"})
    bootloader_kinds = frozenset({"request_bootloader", "wait_katapult_usb",
                                  "wait_katapult_can", "katapult_status"})

    def preferred(self, profile: Any, status: Any, devices: Any = None) -> bool:
        # Katapult is there: replace it with the deployer, no jumper.
        return status is not None and status.state == "bootloader" and \
            profile.target == "katapult"

    def plan(self, given: PlanInput) -> PlanPart:
        from ..plan import FlashStep, _chip_serial, _flashtool, _transport
        profile, artifact, config = given.profile, given.artifact, given.config
        devices, status, t = given.devices, given.status, config.timeouts
        uuid = normalize_uuid(profile.canbus_uuid)
        interface = profile.canbus_interface or "can0"
        warnings: List[str] = []
        steps: List[FlashStep] = []
        transport = _transport(profile)
        file_name = given.entry.get("file") or artifact.main_file
        if profile.target == "katapult":
            # deployer.bin is linked where the old bootloader starts applications.
            address = (getattr(artifact, "deployer_address", None) or artifact.bootloader_app_start
                       or profile.preset.bootloader_app_start or flash_base(artifact.mcu) or 0)
        else:
            address = artifact.app_address
        steps.append(FlashStep("stop_klipper", "Stop Klipper", timeout=t.stop_klipper))
        in_katapult = status is not None and status.state == "bootloader"
        fw = artifact.path(file_name)
        if transport == CAN:
            steps.append(FlashStep(
                "request_bootloader", f"Ask node {uuid} on {interface} to enter Katapult",
                argv=_flashtool(config, "-i", interface, "-u", str(uuid), "-r"),
                timeout=t.request_bootloader, params={"skip_if_in_bootloader": True}))
            steps.append(FlashStep("wait_katapult_can", f"Wait for Katapult to answer as {uuid}",
                                   timeout=t.bootloader_wait,
                                   params={"uuid": uuid, "interface": interface}))
            where = ["-i", interface, "-u", str(uuid)]
        else:
            chip = _chip_serial(profile, devices)
            by_id_name = katapult_by_id_name(profile.mcu, chip) if chip else None
            if transport == USB_CAN_BRIDGE:
                steps.append(FlashStep(
                    "request_bootloader", f"Ask the bridge {uuid} on {interface} to enter Katapult",
                    argv=_flashtool(config, "-i", interface, "-u", str(uuid), "-r"),
                    timeout=t.request_bootloader, params={"skip_if_in_bootloader": True}))
            else:
                # -f too: flashtool.py before October 2024 insists on an existing file
                # even for a bare bootloader request over serial (-r writes nothing).
                steps.append(FlashStep(
                    "request_bootloader", f"Ask {os.path.basename(profile.serial)} to enter Katapult",
                    argv=_flashtool(config, "-d", profile.serial, "-f", fw, "-r"),
                    timeout=t.request_bootloader, params={"skip_if_in_bootloader": True}))
            target = os.path.join(config.by_id_dir, by_id_name) if by_id_name else None
            steps.append(FlashStep(
                "wait_katapult_usb",
                f"Wait for {target or 'a usb-katapult_' + profile.mcu + '_… serial port'}",
                timeout=t.bootloader_wait,
                params={"path": target, "mcu": profile.mcu, "chip_serial": chip}))
            where = ["-d", target or KATAPULT_DEVICE]
        steps.append(FlashStep("katapult_status",
                               "Read Katapult's status (MCU type, application start)",
                               argv=_flashtool(config, *where, "-s"), timeout=t.status))
        steps.append(FlashStep("write_katapult", f"Write {file_name} through Katapult",
                               argv=_flashtool(config, *where, "-f", fw), timeout=t.write,
                               params={"in_bootloader": in_katapult}))
        if file_name != "klipper.bin" and profile.target == "klipper":
            warnings.append(f"{file_name} is not named klipper.bin, so flashtool.py skips its "
                            "own MCU check (octoflash still checks the MCU).")
        return PlanPart(transport=transport, file_name=file_name, address=address, steps=steps,
                        needs_klipper_stop=True, warnings=warnings)

    def board_check(self, plan: FlashPlan, devices: DeviceSnapshot) -> Optional[CheckResult]:
        from ..checks import CheckResult, _mcu_refusal, image_mcu
        chip = devices.chip_serial_for(plan.profile)
        wanted = image_mcu(plan)
        for kind in ("katapult", "klipper", "canbridge"):
            dev = devices.usb_by_serial(kind, chip) if chip else None
            if dev is not None and dev.mcu:
                if dev.mcu != wanted:
                    raise _mcu_refusal(f"the board's USB {kind} device ({dev.usb_id})", dev.mcu, plan)
                return CheckResult("board_mcu", True, f"USB device reports {dev.mcu}")
        return None

    def checks(self, plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> List[CheckResult]:
        from ..checks import CheckRefused, CheckResult
        status = devices.status_of(plan.profile) if devices is not None else None
        if status is not None and status.state == "boot_rom":
            # Katapult cannot be asked for: the board runs neither Klipper nor Katapult.
            rom = rom_of(plan)
            katapult = _katapult_preset_for(plan.profile) or "the Katapult preset for this board"
            raise CheckRefused(
                "board_state", f"The board is not reachable through Katapult: {status.detail}.",
                hint=f"Flash {katapult} with the {rom.method} method first (octoflash flash "
                     f"PROFILE --method {rom.method}), then this profile; or reset the board to "
                     "leave BOOTSEL mode if it has firmware.",
                facts={"state": status.state})
        return [CheckResult("bootloader", True, "the bootloader area is not written"),
                CheckResult("dfu_device", True, "not a DFU write")]

    async def run_step(self, run: _PlanRun, step: FlashStep, record: StepRecord) -> None:
        import asyncio

        from ..katapult import KatapultFlasher, NotKatapult
        from ..results import WriteFailed
        kind = step.kind
        timeout = float(step.timeout or 60.0)
        katapult = KatapultFlasher(on_progress=run.on_tool_progress,
                                   env=run.config.tool_env or None)
        if kind == "request_bootloader":
            if await self._already_in_katapult(run, step):
                record.status, record.message = "skipped", "the board is already in Katapult"
                run.in_bootloader = True
                return
            if "-d" in (step.argv or []) and not await self._serial_request_works(run):
                raise WriteFailed(
                    "This flashtool.py is from before September 2024: it cannot ask a USB "
                    "board into Katapult (its -r is for CAN only; over serial it would write "
                    "the image without octoflash's checks), so it was not run.",
                    hint="Update it: git -C ~/katapult pull. Or double-click the board's reset "
                         "button to enter Katapult and flash again.")
            run.katapult_ports_before = await self._katapult_ports(run)
            # A board that comes back as another device (DFU) raises NotKatapult at once.
            try:
                asked = await katapult.request_bootloader(run.argv(step), timeout=timeout)
            except NotKatapult as exc:
                _what_now(exc, run.plan)
                raise
            run.in_bootloader = run.bootloader_requested = True
            if asked.tty_missing:
                record.message = ("the board came back as Katapult before its serial port "
                                  "was there; waiting for the port")
            elif asked.reconnect_timed_out:
                record.message = ("flashtool.py saw no USB re-enumeration within its 4 s; "
                                  "waiting for the board")
        elif kind == "wait_katapult_usb":
            run.katapult_device = await self._wait_katapult_usb(run, step, timeout)
            record.message = run.katapult_device
        elif kind == "wait_katapult_can":
            await self._wait_katapult_can(run, step, timeout)
        elif kind in ("katapult_status", "write_katapult") and run.plan.transport == CAN:
            # flashtool leaves the node with a node id after -s (and after a write whose
            # COMPLETE did not get through): an assigned Katapult node ignores the admin
            # query, so a refusal or failure here would leave it unreachable for the next
            # attempt.  Clear the ids the way flashtool does before it assigns one.
            try:
                await self._run_katapult_step(run, step, record, katapult, timeout)
            except BaseException:
                await asyncio.shield(self._release_can_node(run, step))
                raise
        else:
            await self._run_katapult_step(run, step, record, katapult, timeout)

    async def _run_katapult_step(self, run: _PlanRun, step: FlashStep, record: StepRecord,
                                 katapult: KatapultFlasher, timeout: float) -> None:
        import asyncio

        from ..checks import check_katapult_status
        from ..katapult import katapult_sha1
        kind = step.kind
        if kind == "katapult_status":
            status = await katapult.status(run.argv(step), timeout=timeout)
            if status is None:
                run.result.warnings.append(
                    "This flashtool.py is older than October 2024 and cannot report Katapult's "
                    "status, so the MCU type and application start were not checked against "
                    "Katapult before writing. Update it: git -C ~/katapult pull")
                record.status, record.message = "skipped", "flashtool.py has no -s"
                return
            run.result.katapult_status = status.to_json()
            for check in check_katapult_status(run.plan, status):
                run.emit("check", check.message, kind="output")
            run.status_block_size = status.block_size or 64
        elif kind == "write_katapult":
            run.write_started = True
            written = await katapult.write(run.argv(step), timeout=timeout)
            run.in_bootloader = False
            run.result.verified_sha = written.sha
            data = await asyncio.to_thread(_read, run.plan.file_path)
            run.result.expected_sha = katapult_sha1(data, run.status_block_size)
            if written.sha and written.sha != run.result.expected_sha:
                run.result.warnings.append(
                    f"Katapult's read-back SHA-1 {written.sha} differs from the image's "
                    f"{run.result.expected_sha}: flashtool.py may have written another file.")
            if written.legacy:
                run.result.warnings.append("flashtool.py predates 'Programming Complete'; the "
                                           "write was judged by its 'Flash Success' after a "
                                           "completed write and verification.")
        else:
            await super().run_step(run, step, record)

    async def _serial_request_works(self, run: _PlanRun) -> bool:
        """False for a flashtool whose ``-r`` is "(CAN only)" (before Katapult's 542b6a8,
        2024-09-20): with ``-d`` it ignores ``-r`` and writes.  Read from its ``--help``."""
        from ...tools import run_tool
        from ..plan import _flashtool
        argv = _flashtool(run.config, "--help")
        try:
            result = await run_tool(argv, timeout=30.0, env=run.config.tool_env or None,
                                    what="flashtool.py")
        except Exception:         # let the request itself say what is wrong
            return True
        text = " ".join(" ".join(result.lines).split())
        return "(CAN only)" not in text

    def _query_argv(self, run: _PlanRun, interface: str) -> List[str]:
        from ..plan import _flashtool
        return _flashtool(run.config, "-i", interface, "-q")

    async def _query_katapult(self, run: _PlanRun, interface: str,
                              timeout: float) -> Optional[Dict[str, str]]:
        """``flashtool.py -i IFACE -q``: clears every Katapult node id (admin 0x12), then
        lists the nodes that answer ({uuid: application}); None when it failed."""
        from ...tools import run_tool
        try:
            result = await run_tool(self._query_argv(run, interface), timeout=timeout,
                                    env=run.config.tool_env or None, what="flashtool.py")
        except Exception:       # a timeout or a missing tool: the caller goes on without it
            return None
        if result.returncode != 0:
            return None
        found: Dict[str, str] = {}
        for line in result.lines:
            m = _DETECTED_RE.match(line.strip())
            if m:
                found[m.group("uuid").lower()] = m.group("app")
        return found

    async def _release_can_node(self, run: _PlanRun, step: FlashStep) -> None:
        """After a refusal or failure at the status or write step on CAN: clear the node
        ids so the node answers the next attempt (and octoflash's scans) again."""
        interface = run.plan.profile.canbus_interface or "can0"
        found = await self._query_katapult(run, interface, float(run.config.timeouts.status))
        uuid = normalize_uuid(run.plan.profile.canbus_uuid)
        if found is None:
            run.result.warnings.append(
                f"Could not clear Katapult's CAN node ids on {interface} (flashtool.py -q "
                "failed): if the node does not answer the next attempt, press its reset "
                "button.")
        elif found.get(str(uuid)) == "Katapult":
            run.emit("katapult", f"Node {uuid} answers on {interface} as Katapult again",
                     kind="output")

    async def _katapult_ports(self, run: _PlanRun) -> Set[str]:
        import asyncio
        ports, _ = await asyncio.to_thread(list_serial_ports, run.config.by_id_dir)
        return {p.path for p in ports if p.kind == "katapult"}

    async def _already_in_katapult(self, run: _PlanRun, step: FlashStep) -> bool:
        import asyncio
        if not step.params.get("skip_if_in_bootloader"):
            return False
        # The checks' scan, seconds ago, still tells: stopping Klipper moves no board
        # into or out of Katapult.  (Wrong either way, the next step finds out: a
        # request to a node in Katapult is ignored, and the wait for Katapult checks.)
        devices = run.recent_devices() or await run.snapshot()
        if devices is not None:
            return devices.status_of(run.plan.profile).state == "bootloader"
        wait = run.plan.step("wait_katapult_usb")
        path = wait.params.get("path") if wait else None
        return bool(path and await asyncio.to_thread(os.path.exists, path))

    async def _wait_katapult_usb(self, run: _PlanRun, step: FlashStep, timeout: float) -> str:
        import asyncio

        from ..results import WriteFailed
        wanted = step.params.get("path")
        mcu = step.params.get("mcu")
        chip = step.params.get("chip_serial")

        async def probe() -> Optional[str]:
            ports, _ = await asyncio.to_thread(list_serial_ports, run.config.by_id_dir)
            katapult = [p for p in ports if p.kind == "katapult"]
            if wanted and any(p.path == wanted for p in katapult):
                return str(wanted)
            if not wanted:
                new = [p for p in katapult if p.path not in run.katapult_ports_before
                       and (not mcu or p.mcu == mcu)]
                if len(new) == 1:
                    return new[0].path
                same = [p for p in katapult if not mcu or p.mcu == mcu]
                if len(same) == 1:
                    return same[0].path
            _refuse_other_katapult(run.plan, katapult, chip, run.katapult_ports_before
                                   if run.bootloader_requested else None)
            return None
        found = await run.poll("katapult", timeout, probe)
        if not found:
            raise WriteFailed(
                f"The board did not show up as a Katapult serial port within {timeout:g} s.",
                hint="Double-click the board's reset button to enter Katapult and flash again. "
                     "If Katapult never appears, it is not installed: put the board into DFU "
                     "mode and flash the Katapult preset first.")
        return str(found)

    async def _wait_katapult_can(self, run: _PlanRun, step: FlashStep, timeout: float) -> None:
        import time

        from ..results import WriteFailed
        uuid, interface = step.params.get("uuid"), step.params.get("interface")
        cleared = False
        start = time.monotonic()

        async def clear_and_ask() -> bool:
            # A node left with a node id (an earlier flashtool -s, a run that died)
            # ignores the query: flashtool -q clears the ids first, then asks.
            nonlocal cleared
            cleared = True
            found = await self._query_katapult(run, str(interface), max(3.0, min(timeout, 10.0)))
            return found is not None and found.get(str(uuid)) == "Katapult"

        async def probe() -> bool:
            if run.ctx.watch_can is not None:
                # Ask the bus every few ms: the wait ends as soon as the node is back in
                # Katapult.  A node silent for ``can_clear_after`` seconds gets the ids
                # cleared once (a rebooted node has none: it answers long before).
                waited = time.monotonic() - start
                until_clear = run.config.can_clear_after - waited
                window = min(timeout - waited,
                             until_clear if not cleared and until_clear > 0 else 1.0)
                if await run.ctx.watch_can(str(uuid), str(interface), "Katapult",
                                           max(0.05, window)) == "Katapult":
                    return True
                if cleared or time.monotonic() - start < run.config.can_clear_after:
                    return False
                return await clear_and_ask()
            devices = await run.snapshot()
            node = devices.can_node(uuid, interface) if devices else None
            if node is not None and node.application == "Katapult":
                return True
            if not cleared or devices is None:
                return await clear_and_ask()
            return False
        if not await run.poll("katapult-can", timeout, probe,
                              rest=run.ctx.watch_can is None):
            raise WriteFailed(
                f"Node {uuid} did not answer as Katapult on {interface} within {timeout:g} s.",
                hint="Check that Katapult is installed on the node and that the bus is up; a "
                     "double-click on the node's reset button also enters Katapult.")

    def recovery(self, plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                 write_complete: bool = False, board_back: bool = False) -> Optional[str]:
        return board_recovery(plan, write_started=write_started, in_bootloader=in_bootloader,
                              write_complete=write_complete, board_back=board_back)


def _what_now(exc: NotKatapult, plan: FlashPlan) -> None:
    """What to do with a board that has no Katapult, for this build: a build linked behind
    a bootloader needs one first (written through the ROM loader it would not start).  The
    ROM loader is the MCU's: DFU on an STM32, the boot ROM (BOOTSEL) on an RP2040, where
    Klipper without Katapult reboots into it when asked for a bootloader."""
    rom = rom_of(plan)
    in_rom = exc.usb_id == rom.usb_id
    if not in_rom and rom.method == "dfu":
        return                      # NotKatapult's own words are the STM32's
    profile = plan.profile
    base = flash_base(plan.artifact.mcu) or 0
    katapult = _katapult_preset_for(profile) or "the Katapult preset for this board"
    behind = plan.artifact.app_address != base
    if not in_rom:
        exc.hint = (f"Katapult is not installed on this board: put it into {rom.mode} "
                    f"({rom.enter}) and flash " +
                    (f"{katapult} with the {rom.method} method first, then this profile."
                     if behind else f"this profile with the {rom.method} method."))
        return
    if not behind:
        exc.hint = (f"Katapult is not installed on this board. It waits in {rom.mode} now: "
                    f"flash this profile with the {rom.method} method (octoflash flash "
                    f"{plan.profile_name} --method {rom.method}).")
        exc.recovery = (f"Nothing was written. The board waits in {rom.mode} ({rom.short}): "
                        f"flash this profile with the {rom.method} method now, or press its "
                        "reset button to go back to its firmware.")
        return
    exc.hint = (f"Katapult is not installed on this board, and this build starts at "
                f"0x{plan.artifact.app_address:08x}, behind a bootloader: written alone "
                f"{rom.via} it would not start. The board waits in {rom.mode} now: flash "
                f"{katapult} with the {rom.method} method first, then this profile.")
    exc.recovery = (f"Nothing was written. The board waits in {rom.mode} ({rom.short}): "
                    f"flash {katapult} with the {rom.method} method, then this profile; or "
                    "press its reset button to go back to its firmware.")


def _refuse_other_katapult(plan: FlashPlan, katapult: Sequence[SerialPort],
                           chip: Optional[str], before: Optional[Set[str]]) -> None:
    """The board answered as Katapult, but for another MCU: say so at once.

    A port with the board's chip id (or, when the chip id is not known, the
    one Katapult port that appeared after the request) whose name carries
    another MCU than the build's is this board; waiting for a port with the
    expected name would only time out.
    """
    from ..checks import CheckRefused, image_mcu
    expected = image_mcu(plan)
    if chip:
        mine = [p for p in katapult if p.serial and p.serial.upper() == str(chip).upper()]
        how = "with this board's chip id"
    elif before is not None:
        mine = [p for p in katapult if p.path not in before]
        how = "right after the bootloader request"
        if len(mine) != 1:
            return
    else:
        return
    other = [p for p in mine if p.mcu and p.mcu != expected]
    if not other or len(other) != len(mine):
        return
    port = other[0]
    raise CheckRefused(
        "mcu", f"The board entered Katapult as {port.name} ({how}): its Katapult reports "
        f"{port.mcu}, but the build is for {expected}.",
        hint=f"Choose the preset for a {port.mcu} board and build again, or check that the "
             "profile names the right board.",
        facts={"artifact": expected, "board": port.mcu, "source": port.path})


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


METHOD = KatapultMethod()
