"""A double of Katapult's ``scripts/flashtool.py`` writing into simulated boards.

Two versions, chosen by the machine's ``flashtool_version``:

* ``current`` (Katapult 2025): ``-s`` status requests, USB-CAN bridge
  detection (``-i can0 -u UUID -f …`` on a bridge waits for the USB
  reconnect and finishes over serial), refuses a ``klipper.bin`` built for
  another MCU, ends with ``Programming Complete`` / ``Bootloader Request
  Complete`` / ``Status Request Complete``, errors logged as
  ``ERROR:root:Flash Tool Error``.
* ``old`` (July 2023 to September 2024, before Katapult's ``542b6a8``): as
  ``legacy``, but ``-r`` is for CAN only ("(CAN only)" in its help): with
  ``-d`` it is ignored and the image is written; errors exit 255.
* ``legacy`` (before October 2024): no ``-s`` (argparse rejects it), no
  bridge detection, only warns on an MCU mismatch, ends every success —
  a bare ``-r`` included — with ``Flash Success``, errors logged as
  ``ERROR:root:Flash Error``.

Progress is one ``#`` per 2 % written without a newline, as the real tool
does.  Failure switches: see ``board.FAULTS``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .board import SimulatedBoard, SimulatedMachine
from .images import find_data_dictionary

TYPE_CHECKING = False   # typing is imported only by type checkers (see sim/board.py)
if TYPE_CHECKING:
    from typing import Optional, Sequence, TextIO

PROG = "flashtool.py"


class FlashError(Exception):
    pass


# The real tool is run as a script: Python prints ``FlashError: …`` unqualified.
FlashError.__module__ = "__main__"


class _Tool:
    def __init__(self, machine: SimulatedMachine, args: argparse.Namespace,
                 out: TextIO) -> None:
        self.machine = machine
        self.args = args
        self.out = out
        self.old = machine.flashtool_version == "old"
        self.legacy = machine.flashtool_version in ("legacy", "old")
        self.fw_path = os.path.realpath(os.path.expanduser(args.firmware))

    # --- output --------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def put(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    @property
    def is_bootloader_req(self) -> bool:
        return bool(self.args.request_bootloader)

    @property
    def is_status_req(self) -> bool:
        return bool(getattr(self.args, "status", False))

    @property
    def is_flash_req(self) -> bool:
        return not (self.is_bootloader_req or self.is_status_req or self.args.query)

    def check_firmware(self) -> None:
        if self.is_flash_req and not os.path.isfile(self.fw_path):
            raise FlashError(f"Invalid firmware path '{self.fw_path}'")

    def wait_reconnect(self, board: SimulatedBoard, start_kind: str) -> bool:
        self.put("Waiting for USB Reconnect.")
        for _ in range(8):
            time.sleep(min(0.5, self.machine.tool_delay))
            self.put(".")
            ident = board.usb_identity()
            if self.legacy:
                # Before March 2025 only a Katapult coming back ends the wait.
                if ident is not None and ident["manufacturer"] == "katapult":
                    self.line("Katapult detected")
                    return True
                continue
            if ident is not None and ident["id"] != start_kind:
                vid, pid = ident["id"]
                self.line("done")
                # flashtool reads these from sysfs and lower-cases them.
                self.line(f"Detected new USB Device: {vid:04x}:{pid:04x} "
                          f"{ident['manufacturer'].lower()} {ident['product'].lower()}")
                if ident["manufacturer"] == "katapult":
                    return True
                # Since March 2025: another device came back (the ROM's DFU loader, say);
                # the run ends as a bootloader request, exit 0.
                self.args.request_bootloader = True
                self.line("Device is not Katapult, exiting...")
                return False
        self.line("timed out")
        return False

    # --- the bootloader side -------------------------------------------------------
    def connect(self, board: Optional[SimulatedBoard]) -> SimulatedBoard:
        """CONNECT: Katapult answers with its version, app start, block size, MCU."""
        dictionary = None
        if os.path.basename(self.fw_path).lower() == "klipper.bin" and os.path.isfile(self.fw_path):
            with open(self.fw_path, "rb") as f:
                dictionary = find_data_dictionary(f.read())
            if dictionary:
                self.line(f"Detected Klipper binary version {dictionary.get('version', '')}, "
                          f"MCU: {dictionary.get('config', {}).get('MCU', '')}")
        self.line("Attempting to connect to bootloader")
        if board is None or board.mode != "katapult" or board.has_fault("katapult_connect_error"):
            time.sleep(min(1.0, self.machine.tool_delay * 4))
            raise FlashError("Error sending command [CONNECT] to Device")
        mcu = board.mcu
        start = board.katapult_app_start() or 0
        self.line("Katapult Connected\n"
                  f"Software Version: {board.katapult_version()}\n"
                  "Protocol Version: 1.1.0\n"
                  "Block Size: 64 bytes\n"
                  f"Application Start: 0x{start:4X}\n"
                  f"MCU type: {mcu}")
        if dictionary:
            bin_mcu = dictionary.get("config", {}).get("MCU", "")
            if bin_mcu and bin_mcu != mcu:
                if self.legacy:
                    self.line("WARNING: MCU returned by Katapult does not match MCU"
                              "stored in klipper.bin.\n"
                              f"Katapult MCU: {mcu}\nKlipper Binary MCU: {bin_mcu}")
                else:
                    raise FlashError("MCU returned by Katapult does not match MCU identified "
                                     "in klipper.bin.\n"
                                     f"Katapult MCU: {mcu}\nKlipper Binary MCU: {bin_mcu}")
        return board

    def flash(self, board: SimulatedBoard) -> None:
        with open(self.fw_path, "rb") as f:
            data = f.read()
        block = 64
        padded = data + b"\xff" * (-len(data) % block)
        blocks = len(padded) // block
        start = board.katapult_app_start() or 0
        self.line(f"Flashing '{self.fw_path}'...")
        self.put("\n[")
        delay = self.machine.tool_delay
        fail_at = 0.4 if (board.has_fault("katapult_write_error")
                          or board.has_fault("katapult_link_lost")) else None
        hang_at = 0.3 if board.has_fault("katapult_hang") else None
        board.erase(start, len(padded))
        marks = 0
        for mark in range(1, 51):
            fraction = mark / 50
            if hang_at is not None and fraction > hang_at:
                time.sleep(3600)
            while mark == 17 and board.has_fault("katapult_pause"):
                time.sleep(0.05)
            if fail_at is not None and fraction > fail_at:
                cut = int(blocks * fail_at) * block
                board.write_flash(start, padded[:cut], name=self.fw_path, erase=False,
                                  complete=False)
                if self.legacy:
                    # Before July 2025 the failed command is the error itself.
                    raise FlashError("Error sending command [SEND_BLOCK] to Device")
                try:
                    raise FlashError("Error sending command [SEND_BLOCK] to Device")
                except FlashError as exc:
                    raise FlashError(
                        f"Flash write failed, flash address 0x{start + cut:4X}") from exc
            self.put("#")
            marks += 1
            time.sleep(delay / 50)
        board.write_flash(start, padded, name=self.fw_path, erase=False)
        self.line(f"]\n\nWrite complete: {blocks} pages")
        self.line(f"Verifying (block count = {blocks})...")
        self.put("\n[")
        for _ in range(50):
            self.put("#")
            time.sleep(delay / 100)
        import hashlib
        expected = hashlib.sha1(padded).hexdigest().upper()
        readback = hashlib.sha1(board.read_flash(start, len(padded))).hexdigest().upper()
        if board.has_fault("katapult_verify_error"):
            readback = hashlib.sha1(b"corrupt" + padded).hexdigest().upper()
        if readback != expected:
            raise FlashError(f"Checksum mismatch: Expected {expected}, Received {readback}")
        self.line(f"]\n\nVerification Complete: SHA = {readback}")

    def finish(self, board: Optional[SimulatedBoard]) -> None:
        """COMPLETE: Katapult starts the application (a bridge re-enumerates)."""
        if board is not None and board.has_fault("katapult_link_lost"):
            time.sleep(min(1.0, self.machine.tool_delay * 4))
            raise FlashError("Error sending command [COMPLETE] to Device")
        if board is not None and board.mode == "katapult":
            board.reset()

    def reset_nodes(self, intf: str) -> None:
        """CLEAR_NODE_ID (admin 0x12): every Katapult node on the bus forgets its node id."""
        self.line("Resetting all bootloader node IDs...")
        for b in self.machine.boards():
            if b.can_interface == intf and b.mode == "katapult" and b.node_assigned:
                b.update(lambda s: s.__setitem__("node_assigned", False))

    # --- transports -------------------------------------------------------------------
    def run_serial(self, device: str) -> None:
        baud = self.args.baud
        self.line(f"{'Flashing' if self.legacy else 'Connecting to'} Serial Device {device}, "
                  f"baud {baud}")
        if self.legacy and not os.path.isfile(self.fw_path):
            raise FlashError(f"Invalid firmware path '{self.fw_path}'")
        self.check_firmware()
        if not os.path.exists(device):
            raise FlashError(f"No Serial Device found at {device}")
        board = self.machine.board_for_tty(device)
        if board is not None and board.has_fault("serial_in_use"):
            self.line(f"Serial device {device} in use by another program.\n"
                      "Process ID: 4242\nProcess Systemd Unit Name: klipper.service")
            raise FlashError(f"Serial device {device} in use")
        mode = board.mode if board is not None else "off"
        if self.old:
            # No USB bootloader request yet, and -r is for CAN only: this is a write.
            self.args.request_bootloader = False
        elif mode == "klipper" and board is not None:
            self.line("Detected USB device running Klipper")
            self.line(f"Requesting USB bootloader for {device}...")
            start_id = str((board.usb_identity() or {}).get("id") or "")
            board.enter_bootloader()
            if self.wait_reconnect(board, start_id) and board.mode == "katapult":
                device = board.by_id_path() or device
                if not self.legacy:
                    self.line(f"Katapult detected on {device}")
            if self.is_bootloader_req:
                return
        elif mode == "katapult":
            self.line("Detected USB device running Katapult")
            if self.is_bootloader_req:
                return
        elif self.is_bootloader_req:
            self.line(f"Requesting serial bootloader for device {device}...")
            return
        target = self.connect(board)
        try:
            if not self.is_status_req:
                self.flash(target)
        finally:
            if self.is_flash_req:
                self.finish(target)

    def run_can(self) -> Optional[str]:
        """The CAN flow; returns a serial device to continue on (current, bridge)."""
        args = self.args
        intf = args.interface
        if args.uuid is None and not args.query:
            raise FlashError("The 'uuid' option must be specified to flash "
                             f"{'a device' if self.legacy else 'a CAN device'}")
        uuid = (args.uuid or "").lower()
        bridge: Optional[SimulatedBoard] = None
        if not args.query:
            if not self.legacy:
                candidate = self.machine.board_for_uuid(uuid)
                if (candidate is not None and candidate.mode == "klipper-canbridge"
                        and candidate.can_interface == intf):
                    bridge = candidate
                    self.line(f"Canbus Bridge detected at /sys/bus/usb/devices/"
                              f"{candidate.port_path}")
                self.line(f"Connecting to CAN UUID {args.uuid} on interface {intf}")
            else:
                self.line(f"Flashing CAN UUID {args.uuid} on interface {intf}")
        if self.legacy and self.is_flash_req and not os.path.isfile(self.fw_path):
            raise FlashError(f"Invalid firmware path '{self.fw_path}'")
        self.check_firmware()
        if intf not in self.machine.can_interfaces_up():
            raise FlashError(f"Unable to bind socket to {'can0' if self.legacy else intf}")
        nodes = [b for b in self.machine.boards() if b.can_interface == intf and b.on_can]
        if args.query:
            self.reset_nodes(intf)
            self.line("Checking for Katapult nodes...")
            for b in nodes:
                if b.node_assigned:
                    continue            # an assigned node ignores the query
                app = "Katapult" if b.mode == "katapult" else "Klipper"
                self.line(f"Detected UUID: {b.canbus_uuid}, Application: {app}")
            return None
        target = next((b for b in nodes if b.canbus_uuid == uuid), None)
        if self.is_flash_req or self.is_bootloader_req:
            self.line("Sending bootloader jump command...")
            if target is not None and target.mode != "katapult":
                start_id = str((target.usb_identity() or {}).get("id") or "")
                target.enter_bootloader()
                if bridge is not None:
                    if self.wait_reconnect(bridge, start_id) and bridge.mode == "katapult":
                        if bridge.has_fault("katapult_tty_late"):
                            # the tty is not there 0.5 s after re-enumeration
                            raise FlashError("Failed to locate serial tty path")
                        self.line(f"Katapult detected at serial port {bridge.tty_path}")
                        return None if self.is_bootloader_req else bridge.tty_path
                    return None
            time.sleep(min(1.0, self.machine.tool_delay))
            if self.is_bootloader_req:
                if self.legacy:
                    self.line("Bootloader request command sent")
                return None
        self.reset_nodes(intf)
        target = next((b for b in self.machine.boards()
                       if b.can_interface == intf and b.on_can and b.canbus_uuid == uuid), None)
        if target is not None and target.mode == "katapult":
            # SET_NODEID: the node now answers on its own id and ignores the admin query
            # until COMPLETE (a reset) or a CLEAR_NODE_ID.
            target.update(lambda s: s.__setitem__("node_assigned", True))
        board = self.connect(target)
        self.line("Verifying canbus connection")
        try:
            if not self.is_status_req:
                self.flash(board)
        finally:
            if self.is_flash_req:
                self.finish(board)
        return None


def _parser(legacy: bool, old: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Katapult Flash Tool")
    parser.add_argument("-d", "--device", metavar="<serial device>", help="Serial Device")
    parser.add_argument("-b", "--baud", default=250000, metavar="<baud rate>",
                        help="Serial baud rate")
    parser.add_argument("-i", "--interface", default="can0", metavar="<can interface>",
                        help="Can Interface")
    parser.add_argument("-f", "--firmware", metavar="<klipper.bin>",
                        default="~/klipper/out/klipper.bin", help="Path to Klipper firmware file")
    parser.add_argument("-u", "--uuid", metavar="<uuid>", default=None, help="Can device uuid")
    parser.add_argument("-q", "--query", action="store_true",
                        help="Query available CAN UUIDs (CANBus Ony)")
    parser.add_argument("-v", "--verbose", action="store_true", help="Enable verbose responses")
    parser.add_argument("-r", "--request-bootloader", action="store_true",
                        help="Requests the bootloader and exits" + (" (CAN only)" if old
                                                                      else ""))
    if not legacy:
        parser.add_argument("-s", "--status", action="store_true",
                            help="Connect to bootloader and print status")
    return parser


def _traceback(err: TextIO, legacy: bool, exc: FlashError) -> None:
    """What ``logging.exception`` prints for the real tool's FlashError: Python's
    own traceback, with a chained error ("During handling of the above
    exception…", "The above exception was the direct cause…") as it is.
    (traceback is imported here, as hashlib in flash(): most runs need neither.)"""
    import traceback
    err.write(f"ERROR:root:{'Flash Error' if legacy else 'Flash Tool Error'}\n"
              + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    err.flush()


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    machine = SimulatedMachine.from_env()
    if not {"-h", "--help"} & set(argv):
        machine.log_invocation("flashtool", argv)   # the log holds runs that act on boards
    old = machine.flashtool_version == "old"
    legacy = old or machine.flashtool_version == "legacy"
    args = _parser(legacy, old).parse_args(argv)   # exits 2 on an unknown option (argparse)
    tool = _Tool(machine, args, out)
    try:
        if args.device is None:
            serial_device = tool.run_can()
            if serial_device is not None:
                tool.run_serial(serial_device)
        else:
            tool.run_serial(args.device)
    except FlashError as exc:
        out.flush()
        _traceback(err, legacy, exc)
        return 255 if old else 1          # sys.exit(-1) before September 2024
    if legacy:
        tool.line("Query Complete" if args.query else "Flash Success")
    elif args.query:
        tool.line("CANBus UUID Query Complete")
    elif tool.is_bootloader_req:
        tool.line("Bootloader Request Complete")
    elif tool.is_status_req:
        tool.line("Status Request Complete")
    else:
        tool.line("Programming Complete")
    return 0


if __name__ == "__main__":   # pragma: no cover - run through sim/bin/flashtool.py
    sys.exit(main())
