"""RP2040 / RP2350 boot ROM (BOOTSEL), written with Klipper's own ``rp2040_flash``.

Holding BOOT while pressing RESET starts the chip's boot ROM: it shows as
USB ``2e8a:0003`` (RP2040) or ``2e8a:000f`` (RP2350), a mass-storage drive
plus the PICOBOOT interface.  Klipper's ``lib/rp2040_flash/rp2040_flash``
(built from the user's checkout with ``make lib/rp2040_flash/rp2040_flash``)
writes a UF2 file through PICOBOOT: ``rp2040_flash FILE.uf2 [BUS ADDRESS]``.
The boot ROM is in mask ROM, so it cannot be damaged: this is how Katapult is
first installed on an RP2040 toolhead, and how any RP2040 is recovered.
(Copying the UF2 onto the ``RPI-RP2`` drive does the same by hand.)

What the tool prints, all on stderr, from Klipper's ``lib/rp2040_flash/main.c``:
``Loaded UF2 image with N pages``, ``Found rp2040 device on USB bus B address
A``, ``Flashing...``, ``Resetting interface``, ``Locking``, ``Exiting XIP
mode``, ``Erasing``, ``Flashing``, ``Rebooting device``; a failed command is
``Command NAME failed with status N: TEXT`` (exit 1).  With no board in
BOOTSEL it prints ``No rp2040 in BOOTSEL mode was found`` and exits **0**, so
the outcome is read from the lines, never from the exit code.  It skips, in
silence, every UF2 block that is not for the RP2040 family (0xe48bff56),
not 256 bytes, or outside flash: a wrong file "succeeds" with nothing
written, which is why the image is checked here first.
"""
from __future__ import annotations

import os
import re
import struct
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ...errors import ValidationError
from ...mcus import find_mcu, flash_base
from .base import FlashMethod, PlanInput, PlanPart
from .common import katapult_seen, wait_for_board

if TYPE_CHECKING:
    from ...discovery.snapshot import DeviceSnapshot
    from ..checks import CheckResult
    from ..executor import _PlanRun
    from ..plan import FlashPlan, FlashStep
    from ..results import StepRecord

# The checks, the planner, asyncio and the tool runner are imported where they are used,
# so that listing the methods (every preset asks them) stays cheap.

USB_ID_RP2040_BOOT = (0x2E8A, 0x0003)
USB_ID_RP2350_BOOT = (0x2E8A, 0x000F)
BOOT_KINDS = {"rp2040": "rp2040_boot", "rp2350": "rp2350_boot"}
TRANSPORT = "rp2040-boot-rom"
TOOL_IN_CHECKOUT = "lib/rp2040_flash/rp2040_flash"
UF2_FAMILY_RP2040 = 0xE48BFF56          # the only family rp2040_flash writes (main.c)
UF2_FLAG_NOT_MAIN_FLASH = 0x00000001
UF2_FLAG_FAMILY_ID = 0x00002000
UF2_MAGIC = (0x0A324655, 0x9E5D5157, 0x0AB16F30)
PAGE = 256
BUS_PLACEHOLDER, ADDRESS_PLACEHOLDER = "{usb_bus}", "{usb_address}"
BOOTSEL_HOW = ("Put the board into BOOTSEL mode: connect it to the host over USB, hold the BOOT "
               "button, press and release RESET, then release BOOT. It shows as USB 2e8a:0003 "
               "(RP2350: 2e8a:000f) and as a drive named RPI-RP2.")

NO_DEVICE = "No rp2040 in BOOTSEL mode was found"
USB_DEVFS = "/dev/bus/usb"
_FAILED_RE = re.compile(r"^Command (?P<cmd>\w+) failed")
_LOADED_RE = re.compile(r"^Loaded UF2 image with (?P<pages>\d+) pages")
_FOUND_RE = re.compile(r"^Found rp2040 device on USB bus (?P<bus>\d+) address (?P<addr>\d+)")


def usb_device_node(bus: int, address: int) -> str:
    """The device node libusb opens for a USB device (udev's /dev/bus/usb/BBB/DDD)."""
    return os.path.join(USB_DEVFS, f"{bus:03d}", f"{address:03d}")


def _not_writable(node: str) -> bool:
    """True when the node is there and this user may not open it for writing."""
    return os.path.exists(node) and not os.access(node, os.R_OK | os.W_OK)


def uf2_pages(data: bytes) -> Tuple[List[int], int]:
    """(addresses of the pages rp2040_flash would write, blocks it would skip)."""
    pages: List[int] = []
    skipped = 0
    for offset in range(0, len(data) - 511, 512):
        m0, m1, flags, address, size, _no, _count, family = struct.unpack_from(
            "<IIIIIIII", data, offset)
        (m_end,) = struct.unpack_from("<I", data, offset + 508)
        if (m0, m1, m_end) != UF2_MAGIC:
            skipped += 1
            continue
        if not flags & UF2_FLAG_FAMILY_ID or family != UF2_FAMILY_RP2040 \
                or flags & UF2_FLAG_NOT_MAIN_FLASH or size != PAGE or address % PAGE:
            skipped += 1
            continue
        pages.append(address)
    return pages, skipped


def expected_start(mcu: str, app_address: int, target: str) -> int:
    """Where the UF2 must start: the flash base for Katapult and for Klipper without a
    bootloader (its 256-byte boot stage comes first), else Klipper's link address."""
    base = flash_base(mcu)
    assert base is not None
    if target == "katapult" or app_address - base <= 0x100:
        return base
    return app_address


def _uf2_file(artifact: Any) -> Optional[str]:
    names = [f.name for f in artifact.files if f.name.endswith(".uf2")]
    wanted = f"{artifact.target}.uf2"
    return wanted if wanted in names else (names[0] if names else None)


class Rp2040BootMethod(FlashMethod):
    name = "rp2040_boot"
    label = "RP2040 boot ROM (BOOTSEL, rp2040_flash)"
    tool = "rp2040_flash"
    summary = ("The RP2040/RP2350 boot ROM in BOOTSEL mode (USB 2e8a:0003 / 2e8a:000f), written "
               "with Klipper's lib/rp2040_flash; in mask ROM, so it cannot be damaged: the first "
               "install of Katapult, and the recovery of any RP2040 board.")
    enter = "Hold BOOT, press and release RESET, release BOOT (BOOTSEL mode)."
    usb_ids = {USB_ID_RP2040_BOOT: "rp2040_boot", USB_ID_RP2350_BOOT: "rp2350_boot"}
    device_labels = {"rp2040_boot": "RP2040 boot ROM in BOOTSEL mode",
                     "rp2350_boot": "RP2350 boot ROM in BOOTSEL mode"}
    device_kinds = ("rp2040_boot", "rp2350_boot")
    connections = ("serial", "can")
    transports = {TRANSPORT: "rp2040_flash (RP2040 boot ROM in BOOTSEL mode)"}
    transports_short = {TRANSPORT: "rp2040_flash"}
    step_names = {"build_rp2040_flash": "Build Klipper's rp2040_flash",
                  "wait_bootsel": "Wait for the board in BOOTSEL mode",
                  "write_rp2040": "Write with rp2040_flash"}
    write_kinds = frozenset({"write_rp2040"})

    # --- planning ----------------------------------------------------------------
    def offer(self, preset: Any) -> Optional[Dict[str, Any]]:
        """Every RP2040-family preset whose build has a UF2 for the boot ROM."""
        try:
            facts = find_mcu(str(preset.mcu))
        except ValidationError:
            return None
        if facts.arch != "rp2040":
            return None
        if preset.target == "klipper" and preset.app_address - facts.flash_base > 0x100:
            return None       # Klipper behind Katapult: written through Katapult
        return {"method": self.name, "file": f"{preset.target}.uf2",
                "note": "Through the boot ROM (BOOTSEL: hold BOOT, press RESET) with Klipper's "
                        "rp2040_flash; erases only the sectors the image covers."}

    def preferred(self, profile: Any, status: Any, devices: Any = None) -> bool:
        """The board is seen in its boot ROM, or is not seen and one board of its chip waits
        in BOOTSEL."""
        if status is not None and status.state == "boot_rom":
            return True
        if devices is None or (status is not None and status.state != "not_found"):
            return False
        boot = [d for d in devices.usb if d.kind in self.device_kinds]
        wanted = BOOT_KINDS.get(find_mcu(str(profile.mcu)).key)
        return len(boot) == 1 and boot[0].kind == wanted

    def plan(self, given: PlanInput) -> PlanPart:
        from ..plan import FlashStep
        profile, artifact, config = given.profile, given.artifact, given.config
        t = config.timeouts
        file_name = _uf2_file(artifact)
        if file_name is None:
            raise ValidationError(
                f"Build {artifact.id} of '{profile.name}' has no UF2 file for the RP2040 boot "
                "ROM.", hint="Only Katapult and Klipper without a bootloader are built as UF2; "
                "write a Klipper build behind Katapult with the katapult method.")
        steps: List[FlashStep] = []
        needs_stop = bool(profile.klipper_mcu) or profile.connection in ("can", "serial")
        if needs_stop:
            steps.append(FlashStep("stop_klipper", "Stop Klipper", timeout=t.stop_klipper))
        tool = config.tool(self.tool)
        if tool is None:
            checkout = os.path.expanduser(config.klipper_path)
            tool = os.path.join(checkout, TOOL_IN_CHECKOUT)
            steps.append(FlashStep(
                "build_rp2040_flash", "Build Klipper's rp2040_flash (once per checkout)",
                argv=["make", TOOL_IN_CHECKOUT], timeout=t.write,
                params={"cwd": checkout, "tool": tool}))
        kind = BOOT_KINDS.get(find_mcu(artifact.mcu).key, "rp2040_boot")
        steps.append(FlashStep("wait_bootsel", "Wait for the board in BOOTSEL mode "
                               f"({'2e8a:000f' if kind == 'rp2350_boot' else '2e8a:0003'})",
                               timeout=t.device_wait,
                               params={"kind": kind, "instructions": BOOTSEL_HOW}))
        steps.append(FlashStep(
            "write_rp2040", f"Write {file_name} through the boot ROM",
            argv=[tool, artifact.path(file_name), BUS_PLACEHOLDER, ADDRESS_PLACEHOLDER],
            timeout=t.write))
        start = expected_start(artifact.mcu, artifact.app_address, artifact.target)
        ret = None
        if not profile.serial and not profile.canbus_uuid and profile.target == "klipper":
            ret = FlashStep("wait_return", "Wait for the board to leave BOOTSEL mode",
                            timeout=t.reconnect, params={"expect": "bootsel-gone", "kind": kind})
        return PlanPart(transport=TRANSPORT, file_name=file_name, address=start, steps=steps,
                        needs_klipper_stop=needs_stop, return_step=ret)

    # --- checks ------------------------------------------------------------------------
    def checks(self, plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> List[CheckResult]:
        from ..checks import CheckRefused, CheckResult
        with open(plan.file_path, "rb") as f:
            data = f.read()
        pages, skipped = uf2_pages(data)
        start = plan.address
        if not pages:
            raise CheckRefused(
                "image", f"{plan.file_name} holds no block rp2040_flash would write (an RP2040 "
                f"UF2 has 256-byte blocks of family 0x{UF2_FAMILY_RP2040:08x}); it would "
                "report success with nothing written.", hint="Build the profile again.",
                facts={"skipped": skipped})
        if skipped:
            raise CheckRefused(
                "image", f"{plan.file_name}: {skipped} of its blocks are not RP2040 flash "
                "blocks, and rp2040_flash would skip them in silence.",
                hint="Build the profile again; write only UF2 files Klipper or Katapult made.",
                facts={"skipped": skipped})
        first = min(pages)
        if first != start:
            raise CheckRefused(
                "app_address", f"{plan.file_name} starts at 0x{first:08x} but this build "
                f"belongs at 0x{start:08x} (0x{flash_base(plan.artifact.mcu) or 0:08x} without "
                "a bootloader, 0x10004000 behind Katapult).",
                hint="Build the profile again; check its bootloader offset.",
                facts={"image": first, "expected": start})
        results = [CheckResult("image", True, f"{plan.file_name}: {len(pages)} RP2040 pages "
                                              f"from 0x{first:08x}")]
        evidence = katapult_seen(plan, devices)
        if plan.profile.target == "klipper" and start == flash_base(plan.artifact.mcu) \
                and evidence:
            if not plan.allow_bootloader_overwrite:
                raise CheckRefused(
                    "bootloader", f"{plan.file_name} starts at 0x{start:08x} and writing it "
                    f"would erase the Katapult bootloader on this board ({evidence}).",
                    hint="Use the preset behind Katapult (the katapult method), or ask for "
                         "exactly this (--allow-bootloader-overwrite) to remove it.",
                    facts={"evidence": evidence})
            results.append(CheckResult("bootloader", True, "Katapult will be erased, as asked"))
        return results

    def board_check(self, plan: FlashPlan, devices: DeviceSnapshot) -> Optional[CheckResult]:
        return self._board_mcu(plan, devices.usb)

    def _board_mcu(self, plan: FlashPlan, usb: List[Any]) -> Optional[CheckResult]:
        from ..checks import CheckRefused, CheckResult, image_mcu
        boot = [d for d in usb if d.kind in self.device_kinds]
        if len(boot) != 1:
            return None
        chip = "rp2350" if boot[0].kind == "rp2350_boot" else "rp2040"
        wanted = image_mcu(plan)
        if find_mcu(wanted).key != chip:
            raise CheckRefused(
                "mcu", f"The build is for {wanted} but the board in BOOTSEL mode is an "
                f"{chip.upper()} ({boot[0].usb_id}).",
                hint=f"Choose the preset or mcu for an {chip.upper()} board and build again.",
                facts={"artifact": wanted, "board": chip})
        return CheckResult("board_mcu", True, f"the boot ROM is an {chip.upper()}'s")

    # --- running ------------------------------------------------------------------------
    async def run_step(self, run: _PlanRun, step: FlashStep, record: StepRecord) -> None:
        timeout = float(step.timeout or 60.0)
        if step.kind == "build_rp2040_flash":
            await self._build_tool(run, step, record, timeout)
        elif step.kind == "wait_bootsel":
            found = await self._wait_bootsel(run, step, timeout)
            if found is not None:
                run.state["device"] = found
                record.message = f"{found.usb_id} on USB bus {found.bus} address {found.address}"
        elif step.kind == "write_rp2040":
            await self._write(run, step, timeout)
        else:
            await super().run_step(run, step, record)

    async def _build_tool(self, run: _PlanRun, step: FlashStep, record: StepRecord,
                          timeout: float) -> None:
        import asyncio

        from ...tools import run_tool
        from ..results import WriteFailed
        tool = str(step.params["tool"])

        def built() -> bool:
            return os.path.isfile(tool) and os.access(tool, os.X_OK)
        if await asyncio.to_thread(built):
            record.status, record.message = "skipped", f"{tool} is already built"
            return
        assert step.argv is not None
        result = await run_tool(step.argv, timeout=timeout, cwd=str(step.params["cwd"]),
                                what="make rp2040_flash")
        if result.returncode != 0 or not await asyncio.to_thread(built):
            raise WriteFailed(
                f"Building {TOOL_IN_CHECKOUT} in {step.params['cwd']} failed (exit "
                f"{result.returncode}).", log_tail=result.tail(),
                hint="It needs gcc, make, pkg-config and libusb-1.0's headers "
                     "(Debian: sudo apt install build-essential pkg-config libusb-1.0-0-dev).")

    async def _wait_bootsel(self, run: _PlanRun, step: FlashStep, timeout: float) -> Any:
        from ..checks import CheckRefused
        if run.ctx.discover is None:
            return None
        instructions = str(step.params.get("instructions") or BOOTSEL_HOW)

        async def probe() -> Any:
            devices = await run.snapshot()
            if devices is None:
                return None
            boot = [d for d in devices.usb if d.kind in self.device_kinds]
            if len(boot) > 1:
                raise CheckRefused(
                    "bootsel_device", f"{len(boot)} boards are in BOOTSEL mode and "
                    "rp2040_flash would write the first it finds.",
                    hint="Leave only the board to write in BOOTSEL mode (unplug or reset the "
                         "others), then flash again.")
            if boot:
                self._board_mcu(run.plan, boot)
            return boot[0] if boot else None
        return await wait_for_board(run, probe, mode="BOOTSEL mode", key="bootsel",
                                    timeout=timeout, instructions=instructions)

    async def _write(self, run: _PlanRun, step: FlashStep, timeout: float) -> None:
        from ...events import Progress
        from ...tools import run_tool
        from ..results import WriteFailed
        assert step.argv is not None
        found = run.state.get("device")
        argv = [a for a in step.argv if a not in (BUS_PLACEHOLDER, ADDRESS_PLACEHOLDER)]
        if found is not None and found.bus is not None and found.address is not None:
            argv += [str(found.bus), str(found.address)]
        seen: Dict[str, Any] = {}

        def on_line(stream: str, line: str) -> None:
            text = line.strip()
            run.result.log.append(text)
            if text == "Erasing":
                run.write_started = True
                run.emit("erase", "Erasing the sectors the image covers", 0.0, kind="progress")
            elif text == "Flashing":
                run.emit("write", "Writing pages", 50.0, kind="progress")
            elif text == "Rebooting device":
                seen["rebooted"] = True
                run.emit("write", "Written; the board reboots", 100.0, kind="progress")
            run.ctx.on_progress(Progress("write", text, None, kind="output"))
        run.write_started = False
        result = await run_tool(argv, timeout=timeout, env=run.config.tool_env or None,
                                on_line=on_line, what="rp2040_flash")
        lines = [line.strip() for line in result.lines]
        failed = [line for line in lines if _FAILED_RE.match(line)]
        if NO_DEVICE in lines:
            await self._refused_access(run, found, result)
            raise WriteFailed("No board in BOOTSEL mode: rp2040_flash found no 2e8a:0003 device.",
                              hint=BOOTSEL_HOW, log_tail=result.tail(), returncode=result.returncode,
                              write_started=False)
        if failed or result.returncode != 0 or not seen.get("rebooted"):
            why = failed[0] if failed else (lines[-1] if lines else f"exit code {result.returncode}")
            raise WriteFailed(f"rp2040_flash failed: {why}", log_tail=result.tail(),
                              returncode=result.returncode, write_started=run.write_started)
        loaded = next((m for m in map(_LOADED_RE.match, lines) if m), None)
        if loaded is not None:
            run.emit("write", f"{loaded.group('pages')} pages written", kind="output")

    async def _refused_access(self, run: _PlanRun, found: Any, result: Any) -> None:
        """rp2040_flash says "No rp2040 in BOOTSEL mode was found" also when it may not open
        the boot ROM (picoboot_open_device skips a device libusb_open refuses, and prints
        nothing unless built verbose).  If the device it was pointed at is still there, that
        is the reason: say which device and how to get access."""
        import asyncio

        from ...discovery.permissions import permission_fix
        from ..results import WriteFailed
        if found is None or found.bus is None or found.address is None:
            return
        devices = await run.snapshot()
        still = devices is not None and any(
            d.kind in self.device_kinds and (d.bus, d.address) == (found.bus, found.address)
            for d in devices.usb)
        node = usb_device_node(found.bus, found.address)
        denied = await asyncio.to_thread(_not_writable, node)
        if not still and not denied:
            return
        chip = "RP2350" if found.kind == "rp2350_boot" else "RP2040"
        device = f"{found.usb_id} (USB bus {found.bus} device {found.address}, {node})"
        raise WriteFailed(
            f"rp2040_flash could not open the {chip} boot ROM {device} for "
            f"'{run.plan.profile_name}': it is connected, but rp2040_flash reports \"{NO_DEVICE}\", "
            "which it also says when it may not open the device: nothing was written.",
            hint=permission_fix(f"{device}, the {chip} in BOOTSEL mode") +
            " (If picotool or another program has the board open, close it.)",
            log_tail=result.tail(), returncode=result.returncode, write_started=False)

    def returned(self, devices: DeviceSnapshot, params: Mapping[str, Any]) -> Optional[str]:
        if params.get("expect") != "bootsel-gone":
            return None
        still = [d for d in devices.usb if d.kind == params.get("kind")]
        return "the board left BOOTSEL mode" if not still else None

    # --- recovery ----------------------------------------------------------------------
    def recovery(self, plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                 write_complete: bool = False, board_back: bool = False) -> Optional[str]:
        again = (f"octoflash flash {plan.profile_name} --method {self.name}")
        if not write_started:
            return None
        if write_complete and board_back:
            return ("The write completed, but the board runs other firmware: check that the "
                    "profile names the board that was written, then flash again through the "
                    f"boot ROM: {BOOTSEL_HOW} Then: {again}")
        if write_complete:
            return ("rp2040_flash wrote every page and rebooted the board, but it did not come "
                    "back as expected: power-cycle it; if it still does not appear, the build's "
                    "communication interface (USB, or CAN and its pins and speed) does not fit "
                    "the board. The boot ROM cannot be damaged, so the board can always be "
                    f"written again: {BOOTSEL_HOW} Then: {again}")
        return ("The flash was partly written. The RP2040's boot ROM cannot be damaged, so the "
                f"board can always be recovered: {BOOTSEL_HOW} Then flash again: {again}")


METHOD = Rp2040BootMethod()
