"""The twelve Octopus presets build, and Kconfig resolves them as the guide says.

The expected symbols below are transcribed by hand from
/work/shared/reference/octopus-presets.md (the guide's twelve menuconfig
screens as text), not derived from the preset JSON: a preset that drifts
from the guide fails here.  test_realfw.py checks the same table against
real Klipper and Katapult checkouts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import pytest

from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.presets import load_presets

# "Per-MCU values": processor symbol, CONFIG_MCU, crystal, bootloader offset
# symbol and the application address behind a bootloader.
VARIANTS: Dict[str, Dict[str, str]] = {
    "f446": {"mach": "CONFIG_MACH_STM32F446", "mcu": "stm32f446xx",
             "clock": "CONFIG_STM32_CLOCK_REF_12M", "offset": "8000", "app": "0x8008000"},
    "f429": {"mach": "CONFIG_MACH_STM32F429", "mcu": "stm32f429xx",
             "clock": "CONFIG_STM32_CLOCK_REF_8M", "offset": "8000", "app": "0x8008000"},
    "f407": {"mach": "CONFIG_MACH_STM32F407", "mcu": "stm32f407xx",
             "clock": "CONFIG_STM32_CLOCK_REF_8M", "offset": "8000", "app": "0x8008000"},
    "h723": {"mach": "CONFIG_MACH_STM32H723", "mcu": "stm32h723xx",
             "clock": "CONFIG_STM32_CLOCK_REF_25M", "offset": "20000", "app": "0x8020000"},
}


def expected_katapult(v: Dict[str, str]) -> Dict[str, str]:
    """Section 1: Katapult (the bootloader)."""
    return {
        "CONFIG_MACH_STM32": "y",
        v["mach"]: "y",
        f"CONFIG_STM32_FLASH_START_{v['offset']}": "y",     # deployment application
        v["clock"]: "y",
        "CONFIG_STM32_USB_PA11_PA12": "y",
        f"CONFIG_STM32_APP_START_{v['offset']}": "y",       # application start offset
        "CONFIG_INITIAL_PINS": '""',
        "CONFIG_ENABLE_DOUBLE_RESET": "y",
        "CONFIG_ENABLE_LED": "y",                           # unconfirmed in the guide
        "CONFIG_STATUS_LED_PIN": '"PA13"',                  # unconfirmed in the guide
        # What Kconfig derives from those choices:
        "CONFIG_LOW_LEVEL_OPTIONS": "y",                    # always y in Katapult
        "CONFIG_MCU": f'"{v["mcu"]}"',
        "CONFIG_LAUNCH_APP_ADDRESS": v["app"],
        "CONFIG_FLASH_APPLICATION_ADDRESS": v["app"],       # where deployer.bin goes
        "CONFIG_BUILD_DEPLOYER": "y",
        "CONFIG_USBSERIAL": "y",
    }


def expected_canbridge(v: Dict[str, str], bootloader: bool) -> Dict[str, str]:
    """Sections 2 (with a bootloader) and 3 (no bootloader): Klipper USB-CAN bridge."""
    return {
        "CONFIG_LOW_LEVEL_OPTIONS": "y",
        "CONFIG_MACH_STM32": "y",
        v["mach"]: "y",
        f"CONFIG_STM32_FLASH_START_{v['offset'] if bootloader else '0000'}": "y",
        v["clock"]: "y",
        "CONFIG_STM32_USBCANBUS_PA11_PA12": "y",
        "CONFIG_STM32_CMENU_CANBUS_PD0_PD1": "y",
        "CONFIG_STM32_CMENU_CANBUS_PB8_PB9": "n",           # the menu's default, not wanted
        "CONFIG_CANBUS_FREQUENCY": "1000000",
        "CONFIG_INITIAL_PINS": '""',
        # Derived:
        "CONFIG_MCU": f'"{v["mcu"]}"',
        "CONFIG_FLASH_APPLICATION_ADDRESS": v["app"] if bootloader else "0x8000000",
        "CONFIG_USBCANBUS": "y",
        "CONFIG_CANBUS": "y",
        "CONFIG_STM32_CANBUS_PD0_PD1": "y",
    }


def expected_for(preset_id: str) -> Dict[str, str]:
    variant = VARIANTS[preset_id.split("-")[2]]
    if preset_id.endswith("-katapult"):
        return expected_katapult(variant)
    return expected_canbridge(variant, bootloader=not preset_id.endswith("-nobootloader"))


PRESET_IDS = [f"btt-octopus-{v}-{kind}" for v in VARIANTS
              for kind in ("katapult", "canbridge", "canbridge-nobootloader")]


def same_value(expected: str, got: Optional[str]) -> bool:
    got = "n" if got is None else got
    if expected.startswith("0x") and got.startswith("0x"):
        return int(expected, 16) == int(got, 16)
    return expected == got


def differences(expected: Dict[str, str], resolved: Dict[str, str]) -> Dict[str, tuple]:
    return {k: (v, resolved.get(k)) for k, v in expected.items()
            if not same_value(v, resolved.get(k))}


def check_artifact(preset_id: str, artifact, exact_version: bool = True) -> None:
    """What the artifact must say for this preset (section of the guide).

    Real Klipper appends a build time and host name to the version of a
    build it does not consider clean, hence ``exact_version=False`` there.
    """
    variant = VARIANTS[preset_id.split("-")[2]]
    assert artifact.mcu == variant["mcu"]
    if preset_id.endswith("-katapult"):
        assert [f.name for f in artifact.files] == ["katapult.bin", "deployer.bin"]
        assert artifact.app_address == 0x08000000
        assert artifact.bootloader_app_start == int(variant["app"], 16)
        assert artifact.deployer_address == int(variant["app"], 16)
    else:
        assert [f.name for f in artifact.files] == ["klipper.bin"]
        wanted = 0x08000000 if preset_id.endswith("-nobootloader") else int(variant["app"], 16)
        assert artifact.app_address == wanted
        assert artifact.dict_mcu == variant["mcu"]
        if exact_version:
            assert artifact.dict_version == artifact.source_version
        else:
            assert (artifact.dict_version + "-").startswith(artifact.source_version + "-")
    for f in artifact.files:
        assert Path(artifact.path(f.name)).stat().st_size == f.size > 0


def test_the_twelve_presets_exist():
    assert sorted(p for p in load_presets() if p.startswith("btt-octopus-")) == sorted(PRESET_IDS)


@pytest.mark.parametrize("preset_id", PRESET_IDS)
async def test_preset_resolves_as_the_guide_says_and_builds(preset_id, builder, make_profile,
                                                            klipper_checkout, katapult_checkout):
    result = await builder.build(make_profile(preset_id))
    resolved = parse_config(Path(result.artifact.path("config")).read_text())
    assert differences(expected_for(preset_id), resolved) == {}
    check_artifact(preset_id, result.artifact)
    for checkout in (klipper_checkout, katapult_checkout):
        assert not (checkout / ".config").exists() and not (checkout / "out").exists()


@pytest.mark.parametrize("preset_id, overrides, symbol", [
    # A 64 KiB bootloader on an H723 (it offers only 128 KiB or none).
    ("btt-octopus-h723-canbridge",
     {"CONFIG_STM32_FLASH_START_20000": "n", "CONFIG_STM32_FLASH_START_10000": "y"},
     "CONFIG_STM32_FLASH_START_10000"),
    # A 48 KiB bootloader on an F446 (F407/F429 only).
    ("btt-octopus-f446-canbridge",
     {"CONFIG_STM32_FLASH_START_8000": "n", "CONFIG_STM32_FLASH_START_C000": "y"},
     "CONFIG_STM32_FLASH_START_C000"),
    # A misspelt CAN pin symbol.
    ("btt-octopus-f429-canbridge",
     {"CONFIG_STM32_CMENU_CANBUS_PD0_PD1": "n", "CONFIG_STM32_CMENU_CANBUS_PD0PD1": "y"},
     "CONFIG_STM32_CMENU_CANBUS_PD0PD1"),
    # Katapult's application offset for an F4 on the H723.
    ("btt-octopus-h723-katapult",
     {"CONFIG_STM32_APP_START_20000": "n", "CONFIG_STM32_APP_START_8000": "y"},
     "CONFIG_STM32_APP_START_8000"),
])
async def test_wrong_symbols_are_refused_before_compiling(preset_id, overrides, symbol,
                                                          builder, make_profile, build_root):
    profile = make_profile(preset_id, kconfig=overrides)
    with pytest.raises(ValidationError) as info:
        await builder.build(profile)
    text = str(info.value)
    if symbol.endswith("PD0PD1"):
        # A symbol the checkout does not have is refused before make runs at all.
        assert f"{symbol}: no such symbol in this firmware's Kconfig; did you mean " \
               "CONFIG_STM32_CMENU_CANBUS_PD0_PD1" in text
        assert "nothing was run" in text
        assert not (build_root / profile.name / "out").exists()
        return
    assert f"{symbol}: asked for y, Kconfig gave not set" in text
    assert "nothing was compiled" in text
    # The entry the preset had chosen comes back as the menu's fallback, and says why.
    [previous] = [k for k, v in overrides.items() if v == "n"]
    if "FLASH_START" in previous or "APP_START" in previous:
        assert f"{previous}: asked for n, Kconfig gave y" in text
        assert "always has one entry chosen" in text
    assert not (build_root / profile.name / "out").exists()
    assert builder.store.list(profile.name) == []
