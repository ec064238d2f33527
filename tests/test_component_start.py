"""What Moonraker's start pays for the component: the module it loads imports none
of the parts made after the start (builder, flash pipeline, job runner, schemas).

The life cycle itself (requests waiting for the start-up, the history read and
a crash recovered after it) is exercised against a real Moonraker in
test_moonraker_api.py and test_moonraker_crash.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imported by the start-up task or by the handlers that use them, never at load.
LATER = ("moonraker_octoflash.build", "moonraker_octoflash.jobs",
         "moonraker_octoflash.job_records", "moonraker_octoflash.flash.pipeline",
         "moonraker_octoflash.flash.executor", "moonraker_octoflash.flash.methods.base",
         "moonraker_octoflash.flash.methods.dfu", "moonraker_octoflash.kconfig_menu",
         "moonraker_octoflash.kconfig", "moonraker_octoflash.discovery.snapshot",
         "moonraker_octoflash.moonraker.console", "moonraker_octoflash.moonraker.services",
         "moonraker_octoflash.moonraker.updater", "moonraker_octoflash.tools",
         "moonraker_octoflash.discovery.klipper", "jsonschema")


def _modules_after(code: str, **env: str) -> set:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, **env))
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_loading_the_component_imports_none_of_the_later_parts():
    loaded = _modules_after("import moonraker_octoflash.moonraker.component")
    assert "moonraker_octoflash.moonraker.api" in loaded      # the endpoints are registered
    assert sorted(m for m in LATER if m in loaded) == []


def test_reading_stm32_profiles_asks_no_flash_method_module(tmp_path):
    """moonraker.conf's profiles are read at Moonraker's start (their problems are
    warnings then); an STM32 profile's preset imports no flash method once the
    schema check is remembered (the first read checks in full)."""
    code = ("from moonraker_octoflash.profiles import profile_from_options\n"
            "p = profile_from_options('octopus', {'preset': 'btt-octopus-f446-canbridge'})\n"
            "assert 'dfu' in [m['method'] for m in p.preset.flash_methods]\n")
    env = {"OCTOFLASH_SCHEMA_CACHE": "1", "XDG_CACHE_HOME": str(tmp_path)}
    first = _modules_after(code, **env)
    assert "jsonschema" in first                 # checked in full, then remembered
    loaded = _modules_after(code, **env)
    assert "jsonschema" not in loaded
    methods = sorted(m for m in loaded if m.startswith("moonraker_octoflash.flash.methods."))
    assert methods == []
    assert "moonraker_octoflash.profiles" in loaded


def test_the_start_up_task_imports_its_parts_off_the_loop():
    """Every module the start-up task imports while making the parts is imported
    first in a thread (``PART_MODULES``): none is left to load on Moonraker's loop."""
    import ast
    import inspect

    from moonraker_octoflash.moonraker import component
    named = set()
    for function in (component.OctoFlash._make_parts, component.OctoFlash._make_and_load):
        for node in ast.walk(ast.parse(inspect.getsource(function).strip().replace(
                "\n    ", "\n"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = component.__name__.rsplit(".", node.level)[0]
                named.add(f"{base}.{node.module}" if node.module else base)
    assert "moonraker_octoflash.build" in named and "moonraker_octoflash.jobs" in named
    assert sorted(named - set(component.PART_MODULES)) == []
    loaded = _modules_after("from moonraker_octoflash.moonraker import component\n"
                            "from moonraker_octoflash.imports import import_all\n"
                            "import_all(component.PART_MODULES)")
    assert set(component.PART_MODULES) <= loaded
