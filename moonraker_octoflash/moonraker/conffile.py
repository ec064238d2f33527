"""Text edits of ``moonraker.conf`` and ``printer.cfg`` that keep everything else as it was.

Sections are found by their header line (``[name …]`` at the start of a
line); a section runs to the next header.  Comments, blank lines and the
order of everything not edited are kept byte for byte.  Only the standard
library is used (the installer runs before the package is installed).
"""
from __future__ import annotations

import re
from typing import Callable, List, Tuple

HEADER = re.compile(r"^\[([^\]]+)\]")
KEPT_PREFIX = "#~ "   # a section kept by `install.sh --uninstall --keep-config`


def _sections(lines: List[str]) -> List[Tuple[str, int, int]]:
    """(section name, first line, end line) of every section, in order."""
    starts = [(i, m.group(1).strip()) for i, line in enumerate(lines)
              for m in [HEADER.match(line)] if m]
    spans = []
    for n, (start, name) in enumerate(starts):
        end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        spans.append((name, start, end))
    return spans


def section_names(text: str) -> List[str]:
    return [name for name, _s, _e in _sections(text.splitlines(keepends=True))]


def has_section(text: str, name: str) -> bool:
    return any(same_section(n, name) for n in section_names(text))


def same_section(a: str, b: str) -> bool:
    return " ".join(a.split()).lower() == " ".join(b.split()).lower()


def append_section(text: str, body: str) -> str:
    """``text`` with ``body`` (a section, header first) added at the end after one blank line."""
    if text and not text.endswith("\n"):
        text += "\n"
    if text.strip():
        text = text.rstrip("\n") + "\n\n"
    return text + body.strip("\n") + "\n"


def take_sections(text: str, wanted: Callable[[str], bool]) -> Tuple[str, str]:
    """(``text`` without the sections ``wanted`` accepts, those sections' text).

    Blank lines that ended a removed section go with it, so removing what
    ``append_section`` added gives the text back as it was.
    """
    lines = text.splitlines(keepends=True)
    keep = [True] * len(lines)
    taken: List[str] = []
    for name, start, end in _sections(lines):
        if not wanted(name):
            continue
        chunk = lines[start:end]
        taken.append("".join(chunk).rstrip("\n") + "\n")
        for i in range(start, end):
            keep[i] = False
        # the blank line(s) that separated this section from the one before
        j = start - 1
        while j >= 0 and keep[j] and not lines[j].strip():
            keep[j] = False
            j -= 1
    rest = "".join(line for line, k in zip(lines, keep) if k)
    if text.endswith("\n") and rest and not rest.endswith("\n"):
        rest += "\n"
    return rest, "\n".join(taken)


def comment_out(section_text: str) -> str:
    """Sections turned into comments Moonraker ignores, each line prefixed ``#~ ``."""
    return "".join(KEPT_PREFIX + line if line.strip() else KEPT_PREFIX.rstrip() + line
                   for line in section_text.splitlines(keepends=True))


def take_kept(text: str) -> Tuple[str, str]:
    """(``text`` without the commented-out kept sections, those sections uncommented)."""
    lines = text.splitlines(keepends=True)
    blank = KEPT_PREFIX.rstrip()
    kept, rest = [], []
    for line in lines:
        if line.startswith(KEPT_PREFIX):
            kept.append(line[len(KEPT_PREFIX):])
        elif line.rstrip("\r\n") == blank:
            kept.append(line[len(blank):])
        else:
            rest.append(line)
    return "".join(rest).rstrip("\n") + "\n" if rest else "", "".join(kept)


def is_octoflash_section(name: str) -> bool:
    """``[octoflash]`` and every ``[octoflash NAME]`` (not ``[update_manager octoflash]``)."""
    words = name.split()
    return bool(words) and words[0].lower() == "octoflash"


def include_line(filename: str) -> str:
    return f"[include {filename}]"


def add_include(text: str, filename: str) -> str:
    """``printer.cfg`` text with ``[include FILENAME]`` at the top (unchanged when present)."""
    if has_section(text, f"include {filename}"):
        return text
    return include_line(filename) + "\n" + text


def remove_include(text: str, filename: str) -> str:
    """``printer.cfg`` text without the ``[include FILENAME]`` line (and nothing else)."""
    kept = []
    for line in text.splitlines(keepends=True):
        match = HEADER.match(line)
        if match and same_section(match.group(1), f"include {filename}"):
            continue
        kept.append(line)
    return "".join(kept)
