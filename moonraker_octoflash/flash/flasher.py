"""What every runner of a flashing tool (dfu-util, flashtool.py) is given."""
from __future__ import annotations

from typing import Callable, Dict, Optional

from ..events import ProgressCallback, null_progress


class ToolFlasher:
    """Where the tool's progress goes, the environment it runs in (None: octoflash's own),
    and a tap on each raw output line (the job log)."""

    def __init__(self, *, on_progress: ProgressCallback = null_progress,
                 env: Optional[Dict[str, str]] = None,
                 on_output: Optional[Callable[[str], None]] = None) -> None:
        self.on_progress = on_progress
        self.env = env or None
        self.on_output = on_output
