"""Moonraker's start after a flash died with it: the decisions of ``klipper_recovery.after_crash``.

The end-to-end case (Moonraker killed during a write, Klipper started again)
is in test_moonraker_crash.py; here the cases a simulated printer cannot
play: Moonraker without service control (``provider: none``) and a start
that fails.  The job history is the real runner's; the record is what a
dead flash leaves in the writer lock's file.
"""
from __future__ import annotations

import json
import types

import pytest

from moonraker_octoflash.errors import UnavailableError
from moonraker_octoflash.flash.writer_lock import probe, writer_lock_path
from moonraker_octoflash.jobs import JobRunner, MemoryJobStorage
from moonraker_octoflash.moonraker.klipper_recovery import after_crash

PROVIDER_NONE = ("Moonraker cannot stop and start Klipper here ([machine] provider: none), "
                 "and flashing a board Klipper is using needs Klipper stopped. Set …")
RECOVERY = "The application area was partly written; Katapult itself was not touched."


class FakeKlippy:
    def __init__(self) -> None:
        self.connected = False

    def is_connected(self) -> bool:
        return self.connected


class FakeService:
    def __init__(self, klippy: FakeKlippy, problem=None, fails=False) -> None:
        self.klippy, self.problem, self.fails = klippy, problem, fails
        self.starts = 0

    async def _wait(self, condition, timeout):
        return condition()

    def control_problem(self):
        return self.problem

    async def start(self):
        self.starts += 1
        if self.fails:
            raise UnavailableError("Moonraker could not start Klipper again: unit not found")
        self.klippy.connected = True


async def _component(tmp_path, **service_kw):
    path = writer_lock_path(str(tmp_path))
    with open(path, "w") as f:          # what the killed Moonraker's flash left behind
        json.dump({"pid": 999999, "kind": "moonraker", "job_id": "20261130-210000-ab12",
                   "profiles": ["toolhead"], "klipper_stopped": True, "stage": "write_katapult",
                   "recovery": RECOVERY}, f)
    storage = MemoryJobStorage({"20261130-210000-ab12": {
        "job_id": "20261130-210000-ab12", "kind": "flash", "profile": "toolhead",
        "state": "running", "stage": "write", "created": 1.0, "started": 1.0,
        "steps": [{"stage": "write", "state": "running", "started": 1.0}]}})
    runner = JobRunner(None, storage=storage)
    await runner.load()
    klippy = FakeKlippy()
    warnings, console = [], []
    component = types.SimpleNamespace(
        data_path=str(tmp_path), runner=runner, klippy=klippy,
        klipper=types.SimpleNamespace(klippy=klippy),
        service=FakeService(klippy, **service_kw),
        settings=types.SimpleNamespace(reconnect_timeout=1.0),
        warn=lambda message, key: warnings.append(message),
        console=types.SimpleNamespace(say=console.append))
    await after_crash(component, runner.interrupted_on_load)
    job = runner.get("20261130-210000-ab12")
    return component, job, warnings, console, path


async def test_klipper_is_started_again_and_the_job_says_so(tmp_path):
    component, job, warnings, console, path = await _component(tmp_path)
    assert component.service.starts == 1 and component.klippy.connected
    assert job.state == "interrupted" and job.recovery == RECOVERY
    assert "octoflash started it again when Moonraker restarted" in job.error
    assert warnings == [] and console[0].startswith("// octoflash: Klipper had been stopped")
    assert await probe(path) == (True, {})


@pytest.mark.parametrize("problem, fails, why", [
    (PROVIDER_NONE, False, "is still stopped: Moonraker cannot stop and start Klipper here "
                           "([machine] provider: none). Start it yourself: sudo systemctl "
                           "start klipper"),
    (None, True, "could not be started again: Moonraker could not start Klipper again: unit "
                 "not found. Start it yourself: sudo systemctl start klipper"),
])
async def test_when_klipper_cannot_be_started_the_job_says_why_and_what_to_do(
        tmp_path, problem, fails, why):
    component, job, warnings, console, path = await _component(tmp_path, problem=problem,
                                                               fails=fails)
    assert not component.klippy.connected
    assert job.state == "interrupted" and job.recovery == RECOVERY
    assert why in job.error and "Flash of toolhead interrupted" in job.message
    assert warnings and why in warnings[0]
    assert console[0].startswith("!! octoflash: Klipper was stopped for a flash "
                                 "(job 20261130-210000-ab12)")
    # the record still says Klipper is stopped: the next flash starts it when it ends
    free, record = await probe(path)
    assert free and record["klipper_stopped"] is True
