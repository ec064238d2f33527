"""The twelve presets: present, valid, and as the user's guide describes them."""
import copy
import json
import os

import pytest

from moonraker_octoflash import docgen
from moonraker_octoflash.errors import NotFoundError, ValidationError
from moonraker_octoflash.presets import PRESET_DIR, get_preset, list_presets, mcu_info
from moonraker_octoflash.schemas import check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("f446", "f429", "f407", "h723")
EXPECTED_IDS = [f"btt-octopus-{v}-{kind}" for v in VARIANTS
                for kind in ("katapult", "canbridge", "canbridge-nobootloader")]

# Application addresses from the reference table (octopus-presets.md).
APP_WITH_BOOTLOADER = {"f446": 0x08008000, "f429": 0x08008000, "f407": 0x08008000,
                       "h723": 0x08020000}


def test_exactly_the_twelve_octopus_ids():
    octopus = [p.id for p in list_presets() if p.id.startswith("btt-octopus-")]
    assert sorted(octopus) == sorted(EXPECTED_IDS)


def test_every_preset_file_is_valid_and_ids_are_unique():
    seen = []
    for name in sorted(os.listdir(PRESET_DIR)):
        with open(os.path.join(PRESET_DIR, name)) as f:
            doc = json.load(f)
        check("preset", doc, name)
        seen += [p["id"] for p in doc["presets"]]
    assert len(seen) == len(set(seen)) == len(list_presets())


def test_toolhead_presets_cover_their_klipper_configs_and_mcus():
    for p in list_presets():
        assert mcu_info(p.mcu) is not None, p.id
    ebb = get_preset("btt-ebb-klipper-1m")
    assert ebb.klipper_configs == ("sample-bigtreetech-ebb-canbus-v1.1.cfg",
                                   "sample-bigtreetech-ebb-canbus-v1.2.cfg")
    assert get_preset("btt-ebb-sb2209-rp2040-katapult-1m").dfu_instructions == ""
    assert "EBB SB" in get_preset("btt-ebb-sb-katapult-1m").dfu_instructions


@pytest.mark.parametrize("variant", VARIANTS)
def test_addresses_and_methods(variant):
    katapult = get_preset(f"btt-octopus-{variant}-katapult")
    bridge = get_preset(f"btt-octopus-{variant}-canbridge")
    bare = get_preset(f"btt-octopus-{variant}-canbridge-nobootloader")
    assert katapult.target == "katapult" and bridge.target == bare.target == "klipper"
    assert katapult.app_address == 0x08000000
    assert katapult.bootloader_app_start == APP_WITH_BOOTLOADER[variant]
    assert bridge.app_address == APP_WITH_BOOTLOADER[variant]
    assert bare.app_address == 0x08000000
    dfu = katapult.flash_method("dfu")
    assert dfu["address"] == "0x08000000" and dfu["mass_erase"] is True
    assert bridge.flash_method("dfu")["address"] == f"0x{APP_WITH_BOOTLOADER[variant]:08x}"
    assert bridge.flash_method("katapult") is not None
    assert [m["method"] for m in bare.flash_methods] == ["dfu"]
    assert all(p.mcu == f"stm32{variant}xx" for p in (katapult, bridge, bare))
    assert mcu_info(bridge.mcu).flash_size >= 512 * 1024


def test_unconfirmed_led_pin_is_said_in_description():
    for v in VARIANTS:
        p = get_preset(f"btt-octopus-{v}-katapult")
        assert "CONFIG_STATUS_LED_PIN" in p.unconfirmed
        assert "Unconfirmed" in p.description and "PA13" in p.description


def test_h723_heater_warning():
    for kind in ("katapult", "canbridge", "canbridge-nobootloader"):
        assert "heater" in get_preset(f"btt-octopus-h723-{kind}").description


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(NotFoundError) as exc:
        get_preset("btt-octopus-f446-canbrige")
    assert "btt-octopus-f446-canbridge" in str(exc.value)


def _preset_doc():
    with open(os.path.join(PRESET_DIR, "btt-octopus.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["presets"][0]["kconfig"].__setitem__("CONFIG_X", 'a"\nCONFIG_Y=y'), "CONFIG_X"),
    (lambda d: d["presets"][0]["kconfig"].__setitem__("lower_case", "y"), "lower_case"),
    (lambda d: d["presets"][0].__setitem__("target", "marlin"), "marlin"),
    (lambda d: d["presets"][0].__setitem__("app_address", "0x8000"), "app_address"),
    (lambda d: d["presets"][1].__setitem__("colour", "red"), "colour"),
])
def test_schema_refuses_broken_preset_data(mutate, fragment):
    doc = copy.deepcopy(_preset_doc())
    check("preset", doc, "ok")          # the shipped file is valid
    mutate(doc)
    with pytest.raises(ValidationError) as exc:
        check("preset", doc, "presets")
    assert fragment in str(exc.value)


def test_docs_presets_table_is_generated_from_the_data():
    with open(os.path.join(ROOT, "docs", "presets.md")) as f:
        committed = f.read()
    assert committed == docgen.presets_markdown(), \
        "docs/presets.md is stale: run python3 -m moonraker_octoflash.docgen > docs/presets.md"
    for pid in EXPECTED_IDS:
        assert f"`{pid}`" in committed


def test_each_toolhead_family_has_its_katapult_preset():
    """Recovery advice names the Katapult preset of the profile's own board family."""
    presets = list_presets()
    for p in presets:
        if p.target == "klipper" and not p.id.startswith("btt-octopus-"):
            assert any(k.target == "katapult" and k.family == p.family and k.mcu == p.mcu
                       for k in presets), p.id


def test_listing_presets_imports_no_flasher_nor_discovery():
    """``octoflash presets`` stays quick: the presets ask the flash methods what they offer,
    which must not import the flashers, the checks, the device scan or asyncio."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from moonraker_octoflash.presets import list_presets\n"
            "offered = [m['method'] for p in list_presets() for m in p.flash_methods]\n"
            "assert 'rp2040_boot' in offered and 'dfu' in offered, offered\n"
            "heavy = ('asyncio', 'moonraker_octoflash.flash.dfu', 'moonraker_octoflash.flash.katapult',\n"
            "         'moonraker_octoflash.flash.checks', 'moonraker_octoflash.flash.plan',\n"
            "         'moonraker_octoflash.discovery.snapshot', 'moonraker_octoflash.tools')\n"
            "print(' '.join(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
