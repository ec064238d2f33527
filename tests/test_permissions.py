"""USB and serial permissions: Moonraker's user without the udev rule sees a clear cause and fix."""
from __future__ import annotations

from fixtures_flash import octopus_profile, write_artifact
from moonraker_octoflash.discovery import scan
from moonraker_octoflash.discovery.permissions import UDEV_RULE_FILE, udev_rule
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.katapult import hint_for, read_run
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.tools import ToolResult

CHIP = "2C0033000851363131363530"


def _dfu_board(machine, **kw):
    return machine.add_board("octopus", "stm32f446xx", bootloader=None, mode="dfu",
                             chip_id=CHIP, **kw)


async def test_discovery_reads_sysfs_and_needs_no_permission(machine):
    board = _dfu_board(machine)
    board.set_fault("usb_access_denied")
    snap = await scan(**dict(machine.scan_options(), can=False))
    dfu = snap.dfu_devices()[0]
    # Nothing was opened: sysfs gave the serial and the memory map.
    assert dfu.serial == board.dfu_serial and dfu.dfu_layout == board.dfu_layout
    assert dfu.flash_size == 512 * 1024
    assert snap.warnings == []


async def test_without_sysfs_an_access_error_is_named_not_hidden(machine):
    board = _dfu_board(machine)
    board.set_fault("usb_access_denied")
    snap = await scan(**dict(machine.scan_options(), can=False, usb_sysfs=None))
    dfu = snap.dfu_devices()[0]
    assert dfu.serial is None and dfu.dfu_layout is None
    assert len(snap.warnings) == 1
    warning = snap.warnings[0]
    assert warning.startswith(f"No permission to read USB device 0483:df11 (dfu) at USB port "
                              f"{board.port_path}")
    assert UDEV_RULE_FILE in warning and "./install.sh" in warning


async def test_without_sysfs_and_with_permission_pyusb_reads_the_device(machine):
    board = _dfu_board(machine)
    snap = await scan(**dict(machine.scan_options(), can=False, usb_sysfs=None))
    assert snap.dfu_devices()[0].serial == board.dfu_serial and snap.warnings == []


async def test_dfu_util_refused_access_names_the_device_and_the_rule(rig, artifact_dir):
    board = _dfu_board(rig.machine)
    board.set_fault("usb_access_denied")
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader",
                              canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    before = board.read_flash(0x08000000, 4096)
    result = await execute_plan(make_plan(profile, art, devices=await rig.scan(),
                                          config=rig.config), rig.context())
    assert result.state == "failed" and not result.written
    assert result.message == (
        f"dfu-util was refused access to the DFU device 0483:df11 (USB device "
        f"{board.usb_address}) for 'octopus' (LIBUSB_ERROR_ACCESS): nothing was written.")
    assert "No board in DFU mode" not in result.message
    assert UDEV_RULE_FILE in result.hint and "udevadm trigger" in result.hint
    assert board.read_flash(0x08000000, 4096) == before and board.mode == "dfu"


def _failed(stderr, stdout=()):
    return read_run(ToolResult(argv=["flashtool.py"], returncode=1, lines=list(stdout),
                               stderr_lines=list(stderr),
                               duration=0.1))


def test_flashtool_without_permission_for_the_serial_port():
    # scripts/flashtool.py validate_device(), since 7de954b (2024-08-20)
    run = _failed(["ERROR:root:Flash Tool Error",
                   "Traceback (most recent call last):",
                   "PermissionError: [Errno 13] Permission denied: '/dev/ttyACM0'",
                   "",
                   "The above exception was the direct cause of the following exception:",
                   "",
                   "Traceback (most recent call last):",
                   "FlashError: No permission to access device /dev/ttyACM0"])
    assert run.error == "No permission to access device /dev/ttyACM0"
    hint = hint_for(run.error)
    assert hint is not None and "serial port /dev/ttyACM0" in hint and "dialout" in hint


def test_flashtool_unable_to_open_the_serial_port_without_permission():
    # _open_device(): pyserial's SerialException text inside flashtool's message
    run = _failed(["ERROR:root:Flash Error", "Traceback (most recent call last):",
                   "FlashError: Unable to open serial port: [Errno 13] could not open port "
                   "/dev/ttyACM1: [Errno 13] Permission denied: '/dev/ttyACM1'"])
    hint = hint_for(str(run.error))
    assert hint is not None and "/dev/ttyACM1" in hint and "dialout" in hint


def test_flashtool_unable_to_open_a_busy_serial_port():
    run = _failed(["ERROR:root:Flash Tool Error", "Traceback (most recent call last):",
                   "FlashError: Unable to open serial port: [Errno 16] could not open port "
                   "/dev/ttyACM0: [Errno 16] Device or resource busy: '/dev/ttyACM0'"])
    hint = hint_for(str(run.error))
    assert hint is not None and "Klipper still running" in hint


def test_the_udev_rule_covers_every_device_octoflash_opens():
    rule = udev_rule("pi")
    for vid, pid in (("0483", "df11"), ("1d50", "6177"), ("1d50", "614e"), ("1d50", "606f"),
                     ("2e8a", "0003"), ("2e8a", "000f")):
        assert (f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vid}", ATTR{{idProduct}}=="{pid}", '
                'OWNER="pi", MODE="0660"') in rule
    for bad in ("", "pi\"", "a b", "-x", "pi\nRUN+=\"/bin/sh\""):
        try:
            udev_rule(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")
