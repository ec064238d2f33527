"""Profiles that start from an MCU: validation names what is missing, and the
build, the artifact and the profile's JSON work as for a preset."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from moonraker_octoflash.artifacts import uf2_payload
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.profiles import profile_from_json, profile_from_options

EBB_CAN = {"CONFIG_STM32_FLASH_START_2000": "y", "CONFIG_STM32_CLOCK_REF_8M": "y",
           "CONFIG_STM32_MMENU_CANBUS_PB0_PB1": "y", "CONFIG_CANBUS_FREQUENCY": "1000000"}


def refused(data) -> str:
    with pytest.raises(ValidationError) as info:
        profile_from_json(data)
    return str(info.value)


def test_a_usb_can_bridge_without_its_pins_is_refused_naming_them():
    text = refused({"name": "bridge", "mcu": "stm32g0b1", "kconfig": {
        "CONFIG_STM32_FLASH_START_2000": "y", "CONFIG_STM32_CLOCK_REF_8M": "y",
        "CONFIG_STM32_USBCANBUS_PA11_PA12": "y", "CONFIG_CANBUS_FREQUENCY": "1000000"}})
    assert "the CAN pins of the USB-CAN bridge (CONFIG_STM32_CMENU_CANBUS_" in text
    assert "crystal" not in text and "bootloader offset" not in text


def test_every_missing_choice_is_named():
    text = refused({"name": "bare", "mcu": "STM32G0B1"})
    for part in ("bootloader offset", "CONFIG_STM32_CLOCK_REF_", "communication interface"):
        assert part in text


def test_rp2040_on_can_needs_its_pins_and_speed():
    text = refused({"name": "sb2209", "mcu": "rp2040", "kconfig": {
        "CONFIG_RPXXXX_FLASH_START_4000": "y", "CONFIG_RPXXXX_CANBUS": "y"}})
    assert "CONFIG_RPXXXX_CANBUS_GPIO_RX" in text and "CONFIG_RPXXXX_CANBUS_GPIO_TX" in text
    assert "CONFIG_CANBUS_FREQUENCY" in text


def test_katapult_from_an_mcu_needs_the_application_start():
    text = refused({"name": "kp", "mcu": "stm32g0b1", "target": "katapult", "kconfig": EBB_CAN})
    assert "CONFIG_STM32_APP_START_" in text


@pytest.mark.parametrize("data, fragment", [
    ({"name": "x", "mcu": "esp32", "kconfig": EBB_CAN}, "known MCUs: stm32f072"),
    ({"name": "x", "mcu": "stm32g0b1", "preset": "btt-ebb-klipper-1m"}, "not both"),
    ({"name": "x"}, "give either preset"),
    ({"name": "x", "preset": "btt-ebb-klipper-1m", "target": "katapult"}, "target goes with mcu"),
    ({"name": "x", "mcu": "stm32g0b1", "kconfig": dict(EBB_CAN, CONFIG_MACH_STM32F446="y")},
     "CONFIG_MACH_STM32F446=y chooses another processor"),
])
def test_inconsistent_profiles_are_refused(data, fragment):
    assert fragment in refused(data)


def test_a_config_section_with_mcu_round_trips():
    lines = "\n".join(f"{k}={v}" for k, v in EBB_CAN.items())
    profile = profile_from_options("toolhead", {"mcu": "stm32g0b1", "kconfig": lines,
                                                "canbus_uuid": "0e0d81e4210c"})
    assert profile.mcu == "stm32g0b1xx" and profile.target == "klipper"
    assert profile.preset.app_address == 0x08002000
    assert [m["method"] for m in profile.preset.flash_methods] == ["katapult", "dfu"]
    assert profile.connection == "can"
    data = profile.to_json()
    assert data["mcu"] == "stm32g0b1" and "preset" not in data
    assert profile_from_json(data).kconfig() == profile.kconfig()
    assert profile.describe()["board"] == "STM32G0B1 board"


async def test_an_mcu_profile_builds_like_the_curated_preset(builder, make_profile):
    from_mcu = profile_from_json({"name": "from-mcu", "mcu": "stm32g0b1", "kconfig": EBB_CAN})
    curated = make_profile("btt-ebb-sb-klipper-1m", name="curated")
    a = (await builder.build(from_mcu)).artifact
    b = (await builder.build(curated)).artifact
    config_a = parse_config(Path(a.path("config")).read_text())
    config_b = parse_config(Path(b.path("config")).read_text())
    assert config_a == config_b
    assert (a.mcu, a.app_address, a.dict_mcu) == (b.mcu, b.app_address, b.dict_mcu) \
        == ("stm32g0b1xx", 0x08002000, "stm32g0b1xx")
    assert a.preset == "mcu-stm32g0b1"


async def test_an_rp2040_without_bootloader_is_built_as_a_uf2(builder):
    profile = profile_from_json({"name": "pico", "mcu": "rp2040", "kconfig": {
        "CONFIG_RPXXXX_FLASH_START_0100": "y", "CONFIG_RPXXXX_USB": "y"}})
    artifact = (await builder.build(profile)).artifact
    assert [f.name for f in artifact.files] == ["klipper.uf2"]
    assert artifact.main_file == "klipper.uf2"
    assert artifact.app_address == 0x10000100 and artifact.dict_mcu == "rp2040"
    start, image = uf2_payload(Path(artifact.path("klipper.uf2")).read_bytes())
    assert start == 0x10000000
    _sp, reset = struct.unpack_from("<II", image, 0x100)
    assert 0x10000100 <= reset & ~1 < 0x10000000 + artifact.flash_size


async def test_katapult_from_an_mcu_builds_its_deployer(builder):
    profile = profile_from_json({"name": "kp", "mcu": "rp2040", "target": "katapult", "kconfig": {
        "CONFIG_RPXXXX_FLASH_START_4000": "y", "CONFIG_RPXXXX_USB": "y"}})
    artifact = (await builder.build(profile)).artifact
    assert [f.name for f in artifact.files] == ["katapult.bin", "deployer.bin", "katapult.uf2"]
    assert artifact.bootloader_app_start == 0x10004000 == artifact.deployer_address
