"""Simulated CAN nodes answering the admin protocol on python-can's virtual bus.

One listener thread per CAN interface of the machine, and one that keeps
the by-id links in step with boards that finish rebooting (``boot_delay``).  On the query
(``[0x00]`` on 0x3f0) every board reachable on that interface and not yet
given a node id answers on 0x3f1 with ``[0x20, uuid, app]`` — 0x01 when it
runs Klipper, 0x11 when it runs Katapult — as the real firmware does.  The
bootloader request (``[0x02, uuid]``) sends a board running Klipper to
Katapult (a bridge board then leaves the bus and shows up as Katapult on
USB); Katapult has no handler for it.  Klipper's set-node-id (``[0x01, uuid,
id]``) and Katapult's (``[0x11, uuid, id]``, what flashtool sends before it
connects) mark the node assigned: it ignores the query until a reset or
Katapult's clear-node-ids (``[0x12]``), as Katapult's ``canserial.c`` does.

python-can's virtual bus only reaches buses of the same process: start the
nodes in the process that scans (the tests, the Moonraker demo, the CLI).
"""
from __future__ import annotations

import threading
import time
from typing import Any, List, Optional

from ..discovery.can import (ADMIN_ID, ADMIN_RESPONSE_ID, APP_KATAPULT, APP_KLIPPER,
                             CMD_QUERY_UNASSIGNED, CMD_REQUEST_BOOTLOADER, RESP_NEED_NODEID)
from .board import announce_devices

CMD_SET_KLIPPER_NODEID = 0x01
CMD_KATAPULT_SET_NODEID = 0x11
CMD_KATAPULT_CLEAR_NODEID = 0x12


class SimulatedCanNodes:
    def __init__(self, machine: Any, *, bustype: str = "virtual",
                 interfaces: Optional[List[str]] = None) -> None:
        self.machine = machine
        self.bustype = bustype
        self.interfaces = interfaces
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._buses: List[Any] = []
        self.frames_seen = 0

    def start(self) -> SimulatedCanNodes:
        import can
        names = self.interfaces or self.machine.all_can_interfaces() or ["can0"]
        udev = threading.Thread(target=self._udev, name="sim-udev", daemon=True)
        self._threads.append(udev)
        udev.start()
        for name in names:
            bus = can.Bus(interface=self.bustype, channel=name, receive_own_messages=False)
            self._buses.append(bus)
            thread = threading.Thread(target=self._serve, args=(name, bus),
                                      name=f"sim-can-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for bus in self._buses:
            try:
                bus.shutdown()
            except Exception:
                pass
        self._threads.clear()
        self._buses.clear()

    def __enter__(self) -> SimulatedCanNodes:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _udev(self) -> None:
        """Like udev: a rebooting board's by-id links appear once it has enumerated, and
        then the board is announced (``board.announce_devices``), as udev announces a
        device once it has made its links.  It looks at the boards every 0.1 s, and
        wakes at a rebooting board's ``ready_at``."""
        pause, announced = 0.1, 0.0
        while not self._stop.wait(pause):
            pause = 0.1
            try:
                now = time.time()
                ready = [float(b.state.get("ready_at", 0)) for b in self.machine.boards()]
                if any(now - 1.0 < t for t in ready):
                    self.machine.sync_links()
                arrived = max((t for t in ready if t <= now), default=0.0)
                if arrived > announced:
                    announced = arrived
                    announce_devices(self.machine.directory)
                coming = [t for t in ready if t > now]
                if coming:
                    pause = min(pause, min(coming) - now + 0.001)
            except Exception:   # a half-written state file: try again next tick
                continue

    # --- the protocol -----------------------------------------------------------
    def _serve(self, interface: str, bus: Any) -> None:
        while not self._stop.is_set():
            try:
                msg = bus.recv(timeout=0.05)
            except Exception:
                return
            if msg is None or msg.arbitration_id != ADMIN_ID or not msg.data:
                continue
            self.frames_seen += 1
            try:
                self._handle(interface, bus, bytes(msg.data))
            except Exception:   # a broken state file must not kill the node thread
                continue

    def _nodes_on(self, interface: str) -> List[Any]:
        if interface not in self.machine.can_interfaces_up():
            return []
        return [b for b in self.machine.boards()
                if b.can_interface == interface and b.on_can]

    def _handle(self, interface: str, bus: Any, data: bytes) -> None:
        import can
        cmd = data[0]
        if cmd == CMD_QUERY_UNASSIGNED:
            for board in self._nodes_on(interface):
                if board.node_assigned:
                    continue
                app = APP_KATAPULT if board.mode == "katapult" else APP_KLIPPER
                payload = bytes([RESP_NEED_NODEID]) + bytes.fromhex(board.canbus_uuid) + bytes([app])
                bus.send(can.Message(arbitration_id=ADMIN_RESPONSE_ID, data=payload,
                                     is_extended_id=False))
            return
        if cmd == CMD_KATAPULT_CLEAR_NODEID:
            for board in self._nodes_on(interface):
                if board.mode == "katapult" and board.node_assigned:
                    board.update(lambda s: s.__setitem__("node_assigned", False))
            return
        if len(data) < 7:
            return
        uuid = data[1:7].hex()
        for board in self._nodes_on(interface):
            if board.canbus_uuid != uuid:
                continue
            if cmd == CMD_REQUEST_BOOTLOADER and board.mode != "katapult":
                board.enter_bootloader()
            elif (cmd == CMD_SET_KLIPPER_NODEID and board.mode != "katapult") or \
                    (cmd == CMD_KATAPULT_SET_NODEID and board.mode == "katapult"):
                board.update(lambda s: s.__setitem__("node_assigned", True))
