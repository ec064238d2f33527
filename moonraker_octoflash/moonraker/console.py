"""What a job tells the user: notifications for clients, lines in Klipper's console.

Every ``JobUpdate`` becomes an ``octoflash:job_update`` notification
(output lines at most every ``OUTPUT_NOTIFY_INTERVAL`` per job) and, in
fewer words, a ``// octoflash …`` line in Mainsail's and Fluidd's console
(``!! octoflash …`` for a failure).  A progress line is sent at most every
``CONSOLE_INTERVAL`` per job, but always when the step changes and always
at 100 %, so the last percentage the console shows is the true one.

Steps are named in words (``stage_title``): "Asking toolhead to enter its
bootloader", "Writing 35 KB 46 %", not the internal stage names; the same
words go with every notification (``title``) and every step of a job's
record, so the page, the console and the history say the same.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from ..jobs import DONE, JobUpdate

if TYPE_CHECKING:
    from moonraker.server import Server

CONSOLE_INTERVAL = 2.0          # seconds between progress lines in the console, per job
OUTPUT_NOTIFY_INTERVAL = 0.2    # seconds between output-line notifications, per job


# The steps of builds and flashes, in words; ``{who}`` is the profile,
# ``{size}`` the firmware's size.  A stage not here is named by its flash
# method's label (the registry), else by its name with spaces.
STAGE_WORDS: Dict[str, str] = {
    "build": "Building {who}",
    "configure": "Preparing the build configuration",
    "compile": "Compiling",
    "link": "Linking the firmware",
    "artifact": "Taking an earlier build",
    "plan": "Finding the board and planning the flash",
    "check": "Checking the image and the board before writing",
    "flash": "Flashing {who}",
    "stop_klipper": "Stopping Klipper",
    "request_bootloader": "Asking {who} to enter its bootloader",
    "wait_katapult_usb": "Waiting for the bootloader (Katapult) on USB",
    "wait_katapult_can": "Waiting for the bootloader (Katapult) to answer on CAN",
    "katapult_status": "Reading the bootloader's status",
    "wait_device": "Waiting for the board",
    "wait_dfu": "Waiting for the board in DFU mode",
    "wait_bootsel": "Waiting for the board in BOOTSEL mode",
    "build_rp2040_flash": "Building Klipper's rp2040_flash tool",
    "mass_erase": "Erasing the whole flash",
    "erase": "Erasing",
    "write": "Writing {size}",
    "write_katapult": "Writing {size}",
    "write_dfu": "Writing {size}",
    "write_rp2040": "Writing {size}",
    "download": "Writing {size}",
    "deploy": "Writing {size}",
    "verify": "Verifying {size}",
    "wait_return": "Waiting for the board to come back",
    "start_klipper": "Starting Klipper",
    "check_version": "Checking the version Klipper reports",
    "done": "Finished",
}


def _size_text(artifact: Optional[Dict[str, Any]]) -> str:
    files = (artifact or {}).get("files") or []
    size = next((f.get("size") for f in files if isinstance(f, dict) and f.get("size")), None)
    if not size:
        return "the firmware"
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} bytes"


def stage_title(stage: str, profile: str = "", artifact: Optional[Dict[str, Any]] = None,
                kind: str = "") -> str:
    """A job's stage in words ("Writing 35 KB"); an update's stage is a board's name."""
    if not stage:
        return ""
    if kind == "update_all":
        return f"Updating {stage}"
    words = STAGE_WORDS.get(stage)
    if words is None:
        from ..flash.methods import to_json as methods
        for method in methods():
            steps: Dict[str, Any] = dict(method.get("steps") or {})  # type: ignore[call-overload]
            if stage in steps:
                return str(steps[stage])
        return stage.replace("_", " ").capitalize()
    return words.format(who=profile or "the board", size=_size_text(artifact))


_PERCENT_TEXT = re.compile(r"^(write|verify|erase|download)\s*\d+(\.\d+)?\s*%$")


def progress_text(job_json: Dict[str, Any]) -> str:
    """The title of a job's current stage with its percentage: "Writing 35 KB 46 %"."""
    title = stage_title(job_json.get("stage") or "", job_json.get("profile") or "",
                        job_json.get("artifact"), job_json.get("kind") or "")
    pct = job_json.get("percent")
    return f"{title} {pct:.0f} %" if pct is not None and title else title


def add_titles(job_json: Dict[str, Any]) -> Dict[str, Any]:
    """A job's record with each step's words (``title``) and the job's own."""
    for step in job_json.get("steps") or []:
        step["title"] = stage_title(step.get("stage") or "", job_json.get("profile") or "",
                                    job_json.get("artifact"), job_json.get("kind") or "")
    job_json["title"] = stage_title(job_json.get("stage") or "", job_json.get("profile") or "",
                                    job_json.get("artifact"), job_json.get("kind") or "")
    return job_json


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
        payload["title"] = stage_title(job.stage, job.profile, job.artifact, job.kind)
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
        label = f"octoflash {job.kind.replace('_', ' ')} {job.profile}".rstrip()
        title = stage_title(job.stage, job.profile, job.artifact, job.kind)
        if update.final:
            prefix = "// " if job.state == DONE else "!! "
            self.say(f"{prefix}{label}: {update.message or job.message}")
            return
        if update.event == "state" and job.state == "running":
            self.say(f"// {label}: started")
            return
        message = update.message or job.message
        if _PERCENT_TEXT.match(message.strip()):
            message = ""            # "write 2%": the title and the percentage say it
        if update.event == "step":
            self._console_at[job.id] = now
            pct = f" {job.percent:.0f} %" if job.percent is not None else ""
            detail = f" ({message})" if message and message != title else ""
            self.say(f"// {label}: {title}{pct}{detail}"[:200])
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
            pct = f" {job.percent:.0f} %" if job.percent is not None else ""
            detail = f" ({message})" if message else ""
            self.say(f"// {label}: {title}{pct}{detail}"[:200])

    def say(self, text: str) -> None:
        self.server.send_event("server:gcode_response", text)
