"""The RP2040 boot ROM (BOOTSEL) method: discovery, checks, the rp2040_flash double, the write."""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

from fixtures_flash import write_artifact
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.flash.cli import format_snapshot
from moonraker_octoflash.flash.executor import execute_plan
from moonraker_octoflash.flash.plan import make_plan
from moonraker_octoflash.presets import get_preset
from moonraker_octoflash.profiles import profile_from_json
from moonraker_octoflash.sim.board import _fake_katapult, make_klipper_image

FAMILY_RP2040 = 0xE48BFF56
BASE = 0x10000000


def uf2(image: bytes, address: int, family: int = FAMILY_RP2040) -> bytes:
    """A UF2 file as elf2uf2 writes it: 256-byte pages, the family-id flag set."""
    image += b"\0" * (-len(image) % 256)
    count = len(image) // 256
    out = b""
    for n in range(count):
        block = struct.pack("<IIIIIIII", 0x0A324655, 0x9E5D5157, 0x2000, address + 256 * n,
                            256, n, count, family) + image[256 * n:256 * (n + 1)]
        out += block + b"\0" * (508 - len(block)) + struct.pack("<I", 0x0AB16F30)
    return out


KATAPULT_IMAGE = _fake_katapult(0x10004000, "v0.0.1-110-gb0bf421")


def katapult_artifact(directory: str, address: int = BASE, family: int = FAMILY_RP2040):
    return write_artifact(directory, profile="nitehawk", preset="ldo-nitehawk-sb-katapult",
                          target="katapult", mcu="rp2040", app_address=BASE,
                          bootloader_app_start=0x10004000,
                          image=KATAPULT_IMAGE, name="katapult.bin",
                          extra_files={"katapult.uf2": uf2(KATAPULT_IMAGE, address, family)})


def nitehawk_katapult(**options):
    return profile_from_json(dict({"name": "nitehawk", "preset": "ldo-nitehawk-sb-katapult"},
                                  **options), source="cli")


def bootsel_board(rig, name="nitehawk", mcu="rp2040"):
    return rig.machine.add_board(name, mcu, bootloader=None, mode="bootsel")


def run_double(rig, *args):
    tool = rig.config.tool("rp2040_flash")
    return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True,
                          timeout=60)


# --- discovery ------------------------------------------------------------------------
async def test_a_board_in_bootsel_is_seen_as_the_boot_rom(rig):
    bootsel_board(rig, "rp2040-board", "rp2040")
    bootsel_board(rig, "rp2350-board", "rp2350")
    snapshot = await rig.scan()
    kinds = sorted((d.usb_id, d.kind) for d in snapshot.usb)
    assert kinds == [("2e8a:0003", "rp2040_boot"), ("2e8a:000f", "rp2350_boot")]
    assert all(d.canbus_uuid is None for d in snapshot.usb)   # a boot ROM has no CAN uuid
    text = format_snapshot(snapshot, {})
    assert "2e8a:0003 RP2040 boot ROM in BOOTSEL mode" in text
    assert "2e8a:000f RP2350 boot ROM in BOOTSEL mode" in text


async def test_a_profile_whose_board_waits_in_bootsel_shows_it(rig):
    bootsel_board(rig, "nitehawk", "rp2040")
    nitehawk = nitehawk_katapult(serial="/dev/serial/by-id/usb-katapult_rp2040_E66-if00")
    pico = profile_from_json({"name": "pico", "mcu": "rp2040", "kconfig": {
        "CONFIG_RPXXXX_FLASH_START_0100": "y", "CONFIG_RPXXXX_USB": "y"}}, source="cli")
    octopus = profile_from_json({"name": "octopus", "preset": "btt-octopus-f446-canbridge",
                                 "canbus_uuid": "0a1b2c3d4e5f"}, source="cli")
    snapshot = await rig.scan()
    status = snapshot.status_of(nitehawk)
    assert status.state == "boot_rom"
    assert status.detail.startswith("a board is in BOOTSEL mode (boot ROM 2e8a:0003)")
    assert "check that it is this one" in status.detail
    assert status.device["usb_id"] == "2e8a:0003"
    assert snapshot.status_of(pico).state == "boot_rom"
    assert snapshot.status_of(octopus).state == "not_found"     # an STM32 has no BOOTSEL
    text = format_snapshot(snapshot, {"nitehawk": nitehawk, "octopus": octopus})
    assert "nitehawk  boot_rom   a board is in BOOTSEL mode (boot ROM 2e8a:0003)" in text
    assert "octopus   not_found" in text


async def test_bootsel_boards_that_cannot_be_told_apart_are_not_guessed(rig):
    bootsel_board(rig, "one", "rp2040")
    bootsel_board(rig, "two", "rp2040")
    nitehawk = nitehawk_katapult(serial="/dev/serial/by-id/usb-katapult_rp2040_E66-if00")
    snapshot = await rig.scan()
    # The RP2040's boot ROM has the same serial on every board: two are two candidates.
    assert len({d.serial for d in snapshot.usb}) == 1
    assert snapshot.status_of(nitehawk).state == "not_found"


async def test_an_rp2350_in_bootsel_is_found_by_its_serial_and_not_for_an_rp2040(rig):
    board = bootsel_board(rig, "big", "rp2350")
    bootsel_board(rig, "other", "rp2350")
    chip = board.state["chip_id"]
    rp2350 = profile_from_json({"name": "big", "mcu": "rp2350", "serial":
                                f"/dev/serial/by-id/usb-Klipper_rp2350_{chip}-if00",
                                "kconfig": {"CONFIG_RPXXXX_FLASH_START_0100": "y",
                                            "CONFIG_RPXXXX_USB": "y"}}, source="cli")
    snapshot = await rig.scan()
    status = snapshot.status_of(rp2350)
    assert (status.state, status.detail) == (
        "boot_rom", f"in BOOTSEL mode (boot ROM 2e8a:000f, serial {chip})")
    assert snapshot.status_of(nitehawk_katapult()).state == "not_found"


# --- the rp2040_flash double, as the real program answers -----------------------------
def test_double_usage_and_missing_file_exit_1(rig, tmp_path):
    usage = run_double(rig)
    assert usage.returncode == 1 and usage.stdout == ""
    assert usage.stderr.startswith("Usage: ") and usage.stderr.rstrip().endswith(
        "<uf2 image> [bus addr]")
    missing = run_double(rig, str(tmp_path / "nope.uf2"))
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"Could not open image file {tmp_path / 'nope.uf2'}",
                                           "Could not load flash image, exiting"]


def test_double_without_a_board_in_bootsel_exits_0(rig, tmp_path):
    image = tmp_path / "katapult.uf2"
    image.write_bytes(uf2(KATAPULT_IMAGE, BASE))
    done = run_double(rig, str(image))
    assert done.returncode == 0
    assert done.stderr.splitlines() == [f"Loaded UF2 image with {len(KATAPULT_IMAGE) // 256} pages",
                                        "No rp2040 in BOOTSEL mode was found"]


def test_double_skips_blocks_of_another_family_in_silence(rig, tmp_path):
    board = bootsel_board(rig)
    address = board.usb_address
    image = tmp_path / "other.uf2"
    image.write_bytes(uf2(KATAPULT_IMAGE, BASE, family=0x12345678))
    done = run_double(rig, str(image))
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert lines[0] == "Loaded UF2 image with 0 pages"
    assert lines[1:] == [f"Found rp2040 device on USB bus 1 address {address}", "Flashing...",
                         "Resetting interface", "Locking", "Exiting XIP mode", "Erasing",
                         "Flashing", "Rebooting device"]
    assert board.mode == "off"          # nothing was written: the board runs nothing


# --- flashing ---------------------------------------------------------------------------
def test_the_boot_rom_is_offered_to_rp2040_presets_that_build_a_uf2():
    methods = [m["method"] for m in get_preset("ldo-nitehawk-sb-katapult").flash_methods]
    assert methods == ["katapult", "rp2040_boot"]          # the listed method stays first
    behind = [m["method"] for m in get_preset("ldo-nitehawk-sb-klipper").flash_methods]
    assert behind == ["katapult"]                          # Klipper at 0x10004000: Katapult
    stm32 = [m["method"] for m in get_preset("btt-octopus-f446-canbridge").flash_methods]
    assert "rp2040_boot" not in stm32


async def test_first_katapult_install_through_bootsel(rig, artifact_dir):
    board = bootsel_board(rig)
    art = katapult_artifact(artifact_dir("kat"))
    profile = nitehawk_katapult()
    plan = make_plan(profile, art, method="rp2040_boot", devices=await rig.scan(),
                     config=rig.config)
    assert [s.kind for s in plan.steps] == ["wait_bootsel", "write_rp2040", "wait_return"]
    assert "rp2040_flash (RP2040 boot ROM in BOOTSEL mode)" in plan.format()
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    assert board.read_flash(BASE, len(KATAPULT_IMAGE)) == KATAPULT_IMAGE
    assert board.mode == "katapult" and result.board_back
    assert "Katapult" in (result.board_detail or "")
    argv = rig.machine.tool_invocations("rp2040_flash")[-1]["argv"]
    assert argv[0] == art.path("katapult.uf2") and argv[1] == "1"     # bus, then address
    assert rig.service.calls == []          # no Klipper board: Klipper is left alone
    assert any(e.stage == "write" and e.percent == 100.0 for e in rig.events)


async def test_klipper_without_bootloader_from_an_mcu_profile(rig, artifact_dir):
    board = bootsel_board(rig, "pico")
    profile = profile_from_json({"name": "pico", "mcu": "rp2040", "kconfig": {
        "CONFIG_RPXXXX_FLASH_START_0100": "y", "CONFIG_RPXXXX_USB": "y"}}, source="cli")
    assert [m["method"] for m in profile.preset.flash_methods] == ["rp2040_boot"]
    image = b"\xa5" * 0x100 + make_klipper_image("rp2040", "v0.13.0-9-gabc")
    art = write_artifact(artifact_dir("pico"), profile="pico", preset=profile.preset.id,
                         mcu="rp2040", app_address=BASE + 0x100, image=uf2(image, BASE),
                         name="klipper.uf2", version="v0.13.0-9-gabc")
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.method == "rp2040_boot" and plan.address == BASE
    result = await execute_plan(plan, rig.context())
    assert result.ok, result.summary()
    assert board.mode == "klipper"
    assert board.running_firmware()["version"] == "v0.13.0-9-gabc"
    assert result.board_detail == "the board left BOOTSEL mode"


@pytest.mark.parametrize("case", ["offset", "family"])
async def test_a_wrong_image_is_refused_before_rp2040_flash_runs(rig, artifact_dir, case):
    board = bootsel_board(rig)
    art = (katapult_artifact(artifact_dir("off"), address=0x10004000) if case == "offset"
           else katapult_artifact(artifact_dir("fam"), family=0x12345678))
    plan = make_plan(nitehawk_katapult(), art, method="rp2040_boot", devices=await rig.scan(),
                     config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and not result.written
    if case == "offset":
        assert result.check == "app_address"
        assert "starts at 0x10004000 but this build belongs at 0x10000000" in result.message
    else:
        assert result.check == "image"
        assert "would report success with nothing written" in result.message
    assert rig.machine.tool_invocations("rp2040_flash") == []
    assert board.mode == "bootsel"


async def test_a_board_waiting_in_bootsel_picks_the_boot_rom(rig, artifact_dir):
    art = katapult_artifact(artifact_dir("k"))
    profile = nitehawk_katapult(serial="/dev/serial/by-id/usb-katapult_rp2040_E66-if00")
    assert make_plan(profile, art, devices=await rig.scan(),
                     config=rig.config).method == "katapult"      # nothing in BOOTSEL
    bootsel_board(rig)
    plan = make_plan(profile, art, devices=await rig.scan(), config=rig.config)
    assert plan.method == "rp2040_boot"
    assert plan.step("wait_return").params["expect"] == "katapult"


async def test_an_rp2350_in_bootsel_is_not_written_with_an_rp2040_build(rig, artifact_dir):
    bootsel_board(rig, "other", "rp2350")
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and result.check == "mcu"
    assert "the board in BOOTSEL mode is an RP2350 (2e8a:000f)" in result.message
    assert rig.machine.tool_invocations("rp2040_flash") == []


async def test_two_boards_in_bootsel_are_not_guessed(rig, artifact_dir):
    bootsel_board(rig, "one")
    bootsel_board(rig, "two")
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and result.check == "bootsel_device"
    assert "2 boards are in BOOTSEL mode" in result.message
    assert rig.machine.tool_invocations("rp2040_flash") == []


async def test_no_board_in_bootsel_says_how_to_enter_it(rig, artifact_dir):
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and not result.written
    assert result.message.startswith("No board in BOOTSEL mode within")
    assert "hold the BOOT button, press and release RESET" in result.hint
    assert any("No board in BOOTSEL mode yet" in e.message for e in rig.events)


async def test_without_discovery_rp2040_flash_itself_reports_no_board(rig, artifact_dir):
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", config=rig.config)
    result = await execute_plan(plan, rig.context(with_discovery=False))
    assert result.state == "failed" and not result.written
    assert result.message.startswith("No board in BOOTSEL mode: rp2040_flash found no")
    argv = rig.machine.tool_invocations("rp2040_flash")[-1]["argv"]
    assert argv == [plan.file_path]          # no bus/address known: the tool finds the board


async def test_a_failed_write_says_the_boot_rom_recovers_it(rig, artifact_dir):
    board = bootsel_board(rig)
    board.set_fault("rp2040_write_error")
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and result.written
    assert "Command write failed with status 4: invalid address" in result.message
    assert "boot ROM cannot be damaged" in result.recovery
    assert "--method rp2040_boot" in result.recovery


def test_without_a_tool_path_the_plan_builds_rp2040_flash_in_the_checkout(tmp_path,
                                                                          artifact_dir):
    from moonraker_octoflash.flash.config import FlashConfig
    config = FlashConfig(klipper_path=str(tmp_path / "klipper"))
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", config=config)
    build = plan.step("build_rp2040_flash")
    assert build.argv == ["make", "lib/rp2040_flash/rp2040_flash"]
    assert build.params["cwd"] == str(tmp_path / "klipper")
    write = plan.step("write_rp2040")
    assert write.argv[0] == os.path.join(str(tmp_path / "klipper"), "lib/rp2040_flash/rp2040_flash")
    assert "make lib/rp2040_flash/rp2040_flash" in plan.format()


async def test_the_build_step_runs_make_once(rig, tmp_path, artifact_dir):
    """make builds the tool in the checkout; a second flash finds it built."""
    bootsel_board(rig)
    checkout = tmp_path / "klipper"
    (checkout / "lib" / "rp2040_flash").mkdir(parents=True)
    double = rig.config.tool("rp2040_flash")
    (checkout / "Makefile").write_text(
        "lib/rp2040_flash/rp2040_flash:\n"
        f"\tcp {double} $@\n\tchmod +x $@\n\techo built >> {tmp_path / 'made'}\n")
    tools = {k: v for k, v in rig.config.tools.items() if k != "rp2040_flash"}
    import dataclasses
    config = dataclasses.replace(rig.config, klipper_path=str(checkout), tools=tools)
    for name in ("a", "b"):
        plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir(name)),
                         method="rp2040_boot", devices=await rig.scan(), config=config)
        result = await execute_plan(plan, rig.context())
        assert result.ok, result.summary()
        rig.machine.board("nitehawk").set_mode("bootsel", delay=0.0)
    assert (tmp_path / "made").read_text() == "built\n"
    assert result.steps[0].status == "skipped" and "already built" in result.steps[0].message


def test_a_profile_may_name_the_method():
    profile = nitehawk_katapult(flash_method="rp2040_boot")
    assert profile.flash_method == "rp2040_boot"
    with pytest.raises(ValidationError) as caught:
        nitehawk_katapult(flash_method="uf2")
    assert "dfu, katapult, rp2040_boot" in str(caught.value)


# --- the way back on an RP2040 is the boot ROM, not DFU ------------------------------------
NITEHAWK_KLIPPER = "ldo-nitehawk-sb-klipper"
BOOTSEL_STEPS = ("Put the board into BOOTSEL mode: hold the BOOT button, press and release "
                 "RESET (or plug in USB), then release BOOT; the board shows as 2e8a:0003.")


def nitehawk_klipper(board):
    return profile_from_json({"name": "nitehawk", "preset": NITEHAWK_KLIPPER,
                              "serial": board.by_id_path()}, source="cli")


def klipper_behind_katapult(directory):
    return write_artifact(directory, profile="nitehawk", preset=NITEHAWK_KLIPPER, mcu="rp2040",
                          app_address=BASE + 0x4000, bridge=False,
                          image=make_klipper_image("rp2040", "v0.13.0-9-gabc"),
                          name="klipper.bin", version="v0.13.0-9-gabc")


async def test_a_failed_katapult_write_on_an_rp2040_recovers_through_the_boot_rom(
        rig, artifact_dir):
    board = rig.machine.add_board("nitehawk", "rp2040", bootloader="katapult",
                                  app_start=BASE + 0x4000, firmware={"version": "v0.12.0"})
    board.set_fault("katapult_write_error")
    plan = make_plan(nitehawk_klipper(board), klipper_behind_katapult(artifact_dir("a")),
                     devices=await rig.scan(), config=rig.config)
    assert plan.method == "katapult"
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and result.written
    assert result.recovery == (
        "The application area was partly written; Katapult itself was not touched. "
        "Double-click the reset button to enter Katapult and flash again. If Katapult does "
        f"not come up, recover through the boot ROM: {BOOTSEL_STEPS} Then flash "
        "ldo-nitehawk-sb-katapult with the rp2040_boot method to get the bootloader back, "
        "then this profile.")
    assert "DFU" not in result.recovery and "dfu" not in result.recovery


def test_recovery_texts_follow_the_mcu(rig, artifact_dir):
    """The same outcomes on an STM32 and an RP2040 name each chip's own ROM loader."""
    from moonraker_octoflash.flash.methods.common import board_recovery
    board = rig.machine.add_board("nitehawk", "rp2040", bootloader="katapult",
                                  app_start=BASE + 0x4000, firmware={"version": "v0.12.0"})
    plan = make_plan(nitehawk_klipper(board), klipper_behind_katapult(artifact_dir("a")),
                     config=rig.config)
    done = board_recovery(plan, write_started=True, in_bootloader=True, write_complete=True)
    assert done.endswith(f"If Katapult does not come up either, recover through the boot ROM: "
                         f"{BOOTSEL_STEPS} Then flash ldo-nitehawk-sb-katapult with the "
                         "rp2040_boot method to get the bootloader back, then this profile.")
    back = board_recovery(plan, write_started=True, in_bootloader=True, write_complete=True,
                          board_back=True)
    assert "recover through the boot ROM" in back and "DFU" not in back


async def test_klipper_without_katapult_on_an_rp2040_goes_to_the_boot_rom(rig, artifact_dir):
    # Klipper on an RP2040 without Katapult, asked for its bootloader, reboots into the boot
    # ROM (src/rp2040/main.c: bootloader_request); flashtool sees 2e8a:0003, not Katapult.
    board = rig.machine.add_board("nitehawk", "rp2040", bootloader=None,
                                  firmware={"version": "v0.12.0"})
    profile = nitehawk_klipper(board)
    plan = make_plan(profile, klipper_behind_katapult(artifact_dir("a")),
                     devices=await rig.scan(), config=rig.config)
    assert plan.method == "katapult"
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and not result.written
    assert "came back as 2e8a:0003 raspberry pi rp2 boot" in result.message
    assert result.hint == (
        "Katapult is not installed on this board, and this build starts at 0x10004000, behind "
        "a bootloader: written alone through the boot ROM it would not start. The board waits "
        "in BOOTSEL mode now: flash ldo-nitehawk-sb-katapult with the rp2040_boot method "
        "first, then this profile.")
    assert result.recovery == (
        "Nothing was written. The board waits in BOOTSEL mode (the RP2040's boot ROM): flash "
        "ldo-nitehawk-sb-katapult with the rp2040_boot method, then this profile; or press its "
        "reset button to go back to its firmware.")
    assert board.mode == "bootsel" and rig.writes() == []
    # Following it: the board is seen in its boot ROM, so Katapult's plan takes the boot ROM.
    snapshot = await rig.scan()
    assert snapshot.status_of(profile).state == "boot_rom"
    kat_plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                         devices=snapshot, config=rig.config)
    assert kat_plan.method == "rp2040_boot"
    assert (await execute_plan(kat_plan, rig.context())).ok
    assert board.bootloader()["kind"] == "katapult"


def test_double_without_access_says_no_board_and_nothing_else(rig, tmp_path):
    # Klipper's rp2040_flash skips a device libusb may not open, without a word.
    board = bootsel_board(rig)
    board.set_fault("usb_access_denied")
    image = tmp_path / "katapult.uf2"
    image.write_bytes(uf2(KATAPULT_IMAGE, BASE))
    done = run_double(rig, str(image), "1", str(board.usb_address))
    assert done.returncode == 0
    assert done.stderr.splitlines()[1:] == ["No rp2040 in BOOTSEL mode was found"]


async def test_a_boot_rom_the_service_may_not_open_is_named_with_the_fix(rig, artifact_dir):
    board = bootsel_board(rig)
    board.set_fault("usb_access_denied")
    plan = make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("k")),
                     method="rp2040_boot", devices=await rig.scan(), config=rig.config)
    result = await execute_plan(plan, rig.context())
    assert result.state == "failed" and not result.written
    device = (f"2e8a:0003 (USB bus 1 device {board.usb_address}, "
              f"/dev/bus/usb/001/{board.usb_address:03d})")
    assert result.message.startswith(f"rp2040_flash could not open the RP2040 boot ROM {device} "
                                     "for 'nitehawk': it is connected")
    assert "nothing was written" in result.message
    assert result.hint.startswith(f"The Moonraker service's user may not open the USB device "
                                  f"{device}, the RP2040 in BOOTSEL mode: run ./install.sh again")
    assert "sudo udevadm trigger" in result.hint
    assert board.mode == "bootsel" and rig.writes() == []
    board.set_fault("usb_access_denied", False)          # the udev rule is in place
    again = await execute_plan(make_plan(nitehawk_katapult(), katapult_artifact(artifact_dir("a")),
                                         method="rp2040_boot", devices=await rig.scan(),
                                         config=rig.config), rig.context())
    assert again.ok, again.summary()


async def test_a_build_behind_katapult_is_refused_while_the_board_waits_in_bootsel(
        rig, artifact_dir):
    board = bootsel_board(rig)
    profile = profile_from_json({"name": "nitehawk", "preset": NITEHAWK_KLIPPER,
                                 "klipper_mcu": "nitehawk",
                                 "serial": "/dev/serial/by-id/usb-Klipper_rp2040_E66-if00"},
                                source="cli")
    plan = make_plan(profile, klipper_behind_katapult(artifact_dir("a")),
                     devices=await rig.scan(), config=rig.config)
    assert plan.method == "katapult"                # the only method for this build
    result = await execute_plan(plan, rig.context())
    assert result.state == "refused" and result.check == "board_state"
    assert result.message.startswith("The board is not reachable through Katapult: a board "
                                     "is in BOOTSEL mode (boot ROM 2e8a:0003)")
    assert result.hint.startswith("Flash ldo-nitehawk-sb-katapult with the rp2040_boot method "
                                  "first")
    assert rig.service.calls == [] and rig.writes() == []    # Klipper was left alone
    assert board.mode == "bootsel"
