"""Kconfig files: render what a profile asks for, resolve it, check the result.

A profile asks for a handful of symbols (``CONFIG_MACH_STM32F446=y`` ...).
``resolve_config`` writes them to the profile's own config file and lets
the firmware tree's ``make olddefconfig`` fill in everything else, exactly
as ``make menuconfig`` + save would.  Kconfig silently drops a symbol it
does not know or whose dependencies are not met, and a choice falls back
to its default when the requested entry is not offered; so the resolved
file is compared with the request symbol by symbol, and any difference is
an error that names the symbol, before anything is compiled.

Why a symbol was dropped is worked out with kconfiglib (the same library
Klipper and Katapult ship), run in a child process inside the firmware
tree because Kconfig files are read relative to the current directory.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence

from .errors import BuildError, ValidationError
from .tools import LineCallback, ToolTimeout, run_tool

SYMBOL_RE = re.compile(r"CONFIG_[A-Z0-9_]{1,64}")
_SET_RE = re.compile(r"(CONFIG_[A-Za-z0-9_]+)=(.*)")
_NOT_SET_RE = re.compile(r"#\s*(CONFIG_[A-Za-z0-9_]+) is not set\s*")
_UNDEFINED_RE = re.compile(
    r"attempt to assign the value '(.*)' to the undefined symbol ([A-Za-z0-9_]+)")
_HEX_RE = re.compile(r"0[xX][0-9a-fA-F]{1,16}")
_INT_RE = re.compile(r"-?[0-9]{1,20}")

# What a value in a profile may be.  A .config is read by make (Klipper's
# and Katapult's Makefiles include it), and make expands "$(...)" and the
# shell runs backquotes in any value that reaches a recipe, before Kconfig
# ever sees the file.  So a value is one of four plain forms, and a string
# holds only characters that neither make nor a shell gives a meaning to.
STRING_CHARS = "A-Za-z0-9 _.,:/+!-"
MAX_STRING_LENGTH = 128
_STRING_RE = re.compile(f'"[{STRING_CHARS}]{{0,{MAX_STRING_LENGTH}}}"')
_TRISTATE = ("y", "n", "m")
# The same rule as a JSON Schema pattern (schemas/profile.schema.json holds a
# copy; a test keeps the two equal).
VALUE_PATTERN = (f'^(?:y|n|m|-?[0-9]{{1,20}}|0[xX][0-9a-fA-F]{{1,16}}|'
                 f'"[{STRING_CHARS}]{{0,{MAX_STRING_LENGTH}}}")$')
MAX_SYMBOLS = 128       # symbols one profile may ask for (a preset sets about a dozen)

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Mismatch:
    """A requested symbol that Kconfig dropped or changed."""
    symbol: str
    requested: str
    resolved: Optional[str]        # None: not in the resolved file at all
    kind: str = "changed"          # unknown, not_offered, unmet_dependency, not_settable,
                                   # forced, out_of_range, bad_value, changed
    reason: str = ""

    @property
    def resolved_text(self) -> str:
        if self.resolved is None or self.resolved == "n":
            return "not set"
        return self.resolved

    def __str__(self) -> str:
        text = (f"{self.symbol}: asked for {self.requested}, "
                f"Kconfig gave {self.resolved_text}")
        if self.reason:
            text += f" ({self.reason})"
        return text

    def to_json(self) -> Dict[str, Optional[str]]:
        return dataclasses.asdict(self)


# --- rendering and parsing ----------------------------------------------------

def value_problem(value: object) -> Optional[str]:
    """Why ``value`` cannot be a .config value, or None when it can."""
    if not isinstance(value, str):
        return "the value must be text such as y, n, 1000000, 0x8000 or \"PA13\""
    v = value.strip()
    if v == "":
        return "empty value; use n to unset it or \"\" for an empty string"
    if v in _TRISTATE or _INT_RE.fullmatch(v) or _HEX_RE.fullmatch(v) or _STRING_RE.fullmatch(v):
        return None
    if v.startswith('"') and v.endswith('"') and len(v) >= 2:
        inner = v[1:-1]
        if len(inner) > MAX_STRING_LENGTH:
            return f"a text value may hold at most {MAX_STRING_LENGTH} characters"
        bad = sorted({c for c in inner if not re.fullmatch(f"[{STRING_CHARS}]", c)})
        shown = " ".join(repr(c) for c in bad[:8])
        return (f"a text value may hold letters, digits, spaces and _ . , : / + ! - only "
                f"(not {shown}): make and the shell would read the others as commands")
    if any(ord(c) < 32 or c == "\x7f" for c in v):
        return "the value must be one line of printable text"
    return ('not a .config value: use y or n, a decimal number, a hexadecimal number '
            '(0x...), or text in double quotes such as "PA13"')


def check_symbol(name: object, value: object) -> None:
    """Refuse a symbol name or value that could not be one safe line of a .config."""
    if not isinstance(name, str) or not SYMBOL_RE.fullmatch(name):
        raise ValidationError(
            f"Kconfig symbol {name!r} is not a valid name: it must look like "
            "CONFIG_NAME (capital letters, digits and underscores, at most 64 after CONFIG_)")
    problem = value_problem(value)
    if problem:
        raise ValidationError(f"{name}: {problem}")


def render_config(symbols: Mapping[str, str]) -> str:
    """The .config text for ``symbols``, in the given order.

    Values are .config right-hand sides: ``y``, numbers, hex, ``"quoted"``
    strings; ``n`` is written the way Kconfig writes an unset option.
    """
    if len(symbols) > MAX_SYMBOLS:
        raise ValidationError(f"{len(symbols)} Kconfig symbols asked for; at most "
                              f"{MAX_SYMBOLS} may be set by one profile")
    lines = []
    for name, value in symbols.items():
        check_symbol(name, value)
        value = value.strip()
        if value == "n":
            lines.append(f"# {name} is not set")
        else:
            lines.append(f"{name}={value}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_config(text: str) -> Dict[str, str]:
    """Symbols of a .config file; ``# CONFIG_X is not set`` reads as ``n``."""
    symbols: Dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _SET_RE.fullmatch(line)
        if m:
            symbols[m.group(1)] = m.group(2).strip()
            continue
        m = _NOT_SET_RE.fullmatch(line)
        if m:
            symbols[m.group(1)] = "n"
    return symbols


def config_value(symbols: Mapping[str, str], name: str) -> Optional[str]:
    """A symbol's value with string quotes removed, or None when unset."""
    value = symbols.get(name)
    if value is None or value == "n":
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _unescape(value[1:-1])
    return value


def config_int(symbols: Mapping[str, str], name: str) -> Optional[int]:
    value = config_value(symbols, name)
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None


def _unescape(text: str) -> str:
    return re.sub(r'\\(.)', r'\1', text)


def _canonical(value: Optional[str]) -> object:
    """A form in which equal settings compare equal (0x08008000 == 0x8008000)."""
    if value is None:
        return ("bool", "n")
    v = value.strip()
    if v in ("y", "n", "m"):
        return ("bool", v)
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return ("str", _unescape(v[1:-1]))
    if _HEX_RE.fullmatch(v):
        return ("num", int(v, 16))
    if _INT_RE.fullmatch(v):
        return ("num", int(v))
    return ("raw", v)


def compare_config(requested: Mapping[str, str], resolved: Mapping[str, str]) -> List[Mismatch]:
    """Requested symbols that the resolved configuration dropped or changed.

    A symbol missing from the resolved file counts as ``n`` (Kconfig leaves
    out options it does not show), so asking for ``n`` there is satisfied.
    """
    found: List[Mismatch] = []
    for name, value in requested.items():
        got = resolved.get(name)
        if _canonical(value) == _canonical(got):
            continue
        if got is None:
            reason = "dropped by Kconfig: unknown symbol, or its dependencies are not met"
        else:
            reason = "changed by Kconfig"
        found.append(Mismatch(symbol=name, requested=value.strip(), resolved=got,
                              kind="changed", reason=reason))
    return found


# --- resolving with make olddefconfig ------------------------------------------

def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


async def resolve_config(source_dir: str, config_path: str, requested: Mapping[str, str], *,
                         timeout: float = 120.0, make: str = "make",
                         out_dir: Optional[str] = None, nice: int = 0,
                         on_line: Optional[LineCallback] = None,
                         label: str = "") -> Dict[str, str]:
    """Write ``requested`` to ``config_path``, complete it with ``make olddefconfig``
    in ``source_dir``, and return the resolved symbols.

    ``out_dir`` is the build folder make may touch while doing so (Klipper's
    Makefile creates ``$(OUT)board-link`` even for olddefconfig): pass a
    scratch folder, never the checkout's ``out/``.  Raises ValidationError
    naming every requested symbol Kconfig dropped or changed.
    """
    config_path = os.path.abspath(config_path)
    out = os.path.abspath(out_dir or (config_path + ".kconfig-out"))
    text = render_config(requested)
    where = f"{label}: " if label else ""
    try:
        await asyncio.to_thread(_prepare, config_path, out, text)
    except OSError as exc:
        raise BuildError(f"{where}cannot write {config_path}: {exc.strerror or exc}") from exc
    argv = [make, "olddefconfig", f"OUT={out}{os.sep}", f"KCONFIG_CONFIG={config_path}"]
    env = {"KCONFIG_CONFIG": config_path, "KCONFIG_WARN_UNDEF_ASSIGN": "y"}
    try:
        result = await run_tool(argv, timeout=timeout, cwd=source_dir, env=env,
                                on_line=on_line, nice=nice, what="make olddefconfig")
    except ToolTimeout as exc:
        raise BuildError(f"{where}make olddefconfig did not finish within {timeout:g} s",
                         log_tail=exc.log_tail) from None
    if result.returncode != 0:
        raise BuildError(f"{where}make olddefconfig failed in {source_dir} "
                         f"(exit code {result.returncode})",
                         log_tail=result.tail(15), returncode=result.returncode)
    resolved = parse_config(await asyncio.to_thread(_read_text, config_path))
    unknown = {m.group(2) for m in map(_UNDEFINED_RE.search, result.lines) if m}
    mismatches = compare_config(requested, resolved)
    listed = {m.symbol for m in mismatches}
    for name in requested:
        if name[len("CONFIG_"):] in unknown and name not in listed:
            mismatches.append(Mismatch(symbol=name, requested=requested[name].strip(),
                                       resolved=None, kind="unknown"))
    if mismatches:
        await explain_mismatches(source_dir, config_path, mismatches, requested)
        raise ValidationError(
            f"{where}Kconfig did not accept {len(mismatches)} of the requested "
            f"symbol{'s' if len(mismatches) != 1 else ''}; nothing was compiled:\n  "
            + "\n  ".join(str(m) for m in mismatches),
            hint="Change or remove these symbols in the profile's kconfig overrides "
                 "(or pick a preset for this board), then build again.")
    return resolved


def _prepare(config_path: str, out_dir: str, text: str) -> None:
    os.makedirs(os.path.dirname(config_path), exist_ok=True)
    os.makedirs(out_dir, exist_ok=True)
    _write_text(config_path, text)


async def explain_mismatches(source_dir: str, config_path: str, mismatches: Sequence[Mismatch],
                             requested: Mapping[str, str]) -> None:
    """Fill in each mismatch's ``kind`` and ``reason`` from the Kconfig tree.

    Runs kconfiglib in a child Python inside ``source_dir``; when that is
    not possible the generic reasons from ``compare_config`` stay.
    """
    if not mismatches:
        return
    env = kconfig_child_env(source_dir)
    argv = [sys.executable, "-m", "moonraker_octoflash.kconfig_child", "explain",
            os.path.join("src", "Kconfig"), config_path, json.dumps(dict(requested))]
    argv += [m.symbol for m in mismatches]
    try:
        result = await run_tool(argv, timeout=60.0, cwd=source_dir, env=env,
                                what="kconfig explain")
    except Exception:       # an explanation is a nicety; the mismatch stands without it
        return
    if result.returncode != 0:
        return
    try:
        answers = json.loads(result.lines[-1])
    except (ValueError, IndexError):
        return
    for m in mismatches:
        info = answers.get(m.symbol)
        if info:
            m.kind = info.get("kind", m.kind)
            m.reason = info.get("reason", m.reason)


# --- the checkout's own Kconfig: which symbols exist, their types ------------

@dataclasses.dataclass(frozen=True)
class SymbolInfo:
    """One Kconfig symbol as the checkout declares it."""
    type: str            # bool, tristate, int, hex, string (or unknown)
    settable: bool       # it has a prompt, so a .config may set it


def kconfig_child_env(source_dir: str) -> Dict[str, str]:
    """PYTHONPATH for a child that reads ``source_dir``'s Kconfig.

    Klipper and Katapult carry their own kconfiglib in ``lib/kconfiglib``,
    the copy their ``make olddefconfig`` runs; it is put first so that the
    child reads the tree exactly as make will.  A tree without one (the
    simulated trees) is read with the kconfiglib package octoflash depends on.
    """
    paths = [os.path.join(source_dir, "lib", "kconfiglib")]
    paths = [p for p in paths if os.path.isfile(os.path.join(p, "kconfiglib.py"))]
    paths += [PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


async def read_symbol_table(source_dir: str, *, timeout: float = 60.0
                            ) -> Dict[str, SymbolInfo]:
    """Every symbol of ``source_dir/src/Kconfig`` with its type and whether it can be set.

    Runs kconfiglib in a child process inside the tree (Kconfig files are
    read relative to it), so nothing here blocks an event loop.
    """
    argv = [sys.executable, "-m", "moonraker_octoflash.kconfig_child", "symbols",
            os.path.join("src", "Kconfig")]
    try:
        result = await run_tool(argv, timeout=timeout, cwd=source_dir,
                                env=kconfig_child_env(source_dir), what="kconfig symbols")
    except ToolTimeout:
        raise BuildError(f"Reading the Kconfig of {source_dir} took longer than "
                         f"{timeout:g} s") from None
    if result.returncode != 0 or not result.lines:
        raise BuildError(f"The Kconfig of {source_dir} could not be read",
                         log_tail=(result.stderr_lines or result.lines)[-10:])
    try:
        raw = json.loads(result.lines[-1])
    except ValueError:
        raise BuildError(f"The Kconfig of {source_dir} could not be read",
                         log_tail=result.lines[-10:]) from None
    return {"CONFIG_" + name: SymbolInfo(str(kind), bool(settable))
            for name, (kind, settable) in raw.items()}


def type_problem(value: str, info: SymbolInfo) -> Optional[str]:
    """Why ``value`` does not fit a symbol of this type, or None."""
    v = value.strip()
    if info.type == "bool" and v not in ("y", "n"):
        return "a yes/no option takes y or n"
    if info.type == "tristate" and v not in _TRISTATE:
        return "this option takes y, m or n"
    if info.type == "int" and not _INT_RE.fullmatch(v):
        return "the value must be a decimal number"
    if info.type == "hex" and not _HEX_RE.fullmatch(v):
        return "the value must be a hexadecimal number (0x...)"
    if info.type == "string" and not _STRING_RE.fullmatch(v):
        return 'a text option needs its value in double quotes, e.g. "PA13"'
    return None


def check_against_kconfig(requested: Mapping[str, str], table: Mapping[str, SymbolInfo],
                          where: str) -> None:
    """Refuse, before make runs, symbols the checkout does not have or cannot set,
    and values that do not fit the symbol's type."""
    import difflib

    problems: List[str] = []
    for name, value in requested.items():
        info = table.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(table), n=2, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(f"{name}: no such symbol in this firmware's Kconfig{hint}")
            continue
        if not info.settable:
            problems.append(f"{name}: Kconfig sets this symbol itself from other options "
                            "(it has no prompt); change the options it follows from instead")
            continue
        problem = type_problem(value, info)
        if problem:
            article = "an" if info.type[0] in "aeiou" else "a"
            problems.append(f"{name}: {problem} (it is {article} {info.type} option), "
                            f"not {value}")
    if problems:
        raise ValidationError(
            f"{where}: {len(problems)} Kconfig setting{'s' if len(problems) != 1 else ''} "
            "cannot be used with this checkout; nothing was run:\n  " + "\n  ".join(problems),
            hint="Change or remove these symbols in the profile's kconfig overrides.")
