"""The import contract: the seams of docs/architecture.md, kept by reading the code.

* no product module imports the simulation package (``moonraker_octoflash.sim``):
  the simulated machine is plugged in from outside, through the ``machine``
  option (``machine.load_machine``); only the demo's launcher may build it;
* the core imports nothing of Moonraker: only ``moonraker_octoflash/moonraker/``
  does;
* no module swallows an ImportError of the project's own modules (it would
  hide a real bug behind "feature unavailable").
"""
from __future__ import annotations

import ast
import functools
import os
from typing import Iterator, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "moonraker_octoflash")
EDGES: set = set()      # every module outside sim/ is product; the demo lives in sim/
# The file linked into Moonraker's components folder: telling the user that the
# package is missing from Moonraker's environment is its whole job.
LINK_FILE = os.path.join("moonraker", "octoflash_link.py")


def module_files() -> List[str]:
    """The package's modules, relative to it (a listing: collecting the tests
    parses nothing, so every test process does not pay for it)."""
    found = []
    for base, dirs, files in os.walk(PKG):
        dirs[:] = sorted(d for d in dirs if d not in ("trees", "__pycache__"))
        found += [os.path.relpath(os.path.join(base, name), PKG)
                  for name in sorted(files) if name.endswith(".py")]
    return found


@functools.cache
def parsed(rel: str) -> ast.Module:
    path = os.path.join(PKG, rel)
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def modules() -> Iterator[Tuple[str, ast.Module]]:
    for rel in module_files():
        yield rel, parsed(rel)


def imported(rel: str, tree: ast.Module) -> List[Tuple[int, str]]:
    """(line, absolute module name) of every import in a module of the package."""
    package = ["moonraker_octoflash"] + os.path.dirname(rel).split(os.sep)
    package = [p for p in package if p]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
    return found


def test_the_contract_reads_every_module():
    names = [rel for rel, _tree in modules()]
    assert "moonraker/component.py" in names and "sim/machine.py" in names
    assert len(names) > 40


@pytest.mark.parametrize("rel", [rel for rel in module_files()
                                 if not rel.startswith("sim" + os.sep) and rel not in EDGES])
def test_no_product_module_imports_the_simulation(rel):
    bad = [(line, name) for line, name in imported(rel, parsed(rel))
           if name == "moonraker_octoflash.sim" or name.startswith("moonraker_octoflash.sim.")]
    assert not bad, f"{rel} imports the simulation: {bad}"


@pytest.mark.parametrize("rel", [rel for rel in module_files()
                                 if not rel.startswith(("moonraker" + os.sep, "sim" + os.sep))
                                 and rel not in EDGES])
def test_the_core_imports_nothing_of_moonraker(rel):
    # The installer and the command line set the component up (link it, find
    # Moonraker's layout): they may use the adapter's helpers, never Moonraker.
    installs = rel in ("installer.py", "cli.py")
    bad = [(line, name) for line, name in imported(rel, parsed(rel))
           if name == "moonraker" or name.startswith("moonraker.")
           or (name.startswith("moonraker_octoflash.moonraker") and not installs)]
    assert not bad, f"{rel} (core) imports Moonraker or the adapter: {bad}"


def test_no_own_import_is_swallowed():
    bad = []
    for rel, tree in modules():
        if rel == LINK_FILE:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            caught = {getattr(h.type, "id", None) for h in node.handlers}
            if not caught & {"ImportError", "ModuleNotFoundError", "Exception", None}:
                continue
            for line, name in imported(rel, ast.Module(body=node.body, type_ignores=[])):
                if name.startswith("moonraker_octoflash"):
                    bad.append(f"{rel}:{line} {name}")
    assert not bad, f"imports of the project's own modules inside try/except: {bad}"
