"""The demo as Mainsail and Fluidd show it: a clean update panel and bell.

What the clients read (see docs/update-manager.md, "What was checked in the
clients"): an entry that is not valid disables Fluidd's "Update all" and
makes Mainsail's start with an error; Moonraker's warnings appear in both
clients' notifications; links built from an entry's hashes or
``changelog_url`` point at GitHub.
"""
from __future__ import annotations

import pytest


pytestmark = pytest.mark.moonraker


def _entries(demo):
    """The update panel's entries, once Moonraker can list them.

    While Moonraker re-reads a git entry (after Klipper tells it its path)
    the status request can fail inside Moonraker (500, the repository's
    state half read); that is a state to wait out, not an answer.
    """
    def listed():
        status, payload = demo.request("GET", "/machine/update/status")
        return payload["result"]["version_info"] if status == 200 else None
    return demo.wait_for(listed, 60, "Moonraker's update status")


def test_the_klipper_entry_is_valid_with_a_local_tracking_remote(demo):
    # Moonraker re-reads the Klipper entry once Klipper tells it its path
    def klipper():
        entry = _entries(demo).get("klipper")
        return entry if entry and entry.get("is_valid") else None
    try:
        entry = demo.wait_for(klipper, 60, "the Klipper entry valid")
    except AssertionError:
        raise AssertionError(_entries(demo).get("klipper")) from None
    assert not entry["is_dirty"] and not entry.get("corrupt")
    assert entry["warnings"] == [], entry["warnings"]


def test_no_path_warnings(demo):
    warnings = demo.result("GET", "/server/info")["warnings"]
    assert not [w for w in warnings if "config_examples" in w or "does not exist" in w], warnings


def _firmware_entries(demo):
    """The octoflash entries once the two boards Klipper reaches are read."""
    def read():
        entries = {n: e for n, e in _entries(demo).items() if n.startswith("octoflash_")}
        known = [entries.get(f"octoflash_{b}", {}).get("octoflash", {}).get("state", "unknown")
                 for b in ("octopus", "toolhead")]
        return entries if "unknown" not in known else None
    return demo.wait_for(read, 30, "the firmware entries read")


def test_an_entry_per_klipper_profile_and_the_bootsel_board_is_unknown(demo):
    entries = _firmware_entries(demo)
    # nitehawk-katapult builds a bootloader: no update entry
    assert set(entries) == {"octoflash_octopus", "octoflash_toolhead", "octoflash_nitehawk"}
    for board in ("octopus", "toolhead"):
        entry = entries[f"octoflash_{board}"]
        assert entry["octoflash"]["state"] == "behind", entry
        assert entry["version"].startswith("v0.12.0-200") and entry["is_valid"]
        assert entry["warnings"] == [], entry["warnings"]
    # the Nitehawk waits in BOOTSEL with nothing on it: Klipper does not reach it
    nitehawk = entries["octoflash_nitehawk"]
    assert nitehawk["is_valid"] and nitehawk["octoflash"]["state"] == "unknown"
    assert nitehawk["octoflash"]["auto_update"] is False
    assert nitehawk["warnings"] == ["The firmware on this board is unknown: Klipper does not "
                                    "reach 'mcu nitehawk' and octoflash has not written this "
                                    "board yet."]


def test_no_links_to_commits_github_does_not_have(demo):
    entries = _firmware_entries(demo)
    for entry in entries.values():
        # both clients build compare links from the hashes on "dev"; otherwise
        # they open changelog_url: the release the versions count from
        assert entry["channel"] != "dev"
        tag = entry["remote_version"].split("-")[0]
        assert entry["changelog_url"] == f"https://github.com/Klipper3d/klipper/releases/tag/{tag}"
    def announcements():
        notes = [e for e in demo.result("GET", "/server/announcements/list")["entries"]
                 if e["feed"].startswith("octoflash/")]
        return notes if len(notes) >= 2 else None
    notes = demo.wait_for(announcements, 30, "the announcements")
    assert all(not n["url"] for n in notes), notes
    # one announcement per board that is out of date; none for the one in BOOTSEL
    assert sorted(n["feed"] for n in notes) == ["octoflash/octopus", "octoflash/toolhead"]
