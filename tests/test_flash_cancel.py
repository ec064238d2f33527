"""Cancel at every step of a real flash (job runner, executor, simulated boards and tools).

The rule a user sees: a flash can be cancelled until the board is asked
into its bootloader (or, with DFU, until the write starts); from then until
the job ends, cancel is refused with a message saying why, and the job
finishes on its own.  A cancel that is accepted writes nothing, leaves the
board running its firmware and Klipper running.
"""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Dict, List, Optional

import pytest

from fixtures_flash import EBB_PRESET, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.errors import ConflictError
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.flash.writer_lock import probe, writer_lock_path
from moonraker_octoflash.jobs import NO_CANCEL_STAGES, CoreFlashPipeline, JobRunner
from moonraker_octoflash.profiles import Profile

USB_SERIAL_PRESET = dataclasses.replace(
    EBB_PRESET, id="test-f446-usb", mcu="stm32f446xx", app_address=0x08008000,
    kconfig={"CONFIG_MACH_STM32F446": "y", "CONFIG_STM32_FLASH_START_8000": "y",
             "CONFIG_STM32_USB_PA11_PA12": "y"})


class RigPipeline(CoreFlashPipeline):
    """The real pipeline (plan, executor, writer lock) on the test rig's machine."""

    def __init__(self, rig: Any, lock_path: str) -> None:
        super().__init__(None, rig.service, writer_lock_path=lock_path)
        self.rig = rig

    async def scan(self) -> Any:
        return await self.rig.scan()

    def flash_config(self) -> Any:
        return self.rig.config


def _setup(kind: str, rig: Any, artifact_dir: Any):
    machine = rig.machine
    if kind == "can":
        machine.add_can_adapter("can0")        # a plain USB-CAN adapter carries the bus
        board = machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                  firmware={"version": "v0.12.0"})
        profile = ebb_profile(board.canbus_uuid)
        art = write_artifact(artifact_dir("e"), profile="ebb", preset=EBB_PRESET.id,
                             mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
        return board, profile, art
    if kind == "bridge":
        board = machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                  firmware={"version": "v0.12.0", "bridge": True})
        profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
        art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
        return board, profile, art
    if kind == "serial":
        board = machine.add_board("usb", "stm32f446xx", firmware={"version": "v0.12.0"})
        profile = Profile(name="usb", preset=USB_SERIAL_PRESET, serial=board.by_id_path(),
                          klipper_mcu="mcu", source="cli")
        art = write_artifact(artifact_dir("u"), profile="usb", preset=USB_SERIAL_PRESET.id,
                             bridge=False)
        return board, profile, art
    board = machine.add_board("octopus", "stm32f446xx", bootloader=None, mode="dfu",
                              firmware={"version": "v0.12.0", "bridge": True})
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    return board, profile, art


async def _flash(rig: Any, tmp_path: Any, profile: Any, art: Any,
                 cancel_at: Optional[str] = None) -> Dict[str, Any]:
    """Run a flash job; at the first step named ``cancel_at``, ask to cancel it."""
    lock_path = writer_lock_path(str(tmp_path))
    runner = JobRunner(None, pipeline=RigPipeline(rig, lock_path),
                       find_artifact=lambda _p, _id: art)
    seen: List[str] = []
    outcome: Dict[str, Any] = {"stages": seen}
    tried: List[asyncio.Task] = []

    async def cancel(job_id: str) -> None:
        try:
            await runner.cancel(job_id)
            outcome["cancel"] = "accepted"
        except ConflictError as exc:
            outcome["cancel"] = str(exc)

    def listen(update: Any) -> None:
        job = update.job
        if update.event in ("step", "state") and job.stage and (not seen or seen[-1] != job.stage):
            seen.append(job.stage)
            if job.stage == cancel_at and not tried:
                outcome["cancel_stage"] = job.stage
                tried.append(asyncio.get_running_loop().create_task(cancel(job.id)))
    runner.add_listener(listen)
    job = await runner.start_flash(profile, build=False)
    await runner.wait(job.id, 120)
    if tried:
        await asyncio.wait_for(tried[0], 60)
    outcome["job"] = job
    outcome["lock_free"] = (await probe(lock_path))[0]
    return outcome


@pytest.mark.parametrize("kind", ["can", "serial", "bridge", "dfu"])
async def test_cancel_at_every_step(rig, artifact_dir, tmp_path, kind):
    board, profile, art = _setup(kind, rig, artifact_dir)
    image = open(art.path(), "rb").read()
    address = art.app_address
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    if kind == "dfu":
        assert plan.method == "dfu"

    # once through without cancelling: the steps a user sees
    reference = await _flash(rig, tmp_path, profile, art)
    assert reference["job"].state == "done", reference["job"].error
    stages = [s for s in reference["stages"] if s not in ("done",)]
    expected = {"can": ["request_bootloader", "wait_katapult_can", "katapult_status",
                        "write_katapult", "wait_return"],
                "serial": ["request_bootloader", "wait_katapult_usb", "katapult_status",
                           "write_katapult", "wait_return"],
                "bridge": ["request_bootloader", "wait_katapult_usb", "katapult_status",
                           "write_katapult", "wait_return"],
                "dfu": ["wait_dfu", "write_dfu", "wait_return"]}[kind]
    for stage in ["plan", "check", "stop_klipper"] + expected + ["start_klipper"]:
        assert stage in stages, (stage, stages)

    results = []
    for stage in stages:
        if kind == "dfu":
            board.set_mode("dfu", delay=0.0)      # the user put it into DFU mode again
        flash_before = board.read_flash(address, len(image))
        mode_before = board.mode
        rig.machine.set_klipper_running(True)
        rig.service.calls.clear()
        tools_before = len(rig.writes())
        run = await _flash(rig, tmp_path, profile, art, cancel_at=stage)
        job = run["job"]
        assert run.get("cancel_stage") == stage, (stage, run["stages"])
        assert rig.machine.klipper_running is True, (stage, job.state, job.error)
        assert run["lock_free"], stage
        if stage in NO_CANCEL_STAGES:
            # refused with the reason; the flash finished and the board runs it
            assert run["cancel"] != "accepted", stage
            assert ("asked the board into its bootloader" in run["cancel"]
                    or "is writing the board" in run["cancel"]
                    or "has written the board and is finishing" in run["cancel"]
                    or "already ended" in run["cancel"]), run["cancel"]
            assert job.state == "done", (stage, job.error)
            assert board.read_flash(address, len(image)) == image
            assert rig.service.calls == ["stop", "start"]
        else:
            assert run["cancel"] == "accepted", (stage, run["cancel"])
            assert job.state == "cancelled", (stage, job.state, job.error)
            assert job.recovery is None and not job.result.get("written"), stage
            assert len(rig.writes()) == tools_before, stage        # nothing written
            assert board.read_flash(address, len(image)) == flash_before
            assert board.mode == mode_before, (stage, board.mode)
            if rig.service.calls:
                assert rig.service.calls == ["stop", "start"], (stage, rig.service.calls)
        results.append((stage, job.state, run["cancel"]))
    refused = [s for s, _state, c in results if c != "accepted"]
    for stage in expected:
        assert stage in refused or stage == "wait_dfu", (stage, results)
    # before the bootloader request (or the DFU write) a cancel is accepted
    for stage in ("plan", "check", "flash", "stop_klipper") + (("wait_dfu",) if kind == "dfu" else ()):
        assert stage not in refused, (stage, results)
