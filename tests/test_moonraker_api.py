"""The component inside a real Moonraker 0.11: loading, configuration, profiles, errors.

One Moonraker (and one Klipper stand-in) serves the whole module; the
restart test comes last because it restarts that Moonraker.
"""
from __future__ import annotations

import os
import shutil

import pytest

from fixtures_moonraker import MoonrakerProcess, RpcError, start_standin
from moonraker_octoflash.presets import list_presets
from moonraker_octoflash.sim.klippy import SimMcu
from moonraker_octoflash.sim.trees import TREES_DIR

pytestmark = pytest.mark.moonraker

CONFIG = """
[octoflash]
klipper_path: {data}/klipper-src
katapult_path: {data}/katapult-src
builds_kept: 2
flash_timeout: 120
bogus_option: 1

[octoflash octopus]
preset: btt-octopus-f446-canbridge
canbus_uuid: 0123456789ab
klipper_mcu: mcu
kconfig:
  CONFIG_CANBUS_FREQUENCY=500000

[octoflash broken]
preset: btt-octopus-f999-nothing

[octoflash badkconfig]
preset: btt-octopus-f446-katapult
kconfig: this is not a kconfig line
"""


@pytest.fixture(scope="module")
def moonraker(tmp_path_factory, linked_component):
    data = str(tmp_path_factory.mktemp("mr-api"))
    mr = MoonrakerProcess(data, CONFIG.format(data=data))
    standin = start_standin(mr, mcus=[SimMcu("mcu", {"canbus_uuid": "0123456789ab",
                                                     "canbus_interface": "can0"},
                                             version="v0.12.0-5-g1111111")])
    mr.start()
    mr.wait_klippy_ready()
    yield mr
    mr.stop()
    standin.close()


@pytest.fixture(autouse=True)
def klipper_ready(request):
    """Klipper ready before each test that uses the Moonraker (a test restarts it)."""
    if "moonraker" in request.fixturenames:
        request.getfixturevalue("moonraker").wait_klippy_ready()


def test_component_is_linked_into_the_installed_moonraker(linked_component):
    import moonraker
    expected = os.path.join(os.path.dirname(moonraker.__file__), "components", "octoflash.py")
    assert linked_component == expected
    assert os.path.realpath(expected).endswith("moonraker_octoflash/moonraker/octoflash_link.py")


def test_component_loads_and_broken_sections_become_warnings(moonraker):
    info = moonraker.result("GET", "/server/info")
    assert "octoflash" in info["components"]
    assert info["failed_components"] == []
    warnings = "\n".join(info["warnings"])
    assert "[octoflash broken]" in warnings and "btt-octopus-f999-nothing" in warnings
    assert "[octoflash badkconfig]" in warnings and "not of the form CONFIG_NAME=value" in warnings
    assert "unknown option 'bogus_option'" in warnings
    # every option was read: Moonraker's own "unparsed option" warning never names ours
    assert "Unparsed config option" not in warnings or "octoflash" not in warnings.split(
        "Unparsed config option")[1]


def test_the_component_serves_its_page(moonraker):
    import urllib.request
    with urllib.request.urlopen(moonraker.base_url + "/server/octoflash/web", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "octoflash" in r.read().decode().lower()


def test_presets_over_http(moonraker):
    result = moonraker.result("GET", "/server/octoflash/presets")
    presets = result["presets"]
    ids = [p["id"] for p in presets]
    assert len(ids) == len(list_presets()) and "btt-octopus-f446-canbridge" in ids
    assert "btt-ebb-klipper-1m" in ids
    assert "No Klipper config folder" in result["from_klipper"]["error"]
    # Presets read from the config/*.cfg headers of the Klipper checkout (two
    # headers of the simulated tree), read again on every request.
    shutil.copytree(os.path.join(TREES_DIR, "klipper", "config"),
                    os.path.join(moonraker.data_dir, "klipper-src", "config"))
    from_klipper = moonraker.result("GET", "/server/octoflash/presets")["from_klipper"]
    assert (from_klipper["files_read"], from_klipper["files_skipped"]) == (2, 1)
    [toolhead] = from_klipper["presets"]
    assert toolhead["id"] == "klipper-sim-toolhead-g0b1"
    assert toolhead["klipper_configs"] == ["sim-toolhead-g0b1.cfg"]
    assert toolhead["kconfig"]["CONFIG_STM32_MMENU_CANBUS_PB0_PB1"] == "y"
    assert "more than one processor" in from_klipper["skipped"]["sim-mainboard-unknown.cfg"]
    f446 = next(p for p in presets if p["id"] == "btt-octopus-f446-canbridge")
    assert f446["app_address"] == "0x08008000" and f446["mcu"] == "stm32f446xx"


async def test_jsonrpc_methods_follow_moonraker_naming(moonraker, ws_factory):
    ws = await ws_factory(moonraker)
    presets = await ws.call("server.octoflash.presets")
    assert len(presets["presets"]) == len(list_presets())
    profiles = await ws.call("server.octoflash.profiles")
    assert [p["name"] for p in profiles["profiles"]] == ["octopus"]
    one = await ws.call("server.octoflash.get_profile", {"name": "octopus"})
    assert one["profile"]["read_only"] is True
    status = await ws.call("server.octoflash.status")
    assert status["klipper"]["connected"] is True
    jobs = await ws.call("server.octoflash.jobs")
    assert jobs["jobs"] == [] or isinstance(jobs["jobs"], list)
    with pytest.raises(RpcError) as err:
        await ws.call("server.octoflash.job", {"job_id": "nope"})
    # Moonraker turns a 404 into JSON-RPC's "method not found" code
    assert err.value.code == -32601 and "No job with id 'nope'" in err.value.message
    with pytest.raises(RpcError) as err:
        await ws.call("server.octoflash.job.cancel", {"job_id": "nope"})
    assert err.value.code == -32601
    with pytest.raises(RpcError) as err:
        await ws.call("server.octoflash.build", {"profile": "bad name"})
    assert err.value.code == 400 and "not a valid profile name" in err.value.message


def _octopus_read(moonraker):
    """The profiles, once the octopus's Klipper state has been read (after a
    Moonraker start it is read when Klipper is ready)."""
    profiles = moonraker.result("GET", "/server/octoflash/profiles")
    octopus = next(p for p in profiles["profiles"] if p["name"] == "octopus")
    return profiles if octopus["status"].get("mcu_version") else None


def test_config_profile_is_listed_with_its_klipper_state(moonraker):
    profiles = moonraker.wait_for(lambda: _octopus_read(moonraker), 30, "the octopus read")
    octopus = next(p for p in profiles["profiles"] if p["name"] == "octopus")
    assert octopus["source"] == "config" and octopus["read_only"] is True
    assert octopus["kconfig"] == {"CONFIG_CANBUS_FREQUENCY": "500000"}
    status = octopus["status"]
    # read from Klipper: the mcu object and the host's software_version
    assert status["mcu_version"] == "v0.12.0-5-g1111111"
    assert status["host_version"] == "v0.13.0-100-gabcdef01"
    assert status["out_of_date"] is True
    assert any("[octoflash broken]" in w for w in profiles["warnings"])


def test_profile_crud_over_http(moonraker):
    body = {"name": "toolhead", "preset": "btt-octopus-f446-canbridge-nobootloader",
            "canbus_uuid": "aabbccddeeff", "klipper_mcu": "toolhead", "auto_update": True}
    status, payload = moonraker.post("/server/octoflash/profile", body)
    assert status == 200, payload
    assert payload["result"]["action"] == "created"
    assert payload["result"]["profile"]["source"] == "api"
    assert payload["result"]["profile"]["read_only"] is False

    body["description"] = "EBB toolhead"
    result = moonraker.result("POST", "/server/octoflash/profile", body=body)
    assert result["action"] == "updated"
    got = moonraker.result("GET", "/server/octoflash/profile", args={"name": "toolhead"})
    assert got["profile"]["description"] == "EBB toolhead"
    assert got["profile"]["canbus_interface"] == "can0"

    names = [p["name"] for p in moonraker.result("GET", "/server/octoflash/profiles")["profiles"]]
    assert names == ["octopus", "toolhead"]

    assert moonraker.delete("/server/octoflash/profile", name="toolhead")[1]["result"] == \
        {"profile": "toolhead", "action": "deleted"}
    status, payload = moonraker.get("/server/octoflash/profile", name="toolhead")
    assert status == 404
    assert "No profile named 'toolhead'" in payload["error"]["message"]


async def test_profile_crud_over_jsonrpc(moonraker, ws_factory):
    ws = await ws_factory(moonraker)
    created = await ws.call("server.octoflash.post_profile", {
        "name": "spare", "preset": "btt-octopus-h723-katapult", "dfu_serial": "ABCDEF012345"})
    assert created["action"] == "created" and created["profile"]["target"] == "katapult"
    fetched = await ws.call("server.octoflash.get_profile", {"name": "spare"})
    assert fetched["profile"]["mcu"] == "stm32h723xx"
    deleted = await ws.call("server.octoflash.delete_profile", {"name": "spare"})
    assert deleted == {"profile": "spare", "action": "deleted"}


@pytest.mark.parametrize("body, code, words", [
    ({"name": "x", "preset": "btt-octopus-f999"}, 400, "Unknown preset 'btt-octopus-f999'"),
    ({"name": "x", "preset": "btt-octopus-f446-canbridge", "canbus_uuid": "xyz"}, 400, "canbus_uuid"),
    ({"name": "bad name!", "preset": "btt-octopus-f446-canbridge"}, 400, "name"),
    ({"name": "x", "preset": "btt-octopus-f446-canbridge", "kconfig": {"CONFIG_MCU": "\"x\""}},
     400, "CONFIG_MCU is set by the preset"),
    ({"name": "x", "preset": "btt-octopus-f446-canbridge", "flash_method": "sdcard"}, 400,
     "flash_method"),
    ({"preset": "btt-octopus-f446-canbridge"}, 400, "'name' is required"),
    ({"name": "octopus", "preset": "btt-octopus-f446-canbridge"}, 409, "read-only"),
])
def test_bad_profiles_are_refused_with_the_reason(moonraker, body, code, words):
    status, payload = moonraker.post("/server/octoflash/profile", body)
    assert status == code, payload
    assert words in payload["error"]["message"]
    names = [p["name"] for p in moonraker.result("GET", "/server/octoflash/profiles")["profiles"]]
    assert "x" not in names            # nothing changed


def test_config_profiles_cannot_be_deleted_through_the_api(moonraker):
    status, payload = moonraker.delete("/server/octoflash/profile", name="octopus")
    assert status == 409 and "moonraker.conf" in payload["error"]["message"]


@pytest.mark.parametrize("method, path, args, code, words", [
    ("POST", "/server/octoflash/build", {"profile": "nosuch"}, 404, "No profile named 'nosuch'"),
    ("POST", "/server/octoflash/build", {}, 400, "'profile' is required"),
    ("POST", "/server/octoflash/build", {"profile": "octopus", "force": "maybe"}, 400,
     "must be true or false"),
    ("POST", "/server/octoflash/flash", {"profile": "../etc"}, 400, "not a valid profile name"),
    ("POST", "/server/octoflash/flash", {"profile": "octopus", "method": "sdcard"}, 400,
     "is not one of dfu, katapult"),
    ("GET", "/server/octoflash/job", {}, 400, "'job_id' is required"),
    ("GET", "/server/octoflash/jobs", {"limit": "ten"}, 400, "'limit' must be a number"),
    ("POST", "/server/octoflash/job/cancel", {"job_id": "missing"}, 404, "No job with id"),
    ("GET", "/server/octoflash/plan", {"profile": "nosuch"}, 404, "No profile named"),
    ("GET", "/server/octoflash/builds", {"profile": "nosuch"}, 404, "No profile named"),
    ("GET", "/server/octoflash/build/file", {"profile": "octopus", "artifact_id": "../x"}, 400,
     "artifact_id"),
    ("GET", "/server/octoflash/build/file", {"profile": "octopus", "artifact_id": "nope"}, 404,
     "nope"),
    ("GET", "/server/octoflash/build/file",
     {"profile": "octopus", "artifact_id": "nope", "name": "../../etc/passwd"}, 400, "name"),
    ("GET", "/server/octoflash/kconfig", {}, 400, "Give the profile"),
    ("GET", "/server/octoflash/kconfig", {"preset": "../x"}, 400, "preset"),
    ("POST", "/server/octoflash/kconfig",
     {"preset": "btt-octopus-f446-canbridge", "kconfig": {"CONFIG_X": "$(reboot)"}}, 400,
     "CONFIG_X"),
])
def test_bad_requests_get_4xx_with_a_message(moonraker, method, path, args, code, words):
    if method == "GET":
        status, payload = moonraker.get(path, **args)
    else:
        status, payload = moonraker.post(path, args)
    assert status == code, payload
    assert words in payload["error"]["message"]


def test_status_reports_klipper_and_service_control(moonraker):
    status = moonraker.result("GET", "/server/octoflash/status")
    assert status["klipper"]["connected"] is True
    assert status["klipper"]["print_state"] == "standby"
    assert status["klipper"]["service_control"] is False        # provider: none
    assert "provider: none" in status["klipper"]["service_problem"]
    assert status["paths"]["build_path"] == os.path.join(moonraker.data_dir, "octoflash")
    assert status["flash_job"] is None


def test_api_profiles_survive_a_restart(moonraker):
    moonraker.result("POST", "/server/octoflash/profile", body={
        "name": "keeper", "preset": "btt-octopus-f429-canbridge", "serial": "/dev/ttyACM0"})
    try:
        moonraker.restart()
        profile = moonraker.result("GET", "/server/octoflash/profile",
                                   args={"name": "keeper"})["profile"]
        assert profile["source"] == "api" and profile["serial"] == "/dev/ttyACM0"
        # the config-file profile is still there and still read-only
        octopus = moonraker.result("GET", "/server/octoflash/profile", args={"name": "octopus"})
        assert octopus["profile"]["read_only"] is True
    finally:
        moonraker.delete("/server/octoflash/profile", name="keeper")   # as the module began


def test_devices_on_a_machine_without_boards(moonraker):
    """Real discovery (pyusb, /dev/serial/by-id, /sys/class/net): nothing but what Klipper reports."""
    moonraker.wait_klippy_ready()
    devices = moonraker.result("GET", "/server/octoflash/devices", args={"refresh": True})["devices"]
    assert devices["can_nodes"] == []
    assert [m["object_name"] for m in devices["klipper_mcus"]] == ["mcu"]
    assert devices["profiles"]["octopus"]["state"] == "running"
    assert "v0.12.0-5-g1111111" in devices["profiles"]["octopus"]["detail"]
