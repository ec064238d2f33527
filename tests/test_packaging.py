"""What the update manager installs matches what the package declares."""
import json
import os

try:
    import tomllib
except ImportError:        # Python < 3.11: the same parser, as a package
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_update_manager_requirements_match_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        declared = tomllib.load(f)["project"]["dependencies"]
    with open(os.path.join(ROOT, "scripts", "octoflash-requirements.txt")) as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(declared)


def test_system_dependencies_name_dfu_util():
    with open(os.path.join(ROOT, "scripts", "system-dependencies.json")) as f:
        deps = json.load(f)
    assert "dfu-util" in deps["debian"]
