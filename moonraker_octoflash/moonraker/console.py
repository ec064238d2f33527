"""What a job tells the user: notifications for clients, lines in Klipper's console.

Every ``JobUpdate`` becomes an ``octoflash:job_update`` notification
(output lines at most every ``OUTPUT_NOTIFY_INTERVAL`` per job) and, in
fewer words, a ``// octoflash …`` line in Mainsail's and Fluidd's console
(``!! octoflash …`` for a failure).  A progress line is sent at most every
``CONSOLE_INTERVAL`` per job, but always when the step changes and always
at 100 %, so the last percentage the console shows is the true one.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Dict

from ..jobs import DONE, JobUpdate

if TYPE_CHECKING:
    from moonraker.server import Server

CONSOLE_INTERVAL = 2.0          # seconds between progress lines in the console, per job
OUTPUT_NOTIFY_INTERVAL = 0.2    # seconds between output-line notifications, per job


class JobConsole:
    def __init__(self, server: Server, on_flash_finished: Callable[[], None]) -> None:
        self.server = server
        self.on_flash_finished = on_flash_finished
        self._console_at: Dict[str, float] = {}
        self._notify_at: Dict[str, float] = {}
        self._stage_of: Dict[str, str] = {}

    def on_job_update(self, update: JobUpdate) -> None:
        job = update.job
        now = time.monotonic()
        payload = update.to_json()
        if update.event == "output":
            if now - self._notify_at.get(job.id, 0.0) >= OUTPUT_NOTIFY_INTERVAL:
                self._notify_at[job.id] = now
                self.server.send_event("octoflash:job_update", payload)
        else:
            self.server.send_event("octoflash:job_update", payload)
        self._to_console(update, now)
        if update.final:
            self._notify_at.pop(job.id, None)
            self._console_at.pop(job.id, None)
            self._stage_of.pop(job.id, None)
            if job.kind == "flash":
                self.server.send_event("octoflash:flash_finished", job.to_json())
                self.on_flash_finished()

    def _to_console(self, update: JobUpdate, now: float) -> None:
        job = update.job
        label = f"octoflash {job.kind} {job.profile}".rstrip()
        if update.final:
            prefix = "// " if job.state == DONE else "!! "
            self.say(f"{prefix}{label}: {update.message or job.message}")
            return
        if update.event == "state" and job.state == "running":
            self.say(f"// {label}: started (job {job.id})")
            return
        if update.event == "step":
            self._console_at[job.id] = now
            self.say(f"// {label}: [{job.stage}] {update.message or job.message}")
            return
        if update.event in ("progress", "output"):
            # The end of a step's percentage is always shown: a write that
            # takes less than the interval would otherwise stop at "2 %".
            finished = (update.event == "progress" and job.percent is not None
                        and job.percent >= 100.0 and self._stage_of.get(job.id) != job.stage)
            if not finished and now - self._console_at.get(job.id, 0.0) < CONSOLE_INTERVAL:
                return
            if finished:
                self._stage_of[job.id] = job.stage
            self._console_at[job.id] = now
            pct = f" {job.percent:.0f}%" if job.percent is not None else ""
            self.say(f"// {label}: [{job.stage}]{pct} {update.message}"[:200])

    def say(self, text: str) -> None:
        self.server.send_event("server:gcode_response", text)
