"""A flash of a profile that has no current build: the plan starts with the build.

``octoflash flash PROFILE --dry-run`` shows it (the build's commands, then the
flash steps the profile implies) and runs nothing; ``octoflash flash --yes``
builds first, then writes that build.  Real simulated checkout, real make,
the simulated machine's boards and flashtool.py double.
"""
from __future__ import annotations

import io
import textwrap

from moonraker_octoflash.artifacts import ArtifactStore
from moonraker_octoflash.cli import main as octoflash


def _config(tmp_path, machine, klipper_checkout) -> tuple:
    octo = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    build = tmp_path / "builds"
    conf = tmp_path / "moonraker.conf"
    conf.write_text(textwrap.dedent(f"""\
        [octoflash]
        build_path: {build}
        klipper_path: {klipper_checkout}
        machine: moonraker_octoflash.sim.machine:open_machine {machine.directory}
        can_listen_time: 0.1
        reconnect_timeout: 5

        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        canbus_uuid: {octo.canbus_uuid}
        """))
    return str(conf), octo, ArtifactStore(str(build), keep=3)


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = octoflash(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_dry_run_of_a_never_built_profile_shows_the_build_then_the_flash(
        tmp_path, machine, klipper_checkout):
    conf, octo, store = _config(tmp_path, machine, klipper_checkout)
    code, out, err = _run("--config", conf, "flash", "octopus", "--dry-run", "--local")
    assert code == 0, err
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  1. "))
    assert lines[first].startswith("  1. Build 'octopus' (v0.13.0-3-g"), out
    assert "make olddefconfig" in lines[first + 1] and "KCONFIG_CONFIG=" in lines[first + 1]
    assert lines[first + 2].startswith("  2. Compile klipper for stm32f446"), out
    assert "make -j" in lines[first + 3] and "/octopus/out/" in lines[first + 3]
    assert lines[first + 4].startswith("  3. Stop Klipper"), out
    assert f"-i can0 -u {octo.canbus_uuid} -r" in out
    assert "(after the build)" in out and "linked at 0x08008000" in out
    assert out.rstrip().endswith("Dry run: nothing was done.")
    assert store.latest("octopus") is None          # nothing was built
    assert machine.tool_invocations() == []


def test_flash_builds_first_when_there_is_no_current_build(tmp_path, machine, klipper_checkout):
    conf, octo, store = _config(tmp_path, machine, klipper_checkout)
    code, out, err = _run("--config", conf, "flash", "octopus", "--yes", "--local")
    assert code == 0, (out, err)
    built = store.latest("octopus")
    assert built is not None and built.source_version.startswith("v0.13.0-3-g")
    image = open(built.path(), "rb").read()
    assert octo.read_flash(0x08008000, len(image)) == image
    # built now and current: a second dry run has no build step
    code, out, err = _run("--config", conf, "flash", "octopus", "--dry-run", "--local")
    assert code == 0, err
    assert "Build 'octopus'" not in out and "  1. Stop Klipper" in out
