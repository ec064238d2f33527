"""Place (or remove) the component file in Moonraker's components folder.

Moonraker has no plugin path: it imports ``moonraker.components.<section>``
for every config section.  ``octoflash link-component`` therefore links
``octoflash_link.py`` from this package to ``<moonraker>/components/octoflash.py``
(a symbolic link, or a copy where links are not possible).  Moonraker must be
restarted afterwards to load it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from typing import Any, Optional, TextIO

from ..errors import NotFoundError, OctoflashError, ValidationError

LINK_NAME = "octoflash.py"
SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "octoflash_link.py")


def find_moonraker_package() -> str:
    """The folder of the ``moonraker`` package importable from this Python."""
    spec = importlib.util.find_spec("moonraker")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "No 'moonraker' package is importable from this Python. Run this command "
            "with Moonraker's own Python (e.g. ~/moonraker-env/bin/octoflash) or pass "
            "--moonraker-path ~/moonraker/moonraker")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


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
        return target
    if not os.access(folder, os.W_OK):
        raise OctoflashError(
            f"Cannot write to {folder}; run the command as the user that owns Moonraker")
    tmp = target + ".octoflash-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.symlink(SOURCE_FILE, tmp)
    except OSError:
        shutil.copyfile(SOURCE_FILE, tmp)
    os.replace(tmp, target)   # atomic: Moonraker never sees a half-written file
    return target


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
                        "package importable from this Python)")
    p.add_argument("--remove", action="store_true", help="remove the component link")
    p.set_defaults(handler=_cmd_link_component)


def _cmd_link_component(ctx: Any, out: TextIO, err: TextIO) -> int:
    args: argparse.Namespace = ctx.args
    path = link_component(args.moonraker_path, remove=args.remove)
    if args.remove:
        out.write(f"Removed {path}. Restart Moonraker and remove the [octoflash] sections.\n")
    else:
        out.write(f"Linked {path} -> {SOURCE_FILE}\n"
                  "Restart Moonraker (sudo systemctl restart moonraker) to load it.\n")
    return 0
