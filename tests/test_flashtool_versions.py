"""Every flashtool.py in the field: the texts each version prints, read the way octoflash must.

The texts are the real ones (tests/fixtures/tool_contract.json says which
commit of Arksine/katapult's scripts/flashtool.py prints each); the
simulated machine's double prints them where a whole flash is run.
"""
from __future__ import annotations

import pytest

from fixtures_flash import octopus_profile, write_artifact
from moonraker_octoflash.flash.checks import check_katapult_status
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.katapult import KatapultFlasher, NotKatapult, hint_for, read_run
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.flash.results import WriteFailed
from moonraker_octoflash.tools import ToolResult


def _run(stdout, stderr=(), returncode=0):
    return read_run(ToolResult(argv=["flashtool.py"], returncode=returncode,
                               lines=list(stdout) + list(stderr), stderr_lines=list(stderr),
                               duration=0.1))


def _step(result, kind):
    return next(s for s in result.steps if s.kind == kind)


# --- the oldest tool: scripts/flash_can.py (2022-05 .. 2023-03), exit -1 = 255 --------------

def test_can_flash_error_of_the_oldest_tool_is_an_error():
    run = _run(["Flashing CAN UUID 0e3af2ab1ed4 on interface can0",
                "Attempting to connect to bootloader"],
               ["ERROR:root:Can Flash Error",
                "Traceback (most recent call last):",
                '  File "/home/pi/CanBoot/scripts/flash_can.py", line 629, in main',
                "    loop.run_until_complete(sock.run(intf, uuid, fpath, req_only))",
                "FlashCanError: Error sending command [CONNECT] to Device"], returncode=255)
    assert run.error == "Error sending command [CONNECT] to Device"
    assert "not in the bootloader" in str(hint_for(run.error))


def test_can_flash_success_counts_only_after_a_write():
    written = _run(["Flashing '/home/pi/klipper/out/klipper.bin'...", "", "[", "]", "",
                    "Write complete: 420 pages", "Verifying (block count = 420)...", "", "[",
                    "]", "", "Verification Complete: SHA = 0123456789ABCDEF0123456789ABCDEF01234567",
                    "CAN Flash Success"])
    assert written.final == "CAN Flash Success" and written.write_seen and written.error is None
    bare = _run(["Sending bootloader jump command...", "Bootloader request command sent",
                 "CAN Flash Success"])
    assert bare.final == "CAN Flash Success" and not bare.write_seen


# --- August 2024 .. March 2025: the MCU type of a protocol 1.0 Katapult keeps its NULs ------

def test_an_mcu_type_with_trailing_nuls_is_the_mcu(tmp_path):
    run = _run(["Connecting to CAN UUID 0e3af2ab1ed4 on interface can0",
                "Resetting all bootloader node IDs...",
                "Attempting to connect to bootloader",
                "Katapult Connected",
                "Software Version: ?",
                "Protocol Version: 1.0.0",
                "Block Size: 64 bytes",
                "Application Start: 0x8008000",
                "MCU type: stm32f446xx\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
                "Verifying canbus connection",
                "Status Request Complete"])
    assert run.status.mcu == "stm32f446xx"
    assert run.status.app_start == 0x08008000 and run.status.protocol_version == "1.0.0"


async def test_a_status_with_trailing_nuls_passes_octoflashs_mcu_check(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult",
                                  firmware={"version": "v0.12.0", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, config=rig.config)
    run = _run(["Katapult Connected", "Software Version: ?", "Protocol Version: 1.0.0",
                "Block Size: 64 bytes", "Application Start: 0x8008000",
                "MCU type: stm32f446xx\x00\x00\x00", "Status Request Complete"])
    checks = check_katapult_status(plan, run.status)
    assert [c.ok for c in checks] == [True] * len(checks)


# --- March 2025 on: a bridge that is not running Katapult ---------------------------------

NOT_KATAPULT_BRIDGE = [
    "Canbus Bridge detected at /sys/bus/usb/devices/1-1.3",
    "Connecting to CAN UUID c26f3d91d861 on interface can0",
    "Sending bootloader jump command...",
    "Waiting for USB Reconnect.....done",
    "Detected new USB Device: 0483:df11 stmicroelectronics stm32  bootloader",
    "Device is not Katapult, exiting...",
    "Bootloader Request Complete",
]


def test_device_is_not_katapult_is_recognised_although_it_exits_0():
    run = _run(NOT_KATAPULT_BRIDGE)
    assert run.returncode == 0 and run.error is None
    assert run.not_katapult and run.new_usb == ("0483:df11", "stmicroelectronics",
                                                "stm32  bootloader")
    exc = NotKatapult(run)
    assert exc.dfu and "DFU mode" in str(exc) and "dfu method" in exc.hint


async def test_a_bridge_without_katapult_is_recognised_at_once(rig, artifact_dir):
    # Klipper written without a bootloader: asked into the bootloader it falls back to the
    # ROM's DFU loader; the current flashtool says so and exits 0.
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader=None,
                                  firmware={"version": "v0.12.0", "bridge": True})
    rig.config.timeouts.bootloader_wait = 20.0          # the real default
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and not result.written
    assert result.message == ("The board is not running Katapult: asked into its bootloader "
                              "it came back as 0483:df11 stmicroelectronics stm32  bootloader, "
                              "the STM32's ROM loader in DFU mode.")
    # the build starts at 0x08008000: it needs Katapult first, not a DFU write of its own
    assert ("this build starts at 0x08008000, behind a bootloader: written alone over DFU it "
            "would not start") in result.hint
    assert result.recovery == (
        "Nothing was written. The board waits in DFU mode (the STM32's ROM loader): flash "
        "btt-octopus-f446-katapult with the dfu method, then this profile; or press its "
        "reset button to go back to its firmware.")
    request = _step(result, "request_bootloader")
    assert request.status == "failed" and request.duration < 10.0     # not after 20 s
    assert _step(result, "wait_katapult_usb").status != "done"
    assert board.mode == "dfu" and rig.writes() == []

    # Following the recovery text: the board shows up in DFU mode, so the plans switch to
    # the dfu method without being told; Katapult goes on first, then the build.
    from moonraker_octoflash.presets import get_preset
    from moonraker_octoflash.profiles import Profile
    kat_profile = Profile(name="kat", preset=get_preset("btt-octopus-f446-katapult"),
                          source="cli")
    kat = write_artifact(artifact_dir("k"), profile="kat", preset=kat_profile.preset.id,
                         target="katapult", app_address=0x08000000,
                         bootloader_app_start=0x08008000)
    kat_plan = make_plan(kat_profile, kat, devices=await rig.scan(), config=rig.config)
    assert kat_plan.method == "dfu"
    assert (await execute_plan(kat_plan, rig.context())).ok
    assert board.bootloader()["kind"] == "katapult"
    again = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                         config=rig.config), rig.context())
    assert again.ok, again.summary()
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image


# --- March 2025 on: the bridge's tty is not there yet --------------------------------------

def test_failed_to_locate_serial_tty_path_after_katapult_came_back():
    run = _run(["Canbus Bridge detected at /sys/bus/usb/devices/1-1.3",
                "Connecting to CAN UUID c26f3d91d861 on interface can0",
                "Sending bootloader jump command...",
                "Waiting for USB Reconnect.....done",
                "Detected new USB Device: 1d50:6177 katapult stm32f446xx"],
               ["ERROR:root:Flash Tool Error",
                "Traceback (most recent call last):",
                '  File "/home/pi/katapult/scripts/flashtool.py", line 803, in '
                "_wait_canbridge_reset",
                "    serial_path = self.usb_serial_path",
                "FlashError: Failed to locate serial tty path"], returncode=1)
    assert run.tty_missing and run.new_usb[0] == "1d50:6177"


async def test_a_bridge_whose_tty_comes_late_is_waited_for(rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                  firmware={"version": "v0.12.0-1-gold", "bridge": True})
    board.set_fault("katapult_tty_late")
    profile = octopus_profile(canbus_uuid=board.canbus_uuid, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.ok, result.summary()
    assert "FlashError: Failed to locate serial tty path" in result.log
    assert "waiting for the port" in _step(result, "request_bootloader").message
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image


# --- messages every version may print --------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    # scripts/flashtool.py verify_file() (every version)
    ("Block Request Error, block: 17", "the write is not verified"),
    # _open_device() (May 2022 on): pyserial's text inside
    ("Unable to open serial port: [Errno 2] could not open port /dev/ttyACM0: [Errno 2] "
     "No such file or directory: '/dev/ttyACM0'", None),
    # validate_device() (August 2024 on)
    ("No permission to access device /dev/ttyACM0", "dialout"),
    ("Serial device /dev/ttyACM0 in use", "Klipper still running"),
    ("Unable to bind socket to can0", "ip -details link show can0"),
    ("Error sending command [CONNECT] to Device", "not in the bootloader"),
])
def test_each_error_gets_its_hint(message, expected):
    run = _run([], ["ERROR:root:Flash Tool Error", "Traceback (most recent call last):",
                    f"FlashError: {message}"], returncode=1)
    assert run.error == message
    hint = hint_for(run.error)
    if expected is None:
        assert hint is None or "serial port" in hint
    else:
        assert hint is not None and expected in hint


def test_a_request_whose_reconnect_timed_out_is_not_an_error():
    run = _run(["Connecting to Serial Device /dev/serial/by-id/usb-Klipper_stm32f446xx_"
                "2C0033000851363131363530-if00, baud 250000",
                "Detected USB device running Klipper",
                "Requesting USB bootloader for /dev/serial/by-id/usb-Klipper_stm32f446xx_"
                "2C0033000851363131363530-if00...",
                "Waiting for USB Reconnect.........timed out",
                "Bootloader Request Complete"])
    assert run.reconnect_timed_out and run.error is None and not run.not_katapult


async def test_a_legacy_write_error_is_the_bare_send_block_error(rig, artifact_dir):
    rig.machine.flashtool_version = "legacy"
    board = rig.machine.add_board("octopus", "stm32f446xx", mode="katapult")
    board.set_fault("katapult_write_error")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset="btt-octopus-f446-canbridge")
    flasher = KatapultFlasher()
    with pytest.raises(WriteFailed) as caught:
        await flasher.write([rig.config.python, rig.config.flashtool_path, "-d",
                             board.by_id_path(), "-f", art.path()], timeout=20)
    assert caught.value.args[0] == "flashtool.py: Error sending command [SEND_BLOCK] to Device"
    assert caught.value.write_started


# --- before September 2024: -r is for CAN only ---------------------------------------------

async def test_a_flashtool_whose_request_is_can_only_is_not_run_over_serial(rig, artifact_dir):
    # Before Katapult's 542b6a8 (2024-09-20) -r said "(CAN only)" and, with -d, was
    # ignored: `flashtool.py -d PORT -f fw -r` would write without octoflash's checks.
    from moonraker_octoflash.presets import get_preset
    from moonraker_octoflash.profiles import Profile
    rig.machine.flashtool_version = "old"
    board = rig.machine.add_board("usb", "stm32f446xx", firmware={"version": "v0.12.0"})
    profile = Profile(name="usb", preset=get_preset("btt-octopus-f446-canbridge"),
                      serial=board.by_id_path(), klipper_mcu="mcu", source="cli")
    art = write_artifact(artifact_dir("u"), profile="usb", preset=profile.preset.id,
                         bridge=False)
    before = board.read_flash(0x08008000, 32768)
    result = await execute_plan(make_plan(profile, art, config=rig.config),
                                rig.context(with_discovery=False))
    assert result.state == "failed" and not result.written, result.summary()
    assert result.message.startswith("This flashtool.py is from before September 2024")
    assert "git -C ~/katapult pull" in result.hint
    assert rig.machine.tool_invocations("flashtool") == []     # not even the request
    assert board.read_flash(0x08008000, 32768) == before and board.mode == "klipper"


def test_the_old_double_really_writes_on_a_serial_request(rig, artifact_dir):
    # What the refusal above prevents, shown on the double itself.
    import subprocess
    import sys
    rig.machine.flashtool_version = "old"
    board = rig.machine.add_board("usb", "stm32f446xx", mode="katapult")
    art = write_artifact(artifact_dir("u"), profile="usb", preset="btt-octopus-f446-canbridge",
                         bridge=False)
    proc = subprocess.run([sys.executable, rig.config.flashtool_path, "-d", board.by_id_path(),
                           "-f", art.path(), "-r"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "Flash Success"
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image
