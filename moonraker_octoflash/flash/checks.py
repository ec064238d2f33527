"""Checks before writing: each refusal is a ``CheckFailed`` and nothing is written.

Two groups.  ``run_checks`` needs no tool: the artifact against its own
record, the profile and the MCU's flash (its size and where it starts come
from the MCU's facts), and the board as the last scan saw it (Klipper's
``mcu_constants.MCU``, then each method's own: Katapult's USB product
string, the DFU flash layout, a Katapult found on a board about to get an
image linked at the start of flash; see ``methods/*.py``).
``check_katapult_status`` runs once Katapult has answered a status request
(``flashtool.py -s``), before the write: its MCU type and its application
start against the image.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Dict, List, Optional

from ..artifacts import file_sha256
from ..discovery.snapshot import DeviceSnapshot
from ..errors import CheckFailed
from ..mcus import flash_base
from ..presets import mcu_info
from .methods import get_method
from .plan import FlashPlan

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
                                "application (CONFIG_STM32_FLASH_START_…) for deployer.bin.") from None
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
    base = flash_base(plan.artifact.mcu)
    if flash is None or base is None:
        return CheckResult("size", True, "flash size unknown; not checked")
    room = base + flash - start
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
    found = get_method(plan.method).board_check(plan, devices)
    if found is not None:
        return found
    return CheckResult("board_mcu", True, "the board's MCU is checked when it answers")


async def run_checks(plan: FlashPlan, devices: Optional[DeviceSnapshot] = None) -> List[CheckResult]:
    """Every check that needs no tool; raises ``CheckRefused`` on the first refusal."""
    path = plan.file_path
    actual = await asyncio.to_thread(lambda: file_sha256(path) if os.path.isfile(path) else None)
    results = [check_artifact_file(plan, actual), check_artifact_profile(plan)]
    results.append(check_size(plan, plan.artifact.file(plan.file_name).size))
    results.append(check_board_mcu(plan, devices))
    results.extend(get_method(plan.method).checks(plan, devices))
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
                hint=f"Build with the bootloader offset "
                     f"0x{status.app_start - (flash_base(plan.artifact.mcu) or 0):x} "
                     "(the preset for this board's bootloader), or replace the bootloader first.",
                facts={"artifact": plan.address, "bootloader": status.app_start})
        results.append(CheckResult("app_address", True,
                                   f"Katapult starts applications at 0x{status.app_start:08x}"))
        size = plan.artifact.file(plan.file_name).size
        results.append(check_size(plan, size, start=status.app_start))
    return results
