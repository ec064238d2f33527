"""JobRunner: one flash at a time, held profiles, cancellation, events, bounded history.

The runner's rules are tested with a flash pipeline whose ``execute`` waits
on a gate the test opens, so "while a flash is writing" is a state the test
holds as long as it needs; builds and real flashes through the core are
tested end to end in test_jobs_core.py and the Moonraker tests.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from moonraker_octoflash.artifacts import Artifact, ArtifactFile
from moonraker_octoflash.sim.trees import no_cross_compiler
from moonraker_octoflash.errors import CheckFailed, ConflictError, NotFoundError, ValidationError
from moonraker_octoflash.events import Progress
from moonraker_octoflash.jobs import (FlashPipeline, JobRunner,
                                      MemoryJobStorage, update_order)
from moonraker_octoflash.profiles import profile_from_json


def make_profile(name: str, preset: str = "btt-octopus-f446-canbridge", **extra: Any):
    return profile_from_json(dict({"name": name, "preset": preset}, **extra))


def make_artifact(profile: str, tmp_path) -> Artifact:
    return Artifact(id="20260101-000000", profile=profile, preset="btt-octopus-f446-canbridge",
                    target="klipper", mcu="stm32f446xx", app_address=0x08008000,
                    source_version="v0.13.0-3-g1a2b3c4", config_sha256="0" * 64,
                    files=[ArtifactFile("klipper.bin", 1024, "1" * 64)], created=time.time(),
                    directory=str(tmp_path), dict_version="v0.13.0-3-g1a2b3c4")


class GatedPipeline(FlashPipeline):
    """Plans at once; ``execute`` reports erase/write and waits for ``gate``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()
        self.executed: List[str] = []
        self.fail_with: Optional[Exception] = None

    async def prepare(self, profile, artifact, options):
        return {"profile": profile.name, "steps": [{"stage": "write"}],
                "summary": f"write {artifact.id} to {profile.name}"}

    async def execute(self, plan, on_progress: Callable[[Progress], None]) -> Dict[str, Any]:
        on_progress(Progress("stop_klipper", "stopping Klipper"))
        on_progress(Progress("write", "writing", 0.0))
        self.writing.set()
        await self.gate.wait()
        for pct in (50.0, 100.0):
            on_progress(Progress("write", f"{pct:.0f}%", pct, kind="progress"))
        on_progress(Progress("write", "Programming Complete", None, kind="output"))
        if self.fail_with is not None:
            raise self.fail_with
        self.executed.append(plan["profile"])
        return {"written": True}


@pytest.fixture
async def setup(tmp_path):
    # async: on Python 3.9 an asyncio.Event belongs to the loop current when it
    # is made, which must be the test's
    pipeline = GatedPipeline()
    storage = MemoryJobStorage()
    updates: List[Dict[str, Any]] = []
    runner = JobRunner(None, pipeline=pipeline, storage=storage,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    runner.add_listener(lambda u: updates.append(u.to_json()))
    return runner, pipeline, storage, updates


async def test_a_flash_runs_through_its_steps_and_reports_them(setup):
    runner, pipeline, storage, updates = setup
    job = await runner.start_flash(make_profile("octopus"), build=False)
    assert job.state in ("queued", "running")
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    pipeline.gate.set()
    await runner.wait(job.id, 5)
    assert job.state == "done", job.error
    assert [s.stage for s in job.steps] == ["artifact", "plan", "stop_klipper", "write"]
    assert all(s.state == "done" for s in job.steps)
    assert job.plan["summary"].startswith("write 20260101-000000")
    assert job.artifact["id"] == "20260101-000000" and job.result == {"written": True}
    assert "Programming Complete" in job.log
    # every update names the job, the profile, the stage and the state
    events = [(u["event"], u["stage"], u["percent"]) for u in updates]
    assert ("progress", "write", 50.0) in events and ("progress", "write", 100.0) in events
    assert updates[-1]["final"] is True and updates[-1]["state"] == "done"
    assert all(u["job_id"] == job.id and u["profile"] == "octopus" for u in updates)
    # the history holds what was kept
    assert storage.records[job.id]["state"] == "done"
    assert storage.records[job.id]["steps"][-1]["stage"] == "write"


async def test_only_one_flash_at_a_time(setup):
    runner, pipeline, _storage, _updates = setup
    first = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    with pytest.raises(ConflictError) as err:
        await runner.start_flash(make_profile("toolhead"), build=False)
    assert first.id in str(err.value) and "only one board is flashed at a time" in str(err.value)
    assert len(runner.jobs()) == 1             # the refused request left no job behind
    pipeline.gate.set()
    await runner.wait(first.id, 5)
    second = await runner.start_flash(make_profile("toolhead"), build=False)
    await runner.wait(second.id, 5)
    assert second.state == "done"
    assert pipeline.executed == ["octopus", "toolhead"]


async def test_a_profile_held_by_a_job_cannot_be_built_or_flashed_again(setup):
    runner, pipeline, _s, _u = setup
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    with pytest.raises(ConflictError, match="in use by job"):
        await runner.start_build(make_profile("octopus"))
    assert runner.job_holding("octopus") is job
    pipeline.gate.set()
    await runner.wait(job.id, 5)
    assert runner.job_holding("octopus") is None


async def test_cancelling_while_the_board_is_written_is_refused(setup):
    runner, pipeline, _s, _u = setup
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    with pytest.raises(ConflictError, match="writing the board"):
        await runner.cancel(job.id)
    pipeline.gate.set()
    await runner.wait(job.id, 5)
    assert job.state == "done"
    with pytest.raises(ConflictError, match="already ended"):
        await runner.cancel(job.id)


async def test_cancelling_before_the_write_stops_the_job(tmp_path):
    started = asyncio.Event()

    class SlowPlan(GatedPipeline):
        async def prepare(self, profile, artifact, options):
            started.set()
            await asyncio.sleep(30)

    runner = JobRunner(None, pipeline=SlowPlan(),
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(started.wait(), 5)
    await runner.cancel(job.id)
    assert job.state == "cancelled"
    assert job.steps[-1].stage == "plan" and job.steps[-1].state == "cancelled"
    assert runner.flash_job is None            # the flash slot is free again


class GatedDisk(MemoryJobStorage):
    """Job storage whose writes hang while ``open`` is clear, as on a slow SD card.

    ``asked`` is the state of each record whose write was asked for, in order.
    Make it in the test (on Python 3.9 an asyncio.Event belongs to the loop
    current when it is made).
    """

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.asked: List[str] = []
        self._changed = asyncio.Event()

    async def save(self, job: Dict[str, Any]) -> None:
        self.asked.append(job["state"])
        self._changed.set()
        await self.open.wait()
        await super().save(job)

    async def asked_for(self, predicate: Callable[[List[str]], bool]) -> None:
        """Until the writes asked for so far satisfy ``predicate``."""
        while not predicate(self.asked):
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 5)


async def test_the_record_is_on_disk_before_klipper_is_stopped_but_the_plan_does_not_wait(
        tmp_path):
    """A database write waits for the disk: the plan goes on meanwhile, the write does not."""
    seen: Dict[str, Any] = {}

    class Watching(GatedPipeline):
        async def prepare(self, profile, artifact, options):
            seen["records_at_plan"] = dict(storage.records)
            return await super().prepare(profile, artifact, options)

        async def execute(self, plan, on_progress):
            seen["record_at_execute"] = dict(storage.records.get(job.id) or {})
            return await super().execute(plan, on_progress)

    storage = GatedDisk()           # closed: every record write hangs
    pipeline = Watching()
    runner = JobRunner(None, pipeline=pipeline, storage=storage,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    job = await runner.start_flash(make_profile("octopus"), build=False)
    # the first write asked for is the one with the plan: the plan was made
    # although nothing is stored yet ...
    await storage.asked_for(lambda asked: bool(asked))
    assert job.plan and seen["records_at_plan"] == {}
    # ... and the flash now waits for that write: Klipper is not stopped (execute)
    assert "record_at_execute" not in seen and not pipeline.writing.is_set()
    storage.open.set()
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    stored = seen["record_at_execute"]
    assert stored["state"] == "running" and stored["plan"]["summary"].startswith("write ")
    pipeline.gate.set()
    await runner.wait(job.id, 5)
    assert job.state == "done" and storage.records[job.id]["state"] == "done"


async def test_closing_stores_a_running_flash_as_interrupted(tmp_path):
    """Moonraker stopping: the flash is cancelled and its record says so before close ends."""
    storage = GatedDisk()
    storage.open.set()
    pipeline = GatedPipeline()
    runner = JobRunner(None, pipeline=pipeline, storage=storage,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    storage.open.clear()            # from now on each commit hangs until the test lets it go
    closing = asyncio.ensure_future(runner.close())
    await storage.asked_for(lambda asked: "interrupted" in asked)
    assert not closing.done()       # close waits for that write
    storage.open.set()
    await asyncio.wait_for(closing, 10)
    stored = storage.records[job.id]
    assert stored["state"] == "interrupted", storage.asked
    assert "Moonraker stopped while this job was running" in stored["error"]
    assert storage.asked[-1] == "interrupted"


async def test_preflight_refuses_before_a_job_exists_and_again_before_writing(tmp_path):
    printing = {"now": True}

    async def preflight(profile, plan):
        if printing["now"]:
            raise ConflictError("Klipper is printing")

    pipeline = GatedPipeline()
    runner = JobRunner(None, pipeline=pipeline, preflight=preflight,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    with pytest.raises(ConflictError, match="printing"):
        await runner.start_flash(make_profile("octopus"), build=False)
    assert runner.jobs() == []

    # allowed at request time, but the print started before the write: refused, nothing written
    calls = []

    async def preflight_later(profile, plan):
        calls.append(plan)
        if plan is not None:
            raise ConflictError("Klipper is printing (benchy.gcode)")
    runner.preflight = preflight_later
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await runner.wait(job.id, 5)
    assert job.state == "refused" and "benchy.gcode" in job.error
    assert pipeline.executed == [] and not pipeline.writing.is_set()
    assert calls[0] is None and calls[1] is not None


async def test_a_failed_check_is_refused_and_a_failed_write_keeps_the_recovery(setup):
    from moonraker_octoflash.errors import FlashError
    runner, pipeline, _s, _u = setup
    pipeline.fail_with = CheckFailed("the binary is for stm32f407xx, the board is stm32f446xx")
    pipeline.gate.set()
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await runner.wait(job.id, 5)
    assert job.state == "refused" and "stm32f407xx" in job.error

    pipeline.fail_with = FlashError("write failed at 40%", recovery="Double-click reset, then flash again")
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await runner.wait(job.id, 5)
    assert job.state == "failed" and job.recovery == "Double-click reset, then flash again"
    assert job.message.startswith("Flash of octopus failed: write failed at 40%")


async def test_history_is_bounded_and_survives_a_restart_as_interrupted(tmp_path):
    records: Dict[str, Dict[str, Any]] = {}
    pipeline = GatedPipeline()
    pipeline.gate.set()
    runner = JobRunner(None, pipeline=pipeline, storage=MemoryJobStorage(records), history_size=3,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    done = []
    for n in range(5):
        job = await runner.start_flash(make_profile(f"board{n}"), build=False)
        await runner.wait(job.id, 5)
        done.append(job.id)
    assert [j.id for j in runner.jobs()] == list(reversed(done[-3:]))
    assert sorted(records) == sorted(done[-3:])

    # a job that was running when the process died
    pipeline.gate.clear()
    pipeline.writing.clear()
    running = await runner.start_flash(make_profile("octopus"), build=False)
    await asyncio.wait_for(pipeline.writing.wait(), 5)
    assert records[running.id]["state"] == "running"

    restarted = JobRunner(None, pipeline=GatedPipeline(), storage=MemoryJobStorage(dict(records)),
                          history_size=3)
    loaded = await restarted.load()
    again = restarted.get(running.id)
    assert again.state == "interrupted" and "stopped while this job was running" in again.error
    assert again.steps[-1].state == "interrupted"
    assert len(loaded) == 3 and len(restarted.jobs()) == 3
    pipeline.gate.set()
    await runner.wait(running.id, 5)


async def test_a_long_log_is_bounded_but_keeps_its_start_and_end(tmp_path):
    class Chatty(GatedPipeline):
        async def execute(self, plan, on_progress):
            for n in range(2000):
                on_progress(Progress("write", f"line {n}", kind="output"))
            return {}

    runner = JobRunner(None, pipeline=Chatty(), log_lines=100,
                       find_artifact=lambda p, _id: make_artifact(p.name, tmp_path))
    job = await runner.start_flash(make_profile("octopus"), build=False)
    await runner.wait(job.id, 5)
    assert len(job.log) == 100 and job.log_dropped >= 1900
    assert "line 1999" in job.log and any("[artifact]" in line for line in job.log)


@pytest.fixture(scope="module")
def klipper_tree(tmp_path_factory):
    """The small Klipper-like checkout: real make and Kconfig, no cross compiler."""
    from moonraker_octoflash.sim.trees import install_tree
    return str(install_tree("klipper", tmp_path_factory.mktemp("src") / "klipper"))


async def test_a_build_job_records_the_artifact_and_the_builder_steps(tmp_path, klipper_tree):
    from moonraker_octoflash.build import Builder
    storage = MemoryJobStorage()
    runner = JobRunner(Builder(str(tmp_path / "builds"), klipper_path=klipper_tree,
                               cross_compiler=no_cross_compiler),
                       storage=storage)
    job = await runner.start_build(make_profile("octopus"))
    await runner.wait(job.id, 60)
    assert job.state == "done", job.error
    stages = [s.stage for s in job.steps]
    assert stages[0] == "build" and "configure" in stages and "compile" in stages
    assert all(s.state == "done" for s in job.steps)
    assert job.artifact["profile"] == "octopus" and job.artifact["mcu"] == "stm32f446xx"
    assert job.result["skipped"] is False and job.log_path.endswith("build.log")
    again = await runner.start_build(make_profile("octopus"))
    await runner.wait(again.id, 60)
    assert again.result["skipped"] is True
    assert again.message == "Build of octopus: up to date, nothing rebuilt"
    assert storage.records[again.id]["artifact"]["id"] == job.artifact["id"]


async def test_update_all_flashes_can_nodes_first_and_the_bridge_last(tmp_path, klipper_tree):
    from moonraker_octoflash.build import Builder
    pipeline = GatedPipeline()
    pipeline.gate.set()
    runner = JobRunner(Builder(str(tmp_path / "builds"), klipper_path=klipper_tree,
                               cross_compiler=no_cross_compiler),
                       pipeline=pipeline)
    bridge = make_profile("octopus", canbus_uuid="0123456789ab")
    usb = make_profile("spare", "btt-octopus-f429-katapult", serial="/dev/ttyACM0")
    # a CAN node: the bridge preset with CAN on PD0/PD1 instead of the bridge
    node = make_profile("ebb", canbus_uuid="aabbccddeeff", kconfig={
        "CONFIG_STM32_USBCANBUS_PA11_PA12": "n", "CONFIG_STM32_CMENU_CANBUS_PD0_PD1": "n",
        "CONFIG_STM32_MMENU_CANBUS_PD0_PD1": "y"})
    assert [p.name for p in update_order([bridge, usb, node])] == ["ebb", "spare", "octopus"]

    job = await runner.start_update_all([bridge, node], origin="macro")
    with pytest.raises(ConflictError, match="Another flash is running"):
        await runner.start_flash(make_profile("other"), build=False)
    await runner.wait(job.id, 60)
    assert job.state == "done", job.error
    assert job.kind == "update_all" and job.options["profiles"] == ["ebb", "octopus"]
    assert pipeline.executed == ["ebb", "octopus"]
    children = [runner.get(c) for c in job.children]
    assert [(c.profile, c.state) for c in children] == [("ebb", "done"), ("octopus", "done")]
    assert all(c.parent == job.id and c.origin == "macro" for c in children)
    assert job.result["summary"] == "2 of 2 boards updated"
    assert [s.stage for s in job.steps] == ["build", "ebb", "octopus"]


async def test_unknown_jobs_and_empty_updates_are_clear_errors(setup):
    runner, _p, _s, _u = setup
    with pytest.raises(NotFoundError, match="No job with id 'x'"):
        runner.get("x")
    with pytest.raises(ValidationError, match="auto_update"):
        await runner.start_update_all([])


# --- bounded records --------------------------------------------------------

class FailingBuilder:
    """A builder whose build fails with ``error`` after printing ``lines`` lines."""

    def __init__(self, error: str, lines: int = 0, line_length: int = 10) -> None:
        self.error = error
        self.lines = lines
        self.line_length = line_length

    async def build(self, profile, force=False, on_progress=None):
        for i in range(self.lines):
            on_progress(Progress("compile", f"{i:06d}" + "x" * self.line_length, None,
                                 kind="output"))
        raise ValidationError(self.error)


async def test_a_huge_error_is_bounded_in_the_record_and_the_notification():
    error = "CONFIG_X: refused\n" * 300_000          # 5 MB, as 200,000 bad symbols once gave
    storage = MemoryJobStorage()
    updates: List[Dict[str, Any]] = []
    runner = JobRunner(FailingBuilder(error, lines=3000, line_length=5000), storage=storage)
    runner.add_listener(lambda u: updates.append(u.to_json()))
    job = await runner.start_build(make_profile("octopus"))
    await runner.wait(job.id, 10)
    record = storage.records[job.id]
    assert record["state"] == "failed"
    assert record["error"].startswith("CONFIG_X: refused") and len(record["error"]) < 4100
    assert "more characters left out" in record["error"]
    assert len(record["log"]) <= 500 and all(len(line) < 1100 for line in record["log"])
    assert record["log_dropped"] > 0
    final = [u for u in updates if u["final"]][0]
    assert len(final["error"]) < 4100 and len(final["message"]) < 4100
    import json
    assert len(json.dumps(record)) < 700_000


async def test_the_history_is_bounded_in_bytes():
    storage = MemoryJobStorage()
    runner = JobRunner(FailingBuilder("E" * 3900, lines=500, line_length=900),
                       storage=storage, history_size=1000, history_bytes=2 * 1024 * 1024)
    ids = []
    for _ in range(8):
        job = await runner.start_build(make_profile("octopus"))
        await runner.wait(job.id, 10)
        ids.append(job.id)
    import json
    total = sum(len(json.dumps(r)) for r in storage.records.values())
    assert total <= 2 * 1024 * 1024
    assert ids[-1] in storage.records and ids[0] not in storage.records   # oldest dropped
    assert {j.id for j in runner.jobs()} == set(storage.records)


def test_a_job_record_carries_every_field_of_its_steps_and_copies_their_results():
    import dataclasses

    from moonraker_octoflash.job_records import Job, JobStep
    step = JobStep(stage="write", message="write 50%", percent=50.0,
                   result={"tool": {"lines": ["a"]}})
    job = Job(id="j1", kind="flash", profile="octopus", steps=[step])
    record = job.to_json()["steps"][0]
    assert set(record) == {f.name for f in dataclasses.fields(JobStep)}
    assert record["result"] == {"tool": {"lines": ["a"]}} and record["percent"] == 50.0
    record["result"]["tool"]["lines"].append("b")      # a reader changing its copy
    assert step.result == {"tool": {"lines": ["a"]}}
    assert Job.from_json(job.to_json()).steps[0] == step
