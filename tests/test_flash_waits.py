"""What a flash does around the write, and what it no longer repeats.

* The checks use the plan's own scan while it is young; a board that
  changes after it is still refused before the first block, by Katapult's
  own answer; an old plan gets a fresh scan, which refuses before Klipper
  is stopped.
* A wait for a rebooting CAN node asks the bus until the node answers
  (``discovery.can.watch_for_node`` through the pipeline's ``watch_can``),
  with no ``flashtool.py -q`` for a node that simply rebooted.
* Each step records the time its tool ran (``tool_seconds``).
* The flash's scan does not listen for a node Klipper holds.
"""
from __future__ import annotations

import dataclasses
import threading

from fixtures_flash import EBB_PRESET, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.discovery.can import watch_for_node
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.pipeline import CoreFlashPipeline
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.sim.machine import SimulatedMachineSeam


def _bridge(rig):
    """The USB-CAN bridge that makes can0 (it runs Klipper)."""
    return rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                 firmware={"version": "v0.12.0-1-gold", "bridge": True})


def _ebb(rig, artifact_dir, **board):
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"}, **board)
    profile = ebb_profile(node.canbus_uuid)
    art = write_artifact(artifact_dir("ebb"), profile="ebb", preset=EBB_PRESET.id,
                         mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    return node, profile, art


def _pipeline(rig):
    """The product's pipeline on the rig's machine (its CAN watch, its scan)."""
    return CoreFlashPipeline(None, rig.service,
                             machine=SimulatedMachineSeam(rig.machine.directory))


def _outputs(rig):
    return [e.message for e in rig.events if e.kind == "output"]


async def test_a_board_changed_after_a_young_plan_is_refused_by_katapult_before_writing(
        rig, artifact_dir):
    node, profile, art = _ebb(rig, artifact_dir)
    before = node.read_flash(0x08002000, 4096)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    # Another chip now answers as this node (the board was swapped after the plan).
    node.update(lambda s: s.__setitem__("mcu", "stm32f446xx"))
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and not result.written
    assert result.check == "mcu"
    assert "Katapult (flashtool.py -s, MCU type) reports stm32f446xx" in result.message
    assert any(m.startswith("the board as the plan's scan saw it") for m in _outputs(rig))
    assert rig.writes() == [] and node.read_flash(0x08002000, 4096) == before
    assert rig.service.calls == ["stop", "start"]


async def test_an_old_plan_gets_a_fresh_scan_that_refuses_before_klipper_is_stopped(
        rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx",
                                  firmware={"version": "v1", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    section = {"settings": {"mcu": {"canbus_uuid": board.canbus_uuid}}}
    rig.klipper_status = {"mcu": rig.machine.klipper_mcu_status("octopus"), "configfile": section}
    config = dataclasses.replace(rig.config, plan_scan_reuse=0.0)
    plan = make_plan(profile, art, devices=await rig.scan(), config=config)
    # Klipper now reports another chip on that board.
    rig.klipper_status = {"mcu": dict(rig.klipper_status["mcu"],
                                      mcu_constants={"MCU": "stm32f429xx"}),
                          "configfile": section}
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and result.check == "mcu"
    assert "Klipper (mcu, mcu_constants.MCU) reports stm32f429xx" in result.message
    assert not any(m.startswith("the board as the plan's scan saw it") for m in _outputs(rig))
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []


async def test_a_rebooting_can_node_is_awaited_on_the_bus_and_tool_time_is_recorded(
        rig, artifact_dir):
    node, profile, art = _ebb(rig, artifact_dir, boot_delay=0.3)
    pipeline = _pipeline(rig)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context(watch_can=pipeline.watch_can))
    assert result.ok, result.summary()
    assert node.mode == "klipper"
    assert result.board_detail == f"node {node.canbus_uuid} answers on can0 as Klipper"
    image = open(art.path(), "rb").read()
    assert node.read_flash(0x08002000, len(image)) == image
    # a node that rebooted answers the query: no flashtool -q to clear node ids
    runs = [e["argv"][-1] for e in rig.machine.tool_invocations("flashtool")]
    assert runs == ["-r", "-s", art.path()]
    steps = {s.kind: s for s in result.steps}
    for kind in ("request_bootloader", "katapult_status", "write_katapult"):
        assert 0 < steps[kind].tool_seconds <= steps[kind].duration, kind
    for kind in ("stop_klipper", "wait_katapult_can", "wait_return"):
        assert steps[kind].tool_seconds is None, kind


async def test_a_node_left_with_a_node_id_is_cleared_when_it_stays_silent(rig, artifact_dir):
    node, profile, art = _ebb(rig, artifact_dir)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    # It sits in Katapult with a node id (an earlier flashtool -s): silent on the query.
    node.set_mode("katapult", delay=0.0)
    node.update(lambda s: s.__setitem__("node_assigned", True))
    config = dataclasses.replace(rig.config, can_clear_after=0.2)
    plan = dataclasses.replace(plan, config=config)
    result = await execute_plan(plan, rig.context(watch_can=_pipeline(rig).watch_can))
    assert result.ok, result.summary()
    runs = [e["argv"][-1] for e in rig.machine.tool_invocations("flashtool")]
    assert runs[:3] == ["-r", "-q", "-s"]


def test_watch_for_node_waits_for_the_application_asked_for(machine, can_nodes):
    machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                      firmware={"version": "v0.12.0-1-gold", "bridge": True})
    node = machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                             firmware={"version": "v0.12.0"}, boot_delay=0.3)
    uuid = node.canbus_uuid
    found = watch_for_node("can0", uuid, timeout=5, application="Klipper", bustype="virtual")
    assert found is not None and (found.uuid, found.application) == (uuid, "Klipper")
    # it runs Klipper: asked for Katapult, it is not it
    assert watch_for_node("can0", uuid, timeout=0.3, application="Katapult",
                          bustype="virtual") is None
    node.enter_bootloader()          # reboots into Katapult, 0.3 s
    found = watch_for_node("can0", uuid, timeout=5, application="Katapult", bustype="virtual")
    assert found is not None and found.application == "Katapult"
    stop = threading.Event()
    stop.set()
    assert watch_for_node("can0", "0123456789ab", timeout=5, bustype="virtual", stop=stop) is None


async def test_the_flash_scan_does_not_listen_for_a_node_klipper_holds(rig):
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"})
    other = rig.machine.add_board("ebb2", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                  firmware={"version": "v0.12.0"})
    status = {"mcu ebb": rig.machine.klipper_mcu_status("ebb"),
              "configfile": {"settings": {"mcu ebb": {"canbus_uuid": node.canbus_uuid}}}}

    async def klipper_status():
        return status
    pipeline = CoreFlashPipeline(None, rig.service, klipper_status=klipper_status,
                                 machine=SimulatedMachineSeam(rig.machine.directory))
    held = await pipeline._scan_for(ebb_profile(node.canbus_uuid))()
    assert held.status_of(ebb_profile(node.canbus_uuid)).state == "running"
    assert held.can_nodes == [] and held.can_interface_up("can0")
    # a node Klipper does not report is listened for as before
    free = await pipeline._scan_for(ebb_profile(other.canbus_uuid))()
    assert other.canbus_uuid in [n.uuid for n in free.can_nodes]
