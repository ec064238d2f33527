"""Several profiles built at once: one make jobserver, the same images, errors kept apart."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moonraker_octoflash.build import Builder, _Jobserver
from moonraker_octoflash.errors import BuildError, ValidationError
from moonraker_octoflash.sim.trees import change_source, no_cross_compiler

PRESETS = ["btt-octopus-f446-canbridge", "btt-octopus-h723-canbridge",
           "btt-ebb-klipper-1m"]


def _images(results):
    return {r.artifact.profile: {f.name: f.sha256 for f in r.artifact.files} for r in results}


async def test_profiles_built_together_give_the_images_built_one_by_one(
        builder, make_profile, klipper_checkout, tmp_path):
    profiles = [make_profile(p) for p in PRESETS]
    steps = {p.name: [] for p in profiles}
    together = await builder.build_many(
        profiles, on_progress=lambda name: lambda e: steps[name].append(e.message)
        if e.kind == "step" else None)
    assert [type(r).__name__ for r in together] == ["BuildResult"] * 3, [str(r) for r in together]
    assert [r.artifact.profile for r in together] == [p.name for p in profiles]
    for result in together:
        log = Path(result.log_path).read_text()
        # each make took its job slots from the shared jobserver (a make that
        # could not reach it says so and runs one job at a time)
        assert "jobserver unavailable" not in log and "forced in submake" not in log
        assert "Linking" in log
    for name, messages in steps.items():
        assert any(m.startswith("make (sharing 2 jobs with 2 other build(s))")
                   for m in messages), (name, messages)
    alone = Builder(str(tmp_path / "alone"), klipper_path=str(klipper_checkout), jobs=2,
                    cross_compiler=no_cross_compiler)
    one_by_one = [await alone.build(p) for p in profiles]
    assert _images(together) == _images(one_by_one)

    # nothing changed: nothing is built, and the same artifacts are offered
    again = await builder.build_many(profiles)
    assert [r.skipped for r in again] == [True, True, True]
    assert [r.artifact.id for r in again] == [r.artifact.id for r in together]

    # a source change rebuilds all three, still the same images as one by one
    change_source(klipper_checkout, "src/sched.c", note="parallel test")
    rebuilt = await builder.build_many(profiles)
    assert [getattr(r, "skipped", r) for r in rebuilt] == [False, False, False]
    assert _images(rebuilt) == _images([await alone.build(p) for p in profiles])


async def test_one_failing_profile_does_not_stop_the_others(builder, make_profile):
    good = make_profile(PRESETS[0])
    bad = make_profile(PRESETS[1], name="typo", kconfig={"CONFIG_CANBUS_FREQUENCY": "1000000",
                                                         "CONFIG_NO_SUCH_SYMBOL": "y"})
    other = make_profile(PRESETS[2])
    results = await builder.build_many([good, bad, other])
    assert not isinstance(results[0], BaseException) and not results[0].skipped
    assert isinstance(results[1], ValidationError)
    assert "CONFIG_NO_SUCH_SYMBOL" in str(results[1])
    assert not isinstance(results[2], BaseException) and not results[2].skipped


async def test_a_compile_error_is_that_profiles_alone(builder, make_profile, klipper_checkout):
    profiles = [make_profile(PRESETS[0]), make_profile(PRESETS[1])]
    await builder.build_many(profiles)
    # an H7-only source file breaks: the F446 build goes on and is kept
    h7 = next(p for p in (klipper_checkout / "src" / "stm32").glob("*h7*.c"))
    with h7.open("a") as f:
        f.write("#error broken h7 clock\n")
    subprocess.run(["git", "commit", "-qam", "break h7"], cwd=klipper_checkout, check=True)
    first, second = await builder.build_many(profiles)
    assert not isinstance(first, BaseException) and not first.skipped
    assert isinstance(second, BuildError)
    assert "make failed" in str(second) and "broken h7 clock" in str(second)


async def test_a_profile_named_twice_is_refused(builder, make_profile):
    with pytest.raises(ValidationError, match="named twice"):
        await builder.build_many([make_profile(PRESETS[0]), make_profile(PRESETS[0])])


async def test_the_jobserver_never_runs_more_jobs_than_it_has(tmp_path):
    """Two makes of four jobs each on a jobserver of two slots: at most two at a time.

    Each job holds its slot until the job started after it has started (the
    last one until all eight have): jobs overlap whenever the jobserver lets
    them, whatever the machine's pace, so the peak of two is reached without
    timing.  A jobserver with a third slot shows in the peak most of the time
    (2 runs in 3 when tried), not always: nothing but time could prove that a
    third job would never have started.
    """
    counter = tmp_path / "count"
    counter.write_text("0 0 0\n")
    # Job k blocks reading the FIFO gate-k until job k+1 opens it to write:
    # a wait on the next job's start itself, not a poll.
    for k in range(1, 8):
        os.mkfifo(tmp_path / f"gate-{k}")
    job = textwrap.dedent(f"""\
        import fcntl, os, signal
        signal.alarm(60)          # a jobserver that never starts the next job: fail
        def bump(step, start=0):
            with open({str(counter)!r}, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                now, peak, started = map(int, f.read().split())
                now += step
                started += start
                f.seek(0); f.truncate(); f.write(f"{{now}} {{max(now, peak)}} {{started}}\\n")
                return started
        mine = bump(1, start=1)
        if mine > 1:
            open(os.path.join({str(tmp_path)!r}, f"gate-{{mine - 1}}"), "w").close()
        if mine < 8:
            with open(os.path.join({str(tmp_path)!r}, f"gate-{{mine}}")) as gate:
                gate.read()
        bump(-1)
        """)
    (tmp_path / "job.py").write_text(job)
    (tmp_path / "Makefile").write_text(
        "all: a b c d\na b c d:\n\t" + sys.executable + " job.py\n.PHONY: all a b c d\n")
    from moonraker_octoflash.tools import run_tool

    with _Jobserver(2, 2) as jobserver:
        async def one() -> int:
            token = await jobserver.acquire()
            try:
                result = await run_tool(["make", "-f", "Makefile", "all"], timeout=60,
                                        cwd=str(tmp_path), env={"MAKEFLAGS": jobserver.makeflags},
                                        pass_fds=jobserver.fds)
            finally:
                jobserver.release(token)
            assert not any("jobserver" in line for line in result.lines), result.lines
            return result.returncode
        assert await asyncio.gather(one(), one()) == [0, 0]
    now, peak, started = map(int, counter.read_text().split())
    assert (now, peak, started) == (0, 2, 8)


def test_ccache_stands_in_for_the_cross_compiler_only_when_installed(tmp_path, monkeypatch):
    """With ccache, make finds a link named after the compiler first in PATH."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("ccache", "arm-none-eabi-gcc"):
        (fake / name).write_text("#!/bin/sh\nexit 0\n")
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    builder = Builder(str(tmp_path / "builds"), cross_compiler=lambda mcu: "arm-none-eabi-gcc")
    env = builder._ccache_env("stm32f446xx")
    folder = tmp_path / "builds" / ".ccache-bin"
    assert env["PATH"].split(os.pathsep)[0] == str(folder)
    assert os.path.realpath(folder / "arm-none-eabi-gcc") == str(fake / "ccache")
    assert Builder(str(tmp_path / "b2"), ccache="no",
                   cross_compiler=lambda mcu: "arm-none-eabi-gcc")._ccache_env("x") == {}
    assert Builder(str(tmp_path / "b3"), cross_compiler=no_cross_compiler)._ccache_env("x") == {}
    (fake / "ccache").unlink()
    monkeypatch.setenv("PATH", str(fake))      # no ccache anywhere
    assert Builder(str(tmp_path / "b4"),
                   cross_compiler=lambda mcu: "arm-none-eabi-gcc")._ccache_env("x") == {}
