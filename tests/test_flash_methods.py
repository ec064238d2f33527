"""The flash-method registry: what lists methods takes them from it, and the docs say so."""
from __future__ import annotations

import io
import os
import re

import pytest

from moonraker_octoflash import cli
from moonraker_octoflash.docgen import flash_methods_markdown
from moonraker_octoflash.flash import methods
from moonraker_octoflash.flash.methods import MODULES, all_methods, method_names
from moonraker_octoflash.schemas import load_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS_DIR = os.path.join(ROOT, "moonraker_octoflash", "flash", "methods")


def test_every_method_module_is_registered_and_complete():
    modules = sorted(f[:-3] for f in os.listdir(METHODS_DIR)
                     if f.endswith(".py") and f not in ("__init__.py", "base.py", "common.py"))
    assert modules == sorted(MODULES)
    assert method_names() == ["dfu", "katapult", "rp2040_boot"]
    for m in all_methods():
        assert m.name and m.label and m.tool and m.summary and m.enter, m.name
        assert m.step_names and m.write_kinds <= set(m.step_names), m.name
        assert m.transports and m.usb_ids, m.name


def test_step_kinds_belong_to_one_method_each():
    seen = {}
    for m in all_methods():
        for kind in m.step_names:
            assert kind not in seen, f"{kind} of {m.name} is also {seen[kind]}'s"
            seen[kind] = m.name


def test_the_schemas_accept_exactly_the_registered_methods():
    profile = load_schema("profile")
    preset = load_schema("preset")
    assert profile["properties"]["flash_method"]["enum"] == method_names()
    assert preset["$defs"]["flash_method"]["properties"]["method"]["enum"] == method_names()
    # The files themselves name no method: the list lives in one place.
    for name in ("profile", "preset"):
        path = os.path.join(ROOT, "moonraker_octoflash", "schemas", f"{name}.schema.json")
        text = open(path, encoding="utf-8").read()
        assert '"katapult", "dfu"' not in text and '["dfu", "katapult"]' not in text


def test_the_command_line_offers_every_method(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["flash", "toolhead", "--method", "rp2040_boot"])
    assert args.method == "rp2040_boot"
    with pytest.raises(SystemExit):
        parser.parse_args(["flash", "toolhead", "--method", "uf2"])
    err = capsys.readouterr().err
    assert "choose from 'dfu', 'katapult', 'rp2040_boot'" in err or \
        "choose from dfu, katapult, rp2040_boot" in err


def test_the_component_request_schemas_take_the_registry():
    from moonraker_octoflash.moonraker import api as component
    assert component._flash_args()["properties"]["method"]["enum"] == method_names()
    source = open(component.__file__, encoding="utf-8").read()
    assert '"dfu", "katapult"' not in source


def test_the_docs_table_is_the_registry():
    text = open(os.path.join(ROOT, "docs", "flashing.md"), encoding="utf-8").read()
    found = re.search(r"<!-- flash-methods:start -->\n(.*?)<!-- flash-methods:end -->", text,
                      re.S)
    assert found, "docs/flashing.md lost its flash-methods markers"
    assert found.group(1) == flash_methods_markdown(), \
        "docs/flashing.md's methods table is stale: paste docgen.flash_methods_markdown()"


def test_the_page_gets_its_labels_from_the_status():
    described = {m["name"]: m for m in methods.to_json()}
    assert described["rp2040_boot"]["steps"]["write_rp2040"] == "Write with rp2040_flash"
    assert described["rp2040_boot"]["device_labels"]["rp2040_boot"] == \
        "RP2040 boot ROM in BOOTSEL mode"
    web = os.path.join(ROOT, "moonraker_octoflash", "web")
    page = "".join(open(os.path.join(web, name), encoding="utf-8").read()
                   for name in sorted(os.listdir(web)) if name.endswith(".js"))
    assert "state.status.flash_methods" in page        # the device list and the editor
    from moonraker_octoflash.moonraker import api as component
    source = open(component.__file__, encoding="utf-8").read()
    assert '"flash_methods": flash_methods_json()' in source


def test_presets_command_lists_the_offered_boot_rom(tmp_path):
    out = io.StringIO()
    assert cli.main(["presets"], out=out) == 0
    line = next(line for line in out.getvalue().splitlines()
                if line.startswith("ldo-nitehawk-sb-katapult"))
    assert "rp2040_boot" in line


def test_flash_bases_come_from_the_mcu_facts():
    from moonraker_octoflash.mcus import flash_base
    assert flash_base("stm32f446xx") == 0x08000000
    assert flash_base("rp2040") == 0x10000000
    assert flash_base("avr") is None
    for path in ("checks.py", "plan.py", "executor.py"):
        source = open(os.path.join(ROOT, "moonraker_octoflash", "flash", path),
                      encoding="utf-8").read()
        assert "0x08000000" not in source, path
        assert "FLASH_BASE" not in source, path


def test_only_the_methods_declared_as_offering_offer_themselves():
    """Making a preset asks only ``OFFERING``'s modules (the others stay unimported):
    no other method may offer itself to any chip."""
    import dataclasses

    from moonraker_octoflash.mcus import MCUS
    from moonraker_octoflash.presets import list_presets
    checked = 0
    for preset in list_presets():
        for facts in MCUS.values():
            variant = dataclasses.replace(preset, mcu=facts.mcu, flash_methods=())
            declared = set(methods.OFFERING.get(facts.arch, ()))
            for m in all_methods():
                module = type(m).__module__.rsplit(".", 1)[1]
                if module not in declared:
                    assert m.offer(variant) is None, (m.name, facts.mcu, preset.id)
                else:
                    checked += 1
    assert checked     # the declared ones were met, and offer what they offer
    rp = [p for p in list_presets() if p.mcu.startswith("rp2040")]
    assert rp and all(p.flash_method("rp2040_boot") for p in rp
                      if p.target == "katapult"), "the boot ROM is still offered"
