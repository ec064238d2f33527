"""Update all: every stale profile is built, together, before the first board is touched."""
from __future__ import annotations

from typing import Any, Callable, Dict, List

from moonraker_octoflash.build import Builder
from moonraker_octoflash.events import Progress
from moonraker_octoflash.jobs import FlashPipeline, JobRunner
from moonraker_octoflash.profiles import profile_from_json
from moonraker_octoflash.sim.trees import change_source, no_cross_compiler


class RecordingPipeline(FlashPipeline):
    """Plans at once; ``execute`` notes which builds were kept when the board's turn came."""

    def __init__(self, builder: Builder, names: List[str]) -> None:
        self.builder = builder
        self.names = names
        self.kept_at_write: List[Dict[str, List[str]]] = []
        self.written: List[str] = []

    async def prepare(self, profile, artifact, options):
        return {"profile": profile.name, "artifact": artifact.id, "steps": [{"stage": "write"}]}

    async def execute(self, plan, on_progress: Callable[[Progress], None]) -> Dict[str, Any]:
        on_progress(Progress("stop_klipper", "stopping Klipper"))
        self.kept_at_write.append({n: [a.id for a in self.builder.store.list(n)]
                                   for n in self.names})
        self.written.append(plan["artifact"])
        return {"written": True}


def profiles():
    return [profile_from_json({"name": "ebb", "preset": "btt-ebb-klipper-1m",
                               "canbus_uuid": "aabbccddeeff"}),
            profile_from_json({"name": "octopus", "preset": "btt-octopus-f446-canbridge",
                               "canbus_uuid": "0123456789ab"})]


async def test_update_all_builds_every_board_before_stopping_klipper(tmp_path, klipper_checkout):
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(klipper_checkout), jobs=2,
                      cross_compiler=no_cross_compiler)
    pipeline = RecordingPipeline(builder, ["ebb", "octopus"])
    runner = JobRunner(builder, pipeline=pipeline)

    job = await runner.start_update_all(profiles(), origin="api")
    await runner.wait(job.id, 120)
    assert job.state == "done", job.error
    assert [s.stage for s in job.steps] == ["build", "ebb", "octopus"]
    assert job.steps[0].result == {"built": ["ebb", "octopus"], "up_to_date": [], "failed": []}
    # when the first board was written (Klipper stopped), both boards' firmware was built
    first = pipeline.kept_at_write[0]
    assert len(first["ebb"]) == 1 and len(first["octopus"]) == 1
    assert pipeline.written == [first["ebb"][0], first["octopus"][0]]
    # the flashes found their builds done: up to date, nothing built twice
    for child in (runner.get(c) for c in job.children):
        build = next(s for s in child.steps if s.stage == "build")
        assert build.result["skipped"] is True, child.steps
    assert any("ebb: [compile]" in line for line in job.log)

    # a source change: both are stale again and built again, together, first
    change_source(klipper_checkout, "src/sched.c", note="update all again")
    again = await runner.start_update_all(profiles(), origin="api")
    await runner.wait(again.id, 120)
    assert again.state == "done", again.error
    assert again.steps[0].result["built"] == ["ebb", "octopus"]
    assert all(len(ids) == 2 for ids in pipeline.kept_at_write[2].values())


async def test_a_board_whose_build_fails_is_not_flashed_the_others_are(tmp_path,
                                                                       klipper_checkout):
    builder = Builder(str(tmp_path / "builds"), klipper_path=str(klipper_checkout), jobs=2,
                      cross_compiler=no_cross_compiler)
    pipeline = RecordingPipeline(builder, ["ebb", "octopus"])
    runner = JobRunner(builder, pipeline=pipeline)
    ebb, octopus = profiles()
    ebb = profile_from_json({"name": "ebb", "preset": "btt-ebb-klipper-1m",
                             "canbus_uuid": "aabbccddeeff",
                             "kconfig": {"CONFIG_NO_SUCH_OPTION": "y"}})

    job = await runner.start_update_all([ebb, octopus], origin="api")
    await runner.wait(job.id, 120)
    assert job.state == "failed"
    assert job.result["summary"] == "1 of 2 boards updated"
    assert job.steps[0].result["failed"] == ["ebb"]
    children = {runner.get(c).profile: runner.get(c) for c in job.children}
    assert children["ebb"].state == "failed" and "CONFIG_NO_SUCH_OPTION" in children["ebb"].error
    assert children["octopus"].state == "done"
    assert len(pipeline.written) == 1          # only the octopus was written
