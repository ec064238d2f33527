"""docs/ stays true: every option, endpoint, method, notification and command is documented."""
import os
import re

import pytest

from moonraker_octoflash.cli import build_parser
from moonraker_octoflash.profiles import SECTION_OPTIONS
from moonraker_octoflash.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "moonraker_octoflash")


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def component_sources():
    folder = os.path.join(PKG, "moonraker")
    return "\n".join(read("moonraker_octoflash", "moonraker", name)
                     for name in sorted(os.listdir(folder)) if name.endswith(".py"))


def registered_endpoints():
    """(path, request types) from the component's endpoint table and web.py."""
    source = component_sources()
    table = re.findall(r'\("(/server/octoflash/[a-z_/]+)",\s*([a-z |]+),', source)
    assert len(table) >= 11, "the endpoint table was not found; update this test"
    return [(path, [t.strip() for t in kinds.split("|")]) for path, kinds in table]


def jsonrpc_names(path, kinds):
    base = path.lstrip("/").replace("/", ".")
    if len(kinds) == 1:
        return [base]
    head, last = base.rsplit(".", 1)
    return [f"{head}.{kind}_{last}" for kind in kinds]


@pytest.mark.parametrize("option", Settings.option_names())
def test_every_octoflash_option_is_documented(option):
    assert re.search(rf"`{option}`", read("docs", "moonraker.md")), \
        f"[octoflash] {option} is missing from docs/moonraker.md"


@pytest.mark.parametrize("option", SECTION_OPTIONS)
def test_every_profile_option_is_documented(option):
    assert re.search(rf"`{option}`", read("docs", "moonraker.md")), \
        f"[octoflash NAME] {option} is missing from docs/moonraker.md"


def test_every_endpoint_and_jsonrpc_method_is_documented():
    api = read("docs", "api.md")
    missing = []
    for path, kinds in registered_endpoints():
        if path not in api:
            missing.append(path)
        for name in jsonrpc_names(path, kinds):
            if f"`{name}`" not in api:
                missing.append(name)
    assert not missing, f"not in docs/api.md: {missing}"


def test_every_notification_is_documented():
    source = component_sources()
    names = re.findall(r'notify_name="([a-z_]+)"', source)
    assert names, "no notifications found; update this test"
    api = read("docs", "api.md")
    for name in names:
        assert f"notify_{name}" in api, f"notify_{name} is missing from docs/api.md"


def test_every_remote_method_has_a_macro():
    source = component_sources()
    methods = re.findall(r'register_remote_method\("([a-z_]+)"', source)
    assert len(methods) == 3
    macros = read("docs", "macros.cfg")
    for method in methods:
        assert f'action_call_remote_method("{method}"' in macros, method


def test_every_command_is_documented():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    cli = read("docs", "cli.md")
    for name in sub.choices:
        assert f"`octoflash {name}" in cli, f"octoflash {name} is missing from docs/cli.md"
        for action in sub.choices[name]._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in cli, f"octoflash {name} {flag} is missing from docs/cli.md"


def test_every_row_of_the_reliability_table_names_a_test_that_exists():
    """docs/reliability.md: each row names its test; each named test is in tests/."""
    text = read("docs", "reliability.md")
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| case") and "---" not in line]
    assert len(rows) >= 25
    missing = []
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[-1]
        files = re.findall(r"`(test_[a-z0-9_]+\.py)::", cell)
        assert files, f"a row without its test: {row}"
        current = None
        for token in re.findall(r"`([^`]+)`", cell):
            if "::" in token:
                current, token = token.split("::", 1)
            source = read("tests", current)
            if not re.search(rf"^(async )?def {re.escape(token)}\b", source, re.M):
                missing.append(f"{current}::{token}")
    assert not missing, f"named in docs/reliability.md but not in tests/: {missing}"
