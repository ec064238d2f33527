"""What several methods share: Katapult seen on a board, and the recovery text.

The loader in the chip's mask ROM is the last resort: it cannot be damaged,
so a board left half-written is always recovered through it.  Which loader
that is (the STM32's DFU loader, the RP2040's boot ROM in BOOTSEL), how a
board is put into it and which method writes through it are the MCU's facts
(``mcus.RomLoader``), so the texts here fit every board.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from ...mcus import STM32_DFU, RomLoader, flash_base, rom_loader
from ...presets import list_presets

if TYPE_CHECKING:
    from ...discovery.snapshot import DeviceSnapshot
    from ..executor import _PlanRun
    from ..plan import FlashPlan

# The flashers, the checks, the planner and the discovery are imported by the functions
# that use them: a preset asks the methods what they offer (``offered_methods``), which
# must not import them all.


async def wait_for_board(run: _PlanRun, probe: Callable[[], Awaitable[Any]], *, mode: str,
                         key: str, timeout: float, instructions: str,
                         hint: Optional[str] = None) -> Any:
    """Wait until ``probe`` finds the board in ``mode`` ("DFU mode", "BOOTSEL mode"), saying
    once how to put it there; a board that does not come within ``timeout`` fails the
    step, with the same instructions as the hint."""
    from ..results import WriteFailed
    found = await probe()
    if found is None:
        run.emit("wait_device", f"No board in {mode} yet. {instructions}".rstrip())
        found = await run.poll(key, timeout, probe)
    if found is None:
        raise WriteFailed(f"No board in {mode} within {timeout:g} s.",
                          hint=instructions or hint)
    return found


def katapult_seen(plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> Optional[str]:
    """How the last scan showed Katapult on the profile's board, or None."""
    if devices is None:
        return None
    status = devices.status_of(plan.profile)
    if status.state == "bootloader":
        return f"the board was seen in Katapult ({status.detail})"
    chip = devices.chip_serial_for(plan.profile)
    if chip and devices.usb_by_serial("katapult", chip) is not None:
        return "the board's Katapult is on USB"
    return None


def _katapult_preset_for(profile: Any) -> Optional[str]:
    family = getattr(profile.preset, "family", "")
    for p in list_presets():
        if p.target == "katapult" and p.mcu == profile.mcu and (not family or p.id.startswith(family)):
            return p.id
    return None


def rom_of(plan: FlashPlan) -> RomLoader:
    """The ROM loader of the plan's board (its build's MCU; the STM32's DFU loader when the
    MCU is not one octoflash knows)."""
    return rom_loader(plan.artifact.mcu) or rom_loader(getattr(plan.profile, "mcu", None)) \
        or STM32_DFU


def rom_instructions(plan: FlashPlan, rom: RomLoader) -> str:
    """How to put the board into its ROM loader: the preset's own DFU steps on an STM32."""
    if rom.method == "dfu":
        from ..plan import dfu_instructions
        return dfu_instructions(plan.profile.preset)
    return f"Put the board into {rom.mode}: {rom.enter}."


def _then_flash(plan: FlashPlan, rom: RomLoader, *, keeps_bootloader: bool) -> str:
    if keeps_bootloader:
        katapult_preset = _katapult_preset_for(plan.profile) or \
            "the Katapult preset for this board"
        return (f"Then flash {katapult_preset} with the {rom.method} method to get the "
                "bootloader back, then this profile.")
    return f"Then flash this profile again with the {rom.method} method."


def _cannot_be_damaged(rom: RomLoader) -> str:
    return f"{rom.name[0].upper()}{rom.name[1:]} cannot be damaged"


def _settings_text(plan: FlashPlan) -> str:
    return ("the new firmware does not start, or talks over another interface than expected: "
            "check the build's clock reference, communication interface" +
            (" and CAN pins and speed" if _is_bridge_profile(plan) or plan.transport in
             ("can", "usb-can-bridge") else "") + " against the board")


def _is_bridge_profile(plan: FlashPlan) -> bool:
    from ...discovery.snapshot import profile_is_usb_can_bridge
    return plan.profile.target == "klipper" and profile_is_usb_can_bridge(plan.profile)


def board_recovery(plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                  write_complete: bool = False, board_back: bool = False) -> Optional[str]:
    """How to get the board running again after a flash that did not end well.

    ``write_complete``: the tool reported the whole image written (and, for
    Katapult, read back and verified); then nothing is half-written and the
    text is about a board that does not come back (``board_back`` False) or
    comes back running other firmware (``board_back`` True).  The way back
    is the board's ROM loader (``rom_of``): DFU on an STM32, with the steps
    of the profile's own board variant, BOOTSEL on an RP2040/RP2350; the
    Katapult preset named is that of the board.
    """
    if not write_started:
        if in_bootloader:
            return ("Nothing was written, but the board waits in Katapult: flash a build made "
                    "for it, or press its reset button once to go back to its firmware.")
        return None
    profile = plan.profile
    rom = rom_of(plan)
    how = rom_instructions(plan, rom)
    recover = f"recover {rom.via}: {how}"
    keeps_bootloader = profile.target == "klipper" and \
        plan.artifact.app_address != flash_base(plan.artifact.mcu)
    rom_then = _then_flash(plan, rom, keeps_bootloader=keeps_bootloader)
    if write_complete and board_back:
        return ("The write completed, but the board runs other firmware: check that the "
                "profile names the board that was written (its serial path or canbus_uuid), "
                f"then flash again. If it still reports the old version, {recover} {rom_then}")
    if write_complete:
        if plan.method == "katapult":
            done = ("The write completed and Katapult read it back and verified it: the image "
                    "on the board is the build.")
            bootloader = (" Katapult itself was not touched: double-click the reset button to "
                          "enter it and flash a build that works (an earlier build is kept: "
                          "--artifact ID). If Katapult does not come up either, "
                          f"{recover} {rom_then}")
            if profile.target == "katapult":
                done = ("deployer.bin was written and verified; it replaces Katapult on its "
                        "first start.")
                bootloader = (f" If nothing comes back, {recover} Then flash this profile "
                              f"with the {rom.method} method.")
        else:
            done = "dfu-util reported the whole image downloaded."
            bootloader = (f" {_cannot_be_damaged(rom)}, so the board can always be recovered: "
                          f"{how} {rom_then}")
        first = "Power-cycle the board (unplug USB and the 24 V supply)"
        if plan.method == "dfu":
            first += ", with the BOOT0 jumper removed: with it fitted the board starts in DFU mode"
        return (f"{done} {first}. If it still does not come back, "
                f"{_settings_text(plan)}.{bootloader}")
    if plan.method == "katapult":
        return ("The application area was partly written; Katapult itself was not touched. "
                "Double-click the reset button to enter Katapult and flash again. If Katapult "
                f"does not come up, {recover} {rom_then}")
    katapult_preset = _katapult_preset_for(profile) or "the Katapult preset for this board"
    return (f"The flash was partly written. {_cannot_be_damaged(rom)}, so the board can always "
            f"be recovered: {how} " +
            (f"Then flash again; to get a bootloader back, flash {katapult_preset} with the "
             f"{rom.method} method first, then this profile." if keeps_bootloader
             else "Then flash this profile again."))

