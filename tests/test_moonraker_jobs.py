"""Builds and flashes through a real Moonraker, against the demo's simulated machine.

The module runs the demo itself (``moonraker_octoflash.sim.demo.Demo``): a real
Moonraker 0.11 with the component linked in, the simulated Octopus (USB-CAN
bridge behind Katapult), the EBB36 CAN toolhead (STM32G0B1 behind Katapult)
and the Nitehawk-SB (RP2040 on USB, waiting in BOOTSEL), the small source
trees (real ``make`` and Kconfig) and the Klipper stand-in.  What the tests check is
what a user sees: HTTP and JSON-RPC answers, notifications, console lines,
the job history, the versions Klipper reports afterwards.
"""
from __future__ import annotations

import asyncio
import time

import pytest


pytestmark = pytest.mark.moonraker


@pytest.fixture
def idle(demo):
    demo.set_print_state("standby")
    yield demo
    demo.set_print_state("standby")


async def test_a_build_reports_every_step_and_ends_in_the_history(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    # forced: whatever other tests built, this build runs every step
    job = demo.result("POST", "/server/octoflash/build",
                      body={"profile": "toolhead", "force": True})["job"]
    assert job["kind"] == "build" and job["profile"] == "toolhead" and job["origin"] == "api"
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job["job_id"] and u["final"], 60)
    assert final["state"] == "done", final
    updates = [u for u in ws.of("notify_octoflash_job_update") if u["job_id"] == job["job_id"]]
    stages = [u["stage"] for u in updates if u["event"] == "step"]
    assert stages[:2] == ["build", "configure"] and "compile" in stages
    assert any(u["percent"] is not None for u in updates)
    assert sum(1 for u in updates if u["final"]) == 1

    record = demo.result("GET", "/server/octoflash/job", args={"job_id": job["job_id"]})["job"]
    assert record["state"] == "done" and record["duration"] > 0
    assert record["artifact"]["profile"] == "toolhead"
    assert record["artifact"]["mcu"] == "stm32g0b1xx"
    assert record["artifact"]["preset"] == "btt-ebb-klipper-1m"
    assert record["artifact"]["app_address"] == "0x08002000"    # behind an 8 KiB Katapult
    assert record["version"].startswith("v0.13.0-3-g")
    assert record["steps"][0]["stage"] == "build" and record["steps"][0]["state"] == "done"
    assert record["steps"][0]["result"]["skipped"] is False
    assert record["log"] and record["log_path"].endswith("build.log")
    last = await ws.wait_notification("notify_gcode_response",
                                      lambda t: "Build of toolhead" in str(t), 10)
    assert last.startswith("// octoflash build toolhead: Build of toolhead done")
    console = [line for line in ws.of("notify_gcode_response") if "octoflash build toolhead" in line]
    assert console[0].startswith("// octoflash build toolhead: started")

    # nothing changed: the next build is skipped, over JSON-RPC this time
    again = await ws.call("server.octoflash.build", {"profile": "toolhead"})
    final = await ws.wait_notification(
        "notify_octoflash_job_update",
        lambda u: u["job_id"] == again["job"]["job_id"] and u["final"], 30)
    assert final["message"] == "Build of toolhead: up to date, nothing rebuilt"

    profiles = demo.result("GET", "/server/octoflash/profiles")["profiles"]
    toolhead = next(p for p in profiles if p["name"] == "toolhead")
    assert toolhead["status"]["latest_build"]["id"] == record["artifact_id"]


def test_server_info_answers_during_a_build(idle):
    demo = idle
    job = demo.result("POST", "/server/octoflash/build",
                      body={"profile": "octopus", "force": True})["job"]
    answered, slowest = 0, 0.0
    while True:
        start = time.monotonic()
        status, _ = demo.get("/server/info", timeout=5)
        slowest = max(slowest, time.monotonic() - start)
        assert status == 200
        answered += 1
        state = demo.result("GET", "/server/octoflash/job", args={"job_id": job["job_id"]})["job"]["state"]
        if state not in ("queued", "running"):
            break
    assert state == "done"
    assert answered >= 3          # the build took a while and Moonraker kept answering
    assert slowest < 2.0, f"/server/info took {slowest:.2f} s during a build"


def test_builds_may_run_while_printing(idle):
    demo = idle
    demo.set_print_state("printing", "benchy.gcode")
    job = demo.result("POST", "/server/octoflash/build", body={"profile": "octopus"})["job"]
    assert demo.wait_job(job["job_id"])["state"] == "done"


async def test_a_job_runs_on_when_its_client_goes_away(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    started = await ws.call("server.octoflash.build", {"profile": "toolhead", "force": True})
    await ws.__aexit__(None, None, None)         # the browser tab is closed
    assert demo.wait_job(started["job"]["job_id"])["state"] == "done"


def test_an_interrupted_job_shows_as_interrupted_after_a_restart(idle):
    demo = idle
    demo.result("POST", "/server/octoflash/build", body={"profile": "toolhead"})
    job = demo.result("POST", "/server/octoflash/build",
                      body={"profile": "octopus", "force": True})["job"]
    demo.wait_for(lambda: demo.result("GET", "/server/octoflash/job", args={"job_id": job["job_id"]})
                  ["job"]["stage"] in ("compile", "link"), 30, "the build to compile")
    history = [j["job_id"] for j in demo.result("GET", "/server/octoflash/jobs")["jobs"]]
    demo.kill_moonraker()                         # power cut: no chance to clean up
    demo.start_moonraker()
    record = demo.result("GET", "/server/octoflash/job", args={"job_id": job["job_id"]})["job"]
    assert record["state"] == "interrupted"
    assert "stopped while this job was running" in record["error"]
    assert record["steps"][-1]["state"] == "interrupted"
    # the history from before the restart is all there
    after = [j["job_id"] for j in demo.result("GET", "/server/octoflash/jobs")["jobs"]]
    assert len(history) >= 2 and set(history) <= set(after)
    assert demo.result("GET", "/server/octoflash/status")["active_jobs"] == []
    demo.wait_klippy_ready()

    # an orderly stop records the running job as interrupted itself
    job = demo.result("POST", "/server/octoflash/build",
                      body={"profile": "toolhead", "force": True})["job"]
    demo.wait_for(lambda: _job(demo, job["job_id"])["stage"] in ("compile", "link"), 30,
                  "the build to compile")
    demo.stop_moonraker()
    demo.start_moonraker()
    record = _job(demo, job["job_id"])
    assert record["state"] == "interrupted" and "Moonraker stopped" in record["error"]
    demo.wait_klippy_ready()


def _job(demo, job_id):
    return demo.result("GET", "/server/octoflash/job", args={"job_id": job_id})["job"]


async def test_a_flash_stops_klipper_writes_the_board_and_starts_klipper(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    starts_before = demo.call(lambda: demo.standin.starts)
    started = await ws.call("server.octoflash.flash", {"profile": "toolhead"})
    job_id = started["job"]["job_id"]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 90)
    assert final["state"] == "done", final
    job = _job(demo, job_id)
    stages = [s["stage"] for s in job["steps"]]
    for stage in ("build", "plan", "stop_klipper", "request_bootloader", "write_katapult",
                  "wait_return", "start_klipper", "check_version"):
        assert stage in stages, stages
    assert stages.index("stop_klipper") < stages.index("write_katapult") < stages.index("start_klipper")
    assert job["plan"]["method"] == "katapult" and job["plan"]["needs_klipper_stop"] is True
    assert job["result"]["version_matches"] is True
    # the write notifications carried percentages
    writes = [u["percent"] for u in ws.of("notify_octoflash_job_update")
              if u["job_id"] == job_id and u["stage"] == "write" and u["percent"] is not None]
    assert writes and max(writes) == 100.0
    # Klipper was stopped and started again (the stand-in counts its starts:
    # at least this one), and now reports the new firmware
    done = {s["stage"] for s in job["steps"] if s["state"] == "done"}
    assert {"stop_klipper", "start_klipper"} <= done
    assert demo.call(lambda: demo.standin.starts) >= starts_before + 1
    demo.wait_klippy_ready()
    toolhead = demo.result("GET", "/server/octoflash/profile", args={"name": "toolhead"})["profile"]
    assert toolhead["status"]["mcu_version"] == job["version"]
    assert toolhead["status"]["out_of_date"] is False
    assert any("flashtool" in e["tool"] for e in demo.machine.tool_invocations())
    last = await ws.wait_notification("notify_gcode_response",
                                      lambda t: "Flash of toolhead" in str(t), 10)
    assert last.startswith("// octoflash flash toolhead: Flash of toolhead done")
    console = [line for line in ws.of("notify_gcode_response") if "octoflash flash toolhead" in line]
    # steps in words, the write's percentage to its end
    assert any(line.startswith("// octoflash flash toolhead: Writing ") and " KB" in line
               for line in console), console
    assert any(line.endswith(" 100 %") and ": Verifying " in line for line in console), console


async def test_when_a_flash_ends_klipper_is_back_in_moonraker(idle, ws_factory):
    # Klipper answers on its socket well before Moonraker has connected to it again
    # (Moonraker looks every 0.25 s, then waits 0.25 s more): the job ends when
    # Moonraker has it, so what comes next through Moonraker reaches Klipper.
    demo = idle
    ws = await ws_factory(demo)
    built = demo.result("POST", "/server/octoflash/build", body={"profile": "toolhead"})["job"]
    assert demo.wait_job(built["job_id"])["state"] == "done"
    demo.wait_klippy_ready()
    job_id = (await ws.call("server.octoflash.flash",
                            {"profile": "toolhead", "build": False}))["job"]["job_id"]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 90)
    assert final["state"] == "done", final
    assert demo.result("GET", "/server/info")["klippy_state"] == "ready"
    status, answer = demo.post("/printer/gcode/script", {"script": "M115"})
    assert status == 200, answer
    assert _job(demo, job_id)["result"]["version_matches"] is True


async def test_a_flash_asked_for_right_after_klipper_was_started_stops_it(idle, ws_factory):
    # Right after a start Klipper runs, but Moonraker has not connected to it yet:
    # Klipper still counts as running, so the flash stops it first.
    demo = idle
    ws = await ws_factory(demo)
    built = demo.result("POST", "/server/octoflash/build", body={"profile": "toolhead"})["job"]
    assert demo.wait_job(built["job_id"])["state"] == "done"
    demo.call(demo.standin.stop)
    demo.wait_for(lambda: demo.result("GET", "/server/info")["klippy_state"] == "disconnected",
                  20, "Moonraker to see Klipper stopped")
    starts_before = demo.call(lambda: demo.standin.starts)
    demo.call(demo.standin.start)               # as "sudo systemctl start klipper" does
    job_id = (await ws.call("server.octoflash.flash",
                            {"profile": "toolhead", "build": False}))["job"]["job_id"]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 90)
    assert final["state"] == "done", final
    steps = {s["stage"]: s for s in _job(demo, job_id)["steps"]}
    assert steps["stop_klipper"]["state"] == "done", steps["stop_klipper"]
    assert steps["start_klipper"]["state"] == "done", steps["start_klipper"]
    assert demo.call(lambda: demo.standin.starts) == starts_before + 2
    demo.wait_klippy_ready()


def test_a_second_flash_is_refused_while_one_runs(idle):
    demo = idle
    first = demo.result("POST", "/server/octoflash/flash",
                        body={"profile": "octopus", "force": True})["job"]
    status, payload = demo.post("/server/octoflash/flash", {"profile": "toolhead"})
    assert status == 409
    message = payload["error"]["message"]
    assert f"Another flash is running (job {first['job_id']}, flashing 'octopus'" in message
    status, payload = demo.post("/server/octoflash/build", {"profile": "octopus"})
    assert status == 409 and "in use by job" in payload["error"]["message"]
    assert demo.wait_job(first["job_id"], 120)["state"] == "done"
    demo.wait_klippy_ready()


def test_a_print_started_during_the_build_stops_the_flash_before_writing(idle):
    demo = idle
    starts_before = demo.call(lambda: demo.standin.starts)
    job = demo.result("POST", "/server/octoflash/flash",
                      body={"profile": "toolhead", "force": True})["job"]
    demo.wait_for(lambda: _job(demo, job["job_id"])["stage"] in ("compile", "link"), 30,
                  "the build to compile")
    demo.set_print_state("printing", "benchy.gcode")
    record = demo.wait_job(job["job_id"], 60)
    assert record["state"] == "refused"
    assert "Klipper is printing (benchy.gcode)" in record["error"]
    assert "stop_klipper" not in [s["stage"] for s in record["steps"]]
    assert demo.call(lambda: demo.standin.starts) == starts_before     # Klipper never stopped


def test_a_flash_cancelled_during_its_build_leaves_klipper_alone(idle):
    demo = idle
    starts_before = demo.call(lambda: demo.standin.starts)
    job = demo.result("POST", "/server/octoflash/flash",
                      body={"profile": "octopus", "force": True})["job"]
    demo.wait_for(lambda: _job(demo, job["job_id"])["stage"] in ("configure", "compile", "link"),
                  30, "the build to start")
    cancelled = demo.result("POST", "/server/octoflash/job/cancel",
                            body={"job_id": job["job_id"]})["job"]
    assert cancelled["state"] == "cancelled"
    assert demo.result("GET", "/server/octoflash/status")["flash_job"] is None
    assert demo.call(lambda: demo.standin.running) is True
    assert demo.call(lambda: demo.standin.starts) == starts_before


async def test_update_all_from_the_macro_flashes_the_toolhead_first(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    demo.result("POST", "/printer/gcode/script", body={"script": "OCTOFLASH_UPDATE_ALL ALL=1"})
    line = await ws.wait_notification("notify_gcode_response",
                                      lambda t: "octoflash: update all: job" in str(t), 30)
    job_id = line.split("job ")[1].split()[0]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 180)
    assert final["state"] == "done", final
    job = _job(demo, job_id)
    assert job["origin"] == "macro" and job["options"]["profiles"] == ["toolhead", "octopus"]
    children = [_job(demo, c) for c in job["children"]]
    assert [(c["profile"], c["state"]) for c in children] == [("toolhead", "done"), ("octopus", "done")]
    assert children[0]["finished"] <= children[1]["started"]
    assert job["result"]["summary"] == "2 of 2 boards updated"
    demo.wait_klippy_ready()


async def test_the_nitehawk_gets_katapult_through_the_boot_rom_then_klipper_over_usb(
        idle, ws_factory):
    """The RP2040 toolhead waits in BOOTSEL with an empty flash: Katapult goes on
    through the boot ROM, then Klipper through that Katapult over USB."""
    demo = idle
    ws = await ws_factory(demo)
    board = demo.machine.board("nitehawk")
    assert board.mode == "bootsel"
    devices = demo.result("GET", "/server/octoflash/devices", args={"refresh": True})["devices"]
    boot_rom = [d for d in devices["usb"] if d["kind"] == "rp2040_boot"]
    # the RP2040 boot ROM's own serial, the same on every board
    assert [(d["usb_id"], d["serial"]) for d in boot_rom] == [("2e8a:0003", "E0C9125B0D9B")]
    for name in ("nitehawk", "nitehawk-katapult"):
        shown = devices["profiles"][name]
        assert shown["state"] == "boot_rom", shown
        assert shown["detail"].startswith("a board is in BOOTSEL mode (boot ROM 2e8a:0003)")
    assert "nitehawk" not in [m["name"] for m in devices["klipper_mcus"]]
    nitehawk = demo.result("GET", "/server/octoflash/profile", args={"name": "nitehawk"})["profile"]
    assert nitehawk["mcu"] == "rp2040" and nitehawk["status"]["mcu_version"] is None
    assert nitehawk["status"]["out_of_date"] is None

    started = await ws.call("server.octoflash.flash", {"profile": "nitehawk-katapult"})
    job_id = started["job"]["job_id"]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 90)
    assert final["state"] == "done", final
    job = _job(demo, job_id)
    assert job["artifact"]["mcu"] == "rp2040" and job["artifact"]["target"] == "katapult"
    assert job["plan"]["method"] == "rp2040_boot"       # picked: the board waits in BOOTSEL
    assert job["plan"]["transport"] == "rp2040-boot-rom"
    stages = [s["stage"] for s in job["steps"]]
    assert stages.index("wait_bootsel") < stages.index("write_rp2040") < stages.index("wait_return")
    assert demo.machine.tool_invocations("rp2040_flash")
    demo.wait_for(lambda: board.mode == "katapult", 20, "the Nitehawk to run Katapult")
    assert board.bootloader()["app_start"] == 0x10004000
    demo.wait_klippy_ready()

    started = await ws.call("server.octoflash.flash", {"profile": "nitehawk"})
    job_id = started["job"]["job_id"]
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job_id and u["final"], 90)
    assert final["state"] == "done", final
    job = _job(demo, job_id)
    assert job["plan"]["method"] == "katapult" and job["plan"]["transport"] == "usb-serial"
    assert "write_katapult" in [s["stage"] for s in job["steps"]]
    assert job["result"]["version_matches"] is True
    demo.wait_klippy_ready()
    assert board.mode == "klipper"
    nitehawk = demo.result("GET", "/server/octoflash/profile", args={"name": "nitehawk"})["profile"]
    assert nitehawk["status"]["mcu_version"] == job["version"]
    assert nitehawk["status"]["mcu_type"] == "rp2040"
    assert nitehawk["status"]["out_of_date"] is False


async def test_device_changes_are_notified(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    before = demo.result("GET", "/server/octoflash/devices", args={"refresh": True})["devices"]
    assert before["profiles"]["toolhead"]["state"] == "running"
    board = demo.machine.board("toolhead")
    board.set_mode("katapult")
    try:
        after = demo.result("GET", "/server/octoflash/devices", args={"refresh": True})["devices"]
        assert {"interface": "can0", "uuid": board.canbus_uuid,
                "application": "Katapult"} in after["can_nodes"]
        note = await ws.wait_notification(
            "notify_octoflash_devices",
            lambda d: any(n["application"] == "Katapult" for n in d["can_nodes"]), 10)
        assert note["can_nodes"] == after["can_nodes"]
        # an unchanged pass is not announced again
        count = len(ws.of("notify_octoflash_devices"))
        demo.result("GET", "/server/octoflash/devices", args={"refresh": True})
        await asyncio.sleep(0.5)
        assert len(ws.of("notify_octoflash_devices")) == count
    finally:
        board.reset()


async def test_plans_devices_and_update_all_over_jsonrpc(idle, ws_factory):
    demo = idle
    ws = await ws_factory(demo)
    # whatever an earlier test left of the octopus's build (one is killed half
    # way), a build brings it up to date, and the plan then needs none
    built = demo.result("POST", "/server/octoflash/build", body={"profile": "octopus"})["job"]
    assert demo.wait_job(built["job_id"])["state"] == "done"
    plan = demo.result("GET", "/server/octoflash/plan", args={"profile": "octopus"})
    assert plan["needs_build"] is False
    assert plan["plan"]["method"] == "katapult" and plan["plan"]["transport"] == "usb-can-bridge"
    assert plan["text"].startswith("Flash plan for 'octopus'")
    over_rpc = await ws.call("server.octoflash.plan", {"profile": "toolhead", "method": "katapult"})
    assert over_rpc["plan"]["profile"] == "toolhead" and over_rpc["plan"]["transport"] == "can"

    await ws.call("server.octoflash.post_profile", {"name": "spare", "preset": "btt-octopus-f429-katapult"})
    fresh = await ws.call("server.octoflash.plan", {"profile": "spare"})
    # never built: the plan starts with the build, then the flash it implies (DFU here)
    assert fresh["needs_build"] is True and fresh["artifact"] is None
    assert [s["kind"] for s in fresh["plan"]["build_steps"]] == ["configure", "build"]
    assert "make olddefconfig" in fresh["plan"]["build_steps"][0]["command"]
    assert fresh["plan"]["method"] == "dfu" and fresh["plan"]["address"] == "0x08000000"
    assert any(s["kind"] == "write_dfu" and "dfu-util" in s["command"]
               for s in fresh["plan"]["steps"])
    assert "1. Build 'spare'" in fresh["text"] and "(after the build)" in fresh["text"]
    await ws.call("server.octoflash.delete_profile", {"name": "spare"})

    devices = await ws.call("server.octoflash.devices", {"refresh": True})
    assert set(devices["devices"]["profiles"]) == {"octopus", "toolhead", "nitehawk",
                                                   "nitehawk-katapult"}
    # (the Nitehawk's states are the subject of its own test)
    assert {name: devices["devices"]["profiles"][name]["state"]
            for name in ("octopus", "toolhead")} == {"octopus": "running", "toolhead": "running"}

    # update all, to its end; then one more finds nothing to do
    first = await ws.call("server.octoflash.update_all")
    if first["job"] is not None:
        record = await asyncio.to_thread(demo.wait_job, first["job"]["job_id"], 180)
        assert record["state"] == "done", record
        await asyncio.to_thread(demo.wait_klippy_ready)
    nothing = await ws.call("server.octoflash.update_all")
    assert nothing == {"job": None, "message": "every board is up to date"}
    status, payload = demo.post("/server/octoflash/update_all", {"all": "sometimes"})
    assert status == 400 and "must be true or false" in payload["error"]["message"]
