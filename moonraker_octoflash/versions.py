"""Klipper firmware versions: parse, order, and show them so the clients agree.

Klipper stamps every build with ``git describe --always --tags --long
--dirty`` of its checkout (``scripts/buildcommands.py``): ``v0.13.0-730-
g84104bbbd`` is 730 commits after the tag ``v0.13.0``.  Uncommitted changes
add ``-dirty``; a dirty tree or an unidentified toolchain adds the build
date and host (``-20250101_120000-host``); a checkout without git gives
``?`` or the contents of ``klippy/.version``.  Firmware versions order by
tag, then by commit count.

Mainsail (``UpdatePanel/Entry.vue``) and Fluidd (``store/version/getters.ts``)
decide whether an update-manager entry has an update with the npm ``semver``
package: ``semver.gt(remote_version, version, {loose: true})`` when both are
``semver.valid(..., {loose: true})``.  Klipper's own strings do not survive
that rule: loose parsing reads ``730-g84104bbbd`` as ONE prerelease
identifier, which is not numeric, so it compares as text (``"730-g…" >
"1004-g…"``), and a clean tag ``v0.13.0`` is a release, which semver puts
ABOVE every ``v0.13.0-N`` prerelease although those commits came later.

So the entries publish their own strings (``ui_strings``):

* ``v0.13.0-730+g84104bbbd``: the commit count is the only prerelease
  identifier, a number, so semver compares it numerically; the hash (and
  ``dirty``) go to the build metadata, which semver ignores.
* A clean tag becomes ``v0.13.0-0``, so it stays below ``v0.13.0-1``.
* When both sides have the same tag and count but a build would still give
  different firmware (the profile changed, another commit with the same
  count, uncommitted changes), the remote string gets one more prerelease
  identifier naming why (``v0.13.0-730.profile-changed+g84104bbbd``):
  semver ranks a longer prerelease with the same start higher, so the
  clients offer the update.
* A side that cannot be ordered (``?``, a bare hash, a tag that is not
  one to three numbers) is published as ``?``: both clients then show no
  update button (Mainsail shows "unknown").

The tests carry a re-implementation of npm semver 7.x's ``{loose: true}``
rules (``tests/semver_oracle.py``) to check that the clients order the
published strings as octoflash does.
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Tuple

UNKNOWN = "?"

# --- Klipper's git-describe versions ------------------------------------

_DESCRIBE_RE = re.compile(
    r"^(?P<tag>.+?)-(?P<count>[0-9]+)-g(?P<hash>[0-9a-f]{4,40})"
    r"(?P<dirty>-dirty)?(?P<note>-.*)?$")
_HASH_ONLY_RE = re.compile(r"^(?P<hash>[0-9a-f]{4,40})(?P<dirty>-dirty)?(?P<note>-.*)?$")
_TAG_RE = re.compile(r"^v?(?P<nums>[0-9]+(?:\.[0-9]+){0,2})$")
_CLEAN_TAG_RE = re.compile(r"^(?P<tag>v?[0-9]+(?:\.[0-9]+){0,2})(?P<dirty>-dirty)?(?P<note>-.*)?$")
# A build note Klipper appends to unclean builds: -YYYYMMDD_HHMMSS-hostname
_NOTE_RE = re.compile(r"^-[0-9]{8}_[0-9]{6}-.+$")


@dataclasses.dataclass(frozen=True)
class FirmwareVersion:
    """One firmware version as Klipper reports it."""
    raw: str
    tag_name: str = ""                       # "v0.13.0"
    tag: Optional[Tuple[int, int, int]] = None   # numbers of the tag, padded to three
    commits: int = 0                         # commits after the tag
    commit: Optional[str] = None             # abbreviated hash, without the "g"
    dirty: bool = False                      # built from a checkout with uncommitted changes
    note: str = ""                           # Klipper's "-date-host" suffix of unclean builds

    @property
    def orderable(self) -> bool:
        """True when the version has a numeric tag, so it can be ordered."""
        return self.tag is not None

    @property
    def known(self) -> bool:
        return self.orderable or self.commit is not None

    def order_key(self) -> Tuple[Tuple[int, int, int], int]:
        if self.tag is None:
            raise ValueError(f"version {self.raw!r} cannot be ordered")
        return (self.tag, self.commits)

    def short(self) -> str:
        """Klipper's string without the date/host note: what a user recognises."""
        if self.tag is None and self.commit is None:
            return self.raw or UNKNOWN
        if self.tag is None:
            text = self.commit or ""
        elif self.commit is None:
            text = self.tag_name
        else:
            text = f"{self.tag_name}-{self.commits}-g{self.commit}"
        return text + ("-dirty" if self.dirty else "")


def _same_hash(a: str, b: str) -> bool:
    # Abbreviations differ in length between git versions and settings.
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _parse_tag(tag_name: str) -> Optional[Tuple[int, int, int]]:
    m = _TAG_RE.match(tag_name)
    if not m:
        return None
    nums = [int(x) for x in m.group("nums").split(".")]
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


def parse_version(text: Optional[str]) -> FirmwareVersion:
    """Read a Klipper/Katapult version string; never raises.

    Unknown input (``None``, ``""``, ``?``, ``?-20250101_120000-host``,
    free text) gives a version that is neither orderable nor known.
    """
    raw = (text or "").strip()
    if not raw or raw.startswith(UNKNOWN):
        return FirmwareVersion(raw=raw or UNKNOWN)
    m = _DESCRIBE_RE.match(raw)
    if m:
        note = m.group("note") or ""
        return FirmwareVersion(
            raw=raw, tag_name=m.group("tag"), tag=_parse_tag(m.group("tag")),
            commits=int(m.group("count")), commit=m.group("hash"),
            dirty=bool(m.group("dirty")), note=note)
    m = _CLEAN_TAG_RE.match(raw)
    if m and (not m.group("note") or _NOTE_RE.match(m.group("note"))):
        return FirmwareVersion(
            raw=raw, tag_name=m.group("tag"), tag=_parse_tag(m.group("tag")),
            dirty=bool(m.group("dirty")), note=m.group("note") or "")
    m = _HASH_ONLY_RE.match(raw)
    if m and (not m.group("note") or _NOTE_RE.match(m.group("note"))):
        return FirmwareVersion(raw=raw, commit=m.group("hash"),
                               dirty=bool(m.group("dirty")), note=m.group("note") or "")
    return FirmwareVersion(raw=raw)


def compare_versions(a: FirmwareVersion, b: FirmwareVersion) -> Optional[int]:
    """-1, 0 or 1 by tag then commit count; None when either cannot be ordered."""
    if not (a.orderable and b.orderable):
        return None
    ka, kb = a.order_key(), b.order_key()
    return (ka > kb) - (ka < kb)


def sort_versions(versions: List[str]) -> List[str]:
    """Orderable version strings oldest first (stable for equal keys)."""
    parsed = [(parse_version(v), v) for v in versions]
    bad = [v for p, v in parsed if not p.orderable]
    if bad:
        raise ValueError(f"cannot order: {', '.join(map(repr, bad))}")
    return [v for p, v in sorted(parsed, key=lambda pv: pv[0].order_key())]


# --- what the update-manager entry publishes ------------------------------

# Why a build at the same tag and count still differs from the running firmware.
REASON_PROFILE = "profile-changed"
REASON_COMMIT = "other-commit"
REASON_LOCAL = "local-changes"


@dataclasses.dataclass(frozen=True)
class UpdateState:
    """The running firmware against what a build would give now.

    ``state`` is ``up_to_date``, ``behind`` (a build is newer), ``differs``
    (same tag and count, other firmware), ``ahead`` (the board runs newer
    firmware than a build would give) or ``unknown``.
    """
    state: str
    version: str            # published as version_info[...].version
    remote_version: str     # published as version_info[...].remote_version
    reason: str = ""        # REASON_* when state == "differs"

    @property
    def update_available(self) -> bool:
        return self.state in ("behind", "differs")


def publish_string(v: FirmwareVersion, reason: str = "") -> str:
    """The semver-safe string for an orderable version (see the module doc)."""
    if v.tag is None:
        return UNKNOWN
    major, minor, patch = v.tag
    text = f"v{major}.{minor}.{patch}-{v.commits}"
    if reason:
        text += f".{reason}"
    build = []
    if v.commit:
        build.append(f"g{v.commit}")
    if v.dirty:
        build.append("dirty")
    if build:
        text += "+" + ".".join(build)
    return text


def update_state(running: FirmwareVersion, pending: FirmwareVersion,
                 profile_changed: bool = False,
                 same_build: Optional[bool] = None) -> UpdateState:
    """Decide whether a build would update the board, and what to publish.

    ``running`` is what the board runs (or last got from octoflash),
    ``pending`` what a build of the profile would give now, and
    ``profile_changed`` says the profile's build settings differ from those
    of the running firmware.  ``same_build`` is True when the running
    firmware is known to come from exactly the checkout state a build would
    use now (uncommitted changes included), False when known to differ, and
    None when that cannot be told.
    """
    remote = publish_string(pending) if pending.orderable else UNKNOWN
    if not running.orderable:
        return UpdateState("unknown", UNKNOWN, remote)
    local = publish_string(running)
    if not pending.orderable:
        return UpdateState("unknown", local, UNKNOWN)
    order = compare_versions(pending, running)
    if order and order > 0:
        return UpdateState("behind", local, remote)
    if order and order < 0:
        return UpdateState("ahead", local, remote)
    dirty = running.dirty or pending.dirty
    other_commit = bool(running.commit and pending.commit
                        and not _same_hash(running.commit, pending.commit))
    if profile_changed:
        reason = REASON_PROFILE
    elif other_commit:
        reason = REASON_COMMIT
    elif same_build is True:
        reason = ""
    elif dirty:
        # Uncommitted changes: the same only when known to be the same.
        reason = REASON_LOCAL
    elif same_build is False:
        reason = REASON_COMMIT
    else:
        reason = ""
    if reason:
        return UpdateState("differs", local, publish_string(pending, reason), reason)
    return UpdateState("up_to_date", local, remote)
