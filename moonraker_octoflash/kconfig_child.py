"""The child side of kconfig.py: kconfiglib run inside a firmware checkout.

``python -m moonraker_octoflash.kconfig_child symbols KCONFIG`` prints every
symbol with its type and whether a .config may set it;
``... explain KCONFIG CONFIG REQUESTED_JSON SYMBOL...`` tells why Kconfig did
not keep each symbol asked for.  The answer is one JSON line on stdout.

It runs once per build or profile check, so it imports only kconfiglib and
the standard library (not asyncio and the tool runner, which kconfig.py
needs): that is most of the child's start.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, Mapping, Sequence, Tuple


def _symbols(kconfig_file: str) -> Dict[str, Tuple[str, bool]]:
    import kconfiglib

    kconf = kconfiglib.Kconfig(kconfig_file, warn=False)
    names = {kconfiglib.BOOL: "bool", kconfiglib.TRISTATE: "tristate", kconfiglib.INT: "int",
             kconfiglib.HEX: "hex", kconfiglib.STRING: "string"}
    table: Dict[str, Tuple[str, bool]] = {}
    for name, sym in kconf.syms.items():
        if not sym.nodes:
            continue
        table[name] = (names.get(sym.orig_type, "unknown"),
                       any(node.prompt for node in sym.nodes))
    return table


# --- the explanation of mismatches (kconfig.explain_mismatches) ---------------

def _explain(kconfig_file: str, config_path: str, requested: Mapping[str, str],
             symbols: Sequence[str]) -> Dict[str, Dict[str, str]]:
    import difflib

    import kconfiglib

    kconf = kconfiglib.Kconfig(kconfig_file, warn=False)
    kconf.load_config(config_path, replace=True)
    known = sorted(name for name, sym in kconf.syms.items() if sym.nodes)

    def cname(sc: object) -> str:
        if isinstance(sc, kconfiglib.Symbol) and not sc.is_constant:
            return "CONFIG_" + sc.name
        return getattr(sc, "name", None) or "?"

    def expr(e: object) -> str:
        return kconfiglib.expr_str(e, cname)

    def condition(part: object) -> str:
        # "CONFIG_X=y" reads better than a bare symbol name for a user.
        if isinstance(part, kconfiglib.Symbol) and not part.is_constant:
            return cname(part) + "=y"
        if (isinstance(part, tuple) and part[0] == kconfiglib.NOT
                and isinstance(part[1], kconfiglib.Symbol) and not part[1].is_constant):
            return cname(part[1]) + "=n"
        return expr(part)

    def unmet(cond: object) -> str:
        parts = [p for p in kconfiglib.split_expr(cond, kconfiglib.AND)
                 if kconfiglib.expr_value(p) == 0]
        return " and ".join(condition(p) for p in parts) or expr(cond)

    def prompt_node(item: object) -> Any:
        for node in getattr(item, "nodes", []):
            if node.prompt:
                return node
        return None

    answers: Dict[str, Dict[str, str]] = {}
    for full in symbols:
        name = full[len("CONFIG_"):]
        wanted = requested.get(full, "").strip()
        sym = kconf.syms.get(name)
        if sym is None or not sym.nodes:
            close = difflib.get_close_matches(name, known, n=2, cutoff=0.75)
            reason = "no such symbol in this firmware's Kconfig"
            if close:
                reason += "; did you mean " + " or ".join("CONFIG_" + c for c in close) + "?"
            answers[full] = {"kind": "unknown", "reason": reason}
            continue
        choice = sym.choice
        if choice is not None:
            cnode = prompt_node(choice)
            title = cnode.prompt[0] if cnode else "choice"
            if choice.visibility == 0:
                cond = cnode.prompt[1] if cnode else choice.direct_dep
                answers[full] = {"kind": "unmet_dependency",
                                 "reason": f"the '{title}' menu is only shown with {unmet(cond)}"}
                continue
            if sym.visibility == 0:
                offered = []
                for other in choice.syms:
                    onode = prompt_node(other)
                    if other.visibility and onode:
                        offered.append(f"{onode.prompt[0]} (CONFIG_{other.name})")
                answers[full] = {
                    "kind": "not_offered",
                    "reason": f"not offered for this MCU/configuration; '{title}' offers: "
                              + "; ".join(offered)}
                continue
            if wanted == "n" and choice.selection is sym:
                answers[full] = {
                    "kind": "changed",
                    "reason": f"'{title}' always has one entry chosen, and no other entry "
                              "asked for is offered, so Kconfig chose this one"}
                continue
            if wanted == "y" and choice.selection is not sym and choice.selection is not None:
                answers[full] = {
                    "kind": "changed",
                    "reason": f"another entry of '{title}' was chosen: "
                              f"CONFIG_{choice.selection.name}"}
                continue
        node = prompt_node(sym)
        if node is None:
            answers[full] = {
                "kind": "not_settable",
                "reason": "Kconfig sets this symbol itself from other options (it has no "
                          "prompt); change the options it follows from instead"}
            continue
        if sym.visibility == 0:
            answers[full] = {"kind": "unmet_dependency",
                             "reason": f"its dependencies are not met: needs {unmet(node.prompt[1])}"}
            continue
        if wanted == "n" and kconfiglib.expr_value(sym.rev_dep):
            answers[full] = {"kind": "forced",
                             "reason": f"forced on by {expr(sym.rev_dep)}"}
            continue
        if sym.orig_type == kconfiglib.STRING and not wanted.startswith('"'):
            answers[full] = {"kind": "bad_value",
                             "reason": 'a text option needs its value in double quotes, e.g. "PA13"'}
            continue
        if sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE) and wanted not in ("y", "n", "m"):
            answers[full] = {"kind": "bad_value", "reason": "a yes/no option takes y or n"}
            continue
        if sym.orig_type in (kconfiglib.INT, kconfiglib.HEX):
            base = 16 if sym.orig_type == kconfiglib.HEX else 10
            try:
                number = int(wanted, base)
            except ValueError:
                kind_name = "hexadecimal number (0x...)" if base == 16 else "decimal number"
                answers[full] = {"kind": "bad_value", "reason": f"the value must be a {kind_name}"}
                continue
            for low, high, cond in sym.ranges:
                if kconfiglib.expr_value(cond):
                    lo, hi = int(low.str_value, 0), int(high.str_value, 0)
                    if not lo <= number <= hi:
                        answers[full] = {"kind": "out_of_range",
                                         "reason": f"must be between {low.str_value} and {high.str_value}"}
                    break
            if full in answers:
                continue
        answers[full] = {"kind": "changed", "reason": "Kconfig did not keep this value"}
    return answers


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "symbols":
        sys.stdout.write(json.dumps(_symbols(argv[1])) + "\n")
        return 0
    if len(argv) < 4 or argv[0] != "explain":
        sys.stderr.write("usage: python -m moonraker_octoflash.kconfig_child explain "
                         "KCONFIG CONFIG REQUESTED_JSON SYMBOL...\n")
        return 2
    answers = _explain(argv[1], argv[2], json.loads(argv[3]), argv[4:])
    sys.stdout.write(json.dumps(answers) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
