"""Writing through Katapult with the user's ``flashtool.py``.

Works with flashtool versions before and after its March 2025 USB-CAN
bridge support, because the bridge case is always done in two steps here
(request the bootloader over CAN, then write over the ``usb-katapult_…``
serial port).  Success: ``Programming Complete``; older versions print
``Flash Success`` (the oldest, ``flash_can.py`` era: ``CAN Flash Success``)
for every success, so it only counts after a write was seen (``Write
complete`` / ``Verification Complete``), never after a bare bootloader
request.  Errors are the ``ERROR:root:Flash Tool Error`` (before October
2024: ``Flash Error``; before August 2023: ``Can Flash Error``, exit code
255) traceback on stderr, exit code 1.  The versions and what changed
between them: docs/flashing.md, "flashtool.py versions".
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import List, Optional, Sequence, Tuple

from ..discovery.permissions import permission_fix
from ..events import Progress, ProgressCallback
from ..tools import ToolResult, run_tool
from .checks import CheckRefused, KatapultStatus
from .flasher import ToolFlasher
from .results import WriteFailed

_ERROR_MARK = re.compile(r"^ERROR:root:(?:Can )?Flash (?:Tool )?Error")
# Python prints the class unqualified for a script (``FlashError: …``), qualified
# otherwise; the oldest tools raise ``FlashCanError``.
_FLASH_ERROR_LINE = re.compile(r"^(?:[\w.]*\.)?Flash(?:Can)?Error: (?P<msg>.*)$")
_CAUSE_LINE = "The above exception was the direct cause of the following exception"
_DURING_LINE = "During handling of the above exception, another exception occurred"
_STATUS_PATTERNS = {
    "app_start": re.compile(r"^Application Start: 0x(?P<v>[0-9A-Fa-f]+)"),
    "mcu": re.compile(r"^MCU type: (?P<v>[^\s\x00]+)"),
    "block_size": re.compile(r"^Block Size: (?P<v>\d+)"),
    "software_version": re.compile(r"^Software Version: (?P<v>.+)$"),
    "protocol_version": re.compile(r"^Protocol Version: (?P<v>.+)$"),
}
# After a bootloader request the USB device re-enumerated as something else than Katapult
# (the ROM's DFU loader, typically): flashtool prints this and exits 0 (since March 2025).
NOT_KATAPULT = "Device is not Katapult, exiting..."
# No re-enumeration within 4 s of the request: the dots of "Waiting for USB Reconnect."
# end with this (exit 0).
RECONNECT_TIMED_OUT = "timed out"
# A USB-CAN bridge came back as Katapult, but its tty was not there 0.5 s later
# (since March 2025; exit 1): the board is in Katapult, the port follows.
TTY_MISSING = ("Failed to locate serial tty path", "Detected tty path does not exist")
_NEW_USB_RE = re.compile(r"^Detected new USB Device: (?P<id>[0-9a-f]{4}:[0-9a-f]{4}) "
                         r"(?P<mfr>\S*) ?(?P<product>.*)$")
_SHA_RE = re.compile(r"Verification Complete: SHA = (?P<sha>[0-9A-Fa-f]+)")
_PAGES_RE = re.compile(r"Write complete: (?P<pages>\d+) pages")

# flashtool error text -> what the user can do about it
_HINTS: Tuple[Tuple[str, str], ...] = (
    ("Unable to bind socket", "The CAN interface is down or missing: check `ip -details link "
     "show can0`; a USB-CAN bridge board must be running Klipper for can0 to exist."),
    ("Error sending command [CONNECT]", "Katapult did not answer: the board is not in the "
     "bootloader. Double-click its reset button to enter Katapult, then try again."),
    ("in use", "Another program holds the serial port; is Klipper still running?"),
    ("Invalid firmware path", "The image file is missing: build the profile again."),
    ("No Serial Device found", "The Katapult serial port disappeared: check the USB cable and "
     "the board's power."),
    ("pyserial", "flashtool.py needs pyserial for USB serial: install python3-serial, or set "
     "flashtool_python to Klipper's Python (~/klippy-env/bin/python)."),
    ("UUID mismatch", "Another node answered for this uuid: check canbus_uuid in the profile."),
    ("Checksum mismatch", "The read-back differs from the image: the write is not trustworthy."),
    ("Block Request Error", "Katapult did not return a block while the write was read back: "
     "the connection is unreliable (USB cable, CAN wiring and termination), and the write "
     "is not verified. Flash again."),
    ("Device or resource busy", "Another program holds the serial port; is Klipper still "
     "running?"),
    ("Failed to locate serial tty path", "The bridge came back as Katapult but its serial port "
     "was not there yet; octoflash waits for it and carries on."),
)
_DEVICE_RE = re.compile(r"(/dev/\S+?)['\":,]?(?:\s|$)")


def _permission_hint(error: str) -> Optional[str]:
    """No permission for a serial port: name it and say how to get access."""
    if "No permission to access device" not in error and not (
            "Unable to open serial port" in error and ("Permission denied" in error
                                                       or "Errno 13" in error)):
        return None
    m = _DEVICE_RE.search(error)
    return permission_fix(m.group(1) if m else None, serial=True)


def katapult_sha1(data: bytes, block_size: int = 64) -> str:
    """The SHA-1 flashtool reports: the image padded with 0xFF to whole blocks."""
    padded = data + b"\xff" * (-len(data) % block_size)
    return hashlib.sha1(padded).hexdigest().upper()


@dataclasses.dataclass
class FlashtoolRun:
    returncode: int
    lines: List[str]
    error: Optional[str]               # the FlashError message, when it failed (the first cause)
    write_started: bool
    write_seen: bool                   # Write complete / Verification Complete printed
    final: Optional[str]               # the closing line (Programming Complete, ...)
    sha: Optional[str]
    pages: Optional[int]
    status: KatapultStatus
    later_errors: List[str] = dataclasses.field(default_factory=list)   # raised after ``error``
    not_katapult: bool = False         # re-enumerated as another device: NOT_KATAPULT
    new_usb: Optional[Tuple[str, str, str]] = None   # (usb id, manufacturer, product) seen
    reconnect_timed_out: bool = False

    @property
    def tty_missing(self) -> bool:
        """The board re-enumerated as Katapult but its tty was not there yet."""
        return bool(self.error) and any(t in str(self.error) for t in TTY_MISSING)

    @property
    def legacy(self) -> bool:
        return self.final == "Flash Success"


def _exception_chain(err_lines: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """The exceptions of a Python traceback, in the order Python printed them.

    Each entry is (how it follows the one before: ``""``, ``"cause"`` for
    "The above exception was the direct cause…", ``"during"`` for "During
    handling of the above exception…"; the exception's message lines).
    """
    chain: List[Tuple[str, List[str]]] = []
    link = ""
    current: Optional[List[str]] = None
    for line in err_lines:
        if line.startswith(_CAUSE_LINE):
            link, current = "cause", None
            continue
        if line.startswith(_DURING_LINE):
            link, current = "during", None
            continue
        if line.startswith("Traceback (most recent call last)") or not line.strip():
            current = None
            continue
        m = _FLASH_ERROR_LINE.search(line)
        if m:
            current = [m.group("msg")]
            chain.append((link, current))
            link = ""
        elif current is not None and not line.startswith("  "):
            current.append(line)       # a message of several lines
    return chain


def _first_cause(err_lines: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """The error that started a failure, and the errors that followed it.

    flashtool always sends COMPLETE after a failed write (in a ``finally``);
    when the connection is gone that fails too, and Python prints the write
    error first, then "During handling of the above exception…" and the
    COMPLETE error.  The first one is what went wrong.
    """
    chain = _exception_chain(err_lines)
    if not chain:
        return None, []
    groups: List[List[List[str]]] = []
    for link, message in chain:
        if link == "during" or not groups:
            groups.append([])
        groups[-1].append(message)
    first = groups[0]
    # Within a group, each exception was raised "from" the one before it: the
    # last is what the tool reported, the earlier ones say why.
    text = "\n".join(first[-1]).strip()
    reasons = [" ".join(m).strip() for m in first[:-1]]
    if reasons:
        head, _, rest = text.partition("\n")
        text = f"{head} ({'; '.join(reasons)})" + (f"\n{rest}" if rest else "")
    later = [" ".join(group[-1]).strip() for group in groups[1:]]
    return text, later


def read_run(result: ToolResult) -> FlashtoolRun:
    lines = result.lines
    error: Optional[str] = None
    later: List[str] = []
    err_lines = result.stderr_lines
    if any(_ERROR_MARK.match(line) for line in err_lines):
        error, later = _first_cause(err_lines)
        if error is None:
            error = err_lines[-1] if err_lines else "flashtool.py failed"
    elif result.returncode != 0:
        error = (err_lines[-1] if err_lines else f"flashtool.py exited {result.returncode}")
    status = KatapultStatus()
    for line in lines:
        for key, pattern in _STATUS_PATTERNS.items():
            m = pattern.match(line)
            if m:
                # Flashtools from August 2024 to March 2025 print the MCU type of a
                # Katapult speaking protocol 1.0 with its trailing NUL bytes.
                value = m.group("v").strip().strip("\x00").strip()
                if key == "app_start":
                    status.app_start = int(value, 16)
                elif key == "block_size":
                    status.block_size = int(value)
                else:
                    setattr(status, key, value)
    sha = pages = None
    for line in lines:
        m = _SHA_RE.search(line)
        if m:
            sha = m.group("sha").upper()
        m = _PAGES_RE.search(line)
        if m:
            pages = int(m.group("pages"))
    finals = ("Programming Complete", "Bootloader Request Complete", "Status Request Complete",
              "CANBus UUID Query Complete", "Flash Success", "CAN Flash Success", "Query Complete")
    final = next((line.strip() for line in reversed(lines) if line.strip() in finals), None)
    new_usb = None
    for line in lines:
        m = _NEW_USB_RE.match(line.strip())
        if m:
            new_usb = (m.group("id"), m.group("mfr"), m.group("product").strip())
    return FlashtoolRun(
        returncode=result.returncode, lines=lines, error=error,
        write_started=any(line.startswith("Flashing '") for line in lines),
        write_seen=sha is not None or pages is not None, final=final, sha=sha, pages=pages,
        status=status, later_errors=later,
        not_katapult=any(line.strip() == NOT_KATAPULT for line in lines), new_usb=new_usb,
        reconnect_timed_out=any(line.startswith("Waiting for USB Reconnect")
                                and line.rstrip().endswith(RECONNECT_TIMED_OUT) for line in lines))


def hint_for(error: str) -> Optional[str]:
    permission = _permission_hint(error)
    if permission:
        return permission
    for needle, hint in _HINTS:
        if needle in error:
            return hint
    return None


def _is_katapult_usb(new_usb: Tuple[str, str, str]) -> bool:
    usb_id, mfr, _product = new_usb
    return usb_id == "1d50:6177" or mfr == "katapult"


class NotKatapult(WriteFailed):
    """Asked into its bootloader, the board came back as another USB device (flashtool:
    ``Device is not Katapult, exiting...``): Katapult is not installed, and Klipper fell
    back to the ROM loader (DFU on most STM32s) or to nothing."""

    def __init__(self, run: FlashtoolRun) -> None:
        usb_id, mfr, product = run.new_usb or ("", "", "")
        self.usb_id = usb_id
        self.dfu = usb_id == "0483:df11"
        seen = f" as {usb_id} {mfr} {product}".rstrip() if usb_id else ""
        if self.dfu:
            text = (f"The board is not running Katapult: asked into its bootloader it came back"
                    f"{seen}, the STM32's ROM loader in DFU mode.")
            hint = ("Katapult is not installed on this board. It waits in DFU mode now: flash "
                    "this profile with the dfu method, or flash the Katapult preset for the "
                    "board over DFU first.")
        else:
            text = (f"The board is not running Katapult: asked into its bootloader it came back"
                    f"{seen or ' as another device'}.")
            hint = ("Katapult is not installed on this board: put it into DFU mode (boot "
                    "jumper, then reset) and flash with the dfu method, or flash the Katapult "
                    "preset for it over DFU first.")
        if self.dfu:
            recovery = ("Nothing was written. The board waits in DFU mode (the STM32's ROM "
                        "loader): flash this profile with the dfu method now, or press its "
                        "reset button to go back to Klipper.")
        else:
            recovery = ("Nothing was written. Press the board's reset button (or power-cycle "
                        "it) to go back to Klipper.")
        super().__init__(text, hint=hint, log_tail=run.lines[-12:], returncode=run.returncode,
                         write_started=False, recovery=recovery)
        self.run = run


class _HashProgress:
    """Turns the ``[####…]`` bars (one ``#`` per 2 %) into write/verify percentages."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self.on_progress = on_progress
        self.stage = "write"
        self.marks = 0
        self.live = False

    def feed_partial(self, text: str) -> None:
        """Marks as they are drawn, before the bar's line ends."""
        count = text.count("#")
        if count and set(text.strip()) <= set("[#]"):
            self.marks = min(50, self.marks + count)
            self.live = True
            self.on_progress(Progress(self.stage, f"{self.stage} {self.marks * 2}%",
                                      float(self.marks * 2), kind="progress"))

    def feed(self, text: str) -> None:
        if text.startswith("Flashing '"):
            self.stage, self.marks = "write", 0
        elif text.startswith("Verifying"):
            self.stage, self.marks = "verify", 0
        count = text.count("#")
        if count and set(text.strip()) <= set("[#]"):
            if self.live:
                # Counted as they were drawn, but the last ones may come with
                # the line's end: the whole line says how far it got.
                self.live = False
                if min(50, count) <= self.marks:
                    return
                self.marks = min(50, count)
            else:
                self.marks = min(50, self.marks + count)
            self.on_progress(Progress(self.stage, f"{self.stage} {self.marks * 2}%",
                                      float(self.marks * 2), kind="progress"))


class KatapultFlasher(ToolFlasher):
    async def _run(self, argv: Sequence[str], timeout: float, stage: str) -> FlashtoolRun:
        bars = _HashProgress(self.on_progress)

        def on_line(stream: str, line: str) -> None:
            if self.on_output is not None:
                self.on_output(line)
            bars.feed(line)
            if "#" in line:
                return
            self.on_progress(Progress(stage if stage != "write" else bars.stage, line, None,
                                      kind="output"))
        result = await run_tool(argv, timeout=timeout, env=self.env, on_line=on_line,
                                on_partial=lambda _stream, text: bars.feed_partial(text),
                                what="flashtool.py")
        return read_run(result)

    def _failure(self, run: FlashtoolRun, what: str) -> WriteFailed:
        error = run.error or f"flashtool.py ended without {what}"
        if "does not match MCU" in error:
            # flashtool's own MCU check refused before writing anything.
            raise CheckRefused("mcu", f"flashtool.py refused the image: {error}",
                               hint="Choose the preset for the board's chip and build again.")
        message = f"flashtool.py: {error}"
        if run.later_errors:
            message += f" (then also: {'; '.join(run.later_errors)})"
        return WriteFailed(message, hint=hint_for(error),
                           log_tail=run.lines[-12:], returncode=run.returncode,
                           write_started=run.write_started)

    async def request_bootloader(self, argv: Sequence[str], *, timeout: float) -> FlashtoolRun:
        """``-r``: nothing is written; older tools end it with ``Flash Success`` too.

        A board that came back as Katapult whose tty was not there yet counts
        as a request that worked (the next step waits for the port); a board
        that came back as something else raises ``NotKatapult`` at once.
        """
        run = await self._run(argv, timeout, "request_bootloader")
        if run.not_katapult:
            raise NotKatapult(run)
        if run.tty_missing and (run.new_usb is None or _is_katapult_usb(run.new_usb)):
            return run
        if run.returncode != 0 or run.error:
            raise self._failure(run, "confirming the bootloader request")
        return run

    async def status(self, argv: Sequence[str], *, timeout: float) -> Optional[KatapultStatus]:
        """``-s``; None when this flashtool.py predates status requests (October 2024)."""
        run = await self._run(argv, timeout, "status")
        if run.returncode == 2 and any("unrecognized arguments" in line for line in run.lines):
            return None
        if run.returncode != 0 or run.error:
            raise self._failure(run, "reporting the status")
        return run.status

    async def write(self, argv: Sequence[str], *, timeout: float) -> FlashtoolRun:
        """``-f``: success is ``Programming Complete``, or ``Flash Success`` after a write."""
        run = await self._run(argv, timeout, "write")
        if run.not_katapult:
            raise NotKatapult(run)
        if run.returncode != 0 or run.error:
            raise self._failure(run, "finishing the write")
        if run.final == "Programming Complete" and run.write_seen:
            return run
        if run.final in ("Flash Success", "CAN Flash Success") and run.write_seen:
            return run
        raise WriteFailed("flashtool.py did not confirm a write (no 'Programming Complete', and "
                          "no write was reported before its last line).",
                          log_tail=run.lines[-12:], returncode=run.returncode,
                          write_started=run.write_started)
