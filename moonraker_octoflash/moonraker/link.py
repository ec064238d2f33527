"""Place (or remove) the component file in Moonraker's components folder.

Moonraker has no plugin path: it imports ``moonraker.components.<section>``
for every config section.  ``octoflash link-component`` therefore links
``octoflash_link.py`` from this package to ``<moonraker>/components/octoflash.py``
(a symbolic link, or a copy where links are not possible) and lists it in
the checkout's ``.git/info/exclude``, so Moonraker's own update entry stays
pristine.  Moonraker must be restarted afterwards to load it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
from typing import Any, List, Optional, TextIO, Tuple

from ..errors import NotFoundError, OctoflashError, ValidationError
from .layout import find_checkout

LINK_NAME = "octoflash.py"
SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "octoflash_link.py")


GIT_TIMEOUT = 20.0


def find_moonraker_package() -> str:
    """The ``moonraker`` package of this Python: importable, or the checkout beside its virtualenv.

    A KIAUH install runs Moonraker from a git checkout (``~/moonraker``)
    with the virtualenv ``~/moonraker-env``, which cannot import
    ``moonraker``: the checkout is looked for beside the virtualenv, then in
    the ``moonraker*.service`` units.
    """
    spec = importlib.util.find_spec("moonraker")
    if spec is not None and spec.submodule_search_locations:
        return os.path.abspath(next(iter(spec.submodule_search_locations)))
    checkout, looked = find_checkout()
    if checkout is not None:
        return os.path.join(checkout, "moonraker")
    raise NotFoundError(
        "Moonraker not found: no 'moonraker' package is importable from this Python, "
        f"and no Moonraker checkout is at {', '.join(looked)}. "
        "Pass --moonraker-path with Moonraker's checkout (e.g. ~/moonraker)")


def components_dir(moonraker_path: Optional[str] = None) -> str:
    """Moonraker's components folder for a checkout, its package folder, or the importable one."""
    base = os.path.abspath(os.path.expanduser(moonraker_path)) if moonraker_path \
        else find_moonraker_package()
    # Accept the git checkout (~/moonraker), the package (~/moonraker/moonraker)
    # or the components folder itself.
    for candidate in (os.path.join(base, "moonraker", "components"),
                      os.path.join(base, "components"), base):
        if os.path.isfile(os.path.join(candidate, "klippy_apis.py")):
            return candidate
    raise NotFoundError(
        f"{base} does not look like Moonraker: no components/klippy_apis.py below it. "
        "Give the Moonraker checkout (~/moonraker) or its 'moonraker' package folder.")


def link_component(moonraker_path: Optional[str] = None, remove: bool = False) -> str:
    """Link the component into Moonraker (or remove it); return the file's path.

    Idempotent: linking twice leaves one link; removing an absent link is
    not an error.  A file of that name that is not ours is never replaced.
    """
    folder = components_dir(moonraker_path)
    target = os.path.join(folder, LINK_NAME)
    exists = os.path.lexists(target)
    if exists and not _is_ours(target):
        raise ValidationError(
            f"{target} exists and is not moonraker-octoflash's component; "
            "move it away first")
    if remove:
        if exists:
            os.unlink(target)
        hide_from_git(folder, hide=False)
        return target
    if not os.access(folder, os.W_OK):
        raise OctoflashError(
            f"Cannot write to {folder}; run the command as the user that owns Moonraker")
    # a name of this process's own: two installs at once never share it
    tmp = f"{target}.octoflash-tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.symlink(SOURCE_FILE, tmp)
    except OSError:
        shutil.copyfile(SOURCE_FILE, tmp)
    os.replace(tmp, target)   # atomic: Moonraker never sees a half-written file
    hide_from_git(folder)
    return target


def _git(folder: str, *args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def exclude_entry(folder: str) -> Optional[Tuple[str, str]]:
    """(exclude file, the link's line) when ``folder`` is a git checkout's
    ``moonraker/components``, else None (a pip-installed Moonraker inside some
    other repository's tree is not Moonraker's checkout)."""
    top = _git(folder, "rev-parse", "--show-toplevel")
    checkout = os.path.dirname(os.path.dirname(os.path.realpath(folder)))
    if not top or os.path.realpath(top) != checkout:
        return None
    exclude = _git(folder, "rev-parse", "--git-path", "info/exclude")
    if not exclude:
        return None
    if not os.path.isabs(exclude):
        exclude = os.path.join(folder, exclude)
    relative = os.path.relpath(os.path.join(os.path.realpath(folder), LINK_NAME),
                               os.path.realpath(top))
    return exclude, "/" + relative.replace(os.sep, "/")


def hide_from_git(folder: str, hide: bool = True) -> Optional[str]:
    """List the link in the checkout's ``.git/info/exclude`` (or take it out); return that file.

    Moonraker's update manager reports untracked ``.py`` files as "Repo has
    untracked source files"; other extensions hide their links the same way.
    """
    entry = exclude_entry(folder)
    if entry is None:
        return None
    path, line = entry
    lines: List[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    present = line in lines
    if hide == present:
        return path
    lines = [x for x in lines if x != line] + ([line] if hide else [])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return path


def _is_ours(path: str) -> bool:
    if os.path.islink(path):
        dest = os.path.realpath(path)
        if os.path.basename(dest) == os.path.basename(SOURCE_FILE):
            return True
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "moonraker_octoflash.moonraker.component" in f.read(4096)
    except OSError:
        # A dangling link left by a removed checkout is ours if it pointed at our file.
        return os.path.islink(path) and os.readlink(path).endswith("octoflash_link.py")


# --- the `octoflash link-component` subcommand -------------------------------

def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "link-component",
        help="install the Moonraker component (link octoflash.py into Moonraker's components)")
    p.add_argument("--moonraker-path", metavar="DIR",
                   help="Moonraker checkout or package folder (default: the 'moonraker' "
                        "package importable from this Python, or the checkout beside its "
                        "virtualenv, e.g. ~/moonraker for ~/moonraker-env)")
    p.add_argument("--remove", action="store_true", help="remove the component link")
    p.set_defaults(handler=_cmd_link_component)


def _cmd_link_component(ctx: Any, out: TextIO, err: TextIO) -> int:
    args: argparse.Namespace = ctx.args
    path = link_component(args.moonraker_path, remove=args.remove)
    if args.remove:
        out.write(f"Removed {path}. Remove the [octoflash] sections, then restart Moonraker "
                  "(or run ./install.sh --uninstall, which does both).\n")
    else:
        out.write(f"Linked {path} -> {SOURCE_FILE}\n"
                  "Restart Moonraker to load it (e.g. sudo systemctl restart moonraker).\n")
    return 0
