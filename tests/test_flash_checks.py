"""Every check before writing: the refusal a user sees, and that nothing was written.

The doubles log each run, so "no tool ran" is read from their log; for the
two checks that need Katapult's own answer (its MCU type and application
start from ``flashtool.py -s``) only the bootloader request and the status
request may have run, and the flash must be unchanged.
"""
from __future__ import annotations

import os

from fixtures_flash import EBB_PRESET, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.flash.checks import run_checks
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.plan import make_plan


async def _refused(rig, profile, art, **ctx):
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context(**ctx))
    assert result.state == "refused", result.summary()
    assert not result.written
    assert result.message.endswith("Nothing was written.")
    return result


async def test_mcu_differs_from_what_klipper_reports(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f429xx",
                                  firmware={"version": "v1", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    rig.klipper_status = {"mcu": rig.machine.klipper_mcu_status("octopus"),
                          "configfile": {"settings": {"mcu": {"canbus_uuid": board.canbus_uuid}}}}
    result = await _refused(rig, profile, art)
    assert result.check == "mcu"
    assert "The build is for stm32f446xx but Klipper (mcu, mcu_constants.MCU) reports " \
           "stm32f429xx" in result.message
    assert "stm32f429xx board" in result.hint
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []


async def test_mcu_differs_from_katapult_status(rig, artifact_dir):
    rig.machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    node = rig.machine.add_board("ebb", "stm32f446xx", transport="can",
                                 firmware={"version": "v1"})
    before = node.read_flash(0x08008000, 32768)
    profile = ebb_profile(node.canbus_uuid)
    art = write_artifact(artifact_dir("ebb"), profile="ebb", preset=EBB_PRESET.id,
                         mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    result = await _refused(rig, profile, art)
    assert result.check == "mcu"
    assert "Katapult (flashtool.py -s, MCU type) reports stm32f446xx" in result.message
    runs = [e["argv"][-1] for e in rig.machine.tool_invocations("flashtool")]
    # -q after the refusal clears Katapult's node ids, so the node answers again
    assert runs == ["-r", "-s", "-q"] and rig.writes() == []
    assert node.read_flash(0x08008000, 32768) == before
    assert "waits in Katapult" in result.recovery and not node.node_assigned
    assert rig.service.calls == ["stop", "start"]


async def test_mcu_differs_from_the_dfu_flash_layout(rig, artifact_dir):
    board = rig.machine.add_board("spare", "stm32h723xx", bootloader=None, mode="dfu")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await _refused(rig, profile, art)
    assert result.check == "mcu"
    assert "different flash layout (1024 KiB" in result.message
    assert rig.machine.tool_invocations() == []


async def test_mcu_differs_from_the_katapult_usb_product_string(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f407xx", mode="katapult")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await _refused(rig, profile, art)
    assert "USB katapult device (1d50:6177) reports stm32f407xx" in result.message
    assert rig.machine.tool_invocations() == []


async def test_build_for_32k_offset_to_a_katapult_starting_at_0x8020000(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32h723xx", app_start=0x08020000,
                                  firmware={"version": "v1", "bridge": True})
    before = board.read_flash(0x08008000, 0x20000)
    profile = octopus_profile(preset="btt-octopus-h723-canbridge", canbus_uuid=board.canbus_uuid,
                              kconfig={"CONFIG_STM32_FLASH_START_20000": "n",
                                       "CONFIG_STM32_FLASH_START_8000": "y"})
    art = write_artifact(artifact_dir("h7"), profile="octopus", preset=profile.preset.id,
                         mcu="stm32h723xx", app_address=0x08008000)
    result = await _refused(rig, profile, art)
    assert result.check == "app_address"
    assert ("klipper.bin is linked at 0x08008000 but the board's Katapult starts applications "
            "at 0x08020000") in result.message
    assert "0x20000" in result.hint
    assert [e["argv"][-1] for e in rig.machine.tool_invocations("flashtool")] == ["-r", "-s"]
    assert rig.writes() == [] and board.read_flash(0x08008000, 0x20000) == before
    assert rig.service.calls == ["stop", "start"]


async def test_image_at_0x08000000_for_a_board_that_has_katapult(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await _refused(rig, profile, art)
    assert result.check == "bootloader"
    assert "would erase the Katapult bootloader on this board" in result.message
    assert "--allow-bootloader-overwrite" in result.hint
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []
    # Asked for exactly that, the same plan passes its checks.
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config,
                     allow_bootloader_overwrite=True)
    checks = await run_checks(plan, await rig.scan())
    assert any(c.message == "Katapult will be erased, as asked" for c in checks)


async def test_image_larger_than_the_flash(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx",
                                  firmware={"version": "v1", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("big"), profile="octopus", preset=profile.preset.id,
                         image=b"\x00" * (500 * 1024))
    result = await _refused(rig, profile, art)
    assert result.check == "size"
    assert "512000 bytes but only 491520 bytes of flash are free from 0x08008000" in result.message
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []


async def test_artifact_changed_after_its_record(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx",
                                  firmware={"version": "v1", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    with open(art.path(), "r+b") as f:
        f.seek(100)
        f.write(b"tampered")
    result = await _refused(rig, profile, art)
    assert result.check == "sha256"
    assert "no longer matches its record" in result.message and "Build the profile again" in result.hint
    assert rig.machine.tool_invocations() == [] and rig.service.calls == []


async def test_missing_image_and_missing_deployer(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    os.unlink(art.path())
    result = await _refused(rig, profile, art)
    assert result.check == "sha256" and "is missing" in result.message
    kat = octopus_profile("kat", "btt-octopus-f446-katapult", canbus_uuid=board.canbus_uuid)
    kart = write_artifact(artifact_dir("k"), profile="kat", preset=kat.preset.id,
                          target="katapult", app_address=0x08000000)
    result = await _refused(rig, kat, kart)
    assert result.check == "artifact_file" and "has no deployer.bin" in result.message
    assert rig.machine.tool_invocations() == []


async def test_artifact_for_another_mcu_than_the_profile(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id,
                         mcu="stm32f446xx", dict_mcu="stm32f407xx")
    result = await _refused(rig, profile, art)
    assert "data dictionary says stm32f407xx" in result.message
    assert rig.machine.tool_invocations() == []
