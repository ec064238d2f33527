"""npm semver 7.x with ``{loose: true}``, as Mainsail and Fluidd call it: the tests' oracle.

Mainsail's and Fluidd's update panels offer an update exactly when
``semver.gt(remote_version, version, {loose: true})`` with both strings
``semver.valid``.  This module re-implements those rules so the tests can
check what the clients will conclude from the strings octoflash publishes;
the product itself never needs it.  Checked against the real package
(tests/test_versions.py holds a table of its answers).
"""
from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Tuple, Union

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
