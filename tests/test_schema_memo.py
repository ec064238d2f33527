"""A document found valid is remembered: the next check of it needs no jsonschema."""
from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, sys
from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.schemas import check
try:
    check("profile", json.loads(sys.argv[1]), "profile 'x'")
    print(json.dumps({"ok": True, "jsonschema": "jsonschema" in sys.modules}))
except ValidationError as exc:
    print(json.dumps({"ok": False, "error": str(exc), "jsonschema": "jsonschema" in sys.modules}))
"""


def run_check(doc, cache_home, **env):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(doc)], capture_output=True,
                          text=True, timeout=60,
                          env=dict(os.environ, XDG_CACHE_HOME=str(cache_home),
                                   **{"OCTOFLASH_SCHEMA_CACHE": "1", **env}))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_valid_profile_is_checked_once(tmp_path):
    doc = {"name": "octopus", "preset": "btt-octopus-f446-canbridge",
           "kconfig": {"CONFIG_CANBUS_FREQUENCY": "500000"}}
    assert run_check(doc, tmp_path) == {"ok": True, "jsonschema": True}
    assert run_check(doc, tmp_path) == {"ok": True, "jsonschema": False}
    # another document is checked in full
    other = dict(doc, kconfig={"CONFIG_CANBUS_FREQUENCY": "250000"})
    assert run_check(other, tmp_path) == {"ok": True, "jsonschema": True}
    # the memory can be turned off
    assert run_check(doc, tmp_path, OCTOFLASH_SCHEMA_CACHE="0")["jsonschema"] is True
    memo = (tmp_path / "moonraker-octoflash" / "checked").read_text().split()
    assert len(memo) == 2 and all(len(d) == 64 for d in memo)


def test_an_invalid_profile_is_refused_every_time(tmp_path):
    doc = {"name": "octopus", "preset": "btt-octopus-f446-canbridge",
           "kconfig": {"CONFIG_CANBUS_FREQUENCY": "$(reboot)"}}
    for _ in range(2):
        result = run_check(doc, tmp_path)
        assert result["ok"] is False and "CONFIG_CANBUS_FREQUENCY" in result["error"]
    assert not (tmp_path / "moonraker-octoflash" / "checked").exists()


def test_a_damaged_memory_file_is_ignored(tmp_path):
    memo = tmp_path / "moonraker-octoflash" / "checked"
    memo.parent.mkdir()
    memo.write_bytes(b"\xff\xfe not hex\n")
    doc = {"name": "octopus", "preset": "btt-octopus-f446-canbridge"}
    assert run_check(doc, tmp_path) == {"ok": True, "jsonschema": True}
    assert run_check(doc, tmp_path) == {"ok": True, "jsonschema": False}
