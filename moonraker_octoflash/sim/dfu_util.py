"""A ``dfu-util`` 0.11 double writing into a simulated board's flash.

It prints what the real program prints (banner, device status, ``\\r``
progress bars with a 25-character bar, ``Download done.``, ``File downloaded
successfully``), sends errors to stderr prefixed ``dfu-util: `` and exits
with the real codes (74 for USB trouble, 64 for usage, 66 for a missing
file).  Boards with ``leave_status_error`` (the default, as on many STM32s)
answer the leave request with ``Error during download get_status`` and exit
74 after a good write.  Failure switches: see ``board.FAULTS``.
"""
from __future__ import annotations

import sys
import time

from .board import DFU_EXTRA_ALTS, SimulatedBoard, SimulatedMachine

TYPE_CHECKING = False   # typing is imported only by type checkers (see sim/board.py)
if TYPE_CHECKING:
    from typing import List, Optional, Sequence, TextIO

EX_USAGE = 64
EX_NOINPUT = 66
EX_IOERR = 74
BAR_WIDTH = 25

BANNER = """dfu-util 0.11

Copyright 2005-2009 Weston Schmidt, Harald Welte and OpenMoko Inc.
Copyright 2010-2021 Tormod Volden and Stefan Schmidt
This program is Free Software and has ABSOLUTELY NO WARRANTY
Please report bugs to http://sourceforge.net/p/dfu-util/tickets/

"""


USAGE_FIRST_LINE = "Usage: dfu-util [options] ..."


class _Exit(Exception):
    """``errx``: ``dfu-util: MESSAGE`` on stderr; ``usage``: getopt's complaint or the
    missing action, followed by the usage text, as the real program prints them."""

    def __init__(self, code: int, message: Optional[str] = None, *, usage: bool = False,
                 prefix: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.usage = usage
        self.prefix = prefix


class _Args:
    alt: Optional[str] = None
    device: Optional[str] = None
    serial: Optional[str] = None
    path: Optional[str] = None
    dfuse: Optional[str] = None
    download: Optional[str] = None
    reset = False
    list = False
    version = False


_OPTIONS = {"-a": "alt", "--alt": "alt", "-d": "device", "--device": "device",
            "-S": "serial", "--serial": "serial", "-p": "path", "--path": "path",
            "-s": "dfuse", "--dfuse-address": "dfuse", "-D": "download", "--download": "download"}
_FLAGS = {"-R": "reset", "--reset": "reset", "-l": "list", "--list": "list",
          "-V": "version", "--version": "version"}


def _parse(argv: Sequence[str]) -> _Args:
    args = _Args()
    it = iter(argv)
    for arg in it:
        if arg in _FLAGS:
            setattr(args, _FLAGS[arg], True)
        elif arg in _OPTIONS:
            try:
                setattr(args, _OPTIONS[arg], next(it))
            except StopIteration:
                raise _Exit(EX_USAGE, f"option requires an argument -- '{arg.lstrip('-')}'",
                            usage=True)
        elif arg.startswith("--"):
            raise _Exit(EX_USAGE, f"unrecognized option '{arg}'", usage=True)
        else:
            raise _Exit(EX_USAGE, f"invalid option -- '{arg.lstrip('-')}'", usage=True)
    return args


def _progress(out: TextIO, label: str, total: int, duration: float, stop_at: float = 1.0) -> int:
    """Redraw a dfu-util progress bar; returns the bytes reached."""
    steps = 10
    done = 0
    for i in range(1, steps + 1):
        fraction = i / steps
        if fraction > stop_at:
            break
        done = int(total * fraction)
        filled = int(BAR_WIDTH * fraction)
        out.write(f"\r{label}\t[{'=' * filled}{' ' * (BAR_WIDTH - filled)}] "
                  f"{int(100 * fraction):3d}% {done:12d} bytes")
        if done == total:
            out.write("\n")
        out.flush()
        time.sleep(duration / steps)
    return done


def _select(machine: SimulatedMachine, args: _Args) -> List[SimulatedBoard]:
    boards = [b for b in machine.boards() if b.mode == "dfu"]
    if args.device and args.device.split(",")[0].lower() not in ("0483:df11", ":df11", "0483:"):
        boards = []
    if args.serial:
        boards = [b for b in boards if b.dfu_serial == args.serial]
    if args.path:
        boards = [b for b in boards if b.port_path == args.path]
    return boards


def _list(machine: SimulatedMachine, args: _Args, out: TextIO) -> None:
    for board in _select(machine, args):
        names = [board.dfu_layout] + DFU_EXTRA_ALTS
        for alt in reversed(range(len(names))):
            out.write(f"Found DFU: [0483:df11] ver=2200, devnum={board.usb_address}, cfg=1, "
                      f"intf=0, path=\"{board.port_path}\", alt={alt}, name=\"{names[alt]}\", "
                      f"serial=\"{board.dfu_serial}\"\n")


def _download(machine: SimulatedMachine, args: _Args, out: TextIO, err: TextIO) -> int:
    assert args.download is not None
    try:
        with open(args.download, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _Exit(EX_NOINPUT, f"Could not open file {args.download} for reading: "
                                f"{exc.strerror}")
    if len(data) < 16:
        err.write("dfu-util: Warning: File too short for DFU suffix\n")
    else:
        err.write("dfu-util: Warning: Invalid DFU suffix signature\n")
    err.write("dfu-util: A valid DFU suffix will be required in a future dfu-util release\n")
    err.flush()
    boards = _select(machine, args)
    denied = [b for b in boards if b.has_fault("usb_access_denied")]
    for board in denied:
        # dfu-util warns and skips a device it may not open (no udev rule for this user).
        err.write(f"dfu-util: Cannot open DFU device 0483:df11 found on devnum "
                  f"{board.usb_address} (LIBUSB_ERROR_ACCESS)\n")
        err.flush()
    boards = [b for b in boards if b not in denied]
    if args.alt not in (None, "0"):
        boards = []          # no interface with that alt setting: no device matches
    if not boards:
        raise _Exit(EX_IOERR, "No DFU capable USB device available")
    if len(boards) > 1:
        raise _Exit(EX_IOERR, "More than one DFU capable USB device found! Try `--list' and "
                              "specify the serial number or disconnect all but one device")
    board = boards[0]
    if not args.dfuse:
        # Without -s dfu-util reads the file as a DfuSe file; octoflash always passes -s.
        raise _Exit(EX_USAGE, "No valid DfuSe signature")
    parts = args.dfuse.split(":")
    try:
        address = int(parts[0], 0)
    except ValueError:
        raise _Exit(EX_USAGE, f"Invalid dfuse address: {parts[0]}")
    modifiers = set(parts[1:])
    if "mass-erase" in modifiers and "force" not in modifiers:
        raise _Exit(EX_USAGE, "The mass erase command can only be used with force")
    unknown = modifiers - {"leave", "mass-erase", "force", "will-reset", "unprotect"}
    if unknown:
        raise _Exit(EX_USAGE, f"Invalid dfuse modifier: {sorted(unknown)[0]}")
    delay = machine.tool_delay
    out.write("Opening DFU capable USB device...\n"
              "Device ID 0483:df11\n"
              "Device DFU version 011a\n"
              "Claiming USB DFU Interface...\n"
              "Setting Alternate Interface #0 ...\n"
              "Determining device status...\n"
              "DFU state(2) = dfuIDLE, status(0) = No error condition is present\n"
              "DFU mode device DFU version 011a\n"
              "Device returned transfer size 2048\n"
              "DfuSe interface name: \"Internal Flash  \"\n")
    out.flush()
    layout = board.layout()
    end = address + len(data)
    if address < layout.start or end > layout.start + layout.size:
        raise _Exit(EX_USAGE, f"Last page at 0x{end - 1:08x} is not writeable")
    if "mass-erase" in modifiers:
        out.write("Performing mass erase, this can take a moment\n")
        out.flush()
        if board.has_fault("dfu_mass_erase_unsupported"):
            raise _Exit(EX_IOERR, "Error during special command \"MASS_ERASE\" get_status")
        board.mass_erase()
    out.write(f"Downloading element to address = 0x{address:08x}, size = {len(data)}\n")
    out.flush()
    if "mass-erase" not in modifiers:
        _progress(out, "Erase   ", len(data), delay / 3)
        out.write("Erase    done.\n")
        board.erase(address, len(data))
    if board.has_fault("dfu_hang"):
        _progress(out, "Download", len(data), delay, stop_at=0.3)
        out.flush()
        time.sleep(3600)
    if board.has_fault("dfu_download_error"):
        reached = _progress(out, "Download", len(data), delay, stop_at=0.4)
        board.write_flash(address, data[:reached], name=args.download, erase=False,
                          complete=False)
        out.write("\n")
        out.flush()
        raise _Exit(EX_IOERR, "error get_status: LIBUSB_ERROR_PIPE")
    _progress(out, "Download", len(data), delay)
    board.write_flash(address, data, name=args.download, erase=False)
    out.write("Download done.\n"
              "File downloaded successfully\n")
    out.flush()
    if "leave" in modifiers:
        out.write("Submitting leave request...\n")
        out.flush()
        board.reset(delay=None)
        if board.state.get("leave_status_error", True):
            raise _Exit(EX_IOERR, "Error during download get_status")
        out.write("Transitioning to dfuMANIFEST state\n")
    elif args.reset:
        out.write("Resetting USB to switch back to Run-Time mode\n")
        board.reset(delay=None)
    out.flush()
    return 0


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    machine = SimulatedMachine.from_env()
    machine.log_invocation("dfu-util", argv)
    try:
        args = _parse(argv)          # getopt complains before the banner
        out.write(BANNER)
        out.flush()
        if args.version:
            return 0
        if args.list:
            _list(machine, args, out)
            return 0
        if args.download:
            return _download(machine, args, out, err)
        raise _Exit(EX_USAGE, "You need to specify one of -D or -U", usage=True, prefix=False)
    except _Exit as exc:
        out.flush()
        if exc.message:
            err.write(f"{'dfu-util: ' if exc.prefix else ''}{exc.message}\n")
        if exc.usage:
            err.write(USAGE_FIRST_LINE + "\n")
        err.flush()
        return exc.code


if __name__ == "__main__":   # pragma: no cover - run through sim/bin/dfu-util
    sys.exit(main())
