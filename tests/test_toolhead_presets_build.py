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
