"""Writing through the STM32 ROM bootloader with ``dfu-util``.

Success is judged by dfu-util's own lines, not its exit code: after a good
write with ``:leave`` many STM32 boards make it print ``Error during
download get_status`` and exit 74.  Progress comes from the ``Erase`` and
``Download`` bars (redrawn with ``\\r``, split into lines by ``run_tool``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Sequence

from ..discovery.permissions import permission_fix
from ..events import Progress, ProgressCallback, null_progress
from ..tools import ToolResult, run_tool
from .flasher import ToolFlasher
from .results import WriteFailed

_BAR_RE = re.compile(r"^(?P<phase>Erase|Download)\s*\[[= ]*\]\s*(?P<pct>\d+)%\s+(?P<bytes>\d+) bytes")
SUCCESS_LINES = ("File downloaded successfully", "Download done.")
NO_DEVICE = "No DFU capable USB device available"
SEVERAL_DEVICES = "More than one DFU capable USB device found"
MASS_ERASE_FAILED = 'Error during special command "MASS_ERASE"'
LEAVE_STATUS_ERROR = "Error during download get_status"
# "Cannot open DFU device 0483:df11 found on devnum 5 (LIBUSB_ERROR_ACCESS)": no permission.
ACCESS_DENIED = "LIBUSB_ERROR_ACCESS"
_CANNOT_OPEN_RE = re.compile(r"Cannot open DFU device (?P<id>[0-9a-f]{4}:[0-9a-f]{4}) found on "
                             r"devnum (?P<devnum>\d+)")
_STAGES = {"Erase": "erase", "Download": "write"}


@dataclasses.dataclass
class DfuOutcome:
    ok: bool
    write_started: bool
    returncode: int
    lines: List[str]
    notes: List[str]
    errors: List[str]


def read_outcome(result: ToolResult) -> DfuOutcome:
    """Judge one dfu-util run by its output."""
    lines = result.lines
    errors = [line[len("dfu-util: "):] for line in result.stderr_lines
              if line.startswith("dfu-util: ") and "Warning" not in line
              and "DFU suffix" not in line]
    ok = any(line.strip() in SUCCESS_LINES for line in lines)
    started = ok or any(line.startswith(("Downloading element", "Downloading to address",
                                         "Performing mass erase", "Erase ", "Download\t"))
                        for line in lines)
    notes: List[str] = []
    if ok and result.returncode != 0:
        if any(LEAVE_STATUS_ERROR in e for e in errors):
            notes.append(f"dfu-util exited {result.returncode} with '{LEAVE_STATUS_ERROR}' after "
                         "a complete download: normal for STM32 boards leaving DFU mode.")
        else:
            notes.append(f"dfu-util exited {result.returncode} after reporting a complete "
                         f"download ({'; '.join(errors) or 'no message'}).")
    return DfuOutcome(ok=ok, write_started=started, returncode=result.returncode, lines=lines,
                      notes=notes, errors=errors)


class DfuFlasher(ToolFlasher):
    def __init__(self, *, on_progress: ProgressCallback = null_progress,
                 env: Optional[Dict[str, str]] = None,
                 on_output: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(on_progress=on_progress, env=env, on_output=on_output)
        self._last_pct: Dict[str, int] = {}

    def _on_line(self, stream: str, line: str) -> None:
        if self.on_output is not None:
            self.on_output(line)
        m = _BAR_RE.match(line)
        if m:
            stage = _STAGES[m.group("phase")]
            pct = int(m.group("pct"))
            if self._last_pct.get(stage) != pct:
                self._last_pct[stage] = pct
                self.on_progress(Progress(stage, f"{m.group('phase')} {pct}%", float(pct),
                                          kind="progress"))
            return
        self.on_progress(Progress("write", line, None, kind="output"))

    async def _run(self, argv: Sequence[str], timeout: float) -> DfuOutcome:
        self._last_pct = {}
        result = await run_tool(argv, timeout=timeout, env=self.env, on_line=self._on_line,
                                what="dfu-util")
        return read_outcome(result)

    async def write(self, argv: Sequence[str], *, timeout: float,
                    fallback_argv: Optional[Sequence[str]] = None,
                    instructions: str = "", board: str = "the board") -> DfuOutcome:
        """Run dfu-util; raise ``WriteFailed`` saying what happened and what to do."""
        outcome = await self._run(argv, timeout)
        first: Optional[DfuOutcome] = None
        if (not outcome.ok and fallback_argv is not None
                and any(MASS_ERASE_FAILED in e for e in outcome.errors)):
            self.on_progress(Progress("erase", "The board refused the mass erase; writing "
                                      "again with a plain erase of the pages written", None))
            first = outcome
            outcome = await self._run(fallback_argv, timeout)
            outcome.notes.insert(0, "mass erase not supported: written with :leave only "
                                    "(only the pages the image covers were erased)")
        if outcome.ok:
            return outcome
        errors = "; ".join(outcome.errors) or f"exit code {outcome.returncode}"
        if first is not None:
            # Two runs failed: the second one's error is the cause, but say what led to it
            # (and the mass erase may have touched the flash even if the retry did not).
            errors += (f" (on the retry without mass erase; the first run stopped at: "
                       f"{'; '.join(first.errors)})")
            outcome.write_started = outcome.write_started or first.write_started
        tail = outcome.lines[-12:]
        denied = [e for e in outcome.errors if ACCESS_DENIED in e]
        if denied:
            # dfu-util skips a device it may not open, then finds "no device": say why.
            m = _CANNOT_OPEN_RE.search(denied[0])
            device = f"{m.group('id')} (USB device {m.group('devnum')})" if m else "0483:df11"
            raise WriteFailed(f"dfu-util was refused access to the DFU device {device} for "
                              f"{board} ({ACCESS_DENIED}): nothing was written.",
                              hint=permission_fix(f"{device}, the STM32 in DFU mode"),
                              log_tail=tail, returncode=outcome.returncode,
                              write_started=False)
        if any(NO_DEVICE in e for e in outcome.errors):
            raise WriteFailed(f"No board in DFU mode: dfu-util found no 0483:df11 device for {board}.",
                              hint=instructions or "Put the board into DFU mode (boot jumper, "
                              "then reset) and try again.",
                              log_tail=tail, returncode=outcome.returncode,
                              write_started=outcome.write_started)
        if any(SEVERAL_DEVICES in e for e in outcome.errors):
            raise WriteFailed("Several boards are in DFU mode and dfu-util will not guess which "
                              "to write.", hint="Set dfu_serial in the profile (see `octoflash "
                              "scan`), or leave only this board in DFU mode.",
                              log_tail=tail, returncode=outcome.returncode, write_started=False)
        raise WriteFailed(f"dfu-util failed: {errors}", log_tail=tail,
                          returncode=outcome.returncode, write_started=outcome.write_started)
