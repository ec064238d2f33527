"""The simulated machine's device announcements: what the kernel's and udev's uevents are to a real one.

A simulated board re-enumerates in ``SimulatedBoard.set_mode`` (in a tool
double's process, or the CAN nodes' thread).  It is gone at once, which
``set_mode`` announces, as the kernel announces a removal; it is back when
its reboot is over (``ready_at``), which the simulated udev announces once it
has made the board's by-id link (``SimulatedCanNodes._udev``, which wakes at
``ready_at``), as udev announces a device after making its links.  An announcement
(``board.announce_devices``, kept there: the tool doubles import no more than
they need to start fast) is a datagram to every listener of the machine.

Listeners are Unix datagram sockets in the abstract namespace (no path, so no
length limit from a deep test folder), each named by an empty file in the
machine's ``uevents/`` folder (``board.listen_for_devices``); a name whose
socket is gone is removed by the next announcement.
"""
from __future__ import annotations

from ..discovery.uevents import DeviceEvents
from .board import SimulatedMachine, forget_listener, listen_for_devices


class SimulatedDeviceEvents(DeviceEvents):
    """A listener of one simulated machine: every announcement wakes its wait."""

    def __init__(self, machine: SimulatedMachine) -> None:
        sock, registry = listen_for_devices(machine.directory)
        try:
            super().__init__(sock, lambda message: True,
                             on_close=lambda: forget_listener(registry))
        except BaseException:
            sock.close()
            forget_listener(registry)
            raise
