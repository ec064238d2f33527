"""Progress events shared by builds, flashes and jobs."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Optional


@dataclasses.dataclass
class Progress:
    """One step or output line of a build or flash.

    ``stage`` names the phase (``configure``, ``compile``, ``link``,
    ``stop_klipper``, ``erase``, ``write``, ``verify``, ``wait_device`` ...),
    ``percent`` is the phase's progress where it can be estimated, and
    ``message`` is a human readable line (often a line of tool output).
    ``kind`` is ``"step"`` for a new phase, ``"output"`` for a tool's line
    and ``"progress"`` for a percentage change.
    """
    stage: str
    message: str = ""
    percent: Optional[float] = None
    kind: str = "step"
    time: float = dataclasses.field(default_factory=time.time)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


ProgressCallback = Callable[[Progress], None]


def null_progress(_event: Progress) -> None:
    pass
