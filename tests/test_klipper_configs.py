"""Presets read from the compile instructions in Klipper's config/*.cfg headers.

tests/fixtures/klipper_headers.json holds headers transcribed from upstream
Klipper with the facts read from each by hand (or why none can be read with
certainty).  With OCTOFLASH_KLIPPER_PATH set, the whole config folder of
that checkout is read too.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from moonraker_octoflash import cli
from moonraker_octoflash.kconfig import parse_config
from moonraker_octoflash.klipper_configs import (
    Uncertain,
    presets_from_header,
    read_checkout,
    read_header,
)
from moonraker_octoflash.presets import list_presets
from moonraker_octoflash.profiles import profile_from_json

FIXTURE = Path(__file__).parent / "fixtures" / "klipper_headers.json"
ROWS: List[Dict[str, Any]] = json.loads(FIXTURE.read_text())["headers"]
KLIPPER = os.environ.get("OCTOFLASH_KLIPPER_PATH", "")
# Files a curated preset covers: never offered again, whatever their header says.
COVERED = {name for p in list_presets() for name in p.klipper_configs}


def header(row: Dict[str, Any]) -> str:
    return "\n".join(row["header"]) + "\n\n[mcu]\nserial: /dev/null\n"


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_header_reads_as_transcribed(row):
    want = row["expected"]
    if "skipped" in want:
        with pytest.raises(Uncertain) as info:
            read_header(row["file"], header(row))
        assert want["skipped"] in str(info.value)
        return
    facts = read_header(row["file"], header(row))
    assert (facts.board, facts.mcu, facts.bootloader, facts.crystal, list(facts.interfaces)) == \
        (want["board"], want["mcu"], want["bootloader"], want["crystal"], want["interfaces"])


def _row(name: str) -> Dict[str, Any]:
    return next(r for r in ROWS if r["file"] == name)


def test_one_preset_per_interface_marked_with_its_file():
    row = _row("generic-bigtreetech-manta-m8p-v1.1.cfg")
    usb, can = presets_from_header(read_header(row["file"], header(row)))
    assert (usb.id, can.id) == ("klipper-generic-bigtreetech-manta-m8p-v1-1-usb",
                                "klipper-generic-bigtreetech-manta-m8p-v1-1-can")
    assert usb.klipper_configs == can.klipper_configs == ("generic-bigtreetech-manta-m8p-v1.1.cfg",)
    assert usb.origin == "klipper-config" and usb.mcu == "stm32g0b1xx"
    assert usb.app_address == can.app_address == 0x08002000
    assert can.kconfig == {
        "CONFIG_LOW_LEVEL_OPTIONS": "y", "CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32G0B1": "y",
        "CONFIG_STM32_FLASH_START_2000": "y", "CONFIG_STM32_CLOCK_REF_8M": "y",
        "CONFIG_STM32_MMENU_CANBUS_PD12_PD13": "y", "CONFIG_CANBUS_FREQUENCY": "1000000"}
    assert can.unconfirmed == ("CONFIG_CANBUS_FREQUENCY",)
    assert usb.kconfig["CONFIG_STM32_USB_PA11_PA12"] == "y" and not usb.unconfirmed
    assert [m["method"] for m in usb.flash_methods] == ["katapult", "dfu"]
    assert "config/generic-bigtreetech-manta-m8p-v1.1.cfg" in usb.description


def test_crystal_not_in_the_header_is_klippers_default_and_unconfirmed():
    row = _row("generic-bigtreetech-skr-mini-e3-v3.0.cfg")
    [preset] = presets_from_header(read_header(row["file"], header(row)))
    assert preset.id == "klipper-generic-bigtreetech-skr-mini-e3-v3-0"
    assert preset.kconfig["CONFIG_STM32_CLOCK_REF_8M"] == "y"
    assert preset.unconfirmed == ("CONFIG_STM32_CLOCK_REF_8M",)
    assert "not in the header" in preset.sources["CONFIG_STM32_CLOCK_REF_8M"]


def _checkout(tmp_path: Path) -> Path:
    config = tmp_path / "klipper" / "config"
    config.mkdir(parents=True)
    for row in ROWS:
        (config / row["file"]).write_text(header(row))
    # A board the curated EBB presets cover: given way to, even with a readable header.
    row = _row("generic-bigtreetech-manta-m8p-v1.1.cfg")
    (config / "sample-bigtreetech-ebb-canbus-v1.1.cfg").write_text(header(row))
    return tmp_path / "klipper"


def test_checkout_counts_files_read_skipped_and_covered(tmp_path):
    result = read_checkout(str(_checkout(tmp_path)))
    offered = [r for r in ROWS if "skipped" not in r["expected"]]
    assert result.files_read == len(ROWS) + 1
    assert set(result.covered) == {"sample-bigtreetech-ebb-canbus-v1.1.cfg"} | \
        {r["file"] for r in ROWS if r["file"] in COVERED}
    assert set(result.skipped) == {r["file"] for r in ROWS
                                   if "skipped" in r["expected"] and r["file"] not in COVERED}
    assert len(result.presets) == sum(len(r["expected"]["interfaces"]) for r in offered)
    assert {p.klipper_configs[0] for p in result.presets} == {r["file"] for r in offered}


def test_cli_lists_them_with_their_files_and_the_counts(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--config", str(tmp_path / "none.conf"), "presets", "--from-klipper",
                     "--klipper-path", str(_checkout(tmp_path))], out=out, err=err)
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert "klipper-generic-fysetc-cheetah-v1-2" in text
    assert "config/generic-fysetc-cheetah-v1.2.cfg" in text
    skipped = len([r for r in ROWS if "skipped" in r["expected"] and r["file"] not in COVERED])
    covered = 1 + len([r for r in ROWS if r["file"] in COVERED])
    assert f"{len(ROWS) + 1} files read" in text and f"{skipped} files skipped" in text
    assert f"{covered} covered by the built-in presets" in text
    out = io.StringIO()
    cli.main(["--config", str(tmp_path / "none.conf"), "presets", "--from-klipper", "--json",
              "--klipper-path", str(tmp_path / "klipper")], out=out, err=err)
    data = json.loads(out.getvalue())
    assert data["files_skipped"] == skipped
    # Each preset carries the profile that builds it: its MCU and its own Kconfig lines.
    cheetah = next(p for p in data["presets"] if p["id"] == "klipper-generic-fysetc-cheetah-v1-2")
    profile = profile_from_json(dict(cheetah["profile"], name="cheetah"))
    assert profile.kconfig() == cheetah["kconfig"] and profile.mcu == cheetah["mcu"]
    assert "atmega2560" in data["skipped"]["generic-einsy-rambo.cfg"]


def test_cli_without_a_checkout_says_where_it_looked(tmp_path):
    err = io.StringIO()
    code = cli.main(["--config", str(tmp_path / "none.conf"), "presets", "--from-klipper",
                     "--klipper-path", str(tmp_path / "nowhere")], out=io.StringIO(), err=err)
    assert code == 2 and "No Klipper config folder" in err.getvalue()


async def test_a_header_preset_builds_as_an_mcu_profile(builder):
    row = _row("generic-bigtreetech-skr-mini-e3-v3.0.cfg")
    [preset] = presets_from_header(read_header(row["file"], header(row)))
    own = {k: v for k, v in preset.kconfig.items()
           if not k.startswith("CONFIG_MACH_") and k != "CONFIG_LOW_LEVEL_OPTIONS"}
    profile = profile_from_json({"name": "skr-mini", "mcu": "stm32g0b1", "kconfig": own})
    result = await builder.build(profile)
    resolved = parse_config(Path(result.artifact.path("config")).read_text())
    assert all(resolved.get(k) == v for k, v in preset.kconfig.items())
    assert result.artifact.app_address == preset.app_address
    assert result.artifact.dict_mcu == "stm32g0b1xx"


@pytest.mark.skipif(not KLIPPER, reason="OCTOFLASH_KLIPPER_PATH is not set")
def test_the_whole_config_folder_of_a_real_checkout():
    folder = Path(KLIPPER) / "config"
    result = read_checkout(KLIPPER)
    assert result.files_read == len(list(folder.glob("*.cfg")))
    offered = {p.klipper_configs[0] for p in result.presets}
    assert result.files_read == len(offered) + len(result.skipped) + len(result.covered)
    ids = [p.id for p in result.presets]
    assert len(ids) == len(set(ids)) and ids
    for row in ROWS:                         # the transcriptions still match the files
        path = folder / row["file"]
        if not path.exists() or row["file"] in COVERED:
            continue
        if "skipped" in row["expected"]:
            assert row["expected"]["skipped"] in result.skipped.get(row["file"], ""), row["file"]
        else:
            assert any(p.klipper_configs == (row["file"],) for p in result.presets), row["file"]
    print(f"\n{result.files_read} files, {len(result.presets)} presets, "
          f"{len(result.skipped)} skipped, {len(result.covered)} covered")
