"""Writing through Katapult: USB-CAN bridge, CAN node, USB serial, both flashtool versions."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os

import pytest

from fixtures_flash import EBB_PRESET, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.katapult import KatapultFlasher, katapult_sha1
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.flash.results import WriteFailed
from moonraker_octoflash.presets import get_preset
from moonraker_octoflash.profiles import Profile
from moonraker_octoflash.sim.board import make_klipper_image


def _bridge(rig, **kw):
    return rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                 firmware={"version": "v0.12.0-1-gold", "bridge": True}, **kw)


def _flash_of(board, address, length):
    return board.read_flash(address, length)


async def test_bridge_through_katapult_writes_the_image_byte_for_byte(rig, artifact_dir):
    board = _bridge(rig)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    rig.klipper_status = None
    devices = await rig.scan()
    plan = make_plan(profile, art, devices=devices, config=rig.config)

    async def klipper_status():
        return {"mcu": rig.machine.klipper_mcu_status("octopus")}
    result = await execute_plan(plan, rig.context(klipper_status=klipper_status))

    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert _flash_of(board, 0x08008000, len(image)) == image
    assert board.bootloader()["kind"] == "katapult"          # Katapult untouched
    assert board.mode == "klipper-canbridge"
    assert result.board_back and "can0 up" in result.board_detail
    assert result.verified_sha == result.expected_sha == katapult_sha1(image)
    assert result.version_reported == "v0.13.0-5-gabc" and result.version_matches
    assert rig.service.calls == ["stop", "start"]
    runs = [e["argv"] for e in rig.machine.tool_invocations("flashtool")]
    assert runs[0][-5:] == ["-i", "can0", "-u", board.canbus_uuid, "-r"]
    assert runs[1][-1] == "-s" and runs[2][-2:] == ["-f", art.path()]
    assert os.path.basename(runs[2][-3]).startswith("usb-katapult_stm32f446xx_")
    write_pcts = [e.percent for e in rig.events if e.kind == "progress" and e.stage == "write"]
    assert write_pcts and write_pcts[-1] == 100.0
    # the bar is followed as flashtool draws it, not only when its line ends
    assert len(set(write_pcts)) > 10 and write_pcts == sorted(write_pcts)
    assert any(e.message.startswith("Verification Complete") for e in rig.events)


async def test_bridge_with_a_flashtool_from_before_march_2025(rig, artifact_dir):
    rig.machine.flashtool_version = "legacy"
    board = _bridge(rig)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert _flash_of(board, 0x08008000, len(image)) == image
    assert any("older than October 2024" in w for w in result.warnings)
    assert any("Flash Success" in w for w in result.warnings)
    assert result.log.count("Flash Success") == 2        # after -r and after the write


async def test_flash_success_after_a_bare_bootloader_request_is_not_a_write(rig, artifact_dir):
    rig.machine.flashtool_version = "legacy"
    board = _bridge(rig)
    flasher = KatapultFlasher()
    argv = [rig.config.python, rig.config.flashtool_path, "-i", "can0", "-u", board.canbus_uuid, "-r"]
    with pytest.raises(WriteFailed, match="did not confirm a write"):
        await flasher.write(argv, timeout=10)
    assert board.mode == "katapult"          # it did enter the bootloader, nothing was written


async def test_can_node_through_katapult(rig, artifact_dir):
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"})
    profile = ebb_profile(node.canbus_uuid)
    art = write_artifact(artifact_dir("ebb"), profile="ebb", preset=EBB_PRESET.id,
                         mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.transport == "can"
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert _flash_of(node, 0x08002000, len(image)) == image
    assert node.mode == "klipper" and "answers on can0 as Klipper" in result.board_detail
    runs = [e["argv"] for e in rig.machine.tool_invocations("flashtool")]
    uuid = node.canbus_uuid
    assert runs == [["-i", "can0", "-u", uuid, "-r"], ["-i", "can0", "-u", uuid, "-s"],
                    ["-i", "can0", "-u", uuid, "-f", art.path()]]


async def test_deployer_replaces_katapult_over_usb_serial(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult")
    # Built directly: the schema wants /dev/... and the simulated by-id folder is elsewhere.
    profile = Profile(name="kat", preset=get_preset("btt-octopus-f446-katapult"),
                      serial=board.by_id_path(), source="cli")
    deployer = b"DEPLOYER".ljust(12000, b"\x01")
    art = write_artifact(artifact_dir("kat"), profile="kat", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000,
                         bootloader_app_start=0x08008000, extra_files={"deployer.bin": deployer})
    plan = make_plan(profile, art, method="katapult", devices=await rig.scan(), config=rig.config)
    assert plan.file_name == "deployer.bin" and plan.address == 0x08008000
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    assert board.mode == "katapult"
    assert board.bootloader()["version"] == "deployed"      # the deployer ran, then erased itself
    assert board.region_at(0x08008000) is None
    skipped = [s.kind for s in result.steps if s.status == "skipped"]
    assert "request_bootloader" in skipped                   # it already was in Katapult


async def test_write_error_half_way_is_reported_with_recovery(rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("katapult_write_error")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and result.written
    assert "Flash write failed" in result.message
    assert "Double-click the reset button" in result.recovery
    assert "btt-octopus-f446-katapult" in result.recovery and "BOOT0" in result.recovery
    assert rig.service.calls == ["stop", "start"] and result.klipper_restarted
    image = open(art.path(), "rb").read()
    assert _flash_of(board, 0x08008000, len(image)) != image


async def test_katapult_not_answering_writes_nothing(rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("katapult_connect_error")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    before = board.read_flash(0x08008000, 4096)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and not result.written
    assert "CONNECT" in result.message and "Double-click" in result.hint
    assert "waits in Katapult" in result.recovery
    assert board.read_flash(0x08008000, 4096) == before
    assert rig.service.calls == ["stop", "start"]


async def test_board_that_does_not_come_back(rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("no_return")
    rig.config.timeouts.reconnect = 1.0
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written and result.board_back is False
    assert "did not come back within 1 s" in result.message and "Power-cycle" in result.recovery
    assert rig.service.calls == ["stop", "start"]


async def test_version_mismatch_after_restart_is_a_failure(rig, artifact_dir):
    board = _bridge(rig)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)

    async def stale_status():
        return {"mcu": {"mcu_version": "v0.12.0-1-gold"}}
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config),
                                rig.context(klipper_status=stale_status))
    assert result.state == "failed" and result.version_matches is False
    assert "v0.12.0-1-gold" in result.message


def _klipper_names_it(board_status, uuid):
    """Klipper's status for printer.cfg's [mcu Toolhead]: objects and config keep the
    case, settings lower-case it."""
    return {"mcu Toolhead": board_status,
            "configfile": {"settings": {"mcu toolhead": {"canbus_uuid": uuid,
                                                         "canbus_interface": "can0"}},
                           "config": {"mcu Toolhead": {"canbus_uuid": uuid}}}}


async def test_version_check_finds_the_mcu_whatever_case_the_profile_uses(rig, artifact_dir):
    board = _bridge(rig)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="toolhead")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    # Klipper's status before the flash: the plan names the object as Klipper does
    rig.klipper_status = _klipper_names_it(rig.machine.klipper_mcu_status("octopus"),
                                           board.canbus_uuid)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.step("check_version").title == \
        "Check that Klipper's mcu Toolhead reports v0.13.0-5-gabc"

    async def klipper_status():      # after the flash, as Klipper reports it then
        return _klipper_names_it(rig.machine.klipper_mcu_status("octopus"), board.canbus_uuid)
    result = await execute_plan(plan, rig.context(klipper_status=klipper_status))
    assert result.ok, result.summary()
    assert result.version_reported == "v0.13.0-5-gabc" and result.version_matches
    assert not any("did not report" in w for w in result.warnings)
    check = result.steps[-1]
    assert (check.kind, check.status, check.message) == \
        ("check_version", "done", "mcu Toolhead reports v0.13.0-5-gabc")


async def test_version_check_of_a_plan_made_without_klipper_still_finds_the_mcu(rig, artifact_dir):
    # No Klipper status at plan time: the plan says "mcu toolhead" as the
    # profile does; Klipper then reports "mcu Toolhead" (objects only).
    board = _bridge(rig)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="toolhead")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.step("check_version").params["object"] == "mcu toolhead"

    async def stale_status():
        return {"mcu Toolhead": {"mcu_version": "v0.12.0-1-gold"}}
    result = await execute_plan(plan, rig.context(klipper_status=stale_status))
    # found at once (not after the timeout), and the old version is a failure
    assert result.version_reported == "v0.12.0-1-gold" and result.version_matches is False
    assert result.state == "failed"
    assert "Klipper reports mcu Toolhead running v0.12.0-1-gold" in result.message


def test_katapult_sha_is_over_whole_blocks():
    data = b"\x01" * 100
    assert katapult_sha1(data) == hashlib.sha1(data + b"\xff" * 28).hexdigest().upper()


async def test_cancelled_write_kills_the_tool_and_restarts_klipper(rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("katapult_hang")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    ctx = rig.context()
    task = asyncio.create_task(execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                                      config=rig.config), ctx))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if any(e.message.endswith("klipper.bin'...") for e in rig.events):
            break
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ctx.result.state == "cancelled" and ctx.result.written
    assert "incomplete" in ctx.result.message and "Katapult" in ctx.result.recovery
    assert rig.service.calls == ["stop", "start"] and ctx.result.klipper_restarted
    writer = rig.machine.tool_invocations("flashtool")[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(writer["pid"], 0)


async def test_tool_timeout_is_a_failure_and_klipper_comes_back(rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("katapult_hang")
    rig.config.timeouts.write = 1.0
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and "did not finish within 1 s" in result.message
    assert result.written and result.recovery
    assert rig.service.calls == ["stop", "start"]


def test_make_klipper_image_carries_the_dictionary():
    from moonraker_octoflash.sim.images import find_data_dictionary
    d = find_data_dictionary(make_klipper_image("stm32f446xx", "v1", bridge=True))
    assert d["version"] == "v1" and d["config"]["CANBUS_BRIDGE"] == 1


USB_SERIAL_PRESET = dataclasses.replace(
    EBB_PRESET, id="test-f446-usb", mcu="stm32f446xx", app_address=0x08008000,
    kconfig={"CONFIG_MACH_STM32F446": "y", "CONFIG_STM32_FLASH_START_8000": "y",
             "CONFIG_STM32_USB_PA11_PA12": "y"})


@pytest.mark.parametrize("version", ["current", "legacy"])
async def test_usb_serial_klipper_through_katapult(rig, artifact_dir, version):
    rig.machine.flashtool_version = version
    board = rig.machine.add_board("usb", "stm32f446xx", firmware={"version": "v0.12.0"})
    klipper_port = board.by_id_path()
    assert os.path.basename(klipper_port).startswith("usb-Klipper_stm32f446xx_")
    profile = Profile(name="usb", preset=USB_SERIAL_PRESET, serial=klipper_port,
                      klipper_mcu="mcu", source="cli")
    art = write_artifact(artifact_dir("u"), profile="usb", preset=USB_SERIAL_PRESET.id,
                         bridge=False)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.transport == "usb-serial"
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image
    assert board.mode == "klipper" and result.board_detail == klipper_port
    request = rig.machine.tool_invocations("flashtool")[0]["argv"]
    assert request[:2] == ["-d", klipper_port] and request[-1] == "-r"


async def test_bridge_plan_made_without_a_scan_finds_the_new_katapult_port(rig, artifact_dir):
    board = _bridge(rig)
    rig.machine.add_board("other", "stm32f446xx", mode="katapult")     # an unrelated Katapult
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, config=rig.config)
    assert "{katapult_device}" in plan.step("write_katapult").argv
    result = await execute_plan(plan, rig.context(with_discovery=False))
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image
    assert result.board_back is None       # nothing to look with: not claimed either way
    write = rig.writes()[0]["argv"]
    assert write[1] == os.path.join(rig.machine.by_id_dir,
                                    f"usb-katapult_stm32f446xx_{board.chip_id}-if00")


async def test_a_bridge_that_takes_its_time_to_re_enumerate(rig, artifact_dir):
    board = _bridge(rig, boot_delay=0.6)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert board.mode == "klipper-canbridge" and result.board_back
    waited = {s.kind: s.duration for s in result.steps}
    assert waited["wait_return"] >= 0.3      # it was not there at once, and was waited for
