"""What the component shows of Klipper's MCUs while Klipper cannot reach one of them.

After a failed flash a board often sits in its bootloader: Klipper then
stays in ``startup``, retrying its port, with the socket open, its objects
listed, ``{}`` for the missing MCU and the others identified.  That is when
a user opens the flasher, so the reachable boards must show their firmware
and the missing one "not connected" under the name Klipper gives it
(``mcu Toolhead``, whatever case a profile or ``configfile.settings`` uses).
tests/test_real_klipper.py checks the same against a real Klipper.
"""
from __future__ import annotations

import pytest

from fixtures_moonraker import MoonrakerProcess, RpcError, start_standin
from moonraker_octoflash.sim.klippy import MESSAGE_STARTUP, SimMcu

pytestmark = pytest.mark.moonraker

VERSION = "v0.13.0-100-gabcdef01"          # start_standin's host version
TOOLHEAD_SERIAL = "/dev/serial/by-id/usb-Klipper_stm32f446xx_3A0011223344-if00"
CONFIG = """
[octoflash]
klipper_path: {data}/klipper-src

[octoflash host]
preset: btt-octopus-f446-canbridge
canbus_uuid: 0123456789ab
klipper_mcu: mcu

[octoflash toolhead]
preset: btt-octopus-f446-canbridge-nobootloader
klipper_mcu: toolhead

[octoflash toolhead_serial]
preset: btt-octopus-f446-canbridge-nobootloader
serial: {serial}
"""


@pytest.fixture
def startup(tmp_path_factory, linked_component):
    """Klipper (the stand-in) waiting in startup: [mcu Toolhead] does not answer.

    One Moonraker per test: the last test brings Klipper out of startup."""
    data = str(tmp_path_factory.mktemp("mr-klipper"))
    mr = MoonrakerProcess(data, CONFIG.format(data=data, serial=TOOLHEAD_SERIAL))
    standin = start_standin(mr, mcus=[
        SimMcu("mcu", {"canbus_uuid": "0123456789ab"}, version=VERSION),
        SimMcu("Toolhead", {"serial": TOOLHEAD_SERIAL}, version=VERSION, reachable=False)])
    mr.start()
    # identified: Moonraker has registered the endpoints Klipper lists
    mr.wait_for(lambda: _klippy_state(mr) == "startup" and
                mr.get("/printer/gcode/help")[0] != 404, 20, "Klipper in startup, identified")
    yield mr, standin
    mr.stop()
    standin.close()


def _klippy_state(mr: MoonrakerProcess) -> str:
    status, payload = mr.get("/server/info")
    return payload["result"]["klippy_state"] if status == 200 else ""


def _statuses(mr: MoonrakerProcess) -> dict:
    profiles = mr.result("GET", "/server/octoflash/profiles")["profiles"]
    return {p["name"]: p["status"] for p in profiles}


def _klipper_mcus(mr: MoonrakerProcess) -> list:
    devices = mr.result("GET", "/server/octoflash/devices", args={"refresh": True})["devices"]
    return [(m["object_name"], m["connected"], m["mcu_version"]) for m in devices["klipper_mcus"]]


def test_startup_the_reachable_board_shows_its_firmware(startup):
    mr, _standin = startup
    mr.wait_for(lambda: _statuses(mr)["host"]["connected"], 20, "the reachable MCU read")
    statuses = _statuses(mr)
    assert statuses["host"]["mcu_version"] == VERSION
    assert statuses["host"]["klipper_mcu"] == "mcu"
    assert statuses["host"]["out_of_date"] is False
    for name in ("toolhead", "toolhead_serial"):
        status = statuses[name]
        assert status["connected"] is False and status["mcu_version"] is None, (name, status)
        assert status["out_of_date"] is None
        # Klipper's own name, not the profile's "toolhead" nor settings' "mcu toolhead"
        assert status["klipper_mcu"] == "mcu Toolhead", (name, status)
    assert _klipper_mcus(mr) == [("mcu", True, VERSION), ("mcu Toolhead", False, None)]
    assert mr.result("GET", "/server/octoflash/status")["klipper"]["state"] == "startup"


async def test_startup_klipper_refuses_gcode_with_its_message(startup, ws_factory):
    """Moonraker subscribes to the console only after startup: the request's error is all."""
    mr, _standin = startup
    ws = await ws_factory(mr)
    with pytest.raises(RpcError) as refused:
        await ws.call("printer.gcode.script", {"script": "OCTOFLASH_BUILD PROFILE=host"})
    assert refused.value.message == MESSAGE_STARTUP
    assert "Printer is not ready" in refused.value.message
    assert mr.result("GET", "/server/octoflash/jobs")["jobs"] == []


def test_when_the_board_answers_klipper_gets_ready_and_shows_it(startup):
    mr, standin = startup
    standin.call(standin.standin.set_mcu_reachable, "Toolhead")
    mr.wait_klippy_ready()
    mr.wait_for(lambda: _statuses(mr)["toolhead"]["connected"], 20, "the toolhead read")
    statuses = _statuses(mr)
    for name in ("toolhead", "toolhead_serial"):
        assert statuses[name]["klipper_mcu"] == "mcu Toolhead"
        assert statuses[name]["mcu_version"] == VERSION and statuses[name]["connected"] is True
    # one entry per MCU although configfile.settings spells it "mcu toolhead"
    assert _klipper_mcus(mr) == [("mcu", True, VERSION), ("mcu Toolhead", True, VERSION)]
