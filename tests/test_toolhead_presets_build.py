"""The curated toolhead presets resolve and build in the simulated trees.

The expected symbols come from tests/toolhead_expectations.py (written by
hand, not from the preset JSON), so a preset that drifts from its sources
fails here; the simulated trees carry Klipper's and Katapult's symbols for
the STM32G0B1 and the RP2040.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from test_presets_build import differences
from toolhead_expectations import (
    TOOLHEAD_IDS,
    expected_app_address,
    expected_files,
    expected_toolhead,
    vector_table_problem,
)

from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.presets import get_preset, load_presets


def test_every_toolhead_preset_is_listed_and_every_listed_one_exists():
    presets = load_presets()
    assert set(TOOLHEAD_IDS) <= set(presets)
    curated_toolheads = {i for i in presets if not i.startswith("btt-octopus-")}
    assert curated_toolheads == set(TOOLHEAD_IDS)


@pytest.mark.parametrize("preset_id", TOOLHEAD_IDS)
def test_every_value_says_where_it_comes_from(preset_id):
    preset = get_preset(preset_id)
    assert [k for k in preset.kconfig if not preset.sources.get(k)] == []


@pytest.mark.parametrize("preset_id", TOOLHEAD_IDS)
async def test_toolhead_preset_resolves_and_builds(preset_id, builder, make_profile):
    profile = make_profile(preset_id, name=preset_id[:60])
    result = await builder.build(profile)
    artifact = result.artifact
    resolved = parse_config(Path(artifact.path("config")).read_text())
    assert differences(expected_toolhead(preset_id), resolved) == {}
    assert [f.name for f in artifact.files] == expected_files(preset_id)
    assert artifact.app_address == expected_app_address(preset_id)
    main = Path(artifact.path(artifact.main_file))
    assert vector_table_problem(main, artifact.app_address, artifact.flash_size) is None
    if profile.target == "klipper":
        assert artifact.dict_mcu == profile.mcu


@pytest.mark.parametrize("preset_id, overrides, symbol, reason", [
    # A 32 KiB bootloader on a G0B1 (it offers 8 KiB or none).
    ("btt-ebb-klipper-1m",
     {"CONFIG_STM32_FLASH_START_2000": "n", "CONFIG_STM32_FLASH_START_8000": "y"},
     "CONFIG_STM32_FLASH_START_8000", "not offered for this MCU"),
    # The RP2040's flash chip choice exists only for an image that boots from the ROM.
    ("btt-ebb-sb2209-rp2040-klipper-1m", {"CONFIG_RP2040_FLASH_GENERIC_03": "y"},
     "CONFIG_RP2040_FLASH_GENERIC_03", "CONFIG_RP2040_HAVE_STAGE2=y"),
])
async def test_choices_the_chip_does_not_offer_are_refused(preset_id, overrides, symbol, reason,
                                                           builder, make_profile):
    profile = make_profile(preset_id, name="refused", kconfig=overrides)
    with pytest.raises(ValidationError) as info:
        await builder.build(profile)
    text = str(info.value)
    assert f"{symbol}: asked for y, Kconfig gave not set" in text and reason in text
    assert builder.store.list(profile.name) == []
