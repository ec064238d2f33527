"""Checks before writing: each refusal is a ``CheckFailed`` and nothing is written.

Two groups.  ``run_checks`` needs no tool: the artifact against its own
record, the profile and the MCU's flash, and the board as the last scan saw
it (Klipper's ``mcu_constants.MCU``, Katapult's USB product string, the DFU
flash layout, a Katapult found on a board about to get an image linked at
0x08000000).  ``check_katapult_status`` runs once Katapult has answered a
status request (``flashtool.py -s``), before the write: its MCU type and its
application start against the image.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Dict, List, Optional

from ..artifacts import file_sha256
from ..discovery.snapshot import DeviceSnapshot
from ..discovery.usb import parse_dfu_layout
from ..errors import CheckFailed
from ..presets import mcu_info
from .plan import FLASH_BASE, FlashPlan

NOTHING_WRITTEN = "Nothing was written."


class CheckRefused(CheckFailed):
    """A refusal naming the check that made it (``check``) and the facts compared."""

    def __init__(self, check: str, message: str, *, hint: Optional[str] = None,
                 facts: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f"{message} {NOTHING_WRITTEN}", hint=hint)
        self.check = check
        self.facts = dict(facts or {})


@dataclasses.dataclass
class CheckResult:
    name: str
    ok: bool
    message: str

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class KatapultStatus:
    """What ``flashtool.py -s`` printed about the bootloader."""
    mcu: Optional[str] = None
    app_start: Optional[int] = None
    block_size: Optional[int] = None
    software_version: Optional[str] = None
    protocol_version: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.app_start is not None:
            data["app_start"] = f"0x{self.app_start:08x}"
        return data


def _flash_size(plan: FlashPlan) -> Optional[int]:
    if plan.artifact.flash_size:
        return plan.artifact.flash_size
    info = mcu_info(plan.artifact.mcu)
    return info.flash_size if info else None


def image_mcu(plan: FlashPlan) -> str:
    """The MCU the image is for: its data dictionary's, else the build's."""
    return plan.artifact.dict_mcu or plan.artifact.mcu


# --- checks that need no tool -------------------------------------------------
def check_artifact_file(plan: FlashPlan, actual_sha256: Optional[str]) -> CheckResult:
    art = plan.artifact
    try:
        record = art.file(plan.file_name)
    except KeyError:
        names = ", ".join(f.name for f in art.files) or "none"
        raise CheckRefused("artifact_file",
                           f"Build {art.id} of '{plan.profile_name}' has no {plan.file_name} "
                           f"(it holds: {names}).",
                           hint="Build the profile again; a Katapult build needs a deployment "
                                "application (CONFIG_STM32_FLASH_START_…) for deployer.bin.")
    if actual_sha256 is None:
        raise CheckRefused("sha256", f"{plan.file_path} is missing.",
                           hint="Build the profile again.")
    if actual_sha256 != record.sha256:
        raise CheckRefused(
            "sha256", f"{plan.file_name} of build {art.id} no longer matches its record "
            f"(sha256 {record.sha256[:16]}… recorded, {actual_sha256[:16]}… now): the file "
            "changed after the build.", hint="Build the profile again.",
            facts={"recorded": record.sha256, "actual": actual_sha256})
    return CheckResult("sha256", True, f"{plan.file_name} matches its record ({record.sha256[:16]}…)")


def check_artifact_profile(plan: FlashPlan) -> CheckResult:
    art, profile = plan.artifact, plan.profile
    if art.mcu != profile.mcu:
        raise CheckRefused(
            "mcu", f"Build {art.id} is for {art.mcu} but profile '{profile.name}' is for "
            f"{profile.mcu}.", hint="Build the profile again before flashing.",
            facts={"artifact": art.mcu, "target": profile.mcu})
    if art.dict_mcu and art.dict_mcu != art.mcu:
        raise CheckRefused(
            "mcu", f"klipper.bin's data dictionary says {art.dict_mcu}, its build record says "
            f"{art.mcu}.", hint="Build the profile again.",
            facts={"artifact": art.dict_mcu, "target": art.mcu})
    return CheckResult("artifact_profile", True, f"build is for {art.mcu}, as the profile")


def check_size(plan: FlashPlan, size: int, start: Optional[int] = None) -> CheckResult:
    flash = _flash_size(plan)
    start = plan.address if start is None else start
    if flash is None:
        return CheckResult("size", True, "flash size unknown; not checked")
    room = FLASH_BASE + flash - start
    if size > room:
        raise CheckRefused(
            "size", f"{plan.file_name} is {size} bytes but only {max(room, 0)} bytes of "
            f"flash are free from 0x{start:08x} on the {plan.artifact.mcu} "
            f"({flash // 1024} KiB).", hint="Check the preset's MCU and bootloader offset.",
            facts={"size": size, "room": room})
    return CheckResult("size", True, f"{size} bytes fit in {room} bytes from 0x{start:08x}")


def _mcu_refusal(source: str, board_mcu: str, plan: FlashPlan) -> CheckRefused:
    return CheckRefused(
        "mcu", f"The build is for {image_mcu(plan)} but {source} reports {board_mcu}.",
        hint=f"Choose the preset for a {board_mcu} board and build again, or check that the "
             "profile names the right board.",
        facts={"artifact": image_mcu(plan), "board": board_mcu, "source": source})


def check_board_mcu(plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> CheckResult:
    """The board's own word on its chip, from the last scan, where it gives one."""
    if devices is None:
        return CheckResult("board_mcu", True, "no scan; MCU checked later by Katapult")
    wanted = image_mcu(plan)
    profile = plan.profile
    km = devices.klipper_mcu_for(profile)
    if km is not None and km.connected and km.mcu_type and plan.profile.target == "klipper":
        if km.mcu_type != wanted:
            raise _mcu_refusal(f"Klipper ({km.object_name}, mcu_constants.MCU)", km.mcu_type, plan)
        return CheckResult("board_mcu", True, f"Klipper reports {km.mcu_type}")
    if plan.method == "katapult":
        chip = devices.chip_serial_for(profile)
        for kind in ("katapult", "klipper", "canbridge"):
            dev = devices.usb_by_serial(kind, chip) if chip else None
            if dev is not None and dev.mcu:
                if dev.mcu != wanted:
                    raise _mcu_refusal(f"the board's USB {kind} device ({dev.usb_id})", dev.mcu, plan)
                return CheckResult("board_mcu", True, f"USB device reports {dev.mcu}")
    if plan.method == "dfu":
        dev = devices.dfu_device(plan.dfu_serial) if plan.dfu_serial else None
        if dev is None and len(devices.dfu_devices()) == 1:
            dev = devices.dfu_devices()[0]
        if dev is not None and dev.dfu_layout:
            return check_dfu_layout(plan, dev.dfu_layout)
    return CheckResult("board_mcu", True, "the board's MCU is checked when it answers")


def check_dfu_layout(plan: FlashPlan, layout_text: str) -> CheckResult:
    """The DFU memory map tells the flash size and sector layout, so often the chip."""
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
    """Refuse an image linked at 0x08000000 for a board seen running Katapult."""
    art = plan.artifact
    if plan.profile.target != "klipper" or art.app_address != FLASH_BASE or plan.method != "dfu":
        return CheckResult("bootloader", True, "the bootloader area is not written")
    evidence = None
    if devices is not None:
        status = devices.status_of(plan.profile)
        if status.state == "bootloader":
            evidence = f"the board was seen in Katapult ({status.detail})"
        else:
            chip = devices.chip_serial_for(plan.profile)
            if chip and devices.usb_by_serial("katapult", chip) is not None:
                evidence = "the board's Katapult is on USB"
    if evidence and not plan.allow_bootloader_overwrite:
        raise CheckRefused(
            "bootloader", f"{plan.file_name} is linked at 0x08000000 and writing it would erase "
            f"the Katapult bootloader on this board ({evidence}).",
            hint="Use the preset with the bootloader offset (…-canbridge) to keep Katapult, or "
                 "ask for exactly this (--allow-bootloader-overwrite) to remove it.",
            facts={"evidence": evidence})
    if evidence:
        return CheckResult("bootloader", True, "Katapult will be erased, as asked")
    return CheckResult("bootloader", True, "no bootloader seen on the board")


def check_dfu_choice(plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> CheckResult:
    """Several boards in DFU mode and no serial to tell them apart: do not guess."""
    if plan.method != "dfu" or devices is None:
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


async def run_checks(plan: FlashPlan, devices: Optional[DeviceSnapshot] = None) -> List[CheckResult]:
    """Every check that needs no tool; raises ``CheckRefused`` on the first refusal."""
    path = plan.file_path
    actual = await asyncio.to_thread(lambda: file_sha256(path) if os.path.isfile(path) else None)
    results = [check_artifact_file(plan, actual), check_artifact_profile(plan)]
    results.append(check_size(plan, plan.artifact.file(plan.file_name).size))
    results.append(check_board_mcu(plan, devices))
    results.append(check_bootloader_kept(plan, devices))
    results.append(check_dfu_choice(plan, devices))
    return results


# --- checks against Katapult's own answer ---------------------------------------------
def check_katapult_status(plan: FlashPlan, status: KatapultStatus) -> List[CheckResult]:
    """MCU type and application start reported by Katapult against the image."""
    results: List[CheckResult] = []
    if status.mcu:
        if status.mcu != image_mcu(plan):
            raise _mcu_refusal("Katapult (flashtool.py -s, MCU type)", status.mcu, plan)
        results.append(CheckResult("mcu", True, f"Katapult reports {status.mcu}"))
    if status.app_start is not None:
        if status.app_start != plan.address:
            what = "deployer.bin" if plan.profile.target == "katapult" else plan.file_name
            raise CheckRefused(
                "app_address", f"{what} is linked at 0x{plan.address:08x} but the board's "
                f"Katapult starts applications at 0x{status.app_start:08x}.",
                hint=f"Build with the bootloader offset 0x{status.app_start - FLASH_BASE:x} "
                     "(the preset for this board's bootloader), or replace the bootloader first.",
                facts={"artifact": plan.address, "bootloader": status.app_start})
        results.append(CheckResult("app_address", True,
                                   f"Katapult starts applications at 0x{status.app_start:08x}"))
        size = plan.artifact.file(plan.file_name).size
        results.append(check_size(plan, size, start=status.app_start))
    return results
