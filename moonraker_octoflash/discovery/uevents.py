"""The kernel's device announcements, so that a wait for a board ends when the board appears.

Linux announces every device that comes or goes (a USB device, its serial
port, a network interface such as a bridge's ``can0``) on a netlink socket
(``NETLINK_KOBJECT_UEVENT``): once from the kernel itself, and once more from
udev after it has made the device's links (``/dev/serial/by-id/…``) and set
its permissions.  Any user may listen; nothing is sent.

A network interface going up or down is not a uevent: the kernel announces
it on another netlink socket (``NETLINK_ROUTE``, the link group), which a
wait hears too, since a USB-CAN bridge is back only once the host has
brought its ``can0`` up.

A flash's waits (``flash/executor.py``: the board back in Katapult, in DFU
mode, back as Klipper) probe the devices again on each announcement instead
of only every ``poll_interval``.  They still probe at that interval too: an
announcement that never comes (a container, another network namespace, a
system without netlink) makes a wait no slower than before.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from functools import partial
from typing import Any, Callable, FrozenSet, List, Optional

NETLINK_ROUTE = 0
NETLINK_KOBJECT_UEVENT = 15
RTMGRP_LINK = 1         # the route socket's group of interface changes
RTM_NEWLINK, RTM_DELLINK = 16, 17
_NLMSG_HEADER = struct.Struct("=IHHII")     # length, type, flags, sequence, port
KERNEL_GROUP = 1        # the kernel's own messages
UDEV_GROUP = 2          # udev's, once a device's links are made
# The subsystems whose devices a wait looks for: USB devices and interfaces, serial
# ports, network interfaces (a USB-CAN bridge's can0).
WATCHED_SUBSYSTEMS: FrozenSet[bytes] = frozenset({b"usb", b"tty", b"net"})
_RECEIVE_SIZE = 64 * 1024

log = logging.getLogger(__name__)


def announces_device_change(message: bytes) -> bool:
    """Whether a uevent message (the kernel's ``ACTION@DEVPATH\\0KEY=VALUE\\0…`` or udev's
    ``libudev\\0`` header and the same pairs) concerns a watched subsystem."""
    for field in message.split(b"\0"):
        if field.startswith(b"SUBSYSTEM="):
            return field[len(b"SUBSYSTEM="):] in WATCHED_SUBSYSTEMS
    return False


def announces_link_change(message: bytes) -> bool:
    """Whether a route netlink datagram holds an interface's change (``RTM_NEWLINK``: it
    appeared, went up or down; ``RTM_DELLINK``: it went)."""
    offset = 0
    while offset + _NLMSG_HEADER.size <= len(message):
        length, kind = _NLMSG_HEADER.unpack_from(message, offset)[:2]
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            return True
        if length < _NLMSG_HEADER.size:
            return False
        offset += (length + 3) & ~3       # messages are 4-byte aligned
    return False


class DeviceEvents:
    """Wakes ``wait`` when a readable socket brings a message that its ``relevant`` accepts.

    It listens from its creation until ``close``: a message that arrives while
    the waiter probes is kept and ends the next ``wait`` at once.  Reading is
    done by the event loop's reader callback (non-blocking; a burst of messages
    is drained in one go).  ``add_source`` listens to one more socket.
    """

    def __init__(self, sock: socket.socket, relevant: Callable[[bytes], bool] = announces_device_change,
                 *, on_close: Optional[Callable[[], None]] = None) -> None:
        self._sockets: List[socket.socket] = []
        self._closed = False
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.received = 0         # relevant messages, for tests and the log
        self.add_source(sock, relevant)

    def add_source(self, sock: socket.socket, relevant: Callable[[bytes], bool]) -> None:
        sock.setblocking(False)
        self._sockets.append(sock)
        self._loop.add_reader(sock.fileno(), partial(self._readable, sock, relevant))

    def _readable(self, sock: socket.socket, relevant: Callable[[bytes], bool]) -> None:
        if self._closed:
            return
        while True:
            try:
                message = sock.recv(_RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ENOBUFS: the socket's buffer overflowed and messages were lost; any
                # of them could have been the board.  Probe again.
                self._event.set()
                return
            if not message:
                return
            if relevant(message):
                self.received += 1
                self._event.set()

    def wake(self) -> None:
        """End the current or the next ``wait`` (a simulated machine's timer uses it)."""
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """True when a device change was announced (now or since the last wait), False
        after ``timeout`` seconds without one."""
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), max(0.0, timeout))
            except asyncio.TimeoutError:
                return False
        self._event.clear()
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, RuntimeError):   # the loop is closing
                pass
            sock.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> DeviceEvents:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _netlink_socket(protocol: int, *groups: int) -> Optional[socket.socket]:
    """A netlink socket of ``protocol`` joined to the first of ``groups`` (bit masks) that
    can be joined, or None where there is none (not Linux, or netlink refused)."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return None
    try:
        sock = socket.socket(family, socket.SOCK_RAW | getattr(socket, "SOCK_CLOEXEC", 0),
                             protocol)
    except OSError as exc:
        log.debug("netlink %d cannot be heard here: %s", protocol, exc)
        return None
    for mask in groups:
        try:
            sock.bind((0, mask))
            return sock
        except OSError as exc:
            log.debug("netlink %d groups %#x cannot be joined: %s", protocol, mask, exc)
    sock.close()
    return None


def open_uevent_socket() -> Optional[socket.socket]:
    """A netlink socket joined to the kernel's and udev's announcements (the kernel's alone
    where udev's group cannot be joined), or None."""
    return _netlink_socket(NETLINK_KOBJECT_UEVENT, KERNEL_GROUP | UDEV_GROUP, KERNEL_GROUP)


def open_link_socket() -> Optional[socket.socket]:
    """A route netlink socket joined to the interfaces' changes, or None."""
    return _netlink_socket(NETLINK_ROUTE, RTMGRP_LINK)


def device_events() -> Optional[DeviceEvents]:
    """The kernel's and udev's device announcements and the interfaces' changes, from now
    until ``close``; None where neither can be heard (the waits then probe at their
    interval alone).  Call it on the event loop that waits."""
    devices, links = open_uevent_socket(), open_link_socket()
    if devices is None and links is None:
        return None
    if devices is None:
        assert links is not None
        return DeviceEvents(links, announces_link_change)
    events = DeviceEvents(devices)
    if links is not None:
        events.add_source(links, announces_link_change)
    return events
