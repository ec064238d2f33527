"""No profile can run a command: values reach make only as plain data.

Klipper's and Katapult's Makefiles include the ``.config``, so make expands
``$(shell ...)`` in a value it reads before Kconfig ever rewrites the file.
The simulated Klipper tree does the same (its Makefile includes the board
folder named by ``CONFIG_BOARD_DIRECTORY``), which the first test shows; the
others show that octoflash never lets such a value, or a symbol the user
may not set, reach make, and that make is not even started for it.
"""
from __future__ import annotations

import dataclasses
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from moonraker_octoflash.build import Builder
from moonraker_octoflash.sim.trees import no_cross_compiler
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.profiles import profile_from_json
from moonraker_octoflash.settings import Settings


def make_recorder(tmp_path: Path) -> Path:
    """A ``make`` that notes each start in make-calls.log, then runs the real one."""
    real = shutil.which("make")
    assert real
    log = tmp_path / "make-calls.log"
    script = tmp_path / "bin" / "make"
    script.parent.mkdir(exist_ok=True)
    script.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n',
                      encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def make_calls(tmp_path: Path) -> list:
    log = tmp_path / "make-calls.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def test_the_simulated_tree_runs_what_a_hand_written_config_says(klipper_checkout, tmp_path):
    """The threat is real: make expands a .config value before Kconfig sees it."""
    canary = tmp_path / "canary"
    config = tmp_path / "hand.config"
    config.write_text("CONFIG_MACH_STM32=y\n"
                      f'CONFIG_BOARD_DIRECTORY="$(shell touch {canary})"\n', encoding="utf-8")
    subprocess.run(["make", "olddefconfig", f"OUT={tmp_path}/hand-out/",
                    f"KCONFIG_CONFIG={config}"], cwd=klipper_checkout,
                   capture_output=True, timeout=120, check=False)
    assert canary.exists()


@pytest.mark.parametrize("value", [
    '"$(shell touch {canary})"', '"`touch {canary}`"', "$(shell touch {canary})",
    '"stm32\\" $(shell touch {canary}) \\""', '"x"\nCONFIG_BOARD_DIRECTORY="$(shell touch {canary})"',
])
async def test_a_hostile_value_is_refused_and_make_never_starts(
        value, klipper_checkout, katapult_checkout, tmp_path):
    canary = tmp_path / "canary"
    value = value.format(canary=canary)
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(klipper_checkout),
                      katapult_path=str(katapult_checkout), make=str(make_recorder(tmp_path)),
                      cross_compiler=no_cross_compiler)
    data = {"name": "evil", "preset": "btt-octopus-f446-canbridge",
            "kconfig": {"CONFIG_INITIAL_PINS": value}}
    # Every entry point refuses it: the profile's JSON form (API, CLI) ...
    with pytest.raises(ValidationError) as info:
        profile_from_json(data)
    assert "CONFIG_INITIAL_PINS" in str(info.value)
    # ... and the builder again, for a profile made without those checks.
    good = profile_from_json(dict(data, kconfig={}))
    forged = dataclasses.replace(good, kconfig_overrides={"CONFIG_INITIAL_PINS": value})
    with pytest.raises(ValidationError) as info:
        await builder.build(forged)
    assert "CONFIG_INITIAL_PINS" in str(info.value)
    assert not canary.exists()
    assert make_calls(tmp_path) == []
    assert not (tmp_path / "builds" / "evil" / "config").exists()


async def test_a_symbol_the_user_cannot_set_is_refused_before_make(
        klipper_checkout, katapult_checkout, tmp_path):
    """Plain text, but for a symbol Kconfig derives itself (make reads it at parse time)."""
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(klipper_checkout),
                      katapult_path=str(katapult_checkout), make=str(make_recorder(tmp_path)),
                      cross_compiler=no_cross_compiler)
    profile = profile_from_json({"name": "derived", "preset": "btt-octopus-f446-canbridge",
                                 "kconfig": {"CONFIG_BOARD_DIRECTORY": '"stm32"',
                                             "CONFIG_CANBUS_FREQUENCY": '"fast"'}})
    with pytest.raises(ValidationError) as info:
        await builder.build(profile)
    text = str(info.value)
    assert "CONFIG_BOARD_DIRECTORY: Kconfig sets this symbol itself" in text
    assert "CONFIG_CANBUS_FREQUENCY: the value must be a decimal number" in text
    assert "nothing was run" in text
    assert make_calls(tmp_path) == []


async def test_a_good_override_still_builds(klipper_checkout, katapult_checkout, tmp_path):
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(klipper_checkout),
                      katapult_path=str(katapult_checkout), make=str(make_recorder(tmp_path)),
                      cross_compiler=no_cross_compiler)
    profile = profile_from_json({"name": "pins", "preset": "btt-octopus-f446-canbridge",
                                 "kconfig": {"CONFIG_INITIAL_PINS": '"!PA14,PB3"'}})
    result = await builder.build(profile)
    assert result.artifact.file().name == "klipper.bin"
    config = (tmp_path / "builds" / "pins" / "config").read_text(encoding="utf-8")
    assert 'CONFIG_INITIAL_PINS="!PA14,PB3"' in config
    assert any(call.startswith("olddefconfig") for call in make_calls(tmp_path))


@pytest.mark.parametrize("option, value, words", [
    ("build_path", "/tmp/a b", "' '"),
    ("build_path", "/tmp/$(shell id)", "'$' '(' ')'"),
    ("klipper_path", "/home/pi/klipper;touch x", "';'"),
    ("katapult_path", "/home/pi/`id`", "'`'"),
    ("can_interfaces", "can0 $(x)", "not a network interface name"),
])
def test_paths_that_reach_make_are_plain(option, value, words, tmp_path):
    with pytest.raises(ValidationError) as info:
        Settings.from_options({option: value}, str(tmp_path))
    assert option in str(info.value) and words in str(info.value)


def test_a_checkout_in_an_unusable_folder_is_refused_before_make(tmp_path, klipper_checkout):
    odd = tmp_path / "my klipper"
    shutil.copytree(klipper_checkout, odd, symlinks=True)
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(odd),
                      make=str(make_recorder(tmp_path)),
                      cross_compiler=no_cross_compiler)
    with pytest.raises(ValidationError) as info:
        builder.checkout("klipper")
    assert "cannot be handed to make" in str(info.value)


@pytest.mark.parametrize("name", ["octopus\n", "oct opus", "../x", "a$b", "x" * 65, "", "-x"])
def test_profile_names_are_whole_matches(name):
    with pytest.raises(ValidationError):
        profile_from_json({"name": name, "preset": "btt-octopus-f446-canbridge"})


@pytest.mark.parametrize("field, value", [
    ("canbus_uuid", "0123456789ab\n"), ("serial", "/dev/ttyACM0\n"),
    ("dfu_serial", "ABC\n"), ("klipper_mcu", "mcu\n"), ("canbus_interface", "can0\n"),
])
def test_a_trailing_newline_passes_no_field(field, value):
    data = {"name": "p", "preset": "btt-octopus-f446-canbridge", field: value}
    if field == "canbus_interface":
        data["canbus_uuid"] = "0123456789ab"
    with pytest.raises(ValidationError) as info:
        profile_from_json(data)
    assert field in str(info.value)

