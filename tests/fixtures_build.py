"""Fixtures for the build tests: simulated checkouts, a Builder, profiles."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest

from moonraker_octoflash.build import Builder
from moonraker_octoflash.sim.trees import no_cross_compiler
from moonraker_octoflash.profiles import Profile, profile_from_json
from moonraker_octoflash.sim.trees import install_tree


@pytest.fixture(scope="session")
def _tree_templates(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """One git checkout of each simulated tree per session; tests get copies."""
    base = tmp_path_factory.mktemp("sim-trees")
    return {kind: install_tree(kind, base / kind) for kind in ("klipper", "katapult")}


def _copy_checkout(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture
def klipper_checkout(tmp_path: Path, _tree_templates: Dict[str, Path]) -> Path:
    """A fresh Klipper-like checkout at v0.13.0-3-g…, in this test's tmp_path."""
    return _copy_checkout(_tree_templates["klipper"], tmp_path / "klipper")


@pytest.fixture
def katapult_checkout(tmp_path: Path, _tree_templates: Dict[str, Path]) -> Path:
    """A fresh Katapult-like checkout at v0.0.1-3-g…, in this test's tmp_path."""
    return _copy_checkout(_tree_templates["katapult"], tmp_path / "katapult")


@pytest.fixture
def build_root(tmp_path: Path) -> Path:
    return tmp_path / "builds"


@pytest.fixture
def builder(build_root: Path, klipper_checkout: Path, katapult_checkout: Path) -> Builder:
    return Builder(str(build_root), klipper_path=str(klipper_checkout),
                   katapult_path=str(katapult_checkout), keep=3, jobs=2, cross_compiler=no_cross_compiler)


ProfileFactory = Callable[..., Profile]


@pytest.fixture
def make_profile() -> ProfileFactory:
    """``make_profile(preset_id, name=None, kconfig=None)`` -> a real Profile."""

    def make(preset_id: str, name: Optional[str] = None,
             kconfig: Optional[Dict[str, str]] = None) -> Profile:
        data = {"name": name or preset_id.replace("btt-octopus-", "octopus-"),
                "preset": preset_id}
        if kconfig:
            data["kconfig"] = dict(kconfig)
        return profile_from_json(data, source="cli")

    return make


class ProgressRecorder:
    """An on_progress callback that keeps every event."""

    def __init__(self) -> None:
        self.events = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def stages(self):
        seen = []
        for e in self.events:
            if not seen or seen[-1] != e.stage:
                seen.append(e.stage)
        return seen

    def output(self):
        return [e.message for e in self.events if e.kind == "output"]


@pytest.fixture
def progress() -> ProgressRecorder:
    return ProgressRecorder()
