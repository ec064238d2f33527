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

``semver_valid``/``semver_gt`` below re-implement exactly what npm semver
7.x does for ``{loose: true}`` so the tests can check that the clients will
order the published strings as octoflash does.
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Tuple, Union

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


# --- npm semver 7.x, {loose: true}, as Mainsail and Fluidd call it -----------

_MAX_LENGTH = 256
_MAX_SAFE_INTEGER = 9007199254740991
# ECMAScript WhiteSpace and LineTerminator: what String.trim and \s remove.
_JS_SPACE = ("\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
             "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")
_SPACE_CLASS = "".join(f"\\u{ord(c):04x}" for c in _JS_SPACE)
# semver's "safe" regexes bound every repetition; the bounds are kept here.
_LDN = "[a-zA-Z0-9-]"
_NONNUMERIC = f"[0-9]{{0,{_MAX_LENGTH}}}[a-zA-Z-]{_LDN}{{0,{_MAX_LENGTH - 6}}}"
_NUMERIC_LOOSE = f"[0-9]{{1,{_MAX_LENGTH}}}"
_PRE_ID_LOOSE = f"(?:{_NONNUMERIC}|{_NUMERIC_LOOSE})"
_BUILD_ID = f"{_LDN}{{1,{_MAX_LENGTH - 6}}}"
_LOOSE_RE = re.compile(
    f"^[v={_SPACE_CLASS}]*({_NUMERIC_LOOSE})\\.({_NUMERIC_LOOSE})\\.({_NUMERIC_LOOSE})"
    f"(?:-?({_PRE_ID_LOOSE}(?:\\.{_PRE_ID_LOOSE})*))?"
    f"(?:\\+({_BUILD_ID}(?:\\.{_BUILD_ID})*))?$")
_NUMERIC_ID = re.compile(r"^[0-9]+$")

Identifier = Union[int, str]


@dataclasses.dataclass(frozen=True)
class SemVer:
    major: int
    minor: int
    patch: int
    prerelease: Tuple[Identifier, ...]

    @property
    def version(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(str(p) for p in self.prerelease)
        return text


def semver_parse(version: str) -> Optional[SemVer]:
    """``semver.parse(version, {loose: true})``; None where semver gives null."""
    if not isinstance(version, str):
        return None
    if len(version.encode("utf-16-le")) // 2 > _MAX_LENGTH:
        return None
    m = _LOOSE_RE.match(version.strip(_JS_SPACE))
    if not m:
        return None
    nums = [int(m.group(i)) for i in (1, 2, 3)]
    if any(n > _MAX_SAFE_INTEGER for n in nums):
        return None
    pre: List[Identifier] = []
    if m.group(4):
        for ident in m.group(4).split("."):
            if _NUMERIC_ID.match(ident) and int(ident) < _MAX_SAFE_INTEGER:
                pre.append(int(ident))
            else:
                pre.append(ident)
    return SemVer(nums[0], nums[1], nums[2], tuple(pre))


def semver_valid(version: str) -> Optional[str]:
    """``semver.valid(version, {loose: true})``: the normalised string or None."""
    parsed = semver_parse(version)
    return parsed.version if parsed else None


def _is_numeric(x: Identifier) -> bool:
    return isinstance(x, int) or bool(_NUMERIC_ID.match(x))


def _compare_identifiers(a: Identifier, b: Identifier) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return (a > b) - (a < b)
    anum, bnum = _is_numeric(a), _is_numeric(b)
    if anum and bnum:
        # JavaScript turns both into doubles here (unary +).
        fa, fb = float(a), float(b)
        return (fa > fb) - (fa < fb)
    if type(a) is type(b) and a == b:
        return 0
    if anum and not bnum:
        return -1
    if bnum and not anum:
        return 1
    return -1 if str(a) < str(b) else 1


def semver_compare(a: str, b: str) -> int:
    """``semver.compare(a, b, {loose: true})``; ValueError where semver throws."""
    va, vb = semver_parse(a), semver_parse(b)
    if va is None or vb is None:
        raise ValueError(f"Invalid Version: {a if va is None else b}")
    if va.version == vb.version:
        return 0
    main_a, main_b = (va.major, va.minor, va.patch), (vb.major, vb.minor, vb.patch)
    if main_a != main_b:
        return (main_a > main_b) - (main_a < main_b)
    pa, pb = va.prerelease, vb.prerelease
    if pa and not pb:
        return -1
    if pb and not pa:
        return 1
    if not pa and not pb:
        return 0
    i = 0
    while True:
        x = pa[i] if i < len(pa) else None
        y = pb[i] if i < len(pb) else None
        if x is None and y is None:
            return 0
        if y is None:
            return 1
        if x is None:
            return -1
        if not (type(x) is type(y) and x == y):
            return _compare_identifiers(x, y)
        i += 1


def semver_gt(a: str, b: str) -> bool:
    """``semver.gt(a, b, {loose: true})``."""
    return semver_compare(a, b) > 0


def clients_offer_update(version: str, remote_version: str) -> bool:
    """What Mainsail's and Fluidd's update panels conclude for an entry.

    Both show an update exactly when both strings are loose-valid semver
    and the remote one is greater (Fluidd falls back to comparing
    ``current_hash``/``remote_hash``, which the firmware entries do not
    publish).
    """
    if semver_valid(version) is None or semver_valid(remote_version) is None:
        return False
    return semver_gt(remote_version, version)
