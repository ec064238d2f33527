"""The curated presets against REAL Klipper and Katapult checkouts (arm-none-eabi-gcc).

Runs only when OCTOFLASH_KLIPPER_PATH and/or OCTOFLASH_KATAPULT_PATH name
checkouts and the cross compiler is installed, e.g.:

    git clone https://github.com/Klipper3d/klipper /tmp/klipper
    git clone https://github.com/Arksine/katapult /tmp/katapult
    OCTOFLASH_KLIPPER_PATH=/tmp/klipper OCTOFLASH_KATAPULT_PATH=/tmp/katapult \\
        python3 -m pytest tests/test_realfw.py -v -s

The resolved configuration is compared with the same hand-written table
as the simulated builds (test_presets_build.py), and each klipper.bin's
data dictionary must name the preset's MCU.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from test_presets_build import PRESET_IDS, check_artifact, differences, expected_for
from toolhead_expectations import (
    TOOLHEAD_IDS,
    expected_app_address,
    expected_files,
    expected_toolhead,
    vector_table_problem,
)

from moonraker_octoflash.build import CROSS_COMPILER, Builder
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.tools import find_program

pytestmark = pytest.mark.realfw

KLIPPER = os.environ.get("OCTOFLASH_KLIPPER_PATH", "")
KATAPULT = os.environ.get("OCTOFLASH_KATAPULT_PATH", "")


def _is_katapult(preset_id: str) -> bool:
    return preset_id.endswith("-katapult") or "-katapult-" in preset_id


def _checkout_for(preset_id: str) -> str:
    return KATAPULT if _is_katapult(preset_id) else KLIPPER


def _skip_reason(preset_id: str) -> str:
    if find_program(CROSS_COMPILER) is None:
        return f"{CROSS_COMPILER} is not installed"
    if not _checkout_for(preset_id):
        var = "OCTOFLASH_KATAPULT_PATH" if _is_katapult(preset_id) else "OCTOFLASH_KLIPPER_PATH"
        return f"{var} is not set"
    return ""


def _state(checkout: str) -> tuple:
    """The checkout's own .config and out/ (which the builds must not touch)."""
    root = Path(checkout)
    config = root / ".config"
    out = root / "out"
    return (hashlib.sha256(config.read_bytes()).hexdigest() if config.exists() else None,
            sorted(str(p) for p in out.rglob("*")) if out.exists() else None)


@pytest.fixture(scope="module")
def real_builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    root = tmp_path_factory.mktemp("realfw-builds")
    # OCTOFLASH_BUILD_JOBS / OCTOFLASH_BUILD_NICE keep the builds gentle on a shared machine.
    return Builder(str(root), klipper_path=KLIPPER or None, katapult_path=KATAPULT or None,
                   keep=2, jobs=int(os.environ.get("OCTOFLASH_BUILD_JOBS", "0")) or None,
                   nice=int(os.environ.get("OCTOFLASH_BUILD_NICE", "10")))


@pytest.mark.parametrize("preset_id", PRESET_IDS)
async def test_real_firmware_builds_as_the_guide_says(preset_id, real_builder, make_profile):
    reason = _skip_reason(preset_id)
    if reason:
        pytest.skip(reason)
    before = _state(_checkout_for(preset_id))
    started = time.monotonic()
    result = await real_builder.build(make_profile(preset_id))
    seconds = time.monotonic() - started
    resolved = parse_config(Path(result.artifact.path("config")).read_text())
    assert differences(expected_for(preset_id), resolved) == {}
    check_artifact(preset_id, result.artifact, exact_version=False)
    assert _state(_checkout_for(preset_id)) == before
    sizes = ", ".join(f"{f.name} {f.size} bytes" for f in result.artifact.files)
    print(f"\n{preset_id}: {sizes}, {result.artifact.source_version}, {seconds:.1f} s")


@pytest.mark.parametrize("preset_id", TOOLHEAD_IDS)
async def test_real_toolhead_firmware_builds_as_its_sources_say(preset_id, real_builder,
                                                                make_profile):
    reason = _skip_reason(preset_id)
    if reason:
        pytest.skip(reason)
    before = _state(_checkout_for(preset_id))
    started = time.monotonic()
    result = await real_builder.build(make_profile(preset_id, name=preset_id[:60]))
    seconds = time.monotonic() - started
    artifact = result.artifact
    resolved = parse_config(Path(artifact.path("config")).read_text())
    assert differences(expected_toolhead(preset_id), resolved) == {}
    assert [f.name for f in artifact.files] == expected_files(preset_id)
    assert artifact.app_address == expected_app_address(preset_id)
    main = Path(artifact.path(artifact.main_file))
    assert vector_table_problem(main, artifact.app_address, artifact.flash_size) is None
    if artifact.target == "klipper":
        assert artifact.dict_mcu == artifact.mcu
    assert _state(_checkout_for(preset_id)) == before
    sizes = ", ".join(f"{f.name} {f.size} bytes" for f in artifact.files)
    print(f"\n{preset_id}: {sizes}, {artifact.source_version}, {seconds:.1f} s")


async def test_real_rebuild_without_changes_is_skipped(real_builder, make_profile):
    preset_id = "btt-octopus-f446-canbridge"
    reason = _skip_reason(preset_id)
    if reason:
        pytest.skip(reason)
    first = await real_builder.build(make_profile(preset_id))
    again = await real_builder.build(make_profile(preset_id))
    assert again.skipped and again.artifact.id == first.artifact.id


@pytest.mark.parametrize("preset_id, overrides, symbol", [
    ("btt-octopus-h723-canbridge",
     {"CONFIG_STM32_FLASH_START_20000": "n", "CONFIG_STM32_FLASH_START_10000": "y"},
     "CONFIG_STM32_FLASH_START_10000"),
    ("btt-octopus-f446-canbridge",
     {"CONFIG_STM32_CLOCK_REF_12M": "n", "CONFIG_STM32_CLOCK_REF_12MHZ": "y"},
     "CONFIG_STM32_CLOCK_REF_12MHZ"),
    ("btt-octopus-h723-katapult",
     {"CONFIG_STM32_APP_START_20000": "n", "CONFIG_STM32_APP_START_8000": "y"},
     "CONFIG_STM32_APP_START_8000"),
])
async def test_real_kconfig_refuses_impossible_symbols(preset_id, overrides, symbol,
                                                       real_builder, make_profile):
    reason = _skip_reason(preset_id)
    if reason:
        pytest.skip(reason)
    profile = make_profile(preset_id, name="refused", kconfig=overrides)
    with pytest.raises(ValidationError) as info:
        await real_builder.build(profile)
    if symbol.endswith("12MHZ"):
        # No such symbol: refused against the checkout's Kconfig before make runs.
        assert f"{symbol}: no such symbol in this firmware's Kconfig" in str(info.value)
        return
    assert f"{symbol}: asked for y, Kconfig gave not set" in str(info.value)
