"""Klipper stopped and started around a flash, on every exit path; several MCUs in one run."""
from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from fixtures_flash import EBB_PRESET, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.errors import UnavailableError
from moonraker_octoflash.flash.executor import execute_plan, execute_plans
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.service import KlipperService, NullService, SystemctlService


def _boards(rig):
    bridge = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                   firmware={"version": "v0.12.0", "bridge": True})
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"})
    return bridge, node


def _plans(rig, artifact_dir, devices, bridge, node):
    octo = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    ebb = ebb_profile(node.canbus_uuid)
    octo_art = write_artifact(artifact_dir("o"), profile="octopus", preset=octo.preset.id)
    ebb_art = write_artifact(artifact_dir("e"), profile="ebb", preset=EBB_PRESET.id,
                             mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    return (make_plan(octo, octo_art, devices=devices, config=rig.config),
            make_plan(ebb, ebb_art, devices=devices, config=rig.config))


async def test_several_mcus_node_first_bridge_last_klipper_stopped_once(rig, artifact_dir):
    bridge, node = _boards(rig)
    octo_plan, ebb_plan = _plans(rig, artifact_dir, await rig.scan(), bridge, node)
    results = await execute_plans([octo_plan, ebb_plan], rig.context())
    assert [r.profile for r in results] == ["ebb", "octopus"]
    assert all(r.ok for r in results), [r.summary() for r in results]
    assert rig.service.calls == ["stop", "start"]
    writes = [e["argv"] for e in rig.writes()]
    assert writes[0][:4] == ["-i", "can0", "-u", node.canbus_uuid]      # the node while can0 exists
    assert writes[1][0] == "-d"                                          # then the bridge over USB
    for board, plan in ((bridge, octo_plan), (node, ebb_plan)):
        image = open(plan.file_path, "rb").read()
        assert board.read_flash(plan.address, len(image)) == image


async def test_a_refused_board_stops_nothing_and_the_others_still_flash(rig, artifact_dir):
    bridge, node = _boards(rig)
    octo_plan, ebb_plan = _plans(rig, artifact_dir, await rig.scan(), bridge, node)
    with open(ebb_plan.file_path, "ab") as f:
        f.write(b"changed")
    results = await execute_plans([octo_plan, ebb_plan], rig.context())
    by_name = {r.profile: r for r in results}
    assert by_name["ebb"].state == "refused" and by_name["ebb"].check == "sha256"
    assert by_name["octopus"].ok
    assert [e["argv"][0] for e in rig.writes()] == ["-d"]
    assert rig.service.calls == ["stop", "start"]


async def test_all_refused_leaves_klipper_alone(rig, artifact_dir):
    bridge, node = _boards(rig)
    octo_plan, ebb_plan = _plans(rig, artifact_dir, await rig.scan(), bridge, node)
    for plan in (octo_plan, ebb_plan):
        os.unlink(plan.file_path)
    results = await execute_plans([octo_plan, ebb_plan], rig.context())
    assert [r.state for r in results] == ["refused", "refused"]
    assert rig.service.calls == [] and rig.machine.tool_invocations() == []


async def test_cancelling_a_run_of_several_restarts_klipper(rig, artifact_dir):
    bridge, node = _boards(rig)
    node.set_fault("katapult_hang")
    octo_plan, ebb_plan = _plans(rig, artifact_dir, await rig.scan(), bridge, node)
    ctx = rig.context()
    task = asyncio.create_task(execute_plans([octo_plan, ebb_plan], ctx))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if any(e.message.endswith("klipper.bin'...") for e in rig.events):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    states = {r.profile: r.state for r in ctx.results}
    assert states == {"ebb": "cancelled", "octopus": "cancelled"}
    assert rig.service.calls == ["stop", "start"]
    assert bridge.mode == "klipper-canbridge"         # the bridge was never touched


class _BrokenStart(KlipperService):
    """Klipper runs; stopping works, starting it again does not."""

    def __init__(self):
        self.calls = []
        self.running = True

    async def stop(self):
        self.calls.append("stop")
        self.running = False

    async def start(self):
        self.calls.append("start")
        raise UnavailableError("Cannot start klipper: Interactive authentication required")

    async def is_active(self):
        return self.running


async def test_a_failed_restart_is_reported_not_hidden(rig, artifact_dir):
    bridge, _node = _boards(rig)
    profile = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    service = _BrokenStart()
    ctx = rig.context()
    ctx.service = service
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), ctx)
    assert result.ok and result.klipper_restarted is False
    assert any("Klipper could not be started again" in w and "systemctl start klipper" in w
               for w in result.warnings)
    assert service.calls == ["stop", "start"]


async def test_klipper_stop_that_fails_writes_nothing(rig, artifact_dir):
    bridge, _node = _boards(rig)
    profile = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)

    class NoStop(_BrokenStart):
        async def stop(self):
            self.calls.append("stop")
            raise UnavailableError("Cannot stop klipper: sudo asked for a password")

        async def start(self):
            self.calls.append("start")
    ctx = rig.context()
    ctx.service = NoStop()
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), ctx)
    assert result.state == "failed" and not result.written
    assert "sudo asked for a password" in result.message
    assert rig.machine.tool_invocations() == []
    # Klipper still runs after the refused stop: nothing to start again
    assert ctx.service.calls == ["stop"] and result.klipper_restarted is None


@pytest.mark.skipif(not shutil.which("systemctl"), reason="systemctl not installed")
async def test_systemctl_service_reports_what_went_wrong(tmp_path):
    # systemd is said to run (its folder exists), but the real systemctl fails: the error says so.
    service = SystemctlService("klipper", use_sudo=False, timeout=10, systemd_dir=str(tmp_path))
    assert service.has_systemd()
    assert await service.is_active() is False
    with pytest.raises(UnavailableError) as caught:
        await service.stop()
    assert str(caught.value).startswith("Cannot stop klipper (systemctl exit")


async def test_without_systemd_klipper_runs_when_its_api_socket_answers(tmp_path):
    sock = str(tmp_path / "klippy.sock")
    service = SystemctlService("klipper", use_sudo=False, timeout=5, api_socket=sock,
                               systemd_dir=str(tmp_path / "no-systemd"))
    assert not service.has_systemd()
    assert await service.is_active() is False           # no socket: Klipper is not running
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=sock)
    try:
        assert await service.is_active() is True
        with pytest.raises(UnavailableError) as caught:
            await service.stop()
        assert "systemd does not run here" in str(caught.value)
        assert caught.value.hint == "Stop Klipper yourself, then flash again"
    finally:
        server.close()
        await server.wait_closed()


async def test_without_systemd_and_klipper_not_running_the_flash_needs_no_stop(rig, artifact_dir,
                                                                             tmp_path):
    bridge, _node = _boards(rig)
    profile = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    ctx = rig.context()
    ctx.service = SystemctlService("klipper", use_sudo=False, timeout=5,
                                   api_socket=str(tmp_path / "klippy.sock"),
                                   systemd_dir=str(tmp_path / "no-systemd"))
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), ctx)
    assert result.ok, result.summary()
    steps = {s.kind: s for s in result.steps}
    assert steps["stop_klipper"].status == "skipped"
    assert steps["stop_klipper"].message == "not needed: Klipper was not running"
    assert steps["start_klipper"].status == "skipped"
    assert result.klipper_stopped is False and result.klipper_restarted is None
    assert not any("could not be" in w for w in result.warnings)
    assert not any(e.stage == "start_klipper" for e in rig.events)


async def test_klipper_not_running_is_not_stopped_nor_started(rig, artifact_dir):
    bridge, _node = _boards(rig)
    rig.machine.set_klipper_running(False)
    profile = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert rig.service.calls == [] and rig.machine.klipper_running is False
    assert result.steps[0].kind == "stop_klipper" and result.steps[0].status == "skipped"


async def test_step_records_say_klipper_was_stopped_once_for_several_boards(rig, artifact_dir):
    bridge, node = _boards(rig)
    octo_plan, ebb_plan = _plans(rig, artifact_dir, await rig.scan(), bridge, node)
    results = await execute_plans([octo_plan, ebb_plan], rig.context())
    assert all(r.ok for r in results)
    for result in results:
        stop = next(s for s in result.steps if s.kind == "stop_klipper")
        start = next(s for s in result.steps if s.kind == "start_klipper")
        assert stop.status == "done" and stop.message in (
            "Klipper stopped", "Klipper was stopped once for every board of this run")
        assert start.status == "done" and result.klipper_stopped and result.klipper_restarted
    assert rig.service.calls == ["stop", "start"]


def test_systemctl_uses_sudo_without_a_prompt_when_not_root():
    service = SystemctlService("klipper", use_sudo=True)
    assert service._argv("stop") == ["sudo", "-n", "systemctl", "stop", "klipper"]
    assert service._argv("is-active") == ["systemctl", "is-active", "klipper"]
    assert SystemctlService("klipper", use_sudo=False)._argv("start") == ["systemctl", "start", "klipper"]


async def test_null_service_for_boards_klipper_does_not_use():
    service = NullService()
    await service.stop()
    await service.start()
    assert await service.is_active() is False


async def test_a_refused_stop_does_not_claim_klipper_was_restarted(rig, artifact_dir):
    bridge, _node = _boards(rig)
    profile = octopus_profile(canbus_uuid=bridge.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("o"), profile="octopus", preset=profile.preset.id)

    class StillRunning(_BrokenStart):
        async def stop(self):
            self.calls.append("stop")
            raise UnavailableError("Cannot stop klipper (systemctl exit 1): Access denied")

        async def is_active(self):
            return True
    ctx = rig.context()
    ctx.service = StillRunning()
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), ctx)
    assert result.state == "failed" and not result.written and "Access denied" in result.message
    assert ctx.service.calls == ["stop"] and result.klipper_restarted is None
    assert not any("could not be started" in w for w in result.warnings)
