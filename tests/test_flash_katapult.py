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


# --- the right words after a failure (issue 8, item 10) ---------------------------------

def _step(result, kind):
    return next(s for s in result.steps if s.kind == kind)


async def test_a_board_whose_katapult_reports_another_mcu_is_refused_at_once(rig, artifact_dir):
    # The user copied the board's by-id path but chose the F446 preset; the board is an
    # F407.  No USB scan here (as with a board the scan cannot see): the board's own
    # Katapult port is the first thing that tells its chip.
    board = rig.machine.add_board("usb", "stm32f407xx", firmware={"version": "v0.12.0"})
    rig.config.timeouts.bootloader_wait = 20.0          # the real default
    profile = Profile(name="usb", preset=USB_SERIAL_PRESET, serial=board.by_id_path(),
                      klipper_mcu="mcu", source="cli")
    art = write_artifact(artifact_dir("u"), profile="usb", preset=USB_SERIAL_PRESET.id,
                         bridge=False)
    before = board.read_flash(0x08008000, 32768)
    result = await execute_plan(make_plan(profile, art, config=rig.config),
                                rig.context(with_discovery=False))
    assert result.state == "refused" and result.check == "mcu" and not result.written
    port = f"usb-katapult_stm32f407xx_{board.chip_id}-if00"
    assert result.message == (
        f"The board entered Katapult as {port} (with this board's chip id): its Katapult "
        "reports stm32f407xx, but the build is for stm32f446xx. Nothing was written.")
    assert "did not show up" not in result.summary()
    assert "stm32f407xx board" in result.hint
    assert result.recovery.startswith("Nothing was written, but the board waits in Katapult")
    wait = _step(result, "wait_katapult_usb")
    assert wait.status == "failed" and wait.duration < 5.0      # at once, not after 20 s
    assert rig.writes() == [] and board.read_flash(0x08008000, 32768) == before
    assert board.mode == "katapult"
    assert rig.service.calls == ["stop", "start"] and result.klipper_restarted


async def test_a_bridge_that_comes_back_as_katapult_of_another_mcu_is_refused_at_once(
        rig, artifact_dir):
    # A plan made without a scan knows no chip id: the Katapult port that appears right
    # after the bootloader request is the board.
    board = rig.machine.add_board("octopus", "stm32f407xx",
                                  firmware={"version": "v0.12.0", "bridge": True})
    rig.config.timeouts.bootloader_wait = 20.0
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, config=rig.config),
                                rig.context(with_discovery=False))
    assert result.state == "refused" and result.check == "mcu", result.summary()
    assert (f"entered Katapult as usb-katapult_stm32f407xx_{board.chip_id}-if00 (right after "
            "the bootloader request): its Katapult reports stm32f407xx, but the build is for "
            "stm32f446xx") in result.message
    assert _step(result, "wait_katapult_usb").duration < 5.0
    assert rig.writes() == [] and "waits in Katapult" in result.recovery
    assert rig.service.calls == ["stop", "start"]


async def test_a_verified_write_whose_board_does_not_come_back_is_not_called_partial(
        rig, artifact_dir):
    board = _bridge(rig)
    board.set_fault("no_return")
    rig.config.timeouts.reconnect = 1.0
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written and result.board_back is False
    assert result.message == ("Written and verified by Katapult, but the board did not come "
                              "back within 1 s (waited for the USB-CAN bridge and can0).")
    assert result.verified_sha == result.expected_sha
    assert "partly" not in result.recovery
    assert result.recovery.startswith("The write completed and Katapult read it back and "
                                      "verified it")
    assert "Power-cycle the board" in result.recovery
    assert "CAN pins and speed" in result.recovery and "--artifact ID" in result.recovery
    assert "btt-octopus-f446-katapult" in result.recovery and "F429" not in result.recovery
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image
    assert rig.service.calls == ["stop", "start"] and result.klipper_restarted


async def test_write_error_then_complete_error_reports_the_write_error(rig, artifact_dir):
    # The connection breaks during the write; flashtool then sends COMPLETE in its
    # ``finally``, which fails too, and Python prints both errors, the COMPLETE one last.
    board = _bridge(rig)
    board.set_fault("katapult_link_lost")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written
    assert result.message.startswith("flashtool.py: Flash write failed, flash address 0x800")
    assert result.message.endswith("(Error sending command [SEND_BLOCK] to Device) (then also: "
                                   "Error sending command [COMPLETE] to Device)")
    assert not result.hint            # not "Katapult did not answer" (that is for CONNECT)
    assert result.recovery.startswith("The application area was partly written; Katapult "
                                      "itself was not touched.")
    assert board.mode == "katapult"   # COMPLETE never arrived: Katapult still waits
    assert rig.service.calls == ["stop", "start"]


def test_the_first_of_chained_flashtool_errors_is_the_cause():
    from moonraker_octoflash.flash.katapult import read_run
    from moonraker_octoflash.tools import ToolResult
    # What the real flashtool.py (Python 3.11) prints on stderr; run_tool drops blank lines.
    stderr = """ERROR:root:Flash Tool Error
Traceback (most recent call last):
  File "/home/pi/katapult/scripts/flashtool.py", line 429, in send_file
    resp = await self.send_command(
  File "/home/pi/katapult/scripts/flashtool.py", line 407, in send_command
    raise FlashError("Error sending command [%s] to Device" % (cmdname))
FlashError: Error sending command [SEND_BLOCK] to Device
The above exception was the direct cause of the following exception:
Traceback (most recent call last):
  File "/home/pi/katapult/scripts/flashtool.py", line 1077, in run
    await flasher.send_file()
  File "/home/pi/katapult/scripts/flashtool.py", line 433, in send_file
    raise FlashError(
FlashError: Flash write failed, flash address 0x8009000
During handling of the above exception, another exception occurred:
Traceback (most recent call last):
  File "/home/pi/katapult/scripts/flashtool.py", line 1101, in main
    await sock.run()
  File "/home/pi/katapult/scripts/flashtool.py", line 1085, in run
    await flasher.finish()
  File "/home/pi/katapult/scripts/flashtool.py", line 493, in finish
    await self.send_command("COMPLETE")
  File "/home/pi/katapult/scripts/flashtool.py", line 407, in send_command
    raise FlashError("Error sending command [%s] to Device" % (cmdname))
FlashError: Error sending command [COMPLETE] to Device""".split("\n")
    stdout = ["Flashing '/x/klipper.bin'..."]
    run = read_run(ToolResult(["flashtool.py"], 1, stdout + stderr, stderr, 1.0))
    assert run.error == ("Flash write failed, flash address 0x8009000 "
                         "(Error sending command [SEND_BLOCK] to Device)")
    assert run.later_errors == ["Error sending command [COMPLETE] to Device"]
    # A single error of several lines keeps them all.
    single = ["ERROR:root:Flash Tool Error", "Traceback (most recent call last):",
              '  File "/x/flashtool.py", line 1101, in main', "    await sock.run()",
              "FlashError: MCU returned by Katapult does not match MCU identified in "
              "klipper.bin.", "Katapult MCU: stm32f407xx", "Klipper Binary MCU: stm32f446xx"]
    run = read_run(ToolResult(["flashtool.py"], 1, single, single, 1.0))
    assert run.error.split("\n") == [
        "MCU returned by Katapult does not match MCU identified in klipper.bin.",
        "Katapult MCU: stm32f407xx", "Klipper Binary MCU: stm32f446xx"]
    assert run.later_errors == []


@pytest.mark.parametrize("preset_id", [p for p in ("btt-octopus-f446-canbridge",
                                                   "btt-octopus-f429-canbridge",
                                                   "btt-octopus-f407-canbridge",
                                                   "btt-octopus-h723-canbridge",
                                                   "btt-octopus-f429-canbridge-nobootloader",
                                                   "btt-octopus-h723-katapult")])
def test_recovery_text_fits_the_board_variant(preset_id, tmp_path):
    from moonraker_octoflash.flash.executor import recovery_text
    preset = get_preset(preset_id)
    variant = preset_id.split("-")[2]                    # f446, f429, f407, h723
    profile = Profile(name="b", preset=preset, canbus_uuid="0123456789ab", source="cli")
    art = write_artifact(str(tmp_path), profile="b", preset=preset_id, target=preset.target,
                         mcu=preset.mcu, app_address=preset.app_address,
                         bootloader_app_start=preset.bootloader_app_start,
                         extra_files={"deployer.bin": b"D" * 4096}
                         if preset.target == "katapult" else None)
    texts = []
    for method in [m["method"] for m in preset.flash_methods]:
        plan = make_plan(profile, art, method=method)
        for complete in (False, True):
            texts.append(recovery_text(plan, write_started=True, in_bootloader=False,
                                       write_complete=complete))
    for text in texts:
        others = {"f446", "f429", "f407", "h723"} - {variant}
        assert not any(o.upper() in text or f"-{o}-" in text for o in others), text
        assert ("HE0/HE2" in text) == (variant == "h723"), text
        assert ("cannot be put into DFU mode from software" in text) == (variant == "f429")
        if preset.target == "klipper" and preset.app_address != 0x08000000:
            assert f"btt-octopus-{variant}-katapult" in text
        if "nobootloader" in preset_id:
            assert "katapult" not in text.lower()


# --- the board comes back as what the new firmware makes of it (issue 8, item 13) -------

async def test_a_bridge_build_written_through_a_serial_port_comes_back_as_a_can_adapter(
        rig, artifact_dir):
    # The board runs USB-serial Klipper; the profile (reached by `serial:`) builds the
    # USB-CAN bridge.  After the write there is no serial port: the board is a gs_usb
    # adapter (1d50:606f) with its CAN uuid, and can0 comes up.
    board = rig.machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0"},
                                  boot_delay=0.3)
    klipper_port = board.by_id_path()
    rig.config.timeouts.reconnect = 20.0
    profile = Profile(name="octopus", preset=get_preset("btt-octopus-f446-canbridge"),
                      serial=klipper_port, klipper_mcu="mcu", source="cli")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id,
                         bridge=True)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.transport == "usb-serial"
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    assert board.mode == "klipper-canbridge" and not os.path.exists(klipper_port)
    assert result.board_back is True
    assert result.board_detail == (f"USB-CAN bridge 1d50:606f on USB {board.port_path}, "
                                   f"canbus_uuid {board.canbus_uuid}, can0 up")
    wait = _step(result, "wait_return")
    assert wait.status == "done" and wait.duration < 10.0
    assert any(f"canbus_uuid: {board.canbus_uuid}" in w and "no serial port" in w
               for w in result.warnings)
    assert rig.service.calls == ["stop", "start"]


async def test_a_bridge_build_through_a_serial_port_without_a_scan_claims_nothing(
        rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0"})
    rig.config.timeouts.reconnect = 20.0
    profile = Profile(name="octopus", preset=get_preset("btt-octopus-f446-canbridge"),
                      serial=board.by_id_path(), klipper_mcu="mcu", source="cli")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, config=rig.config),
                                rig.context(with_discovery=False))
    assert result.ok, result.summary()
    # Without USB discovery a bridge cannot be seen: not waited for the serial port
    # that will never return, and not claimed either way.
    assert result.board_back is None
    assert _step(result, "wait_return").duration < 5.0
    assert board.mode == "klipper-canbridge"


def test_the_resolved_config_tells_a_bridge_build(tmp_path):
    from moonraker_octoflash.flash.executor import builds_usb_can_bridge
    profile = Profile(name="o", preset=get_preset("btt-octopus-f446-canbridge"),
                      serial="/dev/serial/by-id/usb-Klipper_stm32f446xx_ABC-if00", source="cli")
    art = write_artifact(str(tmp_path), profile="o", preset=profile.preset.id, bridge=False)
    plan = make_plan(profile, art)
    assert builds_usb_can_bridge(plan) is False          # klipper.bin's dictionary: no bridge
    with open(art.path("config"), "w") as f:
        f.write('CONFIG_MCU="stm32f446xx"\nCONFIG_USBCANBUS=y\n')
    assert builds_usb_can_bridge(plan) is True           # the resolved config decides
    with open(art.path("config"), "w") as f:
        f.write('CONFIG_MCU="stm32f446xx"\n# CONFIG_USBCANBUS is not set\n')
    assert builds_usb_can_bridge(plan) is False


async def test_a_can_node_refused_at_the_status_step_answers_the_next_attempt(rig, artifact_dir):
    # flashtool -s leaves the Katapult node with a node id; an assigned node ignores the
    # admin query and Katapult has no handler for the bootloader request, so without
    # clearing the ids the second attempt waits in vain.
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"})
    profile = ebb_profile(node.canbus_uuid)
    wrong = write_artifact(artifact_dir("wrong"), profile="ebb", preset=EBB_PRESET.id,
                           mcu="stm32g0b1xx", app_address=0x08008000, bridge=False)
    first = await execute_plan(make_plan(profile, wrong, devices=await rig.scan(),
                                         config=rig.config), rig.context())
    assert first.state == "refused" and not first.written, first.summary()
    assert _step(first, "katapult_status").status == "failed"
    assert first.recovery.startswith("Nothing was written, but the board waits in Katapult")
    # What the recovery text says is true: the node answers as Katapult again.
    assert node.mode == "katapult" and not node.node_assigned
    seen = (await rig.scan()).can_node(node.canbus_uuid, "can0")
    assert seen is not None and seen.application == "Katapult"

    right = write_artifact(artifact_dir("right"), profile="ebb", preset=EBB_PRESET.id,
                           mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    second = await execute_plan(make_plan(profile, right, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert second.ok, second.summary()
    image = open(right.path(), "rb").read()
    assert _flash_of(node, 0x08002000, len(image)) == image and node.mode == "klipper"


async def test_a_can_node_left_with_a_node_id_is_found_again(rig, artifact_dir):
    # A run that died after flashtool -s (or a flashtool -s by hand) left the node
    # assigned: octoflash's own wait clears the ids (flashtool -q) before asking.
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 mode="katapult")
    node.update(lambda s: s.__setitem__("node_assigned", True))
    assert (await rig.scan()).can_node(node.canbus_uuid, "can0") is None
    profile = ebb_profile(node.canbus_uuid)
    art = write_artifact(artifact_dir("ebb"), profile="ebb", preset=EBB_PRESET.id,
                         mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert _step(result, "wait_katapult_can").status == "done"
    runs = [e["argv"] for e in rig.machine.tool_invocations("flashtool")]
    assert ["-i", "can0", "-q"] in runs


async def test_a_can_write_whose_complete_failed_leaves_the_node_reachable(rig, artifact_dir):
    # The link broke during the write, so flashtool's COMPLETE (which would reset the node)
    # failed too: the node keeps its node id until octoflash clears it.
    _bridge(rig)
    node = rig.machine.add_board("ebb", "stm32g0b1xx", transport="can", app_start=0x08002000,
                                 firmware={"version": "v0.12.0"})
    node.set_fault("katapult_link_lost")
    profile = ebb_profile(node.canbus_uuid)
    art = write_artifact(artifact_dir("ebb"), profile="ebb", preset=EBB_PRESET.id,
                         mcu="stm32g0b1xx", app_address=0x08002000, bridge=False)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written
    assert "Double-click the reset button" in result.recovery
    assert node.mode == "katapult" and not node.node_assigned
    seen = (await rig.scan()).can_node(node.canbus_uuid, "can0")
    assert seen is not None and seen.application == "Katapult"
    assert [e["argv"][-1] for e in rig.machine.tool_invocations("flashtool")][-1] == "-q"
