"""The configurator's reading of a checkout's Kconfig (kconfig_menu.py), with real kconfiglib
on the simulated Klipper tree."""
from __future__ import annotations

from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.kconfig_menu import KconfigMenus, changes, evaluate, read_menu
from moonraker_octoflash.presets import get_preset


def shown(menu, result):
    visible = set(result["visible"])
    return {e["prompt"] for e in menu if e["id"] in visible}


async def test_menus_hold_prompts_types_help_and_dependencies(klipper_checkout):
    menu = await read_menu(str(klipper_checkout))
    by_name = {e.get("name"): e for e in menu if e["kind"] == "symbol"}
    low = by_name["CONFIG_LOW_LEVEL_OPTIONS"]
    assert low["type"] == "bool" and "low-level" in low["prompt"]
    assert "non-working build" in low["help"]
    speed = by_name["CONFIG_CANBUS_FREQUENCY"]
    assert speed["type"] == "int"
    assert speed["depends"] == "CONFIG_LOW_LEVEL_OPTIONS && CONFIG_CANBUS"
    comm = next(e for e in menu if e["kind"] == "choice" and e["prompt"] == "Communication interface")
    assert "CONFIG_STM32_USBCANBUS_PA11_PA12" in comm["options"]
    assert by_name["CONFIG_STM32_USBCANBUS_PA11_PA12"]["parent"] == comm["id"]
    usb_ids = next(e for e in menu if e["kind"] == "menu" and e["prompt"] == "USB ids")
    assert by_name["CONFIG_USB_VENDOR_ID"]["type"] == "hex"
    assert by_name["CONFIG_USB_VENDOR_ID"]["parent"] == usb_ids["id"]
    # symbols without a prompt are not offered (Kconfig sets them itself)
    assert "CONFIG_CANBUS" not in by_name and "CONFIG_HAVE_GPIO" not in by_name


async def test_values_decide_what_menuconfig_shows_and_the_resolved_config(klipper_checkout):
    source = str(klipper_checkout)
    menu = await read_menu(source)
    preset = dict(get_preset("btt-octopus-f446-canbridge").kconfig)
    base = await evaluate(source, preset)
    assert {"CAN bus speed", "Clock Reference", "CAN bus interface"} <= shown(menu, base)
    assert "Processor model" in shown(menu, base)
    assert base["values"]["CONFIG_CANBUS_FREQUENCY"] == "1000000"
    low_off = await evaluate(source, dict(preset, CONFIG_LOW_LEVEL_OPTIONS="n"))
    assert "CAN bus speed" not in shown(menu, low_off)
    assert "Clock Reference" not in shown(menu, low_off)
    # a CAN node instead of a bridge: the bridge's CAN interface menu goes
    node = await evaluate(source, dict(preset, CONFIG_STM32_USBCANBUS_PA11_PA12="n",
                                       CONFIG_STM32_CMENU_CANBUS_PD0_PD1="n",
                                       CONFIG_STM32_MMENU_CANBUS_PD0_PD1="y",
                                       CONFIG_CANBUS_FREQUENCY="500000"))
    assert "CAN bus interface" not in shown(menu, node)
    comm = next(e for e in menu if e["prompt"] == "Communication interface")
    assert node["values"][f"choice:{comm['id']}"] == "CONFIG_STM32_MMENU_CANBUS_PD0_PD1"
    resolved = parse_config(node["config"])
    assert resolved["CONFIG_CANBUS_FREQUENCY"] == "500000"
    assert resolved.get("CONFIG_USBCANBUS", "n") == "n" and resolved["CONFIG_CANSERIAL"] == "y"
    diff = {c["symbol"]: (c["preset"], c["value"])
            for c in changes(parse_config(base["config"]), resolved)}
    assert diff["CONFIG_CANBUS_FREQUENCY"] == ("1000000", "500000")
    assert diff["CONFIG_STM32_MMENU_CANBUS_PD0_PD1"] == ("n", "y")


async def test_evaluating_leaves_nothing_in_the_temp_folder(klipper_checkout, tmp_path,
                                                         monkeypatch):
    # every page edit evaluates the Kconfig: on a printer's small /tmp a file
    # left behind per edit (kconfiglib's "<name>.old") would pile up
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)
    preset = dict(get_preset("btt-octopus-f446-canbridge").kconfig)
    result = await evaluate(str(klipper_checkout), preset)
    assert result["values"]["CONFIG_CANBUS_FREQUENCY"] == "1000000"
    assert list(scratch.iterdir()) == []


async def test_menus_are_read_again_only_when_the_checkout_moves(klipper_checkout, monkeypatch):
    import moonraker_octoflash.kconfig_menu as km
    reads = []
    real = km.read_menu

    async def counting(source):
        reads.append(source)
        return await real(source)
    monkeypatch.setattr(km, "read_menu", counting)
    menus = KconfigMenus()
    source = str(klipper_checkout)
    first = await menus.menu(source, ("v0.13.0-3-gabc", ""))
    assert await menus.menu(source, ("v0.13.0-3-gabc", "")) is first
    await menus.menu(source, ("v0.13.0-4-gdef", ""))
    assert reads == [source, source]
