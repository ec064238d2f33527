"""Rendering, parsing and checking .config files; olddefconfig on the simulated trees."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from moonraker_octoflash.errors import BuildError, ValidationError
from moonraker_octoflash.kconfig import (SymbolInfo, check_against_kconfig, compare_config,
                                         config_int, config_value, kconfig_child_env,
                                         parse_config, read_symbol_table, render_config,
                                         resolve_config)

F446_CANBRIDGE = {
    "CONFIG_LOW_LEVEL_OPTIONS": "y",
    "CONFIG_MACH_STM32": "y",
    "CONFIG_MACH_STM32F446": "y",
    "CONFIG_STM32_FLASH_START_8000": "y",
    "CONFIG_STM32_CLOCK_REF_12M": "y",
    "CONFIG_STM32_USBCANBUS_PA11_PA12": "y",
    "CONFIG_STM32_CMENU_CANBUS_PD0_PD1": "y",
    "CONFIG_CANBUS_FREQUENCY": "1000000",
    "CONFIG_INITIAL_PINS": '""',
}


# --- render / parse / compare ----------------------------------------------------

def test_render_writes_dotconfig_lines_in_order():
    text = render_config({"CONFIG_MACH_STM32": "y", "CONFIG_ENABLE_LED": "n",
                          "CONFIG_CANBUS_FREQUENCY": "500000",
                          "CONFIG_FLASH_SIZE": "0x80000", "CONFIG_STATUS_LED_PIN": '"PA13"',
                          "CONFIG_INITIAL_PINS": '""'})
    assert text == ("CONFIG_MACH_STM32=y\n"
                    "# CONFIG_ENABLE_LED is not set\n"
                    "CONFIG_CANBUS_FREQUENCY=500000\n"
                    "CONFIG_FLASH_SIZE=0x80000\n"
                    'CONFIG_STATUS_LED_PIN="PA13"\n'
                    'CONFIG_INITIAL_PINS=""\n')


@pytest.mark.parametrize("name, value, words", [
    ("CONFIG_INITIAL_PINS", '"PA1"\nCONFIG_EVIL=y', "one line"),
    ("CONFIG_STATUS_LED_PIN", '"PA13', "text in double quotes"),
    ("CONFIG_STATUS_LED_PIN", '"PA"13"', "not '\"'"),
    ("CONFIG_STATUS_LED_PIN", 'PA13"', "text in double quotes"),
    ("CONFIG_STATUS_LED_PIN", '"PA13\\"', "not '\\\\'"),
    # make expands $(...) and the shell runs backquotes in a value that
    # reaches a recipe, before Kconfig ever reads the file
    ("CONFIG_USB_SERIAL_NUMBER", '"$(shell touch /tmp/x)"', "not '$' '(' ')'"),
    ("CONFIG_USB_SERIAL_NUMBER", '"`touch /tmp/x`"', "not '`'"),
    ("CONFIG_USB_SERIAL_NUMBER", '"a;b|c&d"', "not '&' ';' '|'"),
    ("CONFIG_USB_SERIAL_NUMBER", '"# x"', "not '#'"),
    ("CONFIG_USB_SERIAL_NUMBER", '"a\tb"', "not '\\t'"),
    ("CONFIG_USB_SERIAL_NUMBER", "$(shell id)", "not a .config value"),
    ("CONFIG_FLASH_SIZE", "0x", "not a .config value"),
    ("CONFIG_USB_SERIAL_NUMBER", '"' + "A" * 129 + '"', "at most 128 characters"),
    ("CONFIG_MACH_STM32\n", "y", "not a valid name"),
    ("CONFIG_ENABLE_LED", "", "empty value"),
    ("MACH_STM32", "y", "not a valid name"),
    ("CONFIG_MACH-STM32", "y", "not a valid name"),
])
def test_render_refuses_what_could_inject_or_break_a_line(name, value, words):
    with pytest.raises(ValidationError) as info:
        render_config({name: value})
    assert words in str(info.value)
    assert name.strip() in str(info.value)


def test_render_accepts_plain_text_values():
    text = render_config({"CONFIG_INITIAL_PINS": '"!PA14,PB3"',
                          "CONFIG_USB_SERIAL_NUMBER": '"Octopus Pro 1.1_a-b+c:d/e."'})
    assert text == ('CONFIG_INITIAL_PINS="!PA14,PB3"\n'
                    'CONFIG_USB_SERIAL_NUMBER="Octopus Pro 1.1_a-b+c:d/e."\n')


def test_schema_pattern_is_the_same_rule_as_the_renderer():
    from moonraker_octoflash.kconfig import VALUE_PATTERN
    from moonraker_octoflash.schemas import load_schema
    schema = load_schema("profile")["properties"]["kconfig"]["additionalProperties"]
    assert schema["pattern"] == VALUE_PATTERN


def test_parse_reads_values_and_not_set_lines():
    text = ("#\n# Automatically generated file; DO NOT EDIT.\n#\n"
            "CONFIG_MACH_STM32=y\n# CONFIG_MACH_STM32F103 is not set\n"
            'CONFIG_MCU="stm32f446xx"\nCONFIG_FLASH_APPLICATION_ADDRESS=0x8008000\n\n'
            "# end of USB ids\n")
    symbols = parse_config(text)
    assert symbols == {"CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32F103": "n",
                       "CONFIG_MCU": '"stm32f446xx"',
                       "CONFIG_FLASH_APPLICATION_ADDRESS": "0x8008000"}
    assert config_value(symbols, "CONFIG_MCU") == "stm32f446xx"
    assert config_int(symbols, "CONFIG_FLASH_APPLICATION_ADDRESS") == 0x08008000
    assert config_value(symbols, "CONFIG_MACH_STM32F103") is None
    assert parse_config(render_config(F446_CANBRIDGE)) == F446_CANBRIDGE


def test_compare_treats_equal_numbers_and_absent_n_as_equal():
    requested = {"CONFIG_FLASH_APPLICATION_ADDRESS": "0x08008000", "CONFIG_ENABLE_LED": "n",
                 "CONFIG_CANBUS_FREQUENCY": "1000000", "CONFIG_INITIAL_PINS": '""'}
    resolved = {"CONFIG_FLASH_APPLICATION_ADDRESS": "0x8008000",
                "CONFIG_CANBUS_FREQUENCY": "1000000", "CONFIG_INITIAL_PINS": '""'}
    assert compare_config(requested, resolved) == []


def test_compare_names_dropped_and_changed_symbols():
    requested = {"CONFIG_STM32_FLASH_START_10000": "y", "CONFIG_CANBUS_FREQUENCY": "500000",
                 "CONFIG_STATUS_LED_PIN": '"PA13"'}
    resolved = {"CONFIG_CANBUS_FREQUENCY": "1000000", "CONFIG_STATUS_LED_PIN": '"PA13"'}
    found = {m.symbol: m for m in compare_config(requested, resolved)}
    assert set(found) == {"CONFIG_STM32_FLASH_START_10000", "CONFIG_CANBUS_FREQUENCY"}
    assert found["CONFIG_STM32_FLASH_START_10000"].resolved is None
    assert str(found["CONFIG_CANBUS_FREQUENCY"]).startswith(
        "CONFIG_CANBUS_FREQUENCY: asked for 500000, Kconfig gave 1000000")


# --- make olddefconfig on the simulated Klipper tree -----------------------------

async def resolve(checkout: Path, tmp_path: Path, symbols):
    return await resolve_config(str(checkout), str(tmp_path / "cfg" / "config"), symbols,
                                timeout=60, out_dir=str(tmp_path / "cfg" / "kout"))


async def test_resolve_completes_the_config_like_menuconfig(klipper_checkout, tmp_path):
    resolved = await resolve(klipper_checkout, tmp_path, F446_CANBRIDGE)
    assert config_value(resolved, "CONFIG_MCU") == "stm32f446xx"
    assert config_int(resolved, "CONFIG_FLASH_APPLICATION_ADDRESS") == 0x08008000
    assert config_int(resolved, "CONFIG_CLOCK_FREQ") == 180000000
    assert config_int(resolved, "CONFIG_CLOCK_REF_FREQ") == 12000000
    assert resolved["CONFIG_USBCANBUS"] == "y"
    assert resolved["CONFIG_STM32_CANBUS_PD0_PD1"] == "y"
    # The file on disk is the complete configuration.
    assert parse_config((tmp_path / "cfg" / "config").read_text()) == resolved
    # make ran in the checkout but left its .config and out/ alone.
    assert not (klipper_checkout / ".config").exists()
    assert not (klipper_checkout / "out").exists()


async def test_can_pins_default_to_pb8_pb9_when_not_asked(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE)
    del symbols["CONFIG_STM32_CMENU_CANBUS_PD0_PD1"]
    resolved = await resolve(klipper_checkout, tmp_path, symbols)
    assert resolved["CONFIG_STM32_CMENU_CANBUS_PB8_PB9"] == "y"
    assert resolved.get("CONFIG_STM32_CANBUS_PD0_PD1", "n") == "n"


async def test_impossible_offset_is_refused_naming_what_the_mcu_offers(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE, CONFIG_MACH_STM32F446="n", CONFIG_MACH_STM32H723="y",
                   CONFIG_STM32_CLOCK_REF_12M="n", CONFIG_STM32_CLOCK_REF_25M="y",
                   CONFIG_STM32_FLASH_START_8000="n", CONFIG_STM32_FLASH_START_10000="y")
    with pytest.raises(ValidationError) as info:
        await resolve(klipper_checkout, tmp_path, symbols)
    text = str(info.value)
    assert "CONFIG_STM32_FLASH_START_10000: asked for y, Kconfig gave not set" in text
    assert "not offered" in text
    assert "128KiB bootloader (CONFIG_STM32_FLASH_START_20000)" in text
    assert "No bootloader (CONFIG_STM32_FLASH_START_0000)" in text
    assert "nothing was compiled" in text
    assert len([line for line in text.splitlines() if line.startswith("  CONFIG_")]) == 1


async def test_misspelt_symbol_is_refused_with_a_suggestion(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE)
    del symbols["CONFIG_STM32_CLOCK_REF_12M"]
    symbols["CONFIG_STM32_CLOCK_REF_12MHZ"] = "y"
    with pytest.raises(ValidationError) as info:
        await resolve(klipper_checkout, tmp_path, symbols)
    text = str(info.value)
    assert "CONFIG_STM32_CLOCK_REF_12MHZ" in text
    assert "no such symbol" in text
    assert "did you mean CONFIG_STM32_CLOCK_REF_12M" in text


async def test_unknown_symbol_set_to_n_is_still_refused(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE, CONFIG_ENABLE_LEDS="n")
    with pytest.raises(ValidationError) as info:
        await resolve(klipper_checkout, tmp_path, symbols)
    assert "CONFIG_ENABLE_LEDS: asked for n" in str(info.value)
    assert "no such symbol" in str(info.value)


async def test_low_level_options_gate_clock_and_pins(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE)
    del symbols["CONFIG_LOW_LEVEL_OPTIONS"]
    with pytest.raises(ValidationError) as info:
        await resolve(klipper_checkout, tmp_path, symbols)
    text = str(info.value)
    assert "CONFIG_STM32_CLOCK_REF_12M: asked for y, Kconfig gave not set" in text
    assert "'Clock Reference' menu is only shown with CONFIG_LOW_LEVEL_OPTIONS=y" in text
    assert "CONFIG_INITIAL_PINS" in text and "needs CONFIG_LOW_LEVEL_OPTIONS=y" in text
    # 1000000 is also Kconfig's default, so the hidden prompt changes nothing there.
    assert "CONFIG_CANBUS_FREQUENCY" not in text


async def test_derived_symbol_cannot_be_set(klipper_checkout, tmp_path):
    symbols = dict(F446_CANBRIDGE, CONFIG_FLASH_APPLICATION_ADDRESS="0x8010000")
    with pytest.raises(ValidationError) as info:
        await resolve(klipper_checkout, tmp_path, symbols)
    assert "CONFIG_FLASH_APPLICATION_ADDRESS: asked for 0x8010000, Kconfig gave 0x8008000" \
        in str(info.value)
    assert "no prompt" in str(info.value)


async def test_values_are_checked_against_the_checkouts_symbol_types(klipper_checkout):
    table = await read_symbol_table(str(klipper_checkout))
    assert table["CONFIG_CANBUS_FREQUENCY"] == SymbolInfo("int", True)
    assert table["CONFIG_BOARD_DIRECTORY"] == SymbolInfo("string", False)
    symbols = dict(F446_CANBRIDGE, CONFIG_CANBUS_FREQUENCY='"fast"', CONFIG_INITIAL_PINS="1",
                   CONFIG_MACH_STM32="5", CONFIG_USB_VENDOR_ID="1234",
                   CONFIG_BOARD_DIRECTORY='"stm32"', CONFIG_CANBUS_FREQENCY="500000")
    with pytest.raises(ValidationError) as info:
        check_against_kconfig(symbols, table, "profile 'p'")
    text = str(info.value)
    assert "6 Kconfig settings cannot be used with this checkout; nothing was run" in text
    assert "CONFIG_CANBUS_FREQUENCY: the value must be a decimal number (it is an int option)" in text
    assert "CONFIG_INITIAL_PINS: a text option needs its value in double quotes" in text
    assert "CONFIG_MACH_STM32: a yes/no option takes y or n" in text
    assert "CONFIG_USB_VENDOR_ID: the value must be a hexadecimal number" in text
    assert "CONFIG_BOARD_DIRECTORY: Kconfig sets this symbol itself" in text
    assert ("CONFIG_CANBUS_FREQENCY: no such symbol in this firmware's Kconfig; did you mean "
            "CONFIG_CANBUS_FREQUENCY") in text
    check_against_kconfig(F446_CANBRIDGE, table, "profile 'p'")     # a good one passes


async def test_the_checkouts_own_kconfiglib_reads_the_tree(klipper_checkout):
    """A checkout with lib/kconfiglib (as Klipper and Katapult have) is read with that copy."""
    import kconfiglib
    lib = klipper_checkout / "lib" / "kconfiglib"
    lib.mkdir(parents=True)
    source = Path(kconfiglib.__file__).read_text(encoding="utf-8")
    # A copy that marks itself, so the test sees which one was used.
    (lib / "kconfiglib.py").write_text(
        source.replace("class Kconfig(object):",
                       "import sys\nsys.stderr.write('checkout kconfiglib\\n')\n"
                       "class Kconfig(object):", 1), encoding="utf-8")
    env = kconfig_child_env(str(klipper_checkout))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(lib)
    table = await read_symbol_table(str(klipper_checkout))
    assert table["CONFIG_INITIAL_PINS"] == SymbolInfo("string", True)


@pytest.mark.parametrize("mach, offsets, refused", [
    # From octopus-presets.md: F446 32/64 KiB or none; F407/F429 16/32/48/64 KiB,
    # 128 KiB with a 512 byte offset, or none; H723 only 128 KiB or none.
    ("STM32F446", ["8000", "10000", "0000"], ["4000", "C000", "20200", "20000"]),
    ("STM32F407", ["4000", "8000", "C000", "10000", "20200", "0000"], ["20000"]),
    ("STM32F429", ["4000", "8000", "C000", "10000", "20200", "0000"], ["20000"]),
    ("STM32H723", ["20000", "0000"], ["8000", "10000", "4000"]),
])
async def test_each_mcu_offers_exactly_its_bootloader_offsets(klipper_checkout, tmp_path,
                                                               mach, offsets, refused):
    base = {"CONFIG_LOW_LEVEL_OPTIONS": "y", "CONFIG_MACH_STM32": "y",
            f"CONFIG_MACH_{mach}": "y"}
    for offset in offsets:
        resolved = await resolve(klipper_checkout, tmp_path,
                                 dict(base, **{f"CONFIG_STM32_FLASH_START_{offset}": "y"}))
        expected = 0x08000000 + int(offset, 16)
        assert config_int(resolved, "CONFIG_FLASH_APPLICATION_ADDRESS") == expected
    for offset in refused:
        with pytest.raises(ValidationError) as info:
            await resolve(klipper_checkout, tmp_path,
                          dict(base, **{f"CONFIG_STM32_FLASH_START_{offset}": "y"}))
        assert f"CONFIG_STM32_FLASH_START_{offset}: asked for y" in str(info.value)
        assert "not offered" in str(info.value)


# --- the simulated Katapult tree ------------------------------------------------------

async def test_katapult_has_no_low_level_prompt(katapult_checkout, tmp_path):
    symbols = {"CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32F446": "y",
               "CONFIG_STM32_CLOCK_REF_12M": "y", "CONFIG_LOW_LEVEL_OPTIONS": "n"}
    with pytest.raises(ValidationError) as info:
        await resolve(katapult_checkout, tmp_path, symbols)
    assert "CONFIG_LOW_LEVEL_OPTIONS: asked for n, Kconfig gave y" in str(info.value)
    del symbols["CONFIG_LOW_LEVEL_OPTIONS"]
    resolved = await resolve(katapult_checkout, tmp_path, symbols)
    assert resolved["CONFIG_LOW_LEVEL_OPTIONS"] == "y"
    # "Do not build" a deployer is Katapult's default.
    assert resolved["CONFIG_STM32_FLASH_START_0000"] == "y"
    assert resolved.get("CONFIG_BUILD_DEPLOYER", "n") == "n"
    assert config_int(resolved, "CONFIG_LAUNCH_APP_ADDRESS") == 0x08008000


async def test_status_led_pin_needs_the_led(katapult_checkout, tmp_path):
    symbols = {"CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32F446": "y",
               "CONFIG_ENABLE_LED": "n", "CONFIG_STATUS_LED_PIN": '"PA13"'}
    with pytest.raises(ValidationError) as info:
        await resolve(katapult_checkout, tmp_path, symbols)
    assert 'CONFIG_STATUS_LED_PIN: asked for "PA13"' in str(info.value)
    assert "needs CONFIG_ENABLE_LED=y" in str(info.value)


# --- failures of make itself -------------------------------------------------------------

async def test_broken_kconfig_is_a_build_error_with_make_output(klipper_checkout, tmp_path):
    kconfig = klipper_checkout / "src" / "Kconfig"
    kconfig.write_text(kconfig.read_text() + "\nconfig BROKEN\n    bool \"unterminated\n")
    with pytest.raises(BuildError) as info:
        await resolve(klipper_checkout, tmp_path, F446_CANBRIDGE)
    text = str(info.value)
    assert "make olddefconfig failed" in text
    assert "Last lines of output" in text and "Kconfig" in text

