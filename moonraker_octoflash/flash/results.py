"""What a flash ended as: the final state a user reads, and how to recover."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional

from ..errors import FlashError

# Final states
DONE = "done"              # written, board back (and Klipper reports it, when asked)
REFUSED = "refused"        # a check said no; nothing was written
FAILED = "failed"          # something went wrong; see written / recovery
CANCELLED = "cancelled"    # stopped by the user; see written / recovery


class WriteFailed(FlashError):
    """A flash step failed; ``write_started`` says whether the board's flash was touched."""

    def __init__(self, message: str, *, write_started: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.write_started = write_started


@dataclasses.dataclass
class StepRecord:
    kind: str
    title: str
    status: str = "pending"          # pending, running, done, skipped, failed, cancelled
    message: str = ""
    started: Optional[float] = None
    duration: Optional[float] = None
    tool_seconds: Optional[float] = None   # of ``duration``, the time its programs ran

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FlashResult:
    profile: str
    state: str = FAILED
    message: str = ""
    written: bool = False                 # the board's flash was (at least partly) written
    recovery: Optional[str] = None        # what to do to get the board back
    hint: Optional[str] = None
    check: Optional[str] = None           # the refusing check's name
    klipper_stopped: bool = False
    klipper_restarted: Optional[bool] = None
    board_back: Optional[bool] = None
    board_detail: Optional[str] = None
    version_expected: Optional[str] = None
    version_reported: Optional[str] = None
    version_matches: Optional[bool] = None
    verified_sha: Optional[str] = None    # Katapult's read-back SHA-1
    expected_sha: Optional[str] = None
    katapult_status: Optional[Dict[str, Any]] = None
    warnings: List[str] = dataclasses.field(default_factory=list)
    steps: List[StepRecord] = dataclasses.field(default_factory=list)
    log: List[str] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.time)
    finished: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.state == DONE

    def summary(self) -> str:
        """One paragraph for the user: what happened, then what to do."""
        text = f"{self.profile}: {self.state}: {self.message}"
        if self.hint:
            text += f"\n  {self.hint}"
        if self.recovery:
            text += f"\n  To recover: {self.recovery}"
        for w in self.warnings:
            text += f"\n  warning: {w}"
        return text

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        data["log"] = self.log[-200:]
        return data
