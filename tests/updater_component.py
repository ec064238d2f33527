"""The octoflash component as the update-manager tests load it into Moonraker.

It is the real component (``moonraker_octoflash.moonraker.component``) in
simulation mode, with two doubles in place of the parts that touch a Klipper
source tree and a board: a builder that "builds" the version written in a
state file, and a flash pipeline that stops the Klipper stand-in, "writes"
the board (the state file, which the stand-in reads when it starts) and
starts it again, as the real executor does.

State file ``<simulation>/board-state.json``::

    {"checkout": "v0.13.0-1004-g0a1b2c3d",      # git describe of the "checkout"
     "fingerprint": "",                          # its uncommitted changes ("" = none)
     "boards": {"mcu": "v0.13.0-730-g84104bbbd"},  # what each Klipper MCU runs
     "reachable": {"octopus": true},             # false: the board is not found
     "flashed": ["octopus"]}                     # appended by every flash

The builder double answers like build.Builder: ``source_version`` (a
``SourceVersion``), ``rendered`` (the real one), ``pending_version`` (the
describe string, ``+config.<sha>`` when the profile differs from its last
build) and artifacts carrying the same records as real builds.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from typing import Any, Dict, Optional

from moonraker_octoflash.artifacts import Artifact, ArtifactFile
from moonraker_octoflash.build import Builder, SourceVersion
from moonraker_octoflash.discovery.klipper import klipper_mcus
from moonraker_octoflash.discovery.snapshot import BoardStatus, DeviceSnapshot
from moonraker_octoflash.events import Progress
from moonraker_octoflash.moonraker.component import OctoFlash

STATE_FILE = "board-state.json"


def read_state(folder: str) -> Dict[str, Any]:
    with open(os.path.join(folder, STATE_FILE)) as f:
        return json.load(f)


def write_state(folder: str, state: Dict[str, Any]) -> None:
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(folder, STATE_FILE))


@dataclasses.dataclass
class BuildResult:
    artifact: Artifact
    skipped: bool = False
    log_path: Optional[str] = None


class StateFileBuilder:
    rendered = staticmethod(Builder.rendered)

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.last: Dict[str, Artifact] = {}

    async def source_version(self, target: str) -> SourceVersion:
        state = read_state(self.folder)
        describe = state["checkout"]
        return SourceVersion(describe, describe.endswith("-dirty"), state.get("fingerprint", ""))

    async def latest(self, profile_name: str) -> Optional[Artifact]:
        return self.last.get(profile_name)

    async def pending_version(self, profile: Any) -> str:
        version = await self.source_version(profile.target)
        sha = self.rendered(profile)[2]
        last = self.last.get(profile.name)
        if last is not None and last.rendered_sha256 != sha:
            return f"{version.describe}+config.{sha[:8]}"
        return version.describe

    async def build(self, profile: Any, force: bool = False,
                    on_progress: Any = None) -> BuildResult:
        source = await self.source_version(profile.target)
        emit = on_progress or (lambda _e: None)
        emit(Progress("configure", "make olddefconfig"))
        for name in ("src/sched.o", "src/command.o", "src/stm32/stm32f4.o"):
            emit(Progress("compile", f"  Compiling out/{name}", kind="output"))
            await asyncio.sleep(0.01)
        emit(Progress("link", "  Linking out/klipper.elf"))
        created = time.time()
        artifact = Artifact(
            id=time.strftime("%Y%m%d-%H%M%S", time.localtime(created)), profile=profile.name,
            preset=profile.preset.id, target=profile.target, mcu=profile.mcu,
            app_address=profile.preset.app_address, source_version=source.describe,
            config_sha256="0" * 64, files=[ArtifactFile("klipper.bin", 1024, "1" * 64)],
            created=created, directory=self.folder, dict_version=source.describe,
            source_fingerprint=source.fingerprint, rendered_sha256=self.rendered(profile)[2])
        self.last[profile.name] = artifact
        return BuildResult(artifact)


@dataclasses.dataclass
class Plan:
    profile: str
    klipper_mcu: Optional[str]
    version: str

    def to_json(self) -> Dict[str, Any]:
        return {"summary": f"write {self.version} to {self.profile}",
                "steps": [{"stage": "stop_klipper"}, {"stage": "write"},
                          {"stage": "start_klipper"}]}


class Snapshot(DeviceSnapshot):
    """Discovery as the real scan reports it (Klipper's MCUs), with boards the
    state file calls unreachable not found anywhere."""

    reachable: Dict[str, bool] = {}

    def status_of(self, profile: Any) -> BoardStatus:
        if not self.reachable.get(profile.name, True):
            return BoardStatus("not_found", "not seen on USB, serial or CAN")
        return super().status_of(profile)


class StateFilePipeline:
    def __init__(self, component: "UpdaterTestComponent") -> None:
        self.component = component
        self.folder = component.settings.simulation

    async def scan(self) -> Snapshot:
        # Like the real pipeline: Klipper's MCUs read afresh for every scan.
        status = await self.component._fresh_klipper_status()
        snapshot = Snapshot(klipper_mcus=klipper_mcus(status), klipper_state="ready")
        snapshot.reachable = dict(read_state(self.folder).get("reachable", {}))
        return snapshot

    async def prepare(self, profile: Any, artifact: Any, options: Dict[str, Any]) -> Plan:
        if (await self.scan()).status_of(profile).state == "not_found":
            from moonraker_octoflash.errors import CheckFailed
            raise CheckFailed(f"the board of '{profile.name}' is not found")
        return Plan(profile.name, profile.klipper_mcu, artifact.version)

    def needs_klipper_stopped(self, plan: Plan) -> bool:
        return True

    async def execute(self, plan: Plan, on_progress: Any) -> Dict[str, Any]:
        service = self.component.service
        on_progress(Progress("stop_klipper", "stopping Klipper"))
        await service.stop()
        try:
            on_progress(Progress("write", "writing firmware"))
            for pct in (0, 25, 50, 75, 100):
                on_progress(Progress("write", f"Download [{pct}%]", percent=pct, kind="progress"))
                await asyncio.sleep(0.02)
            state = read_state(self.folder)
            if plan.klipper_mcu:
                state.setdefault("boards", {})[plan.klipper_mcu] = plan.version
            state.setdefault("flashed", []).append(plan.profile)
            write_state(self.folder, state)
        finally:
            on_progress(Progress("start_klipper", "starting Klipper"))
            await service.start()
        return {"written": plan.version}


class UpdaterTestComponent(OctoFlash):
    def _make_builder(self) -> Any:
        return StateFileBuilder(self.settings.simulation)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.pipeline = StateFilePipeline(self)   # type: ignore[assignment]
        self.runner.pipeline = self.pipeline
        # The page (web.register is idempotent: the component may call it too).
        from moonraker_octoflash.moonraker import web
        web.register(self)


def load_component(config: Any) -> UpdaterTestComponent:
    return UpdaterTestComponent(config)
