"""Flash plans, their order, and the command line (scan, flash --dry-run / --yes)."""
from __future__ import annotations

import io
import json

import pytest

from fixtures_flash import cli_printer, ebb_profile, octopus_profile, write_artifact
from moonraker_octoflash.cli import main as octoflash
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.flash.config import FlashConfig
from moonraker_octoflash.flash.plan import make_plan, order_for_flash

UUID = "c26f3d91d861"


def _config(**kw):
    return FlashConfig(python="/usr/bin/python3", flashtool="/home/pi/katapult/scripts/flashtool.py",
                       by_id_dir="/dev/serial/by-id", **kw)


def test_bridge_plan_lists_every_command(artifact_dir):
    profile = octopus_profile(canbus_uuid=UUID, klipper_mcu="mcu")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    plan = make_plan(profile, art, config=_config())
    assert plan.method == "katapult" and plan.transport == "usb-can-bridge"
    assert [s.kind for s in plan.steps] == [
        "stop_klipper", "request_bootloader", "wait_katapult_usb", "katapult_status",
        "write_katapult", "wait_return", "start_klipper", "check_version"]
    text = plan.format()
    assert "$ /usr/bin/python3 /home/pi/katapult/scripts/flashtool.py -i can0 -u c26f3d91d861 -r" in text
    # Without a scan the Katapult port is known only once it appears.
    assert "-d '{katapult_device}' -f " + art.path() in text
    data = plan.to_json()
    assert data["artifact"]["sha256"] == art.file().sha256 and data["address"] == "0x08008000"
    json.dumps(data)


async def test_plan_fills_in_the_katapult_port_from_a_scan(machine, artifact_dir):
    board = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    from moonraker_octoflash.discovery import scan
    devices = await scan(**dict(machine.scan_options(), can=False))
    plan = make_plan(profile, art, devices=devices, config=_config())
    write = plan.step("write_katapult")
    assert write.argv[3] == f"/dev/serial/by-id/usb-katapult_stm32f446xx_{board.chip_id}-if00"
    assert plan.board_status.state == "running"


def test_dfu_plans_take_the_address_from_the_artifact(artifact_dir):
    profile = octopus_profile(preset="btt-octopus-h723-canbridge", canbus_uuid=UUID,
                              flash_method="dfu")
    art = write_artifact(artifact_dir("h7"), profile="octopus", preset=profile.preset.id,
                         mcu="stm32h723xx", app_address=0x08020000)
    plan = make_plan(profile, art, config=_config(dfu_util="dfu-util"))
    assert plan.step("write_dfu").argv == ["dfu-util", "-a", "0", "-d", "0483:df11", "-s",
                                           "0x08020000:leave", "-D", art.path()]
    assert plan.step("wait_return").params["expect"] == "canbridge"
    kat = octopus_profile("kat", "btt-octopus-h723-katapult")
    kart = write_artifact(artifact_dir("k"), profile="kat", preset=kat.preset.id, target="katapult",
                          mcu="stm32h723xx", app_address=0x08000000, bootloader_app_start=0x08020000)
    plan = make_plan(kat, kart, config=_config(dfu_util="dfu-util"))
    assert plan.step("write_dfu").argv[-3] == "0x08000000:mass-erase:force:leave"
    assert plan.step("write_dfu").params["fallback_argv"][-3] == "0x08000000:leave"
    assert "HE0/HE2" in plan.step("wait_dfu").params["instructions"]


def test_method_choice_and_bad_methods(artifact_dir):
    profile = octopus_profile(preset="btt-octopus-f446-canbridge-nobootloader", canbus_uuid=UUID)
    art = write_artifact(artifact_dir("nb"), profile="octopus", preset=profile.preset.id,
                         app_address=0x08000000)
    with pytest.raises(ValidationError, match="cannot be written with 'katapult'"):
        make_plan(profile, art, method="katapult", config=_config())
    plan = make_plan(profile, art, config=_config())
    assert plan.method == "dfu"
    assert any("erases any bootloader" in w for w in plan.warnings)
    kat = write_artifact(artifact_dir("k"), profile="octopus", preset=profile.preset.id,
                         target="katapult", app_address=0x08000000)
    with pytest.raises(ValidationError, match="is katapult firmware"):
        make_plan(profile, kat, config=_config())


def test_katapult_without_a_way_to_reach_the_board_is_refused(artifact_dir):
    profile = octopus_profile(flash_method="katapult")
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    with pytest.raises(ValidationError, match="set canbus_uuid"):
        make_plan(profile, art, config=_config())


def test_can_nodes_first_bridge_last():
    bridge = octopus_profile("octopus", canbus_uuid=UUID)
    dfu_board = octopus_profile("spare", "btt-octopus-f429-canbridge-nobootloader",
                                dfu_serial="ABC123")
    node_a = ebb_profile("aaaaaaaaaaaa", name="ebb-a")
    node_b = ebb_profile("bbbbbbbbbbbb", name="ebb-b")
    ordered = order_for_flash([bridge, node_a, dfu_board, node_b])
    assert [p.name for p in ordered] == ["ebb-a", "ebb-b", "spare", "octopus"]


# --- the command line -------------------------------------------------------------------
def _setup_cli(tmp_path, machine):
    printer = cli_printer(tmp_path, machine)
    return printer["conf"], printer["octo"], printer["head"], printer["store"]


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = octoflash(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_dry_run_prints_the_plans_in_order_and_runs_nothing(tmp_path, machine):
    conf, octo, head, _store = _setup_cli(tmp_path, machine)
    code, out, err = _run("--config", conf, "flash", "octopus", "toolhead", "--dry-run")
    assert code == 0, err
    assert out.index("Flash plan for 'toolhead'") < out.index("Flash plan for 'octopus'")
    assert f"-i can0 -u {head.canbus_uuid} -r" in out and f"-i can0 -u {octo.canbus_uuid} -r" in out
    assert out.rstrip().endswith("Dry run: nothing was done.")
    assert machine.tool_invocations() == []
    assert octo.mode == "klipper-canbridge" and head.mode == "klipper"


def test_cli_refuses_to_flash_without_a_terminal_or_yes(tmp_path, machine):
    conf, octo, _head, _store = _setup_cli(tmp_path, machine)
    code, out, err = _run("--config", conf, "flash", "octopus")
    assert code == 1 and "pass --yes" in err
    assert machine.tool_invocations() == []


def test_cli_flash_yes_json_writes_both_boards(tmp_path, machine):
    conf, octo, head, store = _setup_cli(tmp_path, machine)
    code, out, err = _run("--config", conf, "flash", "octopus", "toolhead", "--yes", "--json")
    data = json.loads(out)
    assert code == 0, (err, [r["message"] for r in data["results"]])
    assert [r["profile"] for r in data["results"]] == ["toolhead", "octopus"]
    assert all(r["ok"] and r["board_back"] for r in data["results"])
    for board, name in ((octo, "octopus"), (head, "toolhead")):
        image = open(store.latest(name).path(), "rb").read()
        assert board.read_flash(0x08008000, len(image)) == image
    assert machine.klipper_running


def test_cli_scan_shows_devices_and_profile_states(tmp_path, machine):
    conf, octo, head, _store = _setup_cli(tmp_path, machine)
    code, out, err = _run("--config", conf, "scan")
    assert code == 0, err
    assert "1d50:606f Klipper USB-CAN bridge" in out and f"canbus_uuid {octo.canbus_uuid}" in out
    assert f"can0 {head.canbus_uuid} Klipper" in out
    assert "octopus   running" in out and "toolhead  running" in out
    code, out, err = _run("--config", conf, "scan", "--json")
    data = json.loads(out)
    assert data["profiles"]["toolhead"]["state"] == "running"
    assert {n["uuid"] for n in data["can_nodes"]} == {octo.canbus_uuid, head.canbus_uuid}
