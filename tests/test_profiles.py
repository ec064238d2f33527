"""Profiles from config sections, JSON and moonraker.conf; bad input refused by name."""
import textwrap

import pytest

from moonraker_octoflash.errors import NotFoundError, ValidationError
from moonraker_octoflash.profiles import (load_profiles_from_config, profile_from_json,
                                          profile_from_options)

BRIDGE = "btt-octopus-f446-canbridge"


def test_issue_example_section():
    p = profile_from_options("octopus", {
        "preset": BRIDGE, "klipper_mcu": "mcu", "canbus_uuid": "0e1f2a3b4c5d",
        "canbus_interface": "can0", "kconfig": "\nCONFIG_CANBUS_FREQUENCY=500000"})
    assert p.connection == "can"
    assert p.klipper_object == "mcu"
    assert p.kconfig()["CONFIG_CANBUS_FREQUENCY"] == "500000"
    # the preset's own symbols stay
    assert p.kconfig()["CONFIG_STM32_CMENU_CANBUS_PD0_PD1"] == "y"
    assert p.to_json()["kconfig"] == {"CONFIG_CANBUS_FREQUENCY": "500000"}


def test_json_round_trip():
    p = profile_from_options("toolhead", {
        "preset": BRIDGE, "klipper_mcu": "mcu toolhead", "serial": "/dev/serial/by-id/usb-Klipper_x-if00",
        "auto_update": "True", "kconfig": "# CONFIG_ENABLE_X is not set\nCANBUS_FREQUENCY=250000"})
    assert p.klipper_mcu == "toolhead" and p.klipper_object == "mcu toolhead"
    assert p.kconfig_overrides == {"CONFIG_ENABLE_X": "n", "CONFIG_CANBUS_FREQUENCY": "250000"}
    again = profile_from_json(p.to_json())
    assert again.to_json() == p.to_json()
    assert p.auto_update is True


@pytest.mark.parametrize("options, fragment", [
    ({"preset": BRIDGE, "kconfig": 'CONFIG_STATUS_LED_PIN="PA13\nCONFIG_X=y'}, "CONFIG_STATUS_LED_PIN"),
    ({"preset": BRIDGE, "kconfig": 'CONFIG_INITIAL_PINS="PA1'}, "CONFIG_INITIAL_PINS"),
    ({"preset": BRIDGE, "kconfig": 'CONFIG_INITIAL_PINS="a" "b"'}, "CONFIG_INITIAL_PINS"),
    ({"preset": BRIDGE, "kconfig": "config-bad=1"}, "CONFIG_config-bad"),
    ({"preset": BRIDGE, "kconfig": "just words"}, "just words"),
    ({"preset": BRIDGE, "canbus_uuid": "xyz"}, "canbus_uuid"),
    ({"preset": BRIDGE, "canbus_uuid": "0e1f2a3b4c5d", "serial": "/dev/ttyACM0"}, "not both"),
    ({"preset": BRIDGE, "serial": "/dev/ttyACM0; rm -rf /"}, "serial"),
    ({"preset": BRIDGE, "serial": "ttyACM0"}, "serial"),
    ({"preset": BRIDGE, "flash_methd": "dfu"}, "flash_methd"),
    ({"preset": "btt-octopus-f446-canbridge-nobootloader", "flash_method": "katapult"}, "cannot be written"),
    ({"preset": "no-such-preset"}, "Unknown preset"),
    ({"kconfig": "CONFIG_X=y"}, "preset"),
    ({"preset": BRIDGE, "auto_update": "maybe"}, "auto_update"),
])
def test_bad_sections_are_refused_naming_the_problem(options, fragment):
    with pytest.raises(ValidationError) as exc:
        profile_from_options("octopus", options)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("name", ["../etc", "a b", "", "x" * 65, "-lead", "semi;colon"])
def test_profile_names_are_safe_identifiers(name):
    with pytest.raises(ValidationError):
        profile_from_json({"name": name, "preset": BRIDGE})


def test_api_body_with_unknown_field():
    with pytest.raises(ValidationError) as exc:
        profile_from_json({"name": "a", "preset": BRIDGE, "uuid": "0e1f2a3b4c5d"})
    assert "uuid" in str(exc.value)


def test_load_from_moonraker_conf(tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "octoflash.cfg").write_text(textwrap.dedent("""\
        [octoflash toolhead]
        preset: btt-octopus-f446-canbridge   # inline comment is dropped
        canbus_uuid: aabbccddeeff
        """))
    (cfg / "moonraker.conf").write_text(textwrap.dedent("""\
        [server]
        host: 0.0.0.0

        [octoflash]
        klipper_path: ~/klipper

        [octoflash octopus]
        preset: btt-octopus-h723-canbridge
        klipper_mcu: mcu
        kconfig:
          CONFIG_CANBUS_FREQUENCY=500000
          # a comment line inside the value is dropped, as Moonraker does
          CONFIG_INITIAL_PINS="PA1"

        [octoflash broken]
        preset: btt-octopus-h723-canbridge
        kconfig: CONFIG_X="unbalanced

        [include octoflash.cfg]
        """))
    profiles, warnings, main = load_profiles_from_config(str(cfg / "moonraker.conf"))
    assert sorted(profiles) == ["octopus", "toolhead"]
    assert profiles["octopus"].kconfig_overrides == {
        "CONFIG_CANBUS_FREQUENCY": "500000", "CONFIG_INITIAL_PINS": '"PA1"'}
    assert profiles["toolhead"].canbus_interface == "can0"
    assert len(warnings) == 1 and "broken" in warnings[0] and "CONFIG_X" in warnings[0]
    assert main == {"klipper_path": "~/klipper"}


def test_missing_config_file(tmp_path):
    with pytest.raises(NotFoundError) as exc:
        load_profiles_from_config(str(tmp_path / "nope.conf"))
    assert "--config" in str(exc.value)
