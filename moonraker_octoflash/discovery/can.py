"""CAN nodes that answer the Klipper/Katapult admin query, through python-can.

The query (``[0x00]`` on id 0x3f0) is answered on 0x3f1 by every node that
has no node id yet: ``[0x20, uuid(6), app]`` with app 0x01 for Klipper and
0x11 for Katapult.  A node already claimed by a running Klipper stays
silent; its uuid is in Klipper's config instead (see ``klipper.py``).

CAN interfaces are the network interfaces of type 280 (ARPHRD_CAN) that are
up.  The list, the python-can interface type (``socketcan``; ``virtual`` for
the simulated bus) and the listening window are all injectable.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

ADMIN_ID = 0x3F0
ADMIN_RESPONSE_ID = 0x3F1
CMD_QUERY_UNASSIGNED = 0x00
CMD_REQUEST_BOOTLOADER = 0x02
RESP_NEED_NODEID = 0x20
APP_KLIPPER = 0x01
APP_KATAPULT = 0x11
ARPHRD_CAN = 280
SYSFS_NET = "/sys/class/net"

InterfaceSource = Union[None, Sequence[str], Callable[[], Sequence[str]]]


@dataclasses.dataclass
class CanInterface:
    name: str
    up: bool
    txqueuelen: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CanNode:
    interface: str
    uuid: str                       # 12 hex digits
    application: str                # Klipper, Katapult or Unknown

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def system_can_interfaces(sysfs_net: str = SYSFS_NET) -> List[CanInterface]:
    """Blocking: every CAN network interface, up or not."""
    try:
        names = sorted(os.listdir(sysfs_net))
    except OSError:
        return []
    found: List[CanInterface] = []
    for name in names:
        base = os.path.join(sysfs_net, name)
        if _read(os.path.join(base, "type")) != str(ARPHRD_CAN):
            continue
        flags = _read(os.path.join(base, "flags"))
        operstate = _read(os.path.join(base, "operstate"))
        try:
            up = bool(int(flags or "0", 16) & 0x1) and operstate != "down"
        except ValueError:
            up = operstate in ("up", "unknown")
        qlen = _read(os.path.join(base, "tx_queue_len"))
        found.append(CanInterface(name=name, up=up,
                                  txqueuelen=int(qlen) if qlen and qlen.isdigit() else None))
    return found


def resolve_interfaces(source: InterfaceSource, sysfs_net: str = SYSFS_NET) -> List[CanInterface]:
    """The interfaces to query: the given names (taken as up) or the system's."""
    if source is None:
        return system_can_interfaces(sysfs_net)
    names = source() if callable(source) else source
    return [CanInterface(name=n, up=True) for n in names]


def _application(code: Optional[int]) -> str:
    if code is None or code == APP_KLIPPER:
        return "Klipper"      # 7-byte answers come from older Klipper
    if code == APP_KATAPULT:
        return "Katapult"
    return "Unknown"


def parse_query_answer(data: bytes) -> Optional[Tuple[str, str]]:
    """(uuid, application) from an admin response, or None if it is not one."""
    if len(data) < 7 or data[0] != RESP_NEED_NODEID:
        return None
    return data[1:7].hex(), _application(data[7] if len(data) > 7 else None)


def open_bus(interface: str, bustype: str) -> Any:
    import can
    return can.Bus(interface=bustype, channel=interface, receive_own_messages=False)


def query_interface(interface: str, *, bustype: str = "socketcan",
                    listen_time: float = 0.5,
                    expect: Optional[Sequence[str]] = None) -> Tuple[List[CanNode], List[str]]:
    """Blocking: send the admin query on one interface and collect answers.

    Listens ``listen_time`` seconds, or less when ``expect`` (uuids) is given
    and every one of them has answered: a flash that looks for its own node
    need not wait for the window to close once the node is heard.
    """
    waiting = {str(u).lower() for u in expect} if expect else None
    import can
    try:
        bus = open_bus(interface, bustype)
    except Exception as exc:   # no permission, interface gone, missing driver
        return [], [f"{interface}: cannot open the CAN interface ({exc})"]
    nodes: Dict[str, CanNode] = {}
    try:
        bus.send(can.Message(arbitration_id=ADMIN_ID, data=[CMD_QUERY_UNASSIGNED],
                             is_extended_id=False))
        deadline = time.monotonic() + listen_time
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = bus.recv(timeout=remaining)
            if msg is None:
                break
            if msg.arbitration_id != ADMIN_RESPONSE_ID or msg.is_extended_id:
                continue
            parsed = parse_query_answer(bytes(msg.data))
            if parsed is None:
                continue
            uuid, app = parsed
            nodes[uuid] = CanNode(interface=interface, uuid=uuid, application=app)
            if waiting is not None:
                waiting.discard(uuid)
                if not waiting:
                    break
    except Exception as exc:
        return list(nodes.values()), [f"{interface}: CAN query failed ({exc})"]
    finally:
        try:
            bus.shutdown()
        except Exception:
            pass
    return list(nodes.values()), []


def watch_for_node(interface: str, uuid: str, *, timeout: float,
                   application: Optional[str] = None, bustype: str = "socketcan",
                   requery: float = 0.02, stop: Any = None) -> Optional[CanNode]:
    """Blocking: ask the bus every ``requery`` seconds until node ``uuid`` answers.

    For the end of a wait on a rebooting node: a node answers a query only
    when it is asked, so one query during the reboot finds nothing; asking
    again every ``requery`` seconds sees the node within that time of it
    being back.  ``application`` (Klipper, Katapult): an answer as another
    application does not count (a node still running Klipper right after a
    bootloader request).  Returns the node, or None after ``timeout``
    seconds or when ``stop`` (a ``threading.Event``) is set; ``OSError`` when
    the interface cannot be opened.  One frame per
    ``requery`` on a bus whose host software is stopped is no load.
    """
    import can
    wanted = str(uuid).lower()
    try:
        bus = open_bus(interface, bustype)
    except Exception as exc:   # the interface is gone or not up, no permission
        raise OSError(f"{interface}: cannot open the CAN interface ({exc})") from exc
    try:
        deadline = time.monotonic() + timeout
        next_query = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline or (stop is not None and stop.is_set()):
                return None
            if now >= next_query:
                bus.send(can.Message(arbitration_id=ADMIN_ID, data=[CMD_QUERY_UNASSIGNED],
                                     is_extended_id=False))
                next_query = now + requery
            msg = bus.recv(timeout=max(0.0, min(next_query, deadline) - time.monotonic()))
            if msg is None or msg.arbitration_id != ADMIN_RESPONSE_ID or msg.is_extended_id:
                continue
            parsed = parse_query_answer(bytes(msg.data))
            if parsed is None or parsed[0] != wanted:
                continue
            if application is None or parsed[1] == application:
                return CanNode(interface=interface, uuid=parsed[0], application=parsed[1])
    except Exception:
        return None
    finally:
        try:
            bus.shutdown()
        except Exception:
            pass


def send_bootloader_request(interface: str, uuid: str, *, bustype: str = "socketcan") -> None:
    """Blocking: ask the node with ``uuid`` to jump to its bootloader (admin 0x02)."""
    import can
    bus = open_bus(interface, bustype)
    try:
        bus.send(can.Message(arbitration_id=ADMIN_ID,
                             data=bytes([CMD_REQUEST_BOOTLOADER]) + bytes.fromhex(uuid),
                             is_extended_id=False))
    finally:
        bus.shutdown()
