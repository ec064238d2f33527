"""Simulated Klipper and Katapult checkouts for the tests and the demo.

``install_tree("klipper", dest)`` copies the small Klipper-like tree shipped
in ``sim/trees/`` to ``dest`` and makes it a git repository with a release
tag and a few commits after it, so ``git describe --tags --long`` answers
like a real checkout (``v0.13.0-3-g1a2b3c4``).  The commits use fixed
dates and authors, so the same call always gives the same commit ids.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Union

TREES_DIR = Path(__file__).resolve().parent / "trees"
KINDS = ("klipper", "katapult")
DEFAULT_TAGS = {"klipper": "v0.13.0", "katapult": "v0.0.1"}

# Written by install_tree and ignored by git, like Klipper's own .gitignore.
GITIGNORE = "out/\n.config\n.config.old\nsim-python.mk\n__pycache__/\n*.pyc\n"

_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Octoflash Simulation",
    "GIT_AUTHOR_EMAIL": "sim@octoflash.invalid",
    "GIT_COMMITTER_NAME": "Octoflash Simulation",
    "GIT_COMMITTER_EMAIL": "sim@octoflash.invalid",
}
_BASE_TIME = 1767225600          # 2026-01-01: fixed, so commit ids repeat


def _git(repo: Path, *args: str, when: Optional[int] = None) -> str:
    env = dict(os.environ)
    env.update(_GIT_IDENTITY)
    # Keep the user's git configuration (hooks, signing) out of the fixture.
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{when} +0000"
    result = subprocess.run(["git", *args], cwd=str(repo), env=env, timeout=60,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: "
                           f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode().strip()


# A folder for the stand-in tools' bytecode shared by every checkout made here
# (the tests name one per run).  Without it each build's output folder gets its
# own, and every build compiles the standard-library modules of its scripts again.
PYCACHE_ENV = "OCTOFLASH_SIM_PYCACHE"
_MAKE_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+-]+$")


def install_tree(kind: str, dest: Union[str, Path], tag: Optional[str] = None,
                 commits: int = 3, python: Optional[str] = None,
                 pycache: Optional[str] = None) -> Path:
    """Copy the ``kind`` tree ("klipper" or "katapult") to ``dest`` as a git checkout.

    The checkout gets the release ``tag`` (v0.13.0 for Klipper, v0.0.1 for
    Katapult by default) followed by ``commits`` more commits, and records
    ``python`` (default: this interpreter, which has kconfiglib) for its
    Makefile, and ``pycache`` (default: ``$OCTOFLASH_SIM_PYCACHE``; unset:
    each build's output folder) as the folder of its tools' bytecode.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tree kind {kind!r}; expected one of {', '.join(KINDS)}")
    pycache = pycache or os.environ.get(PYCACHE_ENV)
    if pycache and not _MAKE_SAFE_PATH.match(pycache):
        raise ValueError(f"{PYCACHE_ENV}: {pycache!r} is not an absolute path of "
                         "letters, digits and ._+-/")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    tag = tag or DEFAULT_TAGS[kind]
    shutil.copytree(TREES_DIR / kind, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(TREES_DIR / "common", dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / ".gitignore").write_text(GITIGNORE)
    settings = f"PYTHON := {python or sys.executable}\n"
    if pycache:
        settings += f"SIM_PYCACHE := {pycache}\n"
    (dest / "sim-python.mk").write_text(settings)
    # no template: git's sample hooks are a dozen files that every copy of a
    # checkout would copy again
    _git(dest, "init", "-q", "--template=", "-b", "master")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", f"Simulated {kind} {tag}", when=_BASE_TIME)
    _git(dest, "tag", "-a", tag, "-m", f"Release {tag}", when=_BASE_TIME)
    for number in range(1, commits + 1):
        notes = dest / "docs" / "Changes.md"
        notes.parent.mkdir(exist_ok=True)
        with notes.open("a") as f:
            f.write(f"- change {number} after {tag}\n")
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "-m", f"docs: change {number}", when=_BASE_TIME + 60 * number)
    # one pack instead of a file per object, as a cloned checkout has
    _git(dest, "repack", "-a", "-d", "-q")
    return dest


def change_source(repo: Union[str, Path], relpath: str = "src/sched.c", *,
                  commit: bool = True, note: str = "tweak") -> str:
    """Append a comment to one source file (a small edit), optionally committing it.

    Returns the new ``git describe`` of the checkout ("?" when it is not one).
    """
    repo = Path(repo)
    with (repo / relpath).open("a") as f:
        f.write(f"// {note}\n")
    if commit:
        count = int(_git(repo, "rev-list", "--count", "HEAD"))
        _git(repo, "commit", "-q", "-a", "-m", f"{relpath}: {note}",
             when=_BASE_TIME + 60 * (count + 1))
    return describe(repo) if (repo / ".git").exists() else "?"


def describe(repo: Union[str, Path]) -> str:
    return _git(Path(repo), "describe", "--always", "--tags", "--long", "--dirty")



def track_local_origin(repo: Union[str, Path]) -> Path:
    """Give the checkout an ``origin`` its branch tracks, as a clone has: a bare
    copy beside it (``<repo>-origin.git``).  Moonraker's update manager calls a
    checkout without a tracking remote invalid.  Returns the origin's path."""
    repo = Path(repo)
    origin = repo.parent / f"{repo.name}-origin.git"
    branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    if not origin.exists():
        _git(repo.parent, "clone", "-q", "--bare", str(repo), str(origin))
    remotes = _git(repo, "remote").split()
    if "origin" not in remotes:
        _git(repo, "remote", "add", "origin", str(origin))
    _git(repo, "push", "-q", "origin", branch)
    _git(repo, "fetch", "-q", "origin")
    _git(repo, "branch", "-q", f"--set-upstream-to=origin/{branch}")
    return origin


def no_cross_compiler(mcu: str) -> None:
    """The simulated trees compile with a stand-in: a build needs no cross compiler."""
    return None
