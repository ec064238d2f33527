"""The Kconfig menus of a checkout, as ``make menuconfig`` shows them, for the page's configurator.

``read_menu(source_dir)`` lists every menu, choice, comment and settable
symbol of ``source_dir/src/Kconfig`` (prompt, type, help text, the
dependency expression of its prompt, ranges), numbered in menu order.
``evaluate(source_dir, requested)`` loads a set of ``.config`` values the
way ``make olddefconfig`` does (kconfiglib's own ``load_config`` and
``write_config``) and answers which entries ``menuconfig`` would show with
them, every symbol's value and the resulting ``.config``: what the page
needs to apply dependencies live (an option appears and disappears as
menuconfig would show it) and to show the final ``.config`` before saving.

Both run kconfiglib in a child process inside the checkout (the checkout's
own ``lib/kconfiglib`` first, as ``kconfig.kconfig_child_env`` arranges),
so Moonraker's event loop never waits on it; ``KconfigMenus`` keeps the
menu of each checkout per commit (its ``git describe`` and the fingerprint
of uncommitted changes).  Values reach the child only as a ``.config``
rendered by ``kconfig.render_config``, which refuses anything but plain
values.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import BuildError
from .kconfig import kconfig_child_env, parse_config, render_config
from .tools import ToolTimeout, run_tool

KCONFIG_FILE = os.path.join("src", "Kconfig")
TIMEOUT = 60.0


async def _child(source_dir: str, args: Sequence[str], what: str) -> Any:
    argv = [sys.executable, "-m", "moonraker_octoflash.kconfig_menu", *args]
    try:
        result = await run_tool(argv, timeout=TIMEOUT, cwd=source_dir,
                                env=kconfig_child_env(source_dir), what=what)
    except ToolTimeout:
        raise BuildError(f"Reading the Kconfig of {source_dir} took longer than "
                         f"{TIMEOUT:g} s") from None
    if result.returncode != 0 or not result.lines:
        raise BuildError(f"The Kconfig of {source_dir} could not be read",
                         log_tail=(result.stderr_lines or result.lines)[-10:])
    try:
        return json.loads(result.lines[-1])
    except ValueError:
        raise BuildError(f"The Kconfig of {source_dir} could not be read",
                         log_tail=result.lines[-10:]) from None


async def read_menu(source_dir: str) -> List[Dict[str, Any]]:
    """The checkout's menu entries in menu order (see the module text)."""
    menu: List[Dict[str, Any]] = await _child(source_dir, ["menu", KCONFIG_FILE], "kconfig menu")
    return menu


async def evaluate(source_dir: str, requested: Mapping[str, str]) -> Dict[str, Any]:
    """``{"visible": [entry ids], "values": {CONFIG_X: value}, "config": text}``
    for ``requested`` (``.config`` right-hand sides), resolved as olddefconfig would."""
    text = render_config(requested)
    handle, path = tempfile.mkstemp(prefix="octoflash-kconfig-", suffix=".config")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        result: Dict[str, Any] = await _child(source_dir, ["eval", KCONFIG_FILE, path],
                                              "kconfig evaluation")
    finally:
        os.unlink(path)
    return result


class KconfigMenus:
    """The menus of each checkout, read once per commit."""

    def __init__(self) -> None:
        self._menus: Dict[str, Tuple[Tuple[str, str], List[Dict[str, Any]]]] = {}

    async def menu(self, source_dir: str, state: Tuple[str, str]) -> List[Dict[str, Any]]:
        cached = self._menus.get(source_dir)
        if cached is not None and cached[0] == state:
            return cached[1]
        menu = await read_menu(source_dir)
        self._menus[source_dir] = (state, menu)
        return menu


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> List[Dict[str, Optional[str]]]:
    """Every symbol whose resolved value differs between two ``.config`` texts' symbols."""
    names = sorted(set(before) | set(after))
    return [{"symbol": n, "preset": before.get(n), "value": after.get(n)}
            for n in names if before.get(n, "n") != after.get(n, "n")]


def config_symbols(text: str) -> Dict[str, str]:
    return parse_config(text)


# --- run inside the checkout, in a child process -------------------------------------

def _entries(kconfig_file: str) -> Tuple[Any, List[Tuple[Any, Dict[str, Any]]]]:
    import kconfiglib

    kconf = kconfiglib.Kconfig(kconfig_file, warn=False)
    types = {kconfiglib.BOOL: "bool", kconfiglib.TRISTATE: "tristate", kconfiglib.INT: "int",
             kconfiglib.HEX: "hex", kconfiglib.STRING: "string"}

    def cname(sc: Any) -> str:
        if isinstance(sc, kconfiglib.Symbol) and not sc.is_constant:
            return "CONFIG_" + sc.name
        return kconfiglib.standard_sc_expr_str(sc)

    def expr(e: Any) -> str:
        text: str = kconfiglib.expr_str(e, cname)
        # a choice's members depend on the choice itself: not worth saying
        text = text.replace(" && <choice>", "").replace("<choice>", "y")
        return "" if text == "y" else text

    found: List[Tuple[Any, Dict[str, Any]]] = []

    def describe(node: Any, parent: Optional[int]) -> Optional[Dict[str, Any]]:
        item = node.item
        if not node.prompt:
            return None
        entry: Dict[str, Any] = {"prompt": node.prompt[0], "parent": parent,
                                 "depends": expr(node.prompt[1]),
                                 "help": (getattr(node, "help", None) or "").strip()}
        if item == kconfiglib.MENU:
            entry.update(kind="menu", visible_if=expr(node.visibility))
        elif item == kconfiglib.COMMENT:
            entry.update(kind="comment")
        elif isinstance(item, kconfiglib.Choice):
            entry.update(kind="choice", type=types.get(item.orig_type, "bool"),
                         options=["CONFIG_" + s.name for s in item.syms])
        elif isinstance(item, kconfiglib.Symbol):
            entry.update(kind="symbol", name="CONFIG_" + item.name,
                         type=types.get(item.orig_type, "unknown"),
                         in_choice=item.choice is not None,
                         ranges=[[cname(lo), cname(hi), expr(cond)]
                                 for lo, hi, cond in item.ranges])
        else:
            return None
        return entry

    def visit(node: Any, parent: Optional[int]) -> None:
        while node is not None:
            entry = describe(node, parent)
            here = parent
            if entry is not None:
                entry["id"] = len(found)
                found.append((node, entry))
                here = entry["id"]
            if node.list is not None:
                visit(node.list, here)
            node = node.next

    visit(kconf.top_node.list, None)
    return kconf, found


def _menu(kconfig_file: str) -> List[Dict[str, Any]]:
    _kconf, found = _entries(kconfig_file)
    return [entry for _node, entry in found]


def _eval(kconfig_file: str, config_path: str) -> Dict[str, Any]:
    import kconfiglib

    kconf, found = _entries(kconfig_file)
    kconf.load_config(config_path)
    visible: List[int] = []
    values: Dict[str, str] = {}
    for node, entry in found:
        shown = kconfiglib.expr_value(node.prompt[1]) > 0
        if entry["kind"] == "menu":
            shown = shown and kconfiglib.expr_value(node.visibility) > 0
        if shown:
            visible.append(entry["id"])
        item = node.item
        if entry["kind"] == "choice" and item.selection is not None:
            values[f"choice:{entry['id']}"] = "CONFIG_" + item.selection.name
    for name, sym in kconf.syms.items():
        if sym.nodes and sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE,
                                           kconfiglib.INT, kconfiglib.HEX, kconfiglib.STRING):
            values["CONFIG_" + name] = sym.str_value
    # kconfiglib keeps the file it replaces as "<name>.old": write into a
    # folder of our own so that nothing is left behind in the temp folder.
    with tempfile.TemporaryDirectory(prefix="octoflash-kconfig-") as folder:
        out = os.path.join(folder, ".config")
        kconf.write_config(out, header="")
        with open(out, encoding="utf-8") as f:
            config = f.read()
    return {"visible": visible, "values": values, "config": config}


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "menu":
        sys.stdout.write(json.dumps(_menu(argv[1])) + "\n")
        return 0
    if len(argv) == 3 and argv[0] == "eval":
        sys.stdout.write(json.dumps(_eval(argv[1], argv[2])) + "\n")
        return 0
    sys.stderr.write("usage: python -m moonraker_octoflash.kconfig_menu "
                     "(menu KCONFIG | eval KCONFIG CONFIG)\n")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
