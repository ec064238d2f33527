"""The print guard, service control and the macros, driven by the Klipper stand-in.

Klipper's side is the stand-in on Moonraker's unix socket: it reports
``print_stats``, runs ``docs/macros.cfg`` with Jinja2 as Klipper does and
sends remote-method calls exactly as Klipper's webhooks do.

A macro's error reaches the user as Klipper words it: wrapped as "Error
evaluating 'gcode_macro NAME:gcode': gcode.CommandError: ..." and ending in
a newline.  The newline makes Moonraker's HTTP reason phrase "Unknown"
(tornado refuses it), so the tests read it where a user reads it: the
console line and the JSON-RPC error.
"""
from __future__ import annotations

import pytest

from fixtures_moonraker import MoonrakerProcess, RpcError, start_standin
from moonraker_octoflash.sim.klippy import SimMcu

pytestmark = pytest.mark.moonraker

CONFIG = """
[octoflash]
klipper_path: {data}/klipper-src

[octoflash octopus]
preset: btt-octopus-f446-canbridge
canbus_uuid: 0123456789ab
klipper_mcu: mcu

[octoflash spare]
preset: btt-octopus-f429-katapult
dfu_serial: 3A0012345678
"""


@pytest.fixture(scope="module")
def printer(tmp_path_factory, linked_component):
    data = str(tmp_path_factory.mktemp("mr-guard"))
    mr = MoonrakerProcess(data, CONFIG.format(data=data))
    standin = start_standin(mr, mcus=[SimMcu("mcu", {"canbus_uuid": "0123456789ab"})])
    mr.start()
    mr.wait_klippy_ready()
    yield mr, standin
    mr.stop()
    standin.close()


@pytest.fixture
def idle(printer):
    mr, standin = printer
    standin.call(standin.standin.set_print_state, "standby")
    yield mr, standin
    standin.call(standin.standin.set_print_state, "standby")


def _console(ws) -> list:
    return [line for line in ws.of("notify_gcode_response") if "octoflash" in str(line)]


@pytest.mark.parametrize("state", ["printing", "paused"])
def test_a_flash_is_refused_while_printing_or_paused(idle, state):
    mr, standin = idle
    standin.call(standin.standin.set_print_state, state, "benchy.gcode")
    for body in ({"profile": "octopus"}, {"profile": "spare", "build": False}):
        status, payload = mr.post("/server/octoflash/flash", body)
        assert status == 409, payload
        message = payload["error"]["message"]
        assert f"Klipper is {state} (benchy.gcode)" in message
        assert "Flash when the print has finished" in message
    assert mr.result("GET", "/server/octoflash/jobs")["jobs"] == []


def test_without_service_control_a_flash_of_a_klipper_board_is_refused(idle):
    mr, _standin = idle
    status, payload = mr.post("/server/octoflash/flash", {"profile": "octopus", "build": False})
    assert status == 503, payload
    message = payload["error"]["message"]
    assert "provider: none" in message and "stop Klipper yourself" in message
    assert mr.result("GET", "/server/octoflash/jobs")["jobs"] == []


def _macro_error(macro: str, message: str) -> str:
    return f"Error evaluating 'gcode_macro {macro}:gcode': gcode.CommandError: {message}"


async def test_flash_macro_while_printing_stops_in_the_macro(idle, ws_factory):
    mr, standin = idle
    ws = await ws_factory(mr)
    standin.call(standin.standin.set_print_state, "printing", "benchy.gcode")
    status, _payload = mr.post("/printer/gcode/script", {"script": "OCTOFLASH_FLASH PROFILE=octopus"})
    assert status == 400
    wording = _macro_error("OCTOFLASH_FLASH", "OCTOFLASH_FLASH: not while a print is printing")
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "not while a print is printing" in str(text))
    assert line == "!! " + wording
    with pytest.raises(RpcError) as refused:
        await ws.call("printer.gcode.script", {"script": "OCTOFLASH_FLASH PROFILE=octopus"})
    assert refused.value.message == wording + "\n"
    assert mr.result("GET", "/server/octoflash/jobs")["jobs"] == []
    # the remote method was never called: no refusal of the component's own
    assert not [t for t in _console(ws) if "octoflash: flash" in str(t)]


async def test_a_remote_flash_call_while_printing_is_refused_in_the_console(idle, ws_factory):
    """Another macro (or an edited one) calling the method directly meets the component's guard."""
    mr, standin = idle
    ws = await ws_factory(mr)
    standin.call(standin.standin.set_print_state, "paused", "benchy.gcode")
    standin.call(standin.standin.call_remote_method, "octoflash_flash", profile="octopus")
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "octoflash: flash octopus refused" in str(text))
    assert line.startswith("!! ") and "Klipper is paused (benchy.gcode)" in line
    assert mr.result("GET", "/server/octoflash/jobs")["jobs"] == []


async def test_macros_report_their_mistakes_in_the_console(idle, ws_factory):
    mr, standin = idle
    ws = await ws_factory(mr)
    status, _payload = mr.post("/printer/gcode/script", {"script": "OCTOFLASH_BUILD"})
    assert status == 400
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "needs PROFILE=name" in str(text))
    assert line == "!! " + _macro_error(
        "OCTOFLASH_BUILD", "OCTOFLASH_BUILD needs PROFILE=name (see the profiles in moonraker.conf)")

    mr.result("POST", "/printer/gcode/script", body={"script": "OCTOFLASH_BUILD PROFILE=nosuch"})
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "octoflash: build nosuch" in str(text))
    assert line.startswith("!! ") and "No profile named 'nosuch'" in line

    mr.result("POST", "/printer/gcode/script", body={"script": "OCTOFLASH_UPDATE_ALL"})
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "octoflash: update all" in str(text))
    assert "auto_update: True" in line


def test_the_macros_reached_moonraker_as_klipper_sends_them(printer):
    mr, standin = printer
    # the component registered its methods with "Klipper" on connect (Moonraker sends
    # them after it reports Klipper ready: wait for them to arrive)
    wanted = {"octoflash_build", "octoflash_flash", "octoflash_update_all"}
    mr.wait_for(lambda: wanted <= set(standin.call(lambda: list(standin.standin.remote_methods))),
                20.0, "the remote methods registered with Klipper")
    registered = standin.call(lambda: sorted(standin.standin.remote_methods))
    assert {"octoflash_build", "octoflash_flash", "octoflash_update_all"} <= set(registered)
