"""The component and the Klipper stand-in against a REAL Klipper.

Klippy (the real host software, from a Klipper checkout) runs against two
real Linux-process MCUs (``klipper_mcu`` built with ``CONFIG_MACH_LINUX``
and the host gcc): ``[mcu]`` and ``[mcu Toolhead]``.  A real Moonraker 0.11
with the component linked in talks to it; ``docs/macros.cfg`` is included
in printer.cfg as it is.  The tests check what a user sees (profiles'
status, builds started by the macros, the print guard following real
``print_stats``), and compare the stand-in (``sim/klippy.py``) with real
Klipper message for message where the component depends on it.

Runs only when OCTOFLASH_KLIPPER_PATH names a Klipper checkout, gcc and
make are installed and a Python with Klippy's requirements is given:

    git clone https://github.com/Klipper3d/klipper /tmp/klipper
    python3 -m venv /tmp/klippy-venv
    /tmp/klippy-venv/bin/pip install -r /tmp/klipper/scripts/klippy-requirements.txt
    OCTOFLASH_KLIPPER_PATH=/tmp/klipper OCTOFLASH_KLIPPY_PYTHON=/tmp/klippy-venv/bin/python \\
        python3 -m pytest tests/test_real_klipper.py -v

The checkout's tracked files, ``.config`` and ``out/`` are not touched (the
MCU is built with KCONFIG_CONFIG/OUT in a temporary folder); Klippy itself
compiles ``klippy/chelper/c_helper.so`` and writes ``__pycache__`` there,
as it does on every printer (both are git-ignored).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from fixtures_moonraker import MACROS_FILE, MoonrakerNotConnected, MoonrakerProcess, RpcError
from moonraker_octoflash.sim.klippy import KlippyStandIn, SimMcu, StandInThread
from moonraker_octoflash.sim.trees import install_tree

KLIPPER = os.environ.get("OCTOFLASH_KLIPPER_PATH", "")
KLIPPY_PYTHON = os.environ.get("OCTOFLASH_KLIPPY_PYTHON", "")
KLIPPY_MODULES = "greenlet, cffi, jinja2, serial"

pytestmark = [
    pytest.mark.moonraker,
    pytest.mark.skipif(not KLIPPER, reason="OCTOFLASH_KLIPPER_PATH is not set "
                                           "(no real Klipper checkout to test against)"),
]

TOOLHEAD = "Toolhead"       # mixed case on purpose: Klipper keeps it in object names only
PROFILES = """
[octoflash]
klipper_path: {data}/klipper-src
builds_kept: 2

[octoflash host]
preset: btt-octopus-f446-canbridge-nobootloader
klipper_mcu: mcu

[octoflash toolhead]
preset: btt-octopus-f446-canbridge-nobootloader
klipper_mcu: Toolhead

[octoflash toolhead_lower]
preset: btt-octopus-f446-canbridge-nobootloader
klipper_mcu: toolhead

[octoflash toolhead_serial]
preset: btt-octopus-f446-canbridge-nobootloader
serial: {toolhead_serial}
"""


# --- what must be there -------------------------------------------------------

def _klippy_python() -> str:
    return KLIPPY_PYTHON or sys.executable


def _skip_reason() -> str:
    checkout = Path(KLIPPER)
    if not (checkout / "klippy" / "klippy.py").is_file() or not (checkout / "src" / "linux").is_dir():
        return f"OCTOFLASH_KLIPPER_PATH={KLIPPER} is not a Klipper checkout (no klippy/klippy.py, src/linux)"
    for program in ("gcc", "make", "git"):
        if shutil.which(program) is None:
            return f"{program} is not installed (needed to build Klipper's Linux-process MCU)"
    python = _klippy_python()
    probe = subprocess.run([python, "-c", f"import {KLIPPY_MODULES}"], timeout=60,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if probe.returncode != 0:
        return (f"{python} lacks Klippy's requirements ({KLIPPY_MODULES}); make a venv with "
                f"pip install -r {KLIPPER}/scripts/klippy-requirements.txt and set "
                "OCTOFLASH_KLIPPY_PYTHON to its python")
    return ""


# --- Klipper's API socket, spoken directly ----------------------------------

class KlippyClient:
    """A blocking client of Klipper's API socket (JSON objects ending in 0x03).

    Used alike on the real Klipper and on the stand-in; replies are matched
    by id, everything else (status updates, console output, remote-method
    calls) is kept in ``pushes``.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(0.1)
        self._buffer = b""
        self._next_id = 0
        self._replies: Dict[int, Dict[str, Any]] = {}
        self.pushes: List[Dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        if not data:
            raise ConnectionError("Klipper closed the socket")
        self._buffer += data
        while b"\x03" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\x03", 1)
            message = json.loads(raw)
            if "id" in message and ("result" in message or "error" in message):
                self._replies[message["id"]] = message
            else:
                self.pushes.append(message)

    def call(self, method: str, params: Optional[Dict[str, Any]] = None,
             timeout: float = 10.0) -> Dict[str, Any]:
        """The whole reply: ``{"id", "result"}`` or ``{"id", "error"}``."""
        self._next_id += 1
        request_id = self._next_id
        self.sock.sendall(json.dumps({"id": request_id, "method": method,
                                      "params": params or {}}).encode() + b"\x03")
        deadline = time.monotonic() + timeout
        while request_id not in self._replies:
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {method} within {timeout} s")
            self._receive()
        return self._replies.pop(request_id)

    def result(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        reply = self.call(method, params)
        assert "result" in reply, f"{method}: {reply}"
        return reply["result"]

    def wait_push(self, predicate: Callable[[Dict[str, Any]], bool],
                  timeout: float = 10.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.pushes:
                if predicate(message):
                    self.pushes.remove(message)
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching message within {timeout} s; got {self.pushes[-5:]}")
            self._receive()

    def console(self, script: str) -> Dict[str, Any]:
        """Run a script with this connection's console output subscribed; reply and lines."""
        self.pushes.clear()
        reply = self.call("gcode/script", {"script": script})
        time.sleep(0.3)     # output after the reply is not expected, but give it a chance
        self._receive()
        lines = [m["params"]["response"] for m in self.pushes if m.get("method") == "console"]
        return {"reply": reply, "lines": lines}


# --- a real Klipper: klippy and two Linux-process MCUs -----------------------

class RealKlipper:
    """Builds klipper_mcu, runs two of them and klippy on a printer.cfg in ``data``."""

    def __init__(self, checkout: str, work: Path, data: Path, socket_path: str) -> None:
        self.checkout = checkout
        self.work = work
        self.data = data
        self.socket_path = socket_path
        self.mcu_serial = str(work / "klipper_host_mcu")
        self.toolhead_serial = str(work / "klipper_host_mcu_toolhead")
        self.elf = ""
        self.procs: Dict[str, subprocess.Popen] = {}
        self.printer_cfg = data / "config" / "printer.cfg"
        self.log_file = data / "logs" / "klippy.log"

    # building ---------------------------------------------------------------
    def build_mcu(self) -> None:
        config = self.work / "host-mcu.config"
        out = self.work / "host-mcu-out"
        config.write_text("CONFIG_MACH_LINUX=y\n")
        for target in (["olddefconfig"], [f"-j{os.cpu_count() or 2}"]):
            result = subprocess.run(
                ["make", f"KCONFIG_CONFIG={config}", f"OUT={out}/", *target],
                cwd=self.checkout, timeout=600, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, check=False)
            if result.returncode != 0:
                pytest.fail(f"building klipper_mcu failed:\n"
                            f"{result.stdout.decode(errors='replace')[-3000:]}")
        self.elf = str(out / "klipper.elf")

    # processes --------------------------------------------------------------
    def _spawn(self, name: str, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        log = open(self.work / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        log.close()

    def start_mcu(self, name: str, serial: str) -> None:
        if os.path.lexists(serial):
            os.unlink(serial)       # the link of an MCU that was killed
        # -r (real-time scheduling) as on a printer; without it where that is not allowed.
        for argv in ([self.elf, "-r", "-I", serial], [self.elf, "-I", serial]):
            self._spawn(name, argv)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.procs[name].poll() is None \
                    and not os.path.lexists(serial):
                time.sleep(0.05)
            if self.procs[name].poll() is None and os.path.lexists(serial):
                return
            self.kill(name)
        pytest.fail(f"klipper_mcu did not start: {(self.work / f'{name}.out').read_text()[-2000:]}")

    def write_printer_cfg(self) -> None:
        shutil.copyfile(MACROS_FILE, self.printer_cfg.parent / "octoflash-macros.cfg")
        self.printer_cfg.write_text(textwrap.dedent(f"""\
            [mcu]
            serial: {self.mcu_serial}

            [mcu {TOOLHEAD}]
            serial: {self.toolhead_serial}

            [printer]
            kinematics: none
            max_velocity: 100
            max_accel: 100

            [virtual_sdcard]
            path: {self.data / 'gcodes'}

            [pause_resume]

            [display_status]

            [include octoflash-macros.cfg]
            """))

    def start_klippy(self) -> None:
        env = dict(os.environ)
        # Klippy's git-version check fails on a checkout with no ignored file
        # at all (util.get_git_version splits an empty `git status` output);
        # letting Python write __pycache__ there avoids it, as on a printer.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("PYTHONPATH", None)
        self._spawn("klippy", [_klippy_python(), os.path.join(self.checkout, "klippy", "klippy.py"),
                               str(self.printer_cfg), "-a", self.socket_path,
                               "-l", str(self.log_file)], env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.procs["klippy"].poll() is not None:
                break
            if os.path.exists(self.socket_path) and self._state() == "ready":
                return
            time.sleep(0.2)
        pytest.fail(f"Klipper did not become ready:\n{self.log_tail()}")

    def _state(self) -> Optional[str]:
        try:
            client = KlippyClient(self.socket_path)
        except OSError:
            return None
        try:
            return client.result("info").get("state")
        except (OSError, AssertionError):
            return None
        finally:
            client.close()

    def log_tail(self) -> str:
        parts = []
        for path in (self.work / "klippy.out", self.log_file):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for name in ("klippy", *[n for n in list(self.procs) if n != "klippy"]):
            self.kill(name)


# --- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def printer(tmp_path_factory, linked_component):
    """(Moonraker, RealKlipper): everything up, Klipper ready, the MCUs read by the component."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("real-klipper")
    data = work / "data"
    mr = MoonrakerProcess(str(data), "")
    klipper = RealKlipper(KLIPPER, work, data, mr.klippy_socket)
    mr.extra_config = PROFILES.format(data=data, toolhead_serial=klipper.toolhead_serial)
    mr.write_config()           # makes data/config, logs, comms, gcodes
    install_tree("klipper", data / "klipper-src")
    try:
        klipper.build_mcu()
        klipper.start_mcu("mcu", klipper.mcu_serial)
        klipper.start_mcu("mcu_toolhead", klipper.toolhead_serial)
        klipper.write_printer_cfg()
        klipper.start_klippy()
        mr.start()
        mr.wait_klippy_ready(60)
        _wait_mcus_read(mr)
        yield mr, klipper
    finally:
        mr.stop()
        klipper.stop()


def _profiles(mr: MoonrakerProcess) -> Dict[str, Dict[str, Any]]:
    return {p["name"]: p for p in mr.result("GET", "/server/octoflash/profiles")["profiles"]}


def _wait_mcus_read(mr: MoonrakerProcess) -> None:
    """The component reads Klipper's MCUs just after Klipper is ready; wait for that."""
    mr.wait_for(lambda: all(p["status"].get("mcu_version") for n, p in _profiles(mr).items()
                            if n in ("host", "toolhead")), 20, "the component to read the MCUs")


@pytest.fixture
def klippy(printer):
    """A connection of our own to the real Klipper's API socket."""
    _mr, klipper = printer
    client = KlippyClient(klipper.socket_path)
    yield client
    client.close()


@pytest.fixture(scope="module")
def standin(printer, tmp_path_factory):
    """A stand-in set up with the same facts as the real Klipper (MCUs, versions, macros)."""
    _mr, klipper = printer
    version = _klipper_info(klipper)["software_version"]
    mcus = [SimMcu("mcu", {"serial": klipper.mcu_serial}, version=version, mcu_type="linux"),
            SimMcu(TOOLHEAD, {"serial": klipper.toolhead_serial}, version=version,
                   mcu_type="linux")]
    path = str(tmp_path_factory.mktemp("standin") / "klippy.sock")
    thread = StandInThread(KlippyStandIn(
        path, mcus=mcus, software_version=version,
        macro_files=[str(klipper.printer_cfg.parent / "octoflash-macros.cfg")],
        config_file=str(klipper.printer_cfg))).start()
    yield path
    thread.close()


def _klipper_info(klipper: RealKlipper) -> Dict[str, Any]:
    client = KlippyClient(klipper.socket_path)
    try:
        return client.result("info")
    finally:
        client.close()


# --- through Moonraker: what a user sees ---------------------------------------

def test_profiles_show_the_firmware_klipper_reports(printer):
    mr, klipper = printer
    version = _klipper_info(klipper)["software_version"]
    profiles = _profiles(mr)
    # klipper_mcu names Klipper's object in any case ("toolhead" is "mcu Toolhead")
    expected_objects = {"host": "mcu", "toolhead": f"mcu {TOOLHEAD}",
                        "toolhead_lower": f"mcu {TOOLHEAD}", "toolhead_serial": f"mcu {TOOLHEAD}"}
    for name, klipper_object in expected_objects.items():
        status = profiles[name]["status"]
        assert status["klipper_mcu"] == klipper_object, (name, status)
        assert status["connected"] is True, (name, status)
        assert status["mcu_version"] == version, (name, status)
        assert status["mcu_type"] == "linux", (name, status)   # mcu_constants.MCU
        assert status["host_version"] == version
        assert status["out_of_date"] is False, (name, status)


async def test_build_macro_sent_as_gcode_starts_a_build_reported_in_the_console(printer, ws_factory):
    mr, _klipper = printer
    ws = await ws_factory(mr)
    assert mr.result("POST", "/printer/gcode/script",
                     body={"script": "OCTOFLASH_BUILD PROFILE=host"}) == "ok"
    started = await ws.wait_notification(
        "notify_gcode_response", lambda line: "octoflash: build host: job" in str(line), 20)
    job_id = started.split("job ")[1].split()[0]
    assert started == f"// octoflash: build host: job {job_id} started; progress follows here"
    done = await ws.wait_notification(
        "notify_gcode_response",
        lambda line: str(line).startswith(("// octoflash build host: Build of host",
                                           "!! octoflash build host")), 120)
    assert done.startswith("// octoflash build host: Build of host done"), done

    jobs = {j["job_id"]: j for j in mr.result("GET", "/server/octoflash/jobs")["jobs"]}
    job = jobs[job_id]
    assert (job["kind"], job["profile"], job["origin"], job["state"]) == ("build", "host", "macro", "done")
    assert job["options"] == {"force": False}
    assert job["version"].startswith("v0.13.0-3-g")         # the simulated source tree
    status = _profiles(mr)["host"]["status"]
    assert status["latest_build"]["id"] == job["artifact_id"]

    # FORCE=1 goes through Klipper's Jinja2 (|int == 1) as a JSON true
    mr.result("POST", "/printer/gcode/script", body={"script": "OCTOFLASH_BUILD PROFILE=host FORCE=1"})
    forced = await ws.wait_notification(
        "notify_gcode_response",
        lambda line: "octoflash: build host: job" in str(line) and job_id not in str(line), 20)
    forced_id = forced.split("job ")[1].split()[0]
    record = mr.wait_job(forced_id, 120)
    assert record["options"] == {"force": True} and record["state"] == "done"
    assert record["message"].startswith("Build of host done"), record["message"]


def _write_gcode(mr: MoonrakerProcess, name: str, text: str) -> None:
    with open(os.path.join(mr.data_dir, "gcodes", name), "w", encoding="utf-8") as f:
        f.write(text)


def _print_state(mr: MoonrakerProcess) -> Tuple[str, str]:
    klipper = mr.result("GET", "/server/octoflash/status")["klipper"]
    return klipper["print_state"], klipper["print_filename"]


def _flash(mr: MoonrakerProcess) -> Tuple[int, str]:
    status, payload = mr.post("/server/octoflash/flash", {"profile": "host", "build": False})
    return status, (payload.get("error") or {}).get("message", "")


def _wait_print_state(mr: MoonrakerProcess, state: str) -> None:
    mr.wait_for(lambda: _print_state(mr)[0] == state, 30, f"print_stats.state {state}")


@pytest.fixture
def prints_reset_after(printer):
    """The module's other tests find Klipper with no file loaded and print_stats in
    standby, as a print test leaves neither."""
    yield
    mr, _klipper = printer
    mr.post("/printer/gcode/script", {"script": "SDCARD_RESET_FILE"})
    _wait_print_state(mr, "standby")


async def test_the_print_guard_follows_real_print_stats(printer, ws_factory, prints_reset_after):
    mr, _klipper = printer
    ws = await ws_factory(mr)
    _write_gcode(mr, "long.gcode", "G4 P100\n" * 600)           # a minute of dwells
    _write_gcode(mr, "short.gcode", "G4 P10\n")
    _write_gcode(mr, "broken.gcode", "G4 P10\nG4 P-1\nG4 P10\n")  # Klipper refuses P-1
    jobs_before = len(mr.result("GET", "/server/octoflash/jobs")["jobs"])
    # With [machine] provider: none, a flash of Klipper's own board is refused
    # with 503 when no print is in the way; a print in the way gives 409.
    assert _print_state(mr) == ("standby", "")
    assert _flash(mr)[0] == 503

    mr.result("POST", "/printer/gcode/script", body={"script": "SDCARD_PRINT_FILE FILENAME=long.gcode"})
    _wait_print_state(mr, "printing")
    try:
        status, message = _flash(mr)
        assert status == 409 and "Klipper is printing (long.gcode)" in message, message
        # the macro stops inside Klipper; the user sees Klipper's error in the console
        with pytest.raises(RpcError) as refused:
            await ws.call("printer.gcode.script", {"script": "OCTOFLASH_FLASH PROFILE=host"})
        assert "OCTOFLASH_FLASH: not while a print is printing" in refused.value.message
        line = await ws.wait_notification(
            "notify_gcode_response", lambda text: "not while a print is printing" in str(text), 10)
        assert line == ("!! Error evaluating 'gcode_macro OCTOFLASH_FLASH:gcode': "
                        "gcode.CommandError: OCTOFLASH_FLASH: not while a print is printing")
        status, _payload = mr.post("/printer/gcode/script", {"script": "OCTOFLASH_UPDATE_ALL"})
        assert status == 400

        mr.result("POST", "/printer/gcode/script", body={"script": "PAUSE"})
        _wait_print_state(mr, "paused")
        status, message = _flash(mr)
        assert status == 409 and "Klipper is paused (long.gcode)" in message, message
    finally:
        mr.post("/printer/gcode/script", {"script": "CANCEL_PRINT"})
    _wait_print_state(mr, "cancelled")
    assert _flash(mr)[0] == 503

    mr.result("POST", "/printer/gcode/script", body={"script": "SDCARD_PRINT_FILE FILENAME=short.gcode"})
    _wait_print_state(mr, "complete")
    assert _print_state(mr) == ("complete", "short.gcode")
    assert _flash(mr)[0] == 503

    mr.result("POST", "/printer/gcode/script", body={"script": "SDCARD_PRINT_FILE FILENAME=broken.gcode"})
    _wait_print_state(mr, "error")
    assert _flash(mr)[0] == 503
    assert len(mr.result("GET", "/server/octoflash/jobs")["jobs"]) == jobs_before


async def test_the_macros_reach_the_component_again_after_a_klipper_restart(printer, ws_factory):
    mr, _klipper = printer
    ws = await ws_factory(mr)
    mr.result("POST", "/printer/restart")
    await ws.wait_notification("notify_klippy_disconnected", timeout=20)
    await ws.wait_notification("notify_klippy_ready", timeout=60)
    _wait_mcus_read(mr)
    mr.result("POST", "/printer/gcode/script", body={"script": "OCTOFLASH_BUILD PROFILE=nosuch"})
    line = await ws.wait_notification(
        "notify_gcode_response", lambda text: "octoflash: build nosuch" in str(text), 10)
    assert line.startswith("!! octoflash: build nosuch refused: No profile named 'nosuch'")


def test_the_device_list_names_each_klipper_mcu_once(printer):
    """Klipper keys configfile.settings 'mcu toolhead' and names the object 'mcu Toolhead'."""
    mr, klipper = printer
    devices = mr.result("GET", "/server/octoflash/devices", args={"refresh": True},
                        timeout=30)["devices"]
    mcus = {m["object_name"]: m for m in devices["klipper_mcus"]}
    assert list(mcus) == ["mcu", f"mcu {TOOLHEAD}"]
    assert mcus[f"mcu {TOOLHEAD}"]["name"] == TOOLHEAD
    assert mcus[f"mcu {TOOLHEAD}"]["serial"] == klipper.toolhead_serial
    assert all(m["connected"] for m in mcus.values())


# --- the stand-in beside real Klipper, message for message ----------------------

def _shape(value: Any) -> Any:
    """Keys and value types, recursively (values themselves differ run to run)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


def test_standin_answers_info_like_klipper(klippy, standin):
    fake = KlippyClient(standin)
    try:
        real_info = klippy.result("info", {"client_info": {"program": "Moonraker"}})
        sim_info = fake.result("info", {"client_info": {"program": "Moonraker"}})
    finally:
        fake.close()
    assert _shape(sim_info) == _shape(real_info)
    assert (sim_info["state"], sim_info["state_message"]) == \
        (real_info["state"], real_info["state_message"])


def test_standin_reports_mcus_like_klipper(klippy, standin):
    query = {"objects": {"mcu": ["mcu_version", "mcu_constants"],
                         f"mcu {TOOLHEAD}": ["mcu_version", "mcu_constants"],
                         "webhooks": None, "print_stats": ["state", "filename"]}}
    fake = KlippyClient(standin)
    try:
        real = klippy.result("objects/query", query)["status"]
        sim = fake.result("objects/query", query)["status"]
        real_names = [n for n in klippy.result("objects/list")["objects"] if n.startswith("mcu")]
        sim_names = [n for n in fake.result("objects/list")["objects"] if n.startswith("mcu")]
    finally:
        fake.close()
    assert sim_names == real_names == ["mcu", f"mcu {TOOLHEAD}"]
    for name in ("mcu", f"mcu {TOOLHEAD}"):
        assert sim[name]["mcu_version"] == real[name]["mcu_version"]
        assert sim[name]["mcu_constants"]["MCU"] == real[name]["mcu_constants"]["MCU"] == "linux"
    assert sim["webhooks"] == real["webhooks"]
    assert _shape(sim["print_stats"]) == _shape(real["print_stats"]) == \
        {"state": "str", "filename": "str"}


def test_standin_calls_remote_methods_like_klipper(klippy, standin):
    """Klipper sends {"params": kwargs} updated with the registered template."""
    fake = KlippyClient(standin)
    messages = []
    try:
        for client in (klippy, fake):
            template = {"method": "octoflash_build"}
            assert client.result("register_remote_method", {
                "response_template": template, "remote_method": "octoflash_build"}) == {}
            # an unknown profile: Moonraker (also registered) only refuses it in the console
            client.result("gcode/script", {"script": "OCTOFLASH_BUILD PROFILE=nosuch FORCE=1"})
            messages.append(client.wait_push(lambda m: m.get("method") == "octoflash_build"))
    finally:
        fake.close()
    real, sim = messages
    assert real == {"method": "octoflash_build", "params": {"profile": "nosuch", "force": True}}
    assert sim == real
    assert list(sim) == list(real)          # even the key order: params first, then the template


def _subscribe_console(client: KlippyClient) -> None:
    client.result("gcode/subscribe_output", {"response_template": {"method": "console"}})


def test_standin_answers_unknown_commands_like_klipper(klippy, standin):
    fake = KlippyClient(standin)
    try:
        _subscribe_console(klippy)
        _subscribe_console(fake)
        real = klippy.console("NOT_A_COMMAND_XYZ")
        sim = fake.console("NOT_A_COMMAND_XYZ")
    finally:
        fake.close()
    assert real["lines"] == ['// Unknown command:"NOT_A_COMMAND_XYZ"']
    assert sim["lines"] == real["lines"]
    assert "result" in sim["reply"] and "result" in real["reply"]


def test_standin_words_macro_errors_like_klipper(klippy, standin):
    fake = KlippyClient(standin)
    try:
        _subscribe_console(klippy)
        _subscribe_console(fake)
        real = klippy.console("OCTOFLASH_BUILD")
        sim = fake.console("OCTOFLASH_BUILD")
    finally:
        fake.close()
    wording = ("Error evaluating 'gcode_macro OCTOFLASH_BUILD:gcode': gcode.CommandError: "
               "OCTOFLASH_BUILD needs PROFILE=name (see the profiles in moonraker.conf)")
    assert real["reply"]["error"] == {"error": "WebRequestError", "message": wording + "\n"}
    assert real["lines"] == ["!! " + wording]
    assert sim["reply"]["error"] == real["reply"]["error"]
    assert sim["lines"] == real["lines"]


def _mcu_sections(sections: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in sections.items() if k == "mcu" or k.startswith("mcu ")}


def test_standin_names_mcu_config_sections_like_klipper(klippy, standin, printer):
    """settings: lower-cased names, typed values, Klipper's defaults; config: as written."""
    _mr, klipper = printer
    query = {"objects": {"configfile": ["settings", "config"]}}
    fake = KlippyClient(standin)
    try:
        real = klippy.result("objects/query", query)["status"]["configfile"]
        sim = fake.result("objects/query", query)["status"]["configfile"]
    finally:
        fake.close()
    # the serial is no /tmp/klipper_host_* path, so Klipper records its default baud
    assert _mcu_sections(real["settings"]) == {
        "mcu": {"serial": klipper.mcu_serial, "baud": 250000},
        f"mcu {TOOLHEAD.lower()}": {"serial": klipper.toolhead_serial, "baud": 250000}}
    assert _mcu_sections(real["config"]) == {
        "mcu": {"serial": klipper.mcu_serial},
        f"mcu {TOOLHEAD}": {"serial": klipper.toolhead_serial}}
    assert _mcu_sections(sim["settings"]) == _mcu_sections(real["settings"])
    assert _mcu_sections(sim["config"]) == _mcu_sections(real["config"])
    for macro in ("OCTOFLASH_BUILD", "OCTOFLASH_FLASH", "OCTOFLASH_UPDATE_ALL"):
        key = f"gcode_macro {macro.lower()}"
        assert sim["settings"][key] == real["settings"][key]
        assert sim["config"][f"gcode_macro {macro}"] == real["config"][f"gcode_macro {macro}"]


def test_standin_lists_what_moonraker_needs_like_klipper(klippy, standin):
    """[virtual_sdcard], [pause_resume], [display_status]: Moonraker warns without them."""
    fake = KlippyClient(standin)
    try:
        real_objects = klippy.result("objects/list")["objects"]
        sim_objects = fake.result("objects/list")["objects"]
        real_endpoints = klippy.result("list_endpoints")["endpoints"]
        sim_endpoints = fake.result("list_endpoints")["endpoints"]
        query = {"objects": {"pause_resume": None, "virtual_sdcard": ["is_active", "file_path"],
                             "display_status": None}}
        real_status = klippy.result("objects/query", query)["status"]
        sim_status = fake.result("objects/query", query)["status"]
        real_help = klippy.result("gcode/help")
        sim_help = fake.result("gcode/help")
    finally:
        fake.close()
    for name in ("virtual_sdcard", "pause_resume", "display_status"):
        assert name in real_objects and name in sim_objects
    assert sim_endpoints == real_endpoints
    assert _shape(sim_status) == _shape(real_status)
    assert sim_status["pause_resume"] == real_status["pause_resume"] == {"is_paused": False}
    macros = {k: v for k, v in real_help.items() if k.startswith("OCTOFLASH_")}
    assert len(macros) == 3 and macros["OCTOFLASH_BUILD"].startswith("Build firmware")
    assert {k: v for k, v in sim_help.items() if k.startswith("OCTOFLASH_")} == macros


def test_standin_refuses_bad_arguments_like_klipper(klippy, standin):
    requests = [("objects/query", {}), ("objects/query", {"objects": ["mcu"]}),
                ("objects/query", {"objects": {"mcu": "mcu_version"}}),
                ("gcode/script", {}), ("gcode/script", {"script": 5}),
                ("register_remote_method", {"remote_method": "x"}),
                ("no/such/endpoint", {})]
    fake = KlippyClient(standin)
    try:
        for method, params in requests:
            real = klippy.call(method, params)
            sim = fake.call(method, params)
            assert "error" in real, (method, params, real)
            assert sim["error"] == real["error"], (method, params)
    finally:
        fake.close()


async def test_octoflash_reads_real_klipper_on_its_socket(printer, klippy):
    from types import SimpleNamespace

    from moonraker_octoflash.klipper_socket import Connection, KlipperSocketError
    from moonraker_octoflash.moonraker.klipper_state import KlipperState
    _mr, klipper = printer
    async with Connection(klipper.socket_path, 10) as conn:
        info = await conn.request("info")
        with pytest.raises(KlipperSocketError) as caught:
            await conn.request("no/such/endpoint")
    assert info["state"] == "ready" and info["software_version"]
    real_error = klippy.call("no/such/endpoint")["error"]["message"]
    assert str(caught.value) == f"Klipper answered no/such/endpoint with an error: {real_error}"

    kconn = MoonrakerNotConnected(klipper.socket_path)
    server = SimpleNamespace(lookup_component=lambda name: kconn, get_event_loop=lambda: None)
    state = KlipperState(server)  # type: ignore[arg-type]
    status = await state.read()
    assert status[f"mcu {TOOLHEAD}"]["mcu_version"] == info["software_version"]
    assert status["mcu"]["mcu_constants"]["MCU"] == "linux"
    assert status["webhooks"]["state"] == "ready"
    assert status["configfile"]["config"][f"mcu {TOOLHEAD}"]["serial"] == klipper.toolhead_serial
    assert await state.print_state() == ("standby", "")


# --- Klipper up, one board unreachable (as after a failed flash) --------------

@pytest.fixture
def toolhead_unreachable(printer):
    """Stop the Toolhead MCU and restart Klipper: it stays in 'startup', retrying.
    Afterwards the MCU and Klipper are back, as the module's other tests need them."""
    mr, klipper = printer
    klipper.kill("mcu_toolhead")
    mr.result("POST", "/printer/restart")

    def in_startup() -> bool:
        status, payload = mr.get("/server/info")
        return status == 200 and payload["result"]["klippy_state"] == "startup"
    mr.wait_for(in_startup, 60, "Klipper in startup")
    # Klipper has reached the board it can reach (its version is reported in startup)
    mr.wait_for(lambda: _profiles(mr)["host"]["status"]["connected"], 20,
                "the reachable board read in startup")
    yield mr, klipper
    klipper.start_mcu("mcu_toolhead", klipper.toolhead_serial)
    mr.result("POST", "/printer/restart")
    mr.wait_klippy_ready(60)
    _wait_mcus_read(mr)


def test_a_board_klipper_cannot_reach_is_not_connected(toolhead_unreachable, klippy):
    mr, klipper = toolhead_unreachable
    version = _klipper_info(klipper)["software_version"]
    # what real Klipper says meanwhile: the object is there, empty
    status = klippy.result("objects/query", {"objects": {f"mcu {TOOLHEAD}": None,
                                                         "webhooks": ["state"]}})["status"]
    assert status[f"mcu {TOOLHEAD}"] == {} and status["webhooks"]["state"] == "startup"
    # the board Klipper does reach shows its firmware: read while Klipper is in startup
    mr.wait_for(lambda: _profiles(mr)["host"]["status"]["connected"], 20,
                "the reachable board read in startup")
    profiles = _profiles(mr)
    assert profiles["host"]["status"]["mcu_version"] == version
    assert profiles["host"]["status"]["out_of_date"] is False
    for name in ("toolhead", "toolhead_lower", "toolhead_serial"):
        assert profiles[name]["status"]["connected"] is False, profiles[name]
        assert profiles[name]["status"]["mcu_version"] is None
        assert profiles[name]["status"]["out_of_date"] is None
    devices = mr.result("GET", "/server/octoflash/devices", args={"refresh": True},
                        timeout=30)["devices"]
    assert devices["klipper_state"] == "startup"
    assert [(m["object_name"], m["connected"]) for m in devices["klipper_mcus"]] == \
        [("mcu", True), (f"mcu {TOOLHEAD}", False)]


def test_a_board_klipper_cannot_reach_keeps_its_klipper_name(toolhead_unreachable):
    mr, _klipper = toolhead_unreachable
    profiles = _profiles(mr)
    for name in ("toolhead", "toolhead_lower", "toolhead_serial"):
        assert profiles[name]["status"]["klipper_mcu"] == f"mcu {TOOLHEAD}", profiles[name]


def test_standin_waits_in_startup_like_klipper(toolhead_unreachable, klippy, tmp_path):
    """One MCU unreachable: socket open, objects listed, {} for it, gcode refused."""
    _mr, klipper = toolhead_unreachable
    version = _klipper_info(klipper)["software_version"]
    mcus = [SimMcu("mcu", {"serial": klipper.mcu_serial}, version=version, mcu_type="linux"),
            SimMcu(TOOLHEAD, {"serial": klipper.toolhead_serial}, version=version,
                   mcu_type="linux", reachable=False)]
    thread = StandInThread(KlippyStandIn(
        str(tmp_path / "klippy.sock"), mcus=mcus, software_version=version,
        macro_files=[str(klipper.printer_cfg.parent / "octoflash-macros.cfg")],
        config_file=str(klipper.printer_cfg))).start()
    fake = KlippyClient(str(tmp_path / "klippy.sock"))
    try:
        real_info = klippy.result("info")
        sim_info = fake.result("info")
        assert (sim_info["state"], sim_info["state_message"]) == \
            (real_info["state"], real_info["state_message"])
        assert real_info["state"] == "startup"
        assert [n for n in fake.result("objects/list")["objects"] if n.startswith("mcu")] == \
            [n for n in klippy.result("objects/list")["objects"] if n.startswith("mcu")]
        query = {"objects": {"mcu": ["mcu_version"], f"mcu {TOOLHEAD}": None,
                             "webhooks": None}}
        real = klippy.result("objects/query", query)["status"]
        sim = fake.result("objects/query", query)["status"]
        assert sim == real
        assert real["mcu"]["mcu_version"] == version and real[f"mcu {TOOLHEAD}"] == {}
        _subscribe_console(klippy)
        _subscribe_console(fake)
        for script in ("OCTOFLASH_BUILD PROFILE=host", "STATUS", "M105"):
            real_run = klippy.console(script)
            sim_run = fake.console(script)
            assert sim_run == real_run, script
        refused = klippy.console("OCTOFLASH_BUILD PROFILE=host")
        assert refused["lines"][-1] == "!! Printer is not ready"
    finally:
        fake.close()
        thread.close()
