"""Hostile input, generated: every endpoint, remote method, config section and the CLI.

A real Moonraker 0.11 runs the component on a simulated machine whose
``make`` (first on Moonraker's PATH) notes every start.  Hypothesis
generates requests whose fields carry what a shell or make would act on
(``$(shell ...)``, backquotes, newlines, quotes, ``#``, ``;``, ``../``),
long text and random Unicode.  After each case:

* the answer is a clear 4xx (or 200 for input that is in fact valid),
  never a 5xx;
* the canary file that every generated command would create does not exist;
* for a refused request: no ``make`` and no flash tool was started, no job
  was created, and no file appeared outside the build folder;
* a profile that was accepted renders to a ``.config`` of plain values.

The number of cases is printed at the end of the run (see conftest.py).
"""
from __future__ import annotations

import os
import shutil
import stat
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from fixtures_moonraker import SimulatedPrinter
from moonraker_octoflash.cli import main as cli_main
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.kconfig import render_config, value_problem
from moonraker_octoflash.profiles import profile_from_options

pytestmark = pytest.mark.moonraker

CANARY_DIR = "/tmp/octoflash-canary"
CANARY = CANARY_DIR + "/touched"
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

NASTY = [
    f"$(shell touch {CANARY})", f"`touch {CANARY}`", f"$$(touch {CANARY})", f"; touch {CANARY}",
    f"\ntouch {CANARY}", "\n", "\r\n", "\x00", "\x1b[31m", '"', "'", "\\", "#", ";", "|", "&",
    "../", "..", "/", " ", "\t", "$", "${HOME}", "%s", "é", "\u202e", "A" * 300,
    "CONFIG_X=y", "octopus", "OCTOPUS", "<script>", "y", "0x8000", '"PA13"',
]
hostile_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=6)),
                        min_size=1, max_size=4).map("".join)
fresh_name = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True).map(lambda n: "h" + n)
any_name = st.one_of(fresh_name, hostile_text)
kconfig_key = st.one_of(st.sampled_from(["CONFIG_INITIAL_PINS", "CONFIG_CANBUS_FREQUENCY",
                                         "CONFIG_BOARD_DIRECTORY", "CONFIG_MACH_STM32"]),
                        hostile_text)
kconfig_value = st.one_of(st.sampled_from(['"PA1"', "y", "n", "500000", '""']), hostile_text)
FIELDS = {
    "kconfig": st.dictionaries(kconfig_key, kconfig_value, min_size=1, max_size=3),
    "serial": hostile_text, "canbus_uuid": hostile_text, "canbus_interface": hostile_text,
    "dfu_serial": hostile_text, "klipper_mcu": hostile_text, "description": hostile_text,
    "flash_method": hostile_text, "auto_update": st.one_of(hostile_text, st.booleans()),
    "preset": hostile_text,
}


@st.composite
def profile_bodies(draw: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"name": draw(any_name), "preset": "btt-octopus-f446-canbridge"}
    for field in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=0, max_size=3,
                               unique=True)):
        body[field] = draw(FIELDS[field])
    return body


def _make_recorder(root: Path) -> Path:
    real = shutil.which("make")
    assert real
    bindir = root / "bin"
    bindir.mkdir()
    script = bindir / "make"
    script.write_text(f'#!/bin/sh\necho "$*" >> "{root}/make-calls.log"\nexec "{real}" "$@"\n',
                      encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bindir


@pytest.fixture(scope="module")
def printer(tmp_path_factory, linked_component):
    root = tmp_path_factory.mktemp("hostile")
    bindir = _make_recorder(root)
    shutil.rmtree(CANARY_DIR, ignore_errors=True)
    os.makedirs(CANARY_DIR)
    mr = SimulatedPrinter(str(root), update_manager=False)
    board = mr.add_board("octopus", "mcu", version=mr.describe(), bridge=True)
    # Sections as a user might write them, hostile ones among them: each must
    # become a warning, and none may run anything.
    mr.profiles = textwrap.dedent(f"""\
        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        klipper_mcu: mcu
        canbus_uuid: {board.canbus_uuid}
        kconfig:
          CONFIG_LOW_LEVEL_OPTIONS=y
          CONFIG_INITIAL_PINS="!PA1"
          CONFIG_ENABLE_LED=n

        [octoflash evil_string]
        preset: btt-octopus-f446-canbridge
        kconfig:
          CONFIG_INITIAL_PINS="$(shell touch {CANARY})"

        [octoflash evil_derived]
        preset: btt-octopus-f446-canbridge
        kconfig:
          CONFIG_BOARD_DIRECTORY="stm32"

        [octoflash Octopus]
        preset: btt-octopus-f446-canbridge
        """)
    # Moonraker inherits this PATH at every start (one test restarts it).
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{bindir}{os.pathsep}{old_path}"
    try:
        mr.start()
        mr.wait_klippy_ready()
        mr.root = root                       # type: ignore[attr-defined]
        yield mr
    finally:
        os.environ["PATH"] = old_path
        mr.close()
    assert not os.path.exists(CANARY)
    shutil.rmtree(CANARY_DIR, ignore_errors=True)


class World:
    """What a refused request must leave as it was."""

    def __init__(self, mr: SimulatedPrinter) -> None:
        self.mr = mr
        self.root: Path = mr.root      # type: ignore[attr-defined]

    def files(self) -> Set[str]:
        skip = {"logs", "database", "octoflash", "machine", "comms", ".git", "out"}
        found = set()
        for base, dirs, names in os.walk(self.root):
            dirs[:] = [d for d in dirs if d not in skip]
            found.update(os.path.join(base, n) for n in names
                         if n not in ("moonraker-output.txt", "make-calls.log", "klippy.log"))
        return found

    def make_calls(self) -> List[str]:
        path = self.root / "make-calls.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def snapshot(self) -> Dict[str, Any]:
        jobs = self.mr.result("GET", "/server/octoflash/jobs")["jobs"]
        return {"files": self.files(), "make": self.make_calls(),
                "tools": len(self.mr.machine.tool_invocations()),
                "jobs": sorted(j["job_id"] for j in jobs)}

    def check(self, before: Dict[str, Any], status: int, payload: Dict[str, Any]) -> None:
        hostile.count()
        assert not os.path.exists(CANARY), "a generated command ran"
        assert status in (200, 400, 404, 409), (status, payload)
        if status != 200:
            message = payload.get("error", {}).get("message", "")
            assert message and len(message) < 4000, payload
            assert self.snapshot() == before


@pytest.fixture(scope="module")
def world(printer):
    return World(printer)


@SETTINGS
@given(body=profile_bodies())
def test_profile_bodies(world, body):
    before = world.snapshot()
    status, payload = world.mr.request("POST", "/server/octoflash/profile", body=body)
    world.check(before, status, payload)
    if status == 200:
        profile = payload["result"]["profile"]
        render_config(profile.get("kconfig") or {})    # plain values only
        assert all(value_problem(v) is None for v in (profile.get("kconfig") or {}).values())
        world.mr.result("DELETE", "/server/octoflash/profile", args={"name": profile["name"]})


REQUESTS = st.one_of(
    st.builds(lambda p, f: ("POST", "/server/octoflash/build", {"profile": p, "force": f}),
              any_name, st.one_of(st.booleans(), hostile_text)),
    st.builds(lambda p, m, a: ("POST", "/server/octoflash/flash",
                               {"profile": p, "method": m, "artifact_id": a}),
              any_name, hostile_text, hostile_text),
    st.builds(lambda j: ("POST", "/server/octoflash/job/cancel", {"job_id": j}), hostile_text),
    st.builds(lambda a: ("POST", "/server/octoflash/update_all", {"all": a}), hostile_text),
    st.builds(lambda p: ("DELETE", "/server/octoflash/profile", {"name": p}), any_name),
    st.builds(lambda p: ("GET", "/server/octoflash/profile", {"name": p}), any_name),
    st.builds(lambda p, m: ("GET", "/server/octoflash/plan", {"profile": p, "method": m}),
              any_name, hostile_text),
    st.builds(lambda j: ("GET", "/server/octoflash/job", {"job_id": j}), hostile_text),
    st.builds(lambda p, n: ("GET", "/server/octoflash/jobs", {"profile": p, "limit": n}),
              any_name, hostile_text),
)


@SETTINGS
@given(request=REQUESTS)
def test_every_endpoint(world, request):
    method, path, args = request
    before = world.snapshot()
    if method == "POST":
        status, payload = world.mr.request(method, path, body=args)
    else:
        status, payload = world.mr.request(method, path, args)
    # No generated request names an existing profile, so none may start anything.
    if method == "POST" and path.endswith("/update_all") and status == 200:
        assert payload["result"]["job"] is None
        status = 204
    world.check(before, status if status != 204 else 200, payload)
    assert world.snapshot()["make"] == before["make"]


def _console_lines(mr: SimulatedPrinter) -> List[str]:
    status, payload = mr.get("/server/gcode_store", count=1000)
    assert status == 200
    return [str(item["message"]) for item in payload["result"]["gcode_store"]]


@settings(SETTINGS, max_examples=60)
@given(call=st.one_of(
    st.builds(lambda p, f: ("octoflash_build", {"profile": p, "force": f}), any_name, hostile_text),
    st.builds(lambda p, m, b: ("octoflash_flash", {"profile": p, "flash_method": m, "build": b}),
              any_name, hostile_text, hostile_text),
    st.builds(lambda a: ("octoflash_update_all", {"all": a}), hostile_text)))
def test_remote_methods(world, call):
    """What a Klipper macro sends: each call is answered in the console, nothing starts."""
    method, kwargs = call
    mr = world.mr
    before = world.snapshot()
    seen = len([line for line in _console_lines(mr) if "octoflash:" in line])
    mr.klipper.call(mr.standin.call_remote_method, method, **kwargs)
    answered = mr.wait_for(
        lambda: [line for line in _console_lines(mr) if "octoflash:" in line][seen:],
        20, "the console answer")
    hostile.count()
    assert not os.path.exists(CANARY)
    if "refused" in answered[0] or "every board is up to date" in answered[0]:
        assert world.snapshot() == before
    assert len(answered[0]) < 1000


def test_hostile_config_sections_became_warnings_and_ran_nothing(world):
    mr = world.mr
    warnings = "\n".join(mr.result("GET", "/server/info")["warnings"])
    assert "[octoflash Octopus]: a profile named 'octopus' exists already" in warnings
    assert "[octoflash evil_string]" in warnings and "CONFIG_INITIAL_PINS" in warnings
    names = [p["name"] for p in mr.result("GET", "/server/octoflash/profiles")["profiles"]]
    assert "evil_string" not in names and "Octopus" not in names
    # The derived symbol is plain text, so the section loads, and the checkout's
    # Kconfig refuses it; the build is refused before make with the same words.
    mr.wait_for(lambda: "[octoflash evil_derived]" in "\n".join(
        mr.result("GET", "/server/info")["warnings"]), 20, "the Kconfig check's warning")
    before = world.make_calls()
    status, payload = mr.post("/server/octoflash/build", {"profile": "evil_derived"})
    assert status == 200
    job = mr.wait_job(payload["result"]["job"]["job_id"])
    assert job["state"] == "failed"
    assert "CONFIG_BOARD_DIRECTORY: Kconfig sets this symbol itself" in job["error"]
    assert world.make_calls() == before
    assert not os.path.exists(CANARY)
    hostile.count(2)


def test_not_set_in_moonraker_conf_survives_moonrakers_parser(world):
    """CONFIG_X=n is the form for moonraker.conf ("# ..." lines are comments there)."""
    mr = world.mr
    profile = mr.result("GET", "/server/octoflash/profile", args={"name": "octopus"})["profile"]
    assert profile["kconfig"]["CONFIG_ENABLE_LED"] == "n"
    assert profile["kconfig"]["CONFIG_INITIAL_PINS"] == '"!PA1"'


def test_parallel_creates_all_survive_a_restart(world):
    import concurrent.futures
    mr = world.mr
    names = [f"par{i}" for i in range(12)]
    body = {"preset": "btt-octopus-f446-canbridge", "canbus_uuid": "0123456789ab"}
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(
            lambda n: mr.request("POST", "/server/octoflash/profile", body=dict(body, name=n)),
            names))
    assert [a[0] for a in answers] == [200] * 12
    mr.restart()
    mr.wait_klippy_ready()
    listed = {p["name"] for p in mr.result("GET", "/server/octoflash/profiles")["profiles"]}
    assert set(names) <= listed
    # A name that differs only in case is refused, next to an API profile too.
    status, payload = mr.request("POST", "/server/octoflash/profile",
                                 body=dict(body, name="PAR1"))
    assert status == 409 and "'par1' exists already" in payload["error"]["message"]
    for name in names:
        mr.result("DELETE", "/server/octoflash/profile", args={"name": name})


# --- without Moonraker: the config-file reader and the command line ---------------

SECTION_OPTIONS = st.dictionaries(
    st.sampled_from(["preset", "kconfig", "serial", "canbus_uuid", "dfu_serial",
                     "klipper_mcu", "description", "flash_method", "auto_update",
                     "canbus_interface"]),
    st.one_of(hostile_text, st.lists(st.one_of(
        st.builds(lambda k, v: f"{k}={v}", kconfig_key, kconfig_value),
        st.builds(lambda k: f"# {k} is not set", kconfig_key)), max_size=3).map("\n".join)),
    max_size=4)


@settings(SETTINGS, max_examples=300)
@given(name=any_name, options=SECTION_OPTIONS)
def test_config_sections(name, options):
    options = dict(options)
    options.setdefault("preset", "btt-octopus-f446-canbridge")
    try:
        profile = profile_from_options(name, options)
    except ValidationError as exc:
        assert str(exc)
    else:
        render_config(profile.kconfig())
    hostile.count()
    assert not os.path.exists(CANARY)


@settings(SETTINGS, max_examples=60)
@given(name=any_name, kconfig=st.dictionaries(kconfig_key, kconfig_value, min_size=1,
                                               max_size=2))
def test_the_command_line(tmp_path_factory, name, kconfig):
    """``octoflash show-config`` and ``build`` over a moonraker.conf with a generated section."""
    import io
    root = tmp_path_factory.mktemp("cli")
    conf = root / "config" / "moonraker.conf"
    conf.parent.mkdir()
    lines = "\n".join(f"  {k}={v}".replace("\r", " ").replace("\n", " ")
                      for k, v in kconfig.items())
    section = name.replace("\r", " ").replace("\n", " ").replace("]", " ")
    conf.write_text(f"[octoflash]\nklipper_path: {root}/klipper\n\n"
                    f"[octoflash {section}]\npreset: btt-octopus-f446-canbridge\n"
                    f"kconfig:\n{lines}\n", encoding="utf-8")
    for command in ("show-config", "build"):
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(["--config", str(conf), command, "--", section.strip() or "p"],
                        out=out, err=err)
        hostile.count()
        assert not os.path.exists(CANARY)
        if command == "build":
            assert code != 0 and err.getvalue().strip()   # no checkout: nothing built
        elif code == 0:
            for line in out.getvalue().splitlines():    # the .config a build would write
                value = line.split("=", 1)[1] if "=" in line else "n"
                assert value_problem(value) is None, line
        else:
            assert "octoflash:" in err.getvalue()
