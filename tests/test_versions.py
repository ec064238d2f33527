"""Klipper firmware versions, and how Mainsail/Fluidd will order what we publish."""
from __future__ import annotations

import random

import pytest

from moonraker_octoflash.versions import (
    REASON_COMMIT, REASON_LOCAL, REASON_PROFILE, compare_versions, parse_version,
    publish_string, sort_versions, update_state)
from semver_oracle import clients_offer_update, semver_compare, semver_valid

# Klipper versions oldest first, as Mainsail/Fluidd must order the entries'
# published strings: by tag, then by commit count (numerically).
ORDERED = [
    "v0.12.0",
    "v0.12.0-1-g0d2b8f1",
    "v0.12.0-9-g51a0b6c",
    "v0.12.0-10-g3fd8e8e",
    "v0.12.0-99-g7a1f3e2",
    "v0.12.0-100-gc0ffee1",
    "v0.12.0-1004-g1234abc",
    "v0.13.0-0-g9a9a9a9",
    "v0.13.0-5-g5e5e5e5",
    "v0.13.0-730-g84104bbbd",
    "v0.13.0-1004-g0a1b2c3d",
    "v0.13.1-2-gdeadbee",
    "v1.0-3-gfeedbee",          # a two-number tag counts as v1.0.0
]

# Results of the npm package semver 7.8.6 (node v20), {loose: true}, the
# rule Mainsail and Fluidd call; produced once with `npm install semver`.
NPM_VALID = [
    ("v0.13.0-730-g84104bbbd", "0.13.0-730-g84104bbbd"),
    ("v0.13.0-1004-g84104bbbd", "0.13.0-1004-g84104bbbd"),
    ("v0.13.0", "0.13.0"),
    ("v0.13.0-0", "0.13.0-0"),
    ("v0.13.0-730+g84104bbbd", "0.13.0-730"),
    ("v0.13.0-1004+g0a1b2c3d", "0.13.0-1004"),
    ("v0.13.0-730.profile-changed+g84104bbbd", "0.13.0-730.profile-changed"),
    ("v0.13.0-730.local-changes+g84104bbbd.dirty", "0.13.0-730.local-changes"),
    ("v0.13.0-730.other-commit+g0a1b2c3d", "0.13.0-730.other-commit"),
    ("v0.14.0-2+gdeadbee", "0.14.0-2"),
    ("?", None),
    ("v0.13", None),
    ("84104bbbd", None),
    ("v0.13.0-730-g84104bbbd-dirty-20240101_120000-host", None),
    ("1.2.3alpha", "1.2.3-alpha"),
    ("=v1.2.3", "1.2.3"),
    ("1.2.3-a.10", "1.2.3-a.10"),
    ("1.2.3-a.9", "1.2.3-a.9"),
    ("1.2.3-99999999999999999999", "1.2.3-99999999999999999999"),
]
NPM_COMPARE = [
    # Klipper's raw strings: the count is part of a text identifier...
    ("v0.13.0-730-g84104bbbd", "v0.13.0-1004-g84104bbbd", 1),
    # ...and a clean tag is a release, above every later commit.
    ("v0.13.0", "v0.13.0-730-g84104bbbd", 1),
    # The published strings order correctly.
    ("v0.13.0-1004+g0a1b2c3d", "v0.13.0-730+g84104bbbd", 1),
    ("v0.13.0-730+g84104bbbd", "v0.13.0-730+g0a1b2c3d", 0),
    ("v0.13.0-730.profile-changed+g84104bbbd", "v0.13.0-730+g84104bbbd", 1),
    ("v0.13.0-730.other-commit+g0a1b2c3d", "v0.13.0-730+g84104bbbd", 1),
    ("v0.13.0-730.local-changes+g84104bbbd.dirty", "v0.13.0-730+g84104bbbd.dirty", 1),
    ("v0.14.0-2+gdeadbee", "v0.13.0-1004+g0a1b2c3d", 1),
    ("v0.13.0-0", "v0.13.0", -1),
    ("v0.13.0-1", "v0.13.0-0", 1),
    ("1.2.3-a.10", "1.2.3-a.9", 1),
    ("1.2.3alpha", "1.2.3", -1),
    ("1.2.3-99999999999999999999", "1.2.3-a", -1),
]


@pytest.mark.parametrize("text,expected", NPM_VALID)
def test_semver_valid_matches_npm(text, expected):
    assert semver_valid(text) == expected


@pytest.mark.parametrize("a,b,expected", NPM_COMPARE)
def test_semver_compare_matches_npm(a, b, expected):
    assert semver_compare(a, b) == expected
    assert semver_compare(b, a) == -expected


def test_raw_klipper_strings_would_be_misordered_by_the_clients():
    # Why the entries do not publish Klipper's strings as they are.
    assert clients_offer_update("v0.13.0-1004-g0a1b2c3d", "v0.13.0-730-g84104bbbd")
    assert not clients_offer_update("v0.13.0-730-g84104bbbd", "v0.13.0-1004-g0a1b2c3d")
    assert not clients_offer_update("v0.13.0", "v0.13.0-730-g84104bbbd")


def test_versions_sort_by_tag_then_commit_count():
    shuffled = list(ORDERED)
    random.Random(7).shuffle(shuffled)
    assert sort_versions(shuffled) == ORDERED


def test_clients_order_published_strings_like_octoflash():
    published = [publish_string(parse_version(v)) for v in ORDERED]
    for i, older in enumerate(published):
        for j, newer in enumerate(published):
            expected = j > i
            assert clients_offer_update(older, newer) is expected, (older, newer)


@pytest.mark.parametrize("text,tag,commits,commit,dirty", [
    ("v0.13.0-730-g84104bbbd", (0, 13, 0), 730, "84104bbbd", False),
    ("v0.13.0-730-g84104bbbd-dirty", (0, 13, 0), 730, "84104bbbd", True),
    ("v0.13.0-730-g84104bbbd-dirty-20250102_030405-printer", (0, 13, 0), 730, "84104bbbd", True),
    ("v0.13.0-730-g84104bbbd-20250102_030405-printer", (0, 13, 0), 730, "84104bbbd", False),
    ("v0.13.0", (0, 13, 0), 0, None, False),
    ("v0.13.0-0-gabcdef1", (0, 13, 0), 0, "abcdef1", False),
    ("v0.0.1-110-gb0bf421", (0, 0, 1), 110, "b0bf421", False),   # Katapult
    ("v1.0-3-gfeedbee", (1, 0, 0), 3, "feedbee", False),
])
def test_parse_orderable(text, tag, commits, commit, dirty):
    v = parse_version(text)
    assert v.orderable
    assert (v.tag, v.commits, v.commit, v.dirty) == (tag, commits, commit, dirty)


@pytest.mark.parametrize("text", [
    None, "", "?", "?-20250102_030405-printer", "84104bbbd", "84104bbbd-dirty",
    "v0.13.0-rc1", "v0.13.0.1-4-gabcdef1", "release-7-gabcdef1", "hello world",
])
def test_unorderable_versions_publish_as_unknown(text):
    v = parse_version(text)
    assert not v.orderable
    assert publish_string(v) == "?"
    state = update_state(v, parse_version("v0.13.0-730-g84104bbbd"))
    assert state.state == "unknown" and state.version == "?"
    assert not clients_offer_update(state.version, state.remote_version)


def test_hash_only_version_is_known_but_not_orderable():
    v = parse_version("84104bbbd-dirty")
    assert v.known and not v.orderable and v.commit == "84104bbbd" and v.dirty
    assert compare_versions(v, parse_version("v0.13.0")) is None


def test_short_form_drops_build_note():
    v = parse_version("v0.13.0-730-g84104bbbd-dirty-20250102_030405-printer")
    assert v.short() == "v0.13.0-730-g84104bbbd-dirty"


@pytest.mark.parametrize("running,pending,changed,state,reason", [
    ("v0.13.0-730-g84104bbbd", "v0.13.0-1004-g0a1b2c3d", False, "behind", ""),
    ("v0.12.0-1004-g1234abc", "v0.13.0-5-g5e5e5e5", False, "behind", ""),
    ("v0.13.0", "v0.13.0-730-g84104bbbd", False, "behind", ""),
    ("v0.13.0-1004-g0a1b2c3d", "v0.13.0-730-g84104bbbd", False, "ahead", ""),
    ("v0.13.0-730-g84104bbbd", "v0.13.0-730-g84104bbbd", False, "up_to_date", ""),
    ("v0.13.0-730-g84104bb", "v0.13.0-730-g84104bbbd", False, "up_to_date", ""),
    ("v0.13.0", "v0.13.0-0-gabcdef1", False, "up_to_date", ""),
    ("v0.13.0-730-g84104bbbd", "v0.13.0-730-g84104bbbd", True, "differs", REASON_PROFILE),
    ("v0.13.0-730-g84104bbbd", "v0.13.0-730-g0a1b2c3d", False, "differs", REASON_COMMIT),
    ("v0.13.0-730-g84104bbbd-dirty-20250102_030405-printer", "v0.13.0-730-g84104bbbd",
     False, "differs", REASON_LOCAL),
    ("v0.13.0-730-g84104bbbd", "v0.13.0-730-g84104bbbd-dirty", False, "differs", REASON_LOCAL),
    ("v0.13.0-730-g84104bbbd", "?", False, "unknown", ""),
])
def test_update_state_and_what_the_clients_conclude(running, pending, changed, state, reason):
    result = update_state(parse_version(running), parse_version(pending), changed)
    assert (result.state, result.reason) == (state, reason)
    # The clients must offer exactly the updates octoflash means.
    assert clients_offer_update(result.version, result.remote_version) is result.update_available
    if state == "differs":
        assert result.remote_version.startswith(f"{result.version.split('+')[0]}.{reason}")


@pytest.mark.parametrize("same_build,state,reason", [
    (True, "up_to_date", ""),              # octoflash wrote exactly this checkout state
    (None, "differs", REASON_LOCAL),       # cannot tell: uncommitted changes may differ
    (False, "differs", REASON_LOCAL),
])
def test_dirty_builds_are_the_same_only_when_known(same_build, state, reason):
    dirty = parse_version("v0.13.0-730-g84104bbbd-dirty")
    result = update_state(dirty, dirty, same_build=same_build)
    assert (result.state, result.reason) == (state, reason)
    assert clients_offer_update(result.version, result.remote_version) is result.update_available


def test_published_strings_read_like_klipper_versions():
    state = update_state(parse_version("v0.13.0-730-g84104bbbd"),
                         parse_version("v0.13.0-1004-g0a1b2c3d-dirty"))
    assert state.version == "v0.13.0-730+g84104bbbd"
    assert state.remote_version == "v0.13.0-1004+g0a1b2c3d.dirty"
