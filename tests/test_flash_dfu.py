"""Writing over DFU: the real dfu-util without a board, the double with simulated boards."""
from __future__ import annotations

import asyncio
import shutil

import pytest

from fixtures_flash import octopus_profile, write_artifact
from moonraker_octoflash.flash.dfu import DfuFlasher
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.plan import H723_HEATER_WARNING, dfu_instructions, make_plan
from moonraker_octoflash.flash.results import WriteFailed
from moonraker_octoflash.presets import get_preset

REAL_DFU_UTIL = shutil.which("dfu-util") or "/usr/bin/dfu-util"


@pytest.mark.skipif(not shutil.which("dfu-util"), reason="dfu-util (Debian package) not installed")
async def test_real_dfu_util_without_a_board_means_no_board_in_dfu_mode(tmp_path):
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"\x00" * 4096)
    preset = get_preset("btt-octopus-h723-canbridge")
    flasher = DfuFlasher()
    with pytest.raises(WriteFailed) as caught:
        await flasher.write([REAL_DFU_UTIL, "-a", "0", "-d", "0483:df11", "-s",
                             "0x08020000:leave", "-D", str(image)], timeout=30,
                            instructions=dfu_instructions(preset), board="'octopus'")
    exc = caught.value
    assert str(exc.args[0]).startswith("No board in DFU mode")
    assert exc.returncode == 74 and not exc.write_started
    assert "BOOT0 jumper" in exc.hint and "press the reset button" in exc.hint
    assert H723_HEATER_WARNING in exc.hint
    assert any("No DFU capable USB device available" in line for line in exc.log_tail)


def _nobootloader(rig, **kw):
    return rig.machine.add_board("octopus", "stm32f446xx", bootloader=None, mode="dfu", **kw)


async def test_dfu_write_without_bootloader_byte_for_byte_despite_exit_74(rig, artifact_dir):
    board = _nobootloader(rig)
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    write = plan.step("write_dfu")
    assert write.argv[1:] == ["-a", "0", "-d", "0483:df11", "-s", "0x08000000:leave", "-D",
                              art.path()]
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08000000, len(image)) == image
    assert board.mode == "klipper-canbridge" and result.board_back
    assert any("Error during download get_status" in n for n in result.warnings)
    erase = [e.percent for e in rig.events if e.stage == "erase" and e.kind == "progress"]
    write_pct = [e.percent for e in rig.events if e.stage == "write" and e.kind == "progress"]
    assert erase[-1] == 100.0 and write_pct[-1] == 100.0 and len(write_pct) >= 5
    assert rig.service.calls == ["stop", "start"]


async def test_katapult_over_dfu_mass_erases_and_falls_back_without_it(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader=None,
                                  firmware={"version": "v0.11", "bridge": True}, mode="dfu")
    board.set_fault("dfu_mass_erase_unsupported")
    profile = octopus_profile("kat", "btt-octopus-f446-katapult", dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("kat"), profile="kat", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000, bootloader_app_start=0x08008000)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.step("write_dfu").argv[-3] == "0x08000000:mass-erase:force:leave"
    assert not plan.needs_klipper_stop
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    specs = [e["argv"][e["argv"].index("-s") + 1] for e in rig.machine.tool_invocations("dfu-util")]
    assert specs == ["0x08000000:mass-erase:force:leave", "0x08000000:leave"]
    assert any("mass erase not supported" in w for w in result.warnings)
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08000000, len(image)) == image
    assert board.mode == "katapult" and "Katapult" in result.board_detail
    assert rig.service.calls == []          # Klipper does not use a board in DFU mode


async def test_a_failed_retry_after_a_refused_mass_erase_names_both_runs(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader=None,
                                  firmware={"version": "v0.11", "bridge": True}, mode="dfu")
    board.set_fault("dfu_mass_erase_unsupported")
    board.set_fault("dfu_download_error")
    profile = octopus_profile("kat", "btt-octopus-f446-katapult", dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("kat"), profile="kat", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000, bootloader_app_start=0x08008000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written
    assert result.message == (
        "dfu-util failed: error get_status: LIBUSB_ERROR_PIPE (on the retry without mass "
        "erase; the first run stopped at: Error during special command \"MASS_ERASE\" "
        "get_status)")
    assert result.recovery.startswith("The flash was partly written.")
    assert result.recovery.endswith("Then flash this profile again.")
    assert "F429" not in result.recovery
    assert board.mode == "dfu"


async def test_mass_erase_wipes_the_old_application(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader=None,
                                  firmware={"version": "v0.11", "bridge": True}, mode="dfu")
    assert board.region_at(0x08000000)["kind"] == "klipper"
    profile = octopus_profile("kat", "btt-octopus-f446-katapult")
    art = write_artifact(artifact_dir("kat"), profile="kat", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000, bootloader_app_start=0x08008000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert [r["kind"] for r in board.regions()] == ["katapult"]
    assert board.read_flash(0x08010000, 16) == b"\xff" * 16


async def test_several_boards_in_dfu_mode_and_no_serial_is_refused(rig, artifact_dir):
    _nobootloader(rig)
    rig.machine.add_board("other", "stm32f446xx", bootloader=None, mode="dfu")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "refused" and result.check == "dfu_device"
    assert "2 boards are in DFU mode" in result.message and "dfu_serial" in result.hint
    assert rig.machine.tool_invocations() == []


async def test_the_board_named_by_serial_is_written_when_several_are_in_dfu(rig, artifact_dir):
    board = _nobootloader(rig)
    other = rig.machine.add_board("other", "stm32f446xx", bootloader=None, mode="dfu")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.step("write_dfu").argv[5:7] == ["-S", board.dfu_serial]
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08000000, len(image)) == image
    assert other.read_flash(0x08000000, 16) == b"\xff" * 16 and other.mode == "dfu"


async def test_waits_for_the_user_to_put_the_board_into_dfu_mode(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader=None,
                                  firmware={"version": "v0.11", "bridge": True})
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    rig.config.timeouts.device_wait = 5
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)

    async def press_boot_and_reset():
        await asyncio.sleep(0.4)
        board.enter_dfu()
    presser = asyncio.create_task(press_boot_and_reset())
    result = await execute_plan(plan, rig.context())
    await presser
    assert result.ok, result.summary()
    waits = [e.message for e in rig.events if e.stage == "wait_device"]
    assert waits and "BOOT0 jumper" in waits[0]


async def test_no_board_in_dfu_mode_within_the_timeout(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32h723xx", bootloader=None,
                                  firmware={"version": "v0.11", "bridge": True})
    profile = octopus_profile(preset="btt-octopus-h723-canbridge-nobootloader",
                              dfu_serial=board.dfu_serial)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         mcu="stm32h723xx", app_address=0x08000000)
    rig.config.timeouts.device_wait = 0.5
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and not result.written
    assert "No board in DFU mode within 0.5 s" in result.message
    assert H723_HEATER_WARNING in result.hint
    assert rig.machine.tool_invocations() == []


async def test_download_error_half_way(rig, artifact_dir):
    board = _nobootloader(rig)
    board.set_fault("dfu_download_error")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written
    assert "LIBUSB_ERROR_PIPE" in result.message
    assert "cannot be damaged" in result.recovery
    # A build without a bootloader: no advice to put Katapult back (this image would erase
    # it again), and no sentence about another board variant.
    assert result.recovery.endswith("Then flash this profile again.")
    assert "katapult" not in result.recovery.lower() and "F429" not in result.recovery
    assert board.mode == "dfu"
    assert rig.service.calls == ["stop", "start"]


async def test_a_complete_dfu_write_whose_board_does_not_come_back(rig, artifact_dir):
    board = _nobootloader(rig)
    board.set_fault("no_return")
    rig.config.timeouts.reconnect = 1.0
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and result.written and result.board_back is False
    assert result.message == ("Written completely, but the board did not come back within "
                              "1 s (waited for the USB-CAN bridge and can0).")
    assert "partly" not in result.recovery
    assert result.recovery.startswith("dfu-util reported the whole image downloaded. "
                                      "Power-cycle the board")
    assert "with the BOOT0 jumper removed" in result.recovery
    assert result.recovery.endswith("Then flash this profile again with the dfu method.")
    assert "F429" not in result.recovery and "katapult" not in result.recovery.lower()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08000000, len(image)) == image
    assert rig.service.calls == ["stop", "start"] and result.klipper_restarted


async def test_hung_dfu_util_is_stopped_at_the_write_timeout(rig, artifact_dir):
    board = _nobootloader(rig)
    board.set_fault("dfu_hang")
    rig.config.timeouts.write = 1.0
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and "dfu-util did not finish within 1 s" in result.message
    assert rig.service.calls == ["stop", "start"]


def _run_tool(argv):
    import subprocess
    done = subprocess.run(argv, capture_output=True, timeout=30)
    # Decoded by hand: text mode would turn the progress bars' \r into \n.
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


@pytest.mark.skipif(not shutil.which("dfu-util"), reason="dfu-util (Debian package) not installed")
def test_the_double_says_what_the_real_dfu_util_says_without_a_board(machine, tmp_path):
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"\x00" * 4096)
    args = ["-a", "0", "-d", "0483:df11", "-s", "0x08008000:leave", "-D", str(image)]
    real = _run_tool([REAL_DFU_UTIL] + args)
    double = _run_tool([machine.tool_paths()["dfu_util"]] + args)
    assert double.returncode == real.returncode == 74
    assert double.stdout == real.stdout                 # the banner, byte for byte
    assert double.stderr.splitlines() == real.stderr.splitlines()


def test_the_double_lists_and_refuses_to_guess_like_dfu_util(machine, tmp_path):
    a = machine.add_board("a", "stm32f446xx", bootloader=None, mode="dfu")
    machine.add_board("b", "stm32f446xx", bootloader=None, mode="dfu")
    dfu = machine.tool_paths()["dfu_util"]
    listing = _run_tool([dfu, "-l"])
    assert listing.returncode == 0
    assert (f'Found DFU: [0483:df11] ver=2200, devnum={a.usb_address}, cfg=1, intf=0, '
            f'path="{a.port_path}", alt=0, name="@Internal Flash  /0x08000000/04*016Kg,01*064Kg,'
            f'03*128Kg", serial="{a.dfu_serial}"') in listing.stdout.splitlines()
    image = tmp_path / "klipper.bin"
    image.write_bytes(b"\x00" * 4096)
    both = _run_tool([dfu, "-a", "0", "-d", "0483:df11", "-s", "0x08000000:leave", "-D", str(image)])
    assert both.returncode == 74
    assert both.stderr.splitlines()[-1].startswith(
        "dfu-util: More than one DFU capable USB device found!")
    one = _run_tool([dfu, "-a", "0", "-d", "0483:df11", "-S", a.dfu_serial, "-s",
                     "0x08000000:leave", "-D", str(image)])
    assert "File downloaded successfully" in one.stdout and "\rDownload\t[" in one.stdout
    assert a.read_flash(0x08000000, 4096) == b"\x00" * 4096


async def test_new_katapult_without_mass_erase_starts_the_application_it_finds(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                  firmware={"version": "v0.12.0", "bridge": True})
    board.enter_dfu()
    board.set_fault("dfu_mass_erase_unsupported")
    profile = octopus_profile("kat", "btt-octopus-f446-katapult", canbus_uuid=board.canbus_uuid,
                              dfu_serial=board.dfu_serial, flash_method="dfu")
    art = write_artifact(artifact_dir("kat"), profile="kat", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000, bootloader_app_start=0x08008000)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert board.mode == "klipper-canbridge"
    assert "Katapult started the USB-CAN bridge" in result.board_detail
    assert board.bootloader()["version"] == "test"
