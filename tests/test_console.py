"""The console lines Mainsail and Fluidd show for a job (moonraker/console.py)."""
from __future__ import annotations

from typing import Any, List, Tuple

from moonraker_octoflash.jobs import Job, JobUpdate
from moonraker_octoflash.moonraker.console import JobConsole, stage_title


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
    job = Job(id="j1", kind="flash", profile="toolhead", state="running",
              artifact={"files": [{"name": "klipper.bin", "size": 47104}]})
    job.stage = "write_katapult"
    console.on_job_update(JobUpdate(job, "step", "Write klipper.bin through Katapult"))
    job.stage = "write"
    job.percent = 2.0
    console.on_job_update(JobUpdate(job, "step", "write 2%"))
    for pct in (40.0, 80.0, 100.0):     # all within one console interval
        job.percent = pct
        console.on_job_update(JobUpdate(job, "progress", f"write {pct:.0f}%"))
    lines = server.console()
    assert lines[0] == ("// octoflash flash toolhead: Writing 46 KB "
                        "(Write klipper.bin through Katapult)")
    assert lines[1] == "// octoflash flash toolhead: Writing 46 KB 2 %"
    assert lines[-1] == "// octoflash flash toolhead: Writing 46 KB 100 %"
    assert not any("40 %" in line or "80 %" in line for line in lines)
    assert not any("write_katapult" in line or "write 2%" in line for line in lines)


def test_steps_are_named_in_words():
    assert stage_title("request_bootloader", "toolhead") == \
        "Asking toolhead to enter its bootloader"
    assert stage_title("write_katapult", "x", {"files": [{"size": 47104}]}) == "Writing 46 KB"
    assert stage_title("wait_dfu") == "Waiting for the board in DFU mode"
    assert stage_title("octopus", kind="update_all") == "Updating octopus"
    # a method's step not in the table is named by the method's own label
    assert stage_title("some_new_step") == "Some new step"


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
