"""The console lines Mainsail and Fluidd show for a job (moonraker/console.py)."""
from __future__ import annotations

from typing import Any, List, Tuple

from moonraker_octoflash.jobs import Job, JobUpdate
from moonraker_octoflash.moonraker.console import JobConsole


class FakeServer:
    def __init__(self) -> None:
        self.events: List[Tuple[str, Any]] = []

    def send_event(self, name: str, payload: Any) -> None:
        self.events.append((name, payload))

    def console(self) -> List[str]:
        return [p for n, p in self.events if n == "server:gcode_response"]


def test_a_fast_write_still_shows_its_last_percentage():
    server = FakeServer()
    console = JobConsole(server, on_flash_finished=lambda: None)
    job = Job(id="j1", kind="flash", profile="toolhead", state="running")
    job.stage = "write"
    console.on_job_update(JobUpdate(job, "step", "Writing 46 KB"))
    for pct in (2.0, 40.0, 80.0, 100.0):     # all within one console interval
        job.percent = pct
        console.on_job_update(JobUpdate(job, "progress", f"{pct:.0f}%"))
    lines = server.console()
    assert lines[0] == "// octoflash flash toolhead: [write] Writing 46 KB"
    assert lines[-1] == "// octoflash flash toolhead: [write] 100% 100%"
    assert not any("[write] 2%" in line or "[write] 40%" in line for line in lines)


def test_a_final_line_ends_the_job_in_the_console():
    server = FakeServer()
    finished: List[bool] = []
    console = JobConsole(server, on_flash_finished=lambda: finished.append(True))
    job = Job(id="j2", kind="flash", profile="octopus", state="failed",
              message="Flash of octopus failed: x")
    console.on_job_update(JobUpdate(job, "state", job.message))
    assert server.console() == ["!! octoflash flash octopus: Flash of octopus failed: x"]
    assert finished == [True]
    assert [n for n, _p in server.events].count("octoflash:flash_finished") == 1
