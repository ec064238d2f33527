"""Job records: states, steps, the updates adapters hear, and where the history lives.

``jobs.JobRunner`` creates and changes these; the adapters (Moonraker,
the command line) read them.  A record carries bounded text (the last log
lines, messages of a bounded length) so that one job can never flood a
notification, the database or ``/server/info``.
"""
from __future__ import annotations

import contextvars
import copy
import dataclasses
import json
import time
from typing import Any, Callable, Dict, List, Optional

from .errors import clip_text

# Job states.  "refused": a check before writing said no, nothing was written.
QUEUED, RUNNING = "queued", "running"
DONE, FAILED, CANCELLED, REFUSED, INTERRUPTED = "done", "failed", "cancelled", "refused", "interrupted"
FINAL_STATES = (DONE, FAILED, CANCELLED, REFUSED, INTERRUPTED)
ACTIVE_STATES = (QUEUED, RUNNING)

# Stages during which stopping would leave a board half written: cancelling
# is refused then (the executor finishes the write and restarts Klipper).
UNSAFE_STAGES = frozenset({"write_dfu", "write_katapult", "erase", "write",
                           "verify", "deploy", "mass_erase", "download"})
# From the moment the board is asked into its bootloader until the job ends,
# a cancel would leave it waiting in Katapult, not running Klipper (or stop
# the wait for a board just written, and Klipper's start): refused as well.
# Each of these steps has its own time limit, so the job ends on its own.
BOOTLOADER_STAGES = frozenset({"request_bootloader", "wait_katapult_usb", "wait_katapult_can",
                               "katapult_status"})
AFTER_WRITE_STAGES = frozenset({"wait_return", "start_klipper", "check_version", "done"})
NO_CANCEL_STAGES = UNSAFE_STAGES | BOOTLOADER_STAGES | AFTER_WRITE_STAGES

# The flash job a pipeline is executing for (set in the job's own task), so
# the machine-wide writer lock can name it to another process.
CURRENT_JOB_ID: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "octoflash_job_id", default=None)

DEFAULT_HISTORY_SIZE = 50
DEFAULT_LOG_LINES = 500
# What one job record, and so one notification or database entry, may carry:
# the last lines of a log, and messages of a bounded length.  A build's
# whole log stays on disk (``log_path``).
MAX_LINE_CHARS = 1000           # one log line
MAX_MESSAGE_CHARS = 4000        # error, recovery, message
DEFAULT_HISTORY_BYTES = 4 * 1024 * 1024   # the whole history, as stored


# --- records ---------------------------------------------------------------

@dataclasses.dataclass
class JobStep:
    """One phase of a job and how it ended."""
    stage: str
    message: str = ""
    state: str = RUNNING            # running, done, failed, cancelled, skipped
    started: float = dataclasses.field(default_factory=time.time)
    finished: Optional[float] = None
    percent: Optional[float] = None
    result: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        # not dataclasses.asdict: a job's record is made at every step change and
        # API read, and asdict's recursive copy cost more than the rest of it; only
        # ``result`` holds anything to copy
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["result"] = copy.deepcopy(self.result)
        return data


@dataclasses.dataclass
class Job:
    id: str
    kind: str                       # "build", "flash" or "update_all"
    profile: str                    # profile name ("" for update_all)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: str = "api"             # api, macro, cli, update_manager
    state: str = QUEUED
    stage: str = ""
    percent: Optional[float] = None
    message: str = ""
    error: Optional[str] = None
    recovery: Optional[str] = None  # how to get a board back after a failed write
    created: float = dataclasses.field(default_factory=time.time)
    started: Optional[float] = None
    finished: Optional[float] = None
    artifact: Optional[Dict[str, Any]] = None
    plan: Optional[Dict[str, Any]] = None
    result: Dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: List[JobStep] = dataclasses.field(default_factory=list)
    log: List[str] = dataclasses.field(default_factory=list)
    log_dropped: int = 0            # lines left out of ``log`` to keep it bounded
    log_path: Optional[str] = None  # the full build log, when there is one
    parent: Optional[str] = None    # the update_all job this flash belongs to
    children: List[str] = dataclasses.field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def duration(self) -> Optional[float]:
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else time.time()
        return round(end - self.started, 3)

    def to_json(self, full: bool = True) -> Dict[str, Any]:
        data: Dict[str, Any] = {
            "job_id": self.id, "kind": self.kind, "profile": self.profile,
            "options": dict(self.options), "origin": self.origin, "state": self.state,
            "stage": self.stage, "percent": self.percent, "message": self.message,
            "error": self.error, "recovery": self.recovery, "created": self.created,
            "started": self.started, "finished": self.finished, "duration": self.duration,
            "parent": self.parent, "children": list(self.children),
        }
        art = self.artifact or {}
        data["artifact_id"] = art.get("id")
        data["version"] = art.get("dict_version") or art.get("source_version")
        if full:
            data.update(artifact=self.artifact, plan=self.plan, result=dict(self.result),
                        steps=[s.to_json() for s in self.steps], log=list(self.log),
                        log_dropped=self.log_dropped, log_path=self.log_path)
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Job:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["id"] = data["job_id"]
        values["steps"] = [JobStep(**{k: v for k, v in s.items()
                                      if k in {f.name for f in dataclasses.fields(JobStep)}})
                           for s in data.get("steps") or []]
        return cls(**values)


@dataclasses.dataclass
class JobUpdate:
    """What adapters hear about a job: sent on every step, percentage, line and state."""
    job: Job
    event: str                      # "state", "step", "progress" or "output"
    message: str = ""

    @property
    def final(self) -> bool:
        return self.event == "state" and self.job.state in FINAL_STATES

    def to_json(self) -> Dict[str, Any]:
        job = self.job
        return {
            "job_id": job.id, "kind": job.kind, "profile": job.profile, "event": self.event,
            "state": job.state, "stage": job.stage, "percent": job.percent,
            "message": clip_text(self.message or job.message, MAX_MESSAGE_CHARS),
            "final": self.final, "error": job.error, "recovery": job.recovery, "parent": job.parent,
            "duration": job.duration, "time": time.time(),
        }


JobListener = Callable[[JobUpdate], Any]


# --- storage ---------------------------------------------------------------

class JobStorage:
    """Where the history lives.  Subclasses override the three methods."""

    async def load_all(self) -> List[Dict[str, Any]]:
        raise NotImplementedError

    async def save(self, job: Dict[str, Any]) -> None:
        raise NotImplementedError

    async def delete(self, job_id: str) -> None:
        raise NotImplementedError


class MemoryJobStorage(JobStorage):
    """History for the command line and the tests; ``records`` can be handed
    to a second runner to play a restart."""

    def __init__(self, records: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.records: Dict[str, Dict[str, Any]] = records if records is not None else {}

    async def load_all(self) -> List[Dict[str, Any]]:
        return [dict(r) for r in self.records.values()]

    async def save(self, job: Dict[str, Any]) -> None:
        self.records[job["job_id"]] = dict(job)

    async def delete(self, job_id: str) -> None:
        self.records.pop(job_id, None)


def _record_size(record: Dict[str, Any]) -> int:
    return len(json.dumps(record, default=str))
