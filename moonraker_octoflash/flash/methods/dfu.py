"""DFU: the STM32's ROM bootloader, written with ``dfu-util``.

The ROM loader is always there and cannot be damaged, so DFU also recovers
a board whose flash is broken.  Planning, the checks that read the DFU
device, the wait for the board in DFU mode and the write live here; the
output of dfu-util is read by ``flash/dfu.py``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from ...discovery.identity import USB_ID_DFU
from ...mcus import flash_base
from ...presets import mcu_info
from .base import DFU, FlashMethod, PlanInput, PlanPart
from .common import board_recovery, katapult_seen, wait_for_board

if TYPE_CHECKING:
    from ...discovery.snapshot import DeviceSnapshot
    from ..checks import CheckResult
    from ..executor import _PlanRun
    from ..plan import FlashPlan, FlashStep
    from ..results import StepRecord

# dfu-util's reader (``flash/dfu.py``), the checks and the planner are imported where they
# are used, so that listing the methods (every preset asks them) stays cheap.


def check_dfu_layout(plan: FlashPlan, layout_text: str) -> CheckResult:
    """The DFU memory map tells the flash size and sector layout, so often the chip."""
    from ...discovery.usb import parse_dfu_layout
    from ..checks import CheckRefused, CheckResult, image_mcu
    info = mcu_info(image_mcu(plan))
    theirs = parse_dfu_layout(layout_text)
    if theirs is None or info is None or not info.dfu_layout:
        return CheckResult("board_mcu", True, "DFU layout not comparable")
    mine = parse_dfu_layout(info.dfu_layout)
    if mine is not None and mine.sectors != theirs.sectors:
        raise CheckRefused(
            "mcu", f"The build is for {image_mcu(plan)} ({info.flash_size // 1024} KiB flash) "
            f"but the board in DFU mode has a different flash layout ({theirs.size // 1024} KiB: "
            f"\"{layout_text}\"): it is another chip.",
            hint="Choose the preset for the board's chip and build again; if several boards are "
                 "connected, check that the right one is in DFU mode.",
            facts={"artifact": image_mcu(plan), "layout": layout_text})
    return CheckResult("board_mcu", True, f"DFU flash layout fits {image_mcu(plan)}")


def check_bootloader_kept(plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> CheckResult:
    """Refuse an image linked at the start of flash for a board seen running Katapult."""
    from ..checks import CheckRefused, CheckResult
    art = plan.artifact
    base = flash_base(art.mcu)
    if plan.profile.target != "klipper" or base is None or art.app_address != base:
        return CheckResult("bootloader", True, "the bootloader area is not written")
    evidence = katapult_seen(plan, devices)
    if evidence and not plan.allow_bootloader_overwrite:
        raise CheckRefused(
            "bootloader", f"{plan.file_name} is linked at 0x{base:08x} and writing it would "
            f"erase the Katapult bootloader on this board ({evidence}).",
            hint="Use the preset with the bootloader offset (…-canbridge) to keep Katapult, or "
                 "ask for exactly this (--allow-bootloader-overwrite) to remove it.",
            facts={"evidence": evidence})
    if evidence:
        return CheckResult("bootloader", True, "Katapult will be erased, as asked")
    return CheckResult("bootloader", True, "no bootloader seen on the board")


def check_dfu_choice(plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> CheckResult:
    """Several boards in DFU mode and no serial to tell them apart: do not guess."""
    from ..checks import CheckRefused, CheckResult
    if devices is None:
        return CheckResult("dfu_device", True, "not a DFU write")
    boards = devices.dfu_devices()
    if len(boards) > 1 and not plan.dfu_serial:
        serials = ", ".join(d.serial or "?" for d in boards)
        raise CheckRefused(
            "dfu_device", f"{len(boards)} boards are in DFU mode (serials {serials}) and "
            f"profile '{plan.profile_name}' does not say which one to write.",
            hint="Set dfu_serial in the profile, or leave only this board in DFU mode.",
            facts={"serials": [d.serial for d in boards]})
    return CheckResult("dfu_device", True, "one board to write")


class DfuMethod(FlashMethod):
    name = "dfu"
    label = "DFU (dfu-util)"
    tool = "dfu-util"
    summary = ("The STM32's ROM bootloader (USB 0483:df11); always there and cannot be "
               "damaged, so it also recovers a board whose flash is broken.")
    enter = ("Fit the BOOT0 jumper (or hold BOOT) and press reset; the board shows as "
             "0483:df11.")
    usb_ids = {USB_ID_DFU: "dfu"}
    device_labels = {"dfu": "STM32 in DFU mode"}
    device_kinds = ("dfu",)
    connections = ("dfu", "serial", "can")
    transports = {DFU: "dfu-util (STM32 ROM bootloader in DFU mode)"}
    transports_short = {DFU: "dfu-util"}
    step_names = {"wait_dfu": "Wait for the board in DFU mode",
                  "write_dfu": "Write with dfu-util"}
    write_kinds = frozenset({"write_dfu"})
    board_state = "dfu"

    def plan(self, given: PlanInput) -> PlanPart:
        from ..plan import FlashStep, dfu_instructions
        profile, artifact, config = given.profile, given.artifact, given.config
        devices, t = given.devices, config.timeouts
        warnings: List[str] = []
        steps: List[FlashStep] = []
        file_name = artifact.main_file
        address = artifact.app_address
        base = flash_base(artifact.mcu)
        preset_address = given.entry.get("address")
        if preset_address and int(str(preset_address), 16) != address:
            warnings.append(f"The build is linked at 0x{address:08x}, not at the preset's "
                            f"{preset_address}: it is written at 0x{address:08x}.")
        mass_erase = bool(given.entry.get("mass_erase")) and address == base
        leave = bool(given.entry.get("leave", True))
        dfu_serial = profile.dfu_serial
        if not dfu_serial and devices is not None:
            found = devices.dfu_device_for(profile)
            if found is not None and len(devices.dfu_devices()) > 1:
                dfu_serial = found.serial
        if address == base and profile.target == "klipper":
            warnings.append(f"This image starts at 0x{address:08x}: writing it erases any "
                            "bootloader (Katapult or the stock one) on the board.")
        needs_stop = bool(profile.klipper_mcu) or profile.connection in ("can", "serial")
        if needs_stop:
            steps.append(FlashStep("stop_klipper", "Stop Klipper", timeout=t.stop_klipper))
        steps.append(FlashStep(
            "wait_dfu", "Wait for the board in DFU mode (0483:df11" +
            (f", serial {dfu_serial})" if dfu_serial else ")"),
            timeout=t.device_wait,
            params={"serial": dfu_serial, "instructions": dfu_instructions(profile.preset)}))
        spec = f"0x{address:08x}" + (":mass-erase:force" if mass_erase else "") + \
            (":leave" if leave else "")
        serial_args = ["-S", dfu_serial] if dfu_serial else []
        argv = [config.dfu_util, "-a", "0", "-d", "0483:df11"] + serial_args + \
            ["-s", spec, "-D", artifact.path(file_name)]
        params: Dict[str, Any] = {"address": address, "mass_erase": mass_erase, "leave": leave}
        if mass_erase:
            params["fallback_argv"] = [config.dfu_util, "-a", "0", "-d", "0483:df11"] + \
                serial_args + ["-s", f"0x{address:08x}" + (":leave" if leave else ""),
                               "-D", artifact.path(file_name)]
        title = f"Write {file_name} at 0x{address:08x}" + (" after a mass erase" if mass_erase else "")
        steps.append(FlashStep("write_dfu", title, argv=argv, timeout=t.write, params=params))
        return PlanPart(transport=DFU, file_name=file_name, address=address, steps=steps,
                        needs_klipper_stop=needs_stop, warnings=warnings, dfu_serial=dfu_serial)

    def board_check(self, plan: FlashPlan, devices: DeviceSnapshot) -> Optional[CheckResult]:
        dev = devices.dfu_device(plan.dfu_serial) if plan.dfu_serial else None
        if dev is None and len(devices.dfu_devices()) == 1:
            dev = devices.dfu_devices()[0]
        if dev is not None and dev.dfu_layout:
            return check_dfu_layout(plan, dev.dfu_layout)
        return None

    def checks(self, plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> List[CheckResult]:
        return [check_bootloader_kept(plan, devices), check_dfu_choice(plan, devices)]

    async def run_step(self, run: _PlanRun, step: FlashStep, record: StepRecord) -> None:
        from ..dfu import DfuFlasher
        from ..plan import dfu_instructions
        from ..results import WriteFailed
        timeout = float(step.timeout or 60.0)
        if step.kind == "wait_dfu":
            await self._wait_dfu(run, step, timeout)
        elif step.kind == "write_dfu":
            run.write_started = True
            dfu = DfuFlasher(on_progress=run.on_tool_progress, env=run.config.tool_env or None)
            try:
                outcome = await dfu.write(run.argv(step), timeout=timeout,
                                          fallback_argv=step.params.get("fallback_argv"),
                                          instructions=dfu_instructions(run.plan.profile.preset),
                                          board=f"'{run.plan.profile_name}'")
            except WriteFailed as exc:
                run.write_started = exc.write_started
                raise
            run.result.warnings.extend(outcome.notes)
        else:
            await super().run_step(run, step, record)

    async def _wait_dfu(self, run: _PlanRun, step: FlashStep, timeout: float) -> None:
        if run.ctx.discover is None:
            return
        from ..checks import CheckRefused
        serial = step.params.get("serial")
        instructions = step.params.get("instructions") or ""

        async def probe() -> Any:
            devices = await run.snapshot()
            if devices is None:
                return None
            if serial:
                return devices.dfu_device(serial)
            boards = devices.dfu_devices()
            if len(boards) > 1:
                raise CheckRefused(
                    "dfu_device", f"{len(boards)} boards are in DFU mode and profile "
                    f"'{run.plan.profile_name}' does not say which one to write.",
                    hint="Set dfu_serial in the profile, or leave only this board in DFU mode.")
            return boards[0] if boards else None
        found = await wait_for_board(run, probe, mode="DFU mode", key="dfu", timeout=timeout,
                                     instructions=instructions,
                                     hint="Fit the boot jumper and press reset.")
        if found.dfu_layout:
            check_dfu_layout(run.plan, found.dfu_layout)

    def returned(self, devices: DeviceSnapshot, params: Mapping[str, Any]) -> Optional[str]:
        if params.get("expect") != "gone":
            return None
        serial = params.get("serial")
        still = devices.dfu_device(serial) if serial else (devices.dfu_devices() or None)
        return "the board left DFU mode" if not still else None

    def recovery(self, plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                 write_complete: bool = False, board_back: bool = False) -> Optional[str]:
        return board_recovery(plan, write_started=write_started, in_bootloader=in_bootloader,
                              write_complete=write_complete, board_back=board_back)


METHOD = DfuMethod()
