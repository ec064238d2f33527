"""The simulated machine's device announcements: what the kernel's uevents are to a real one.

A simulated board re-enumerates in ``SimulatedBoard.set_mode`` (from the tool
doubles' processes, or the CAN nodes' thread): it is gone at once and appears
when its reboot is over (``ready_at``).  Each change is sent to every listener
of the machine as a datagram; a listener wakes its wait at once (the device
went) and again at ``ready_at`` (the device is there), as a real wait is
woken by the kernel's "remove" and "add".  A listener that starts while a
board reboots (the reboot began in a tool's run) wakes at its ``ready_at``
too.

The announcement is ``board.announce_devices`` (kept there: the tool doubles
import no more than they need to start fast).  Listeners are Unix datagram
sockets in the abstract namespace (no path, so no length limit from a deep
test folder), each named by an empty file in the machine's ``uevents/``
folder; a name whose socket is gone is removed by the next announcement.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time

from ..discovery.uevents import DeviceEvents
from .board import UEVENT_ADDRESS as _ADDRESS
from .board import SimulatedMachine
from .board import UEVENT_FOLDER as FOLDER

from typing import Any, List

class SimulatedDeviceEvents(DeviceEvents):
    """A listener of one simulated machine (see the module text)."""

    def __init__(self, machine: SimulatedMachine) -> None:
        self._timers: List[Any] = []
        folder = os.path.join(machine.directory, FOLDER)
        os.makedirs(folder, exist_ok=True)
        self._name = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._registry = os.path.join(folder, self._name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(_ADDRESS + self._name.encode())
            open(self._registry, "w").close()
            super().__init__(sock, self._announced, on_close=self._forget)
        except BaseException:
            sock.close()
            raise
        # A board that began its reboot before this listener (a tool's run reboots it)
        # is announced when it appears, as the kernel announces a device when it is there.
        for board in machine.boards():
            self._arrives(float(board.state.get("ready_at") or 0.0))

    def _announced(self, message: bytes) -> bool:
        try:
            ready_at = float(json.loads(message)["ready_at"])
        except (ValueError, KeyError, TypeError):
            return False
        self._arrives(ready_at)
        return True

    def _arrives(self, ready_at: float) -> None:
        # +1 ms: the board's own clock check (time.time() >= ready_at) must see it ready
        delay = ready_at - time.time() + 0.001
        if delay > 0:
            self._timers.append(self._loop.call_later(delay, self.wake))

    def _forget(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        try:
            os.unlink(self._registry)
        except OSError:
            pass
