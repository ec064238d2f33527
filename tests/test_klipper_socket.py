"""octoflash asking Klipper on its own socket, while Moonraker is not connected to it.

After every start Klipper answers on its socket at once, and Moonraker
finds the socket up to 0.25 s later.  In that gap octoflash must still see
a running Klipper (a flash started then stops it, a print blocks a flash)
and reads Klipper's boards from Klipper itself.  Klipper here is the
stand-in (``sim/klippy.py``); ``test_real_klipper.py`` asks a real Klippy
the same way.  Moonraker's side is a connection that is not (yet)
connected: the only state of it these tests need, and one a real Moonraker
holds for less than half a second (``test_moonraker_jobs.py`` flashes
right after a start through a real one).
"""
from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fixtures_moonraker import MoonrakerNotConnected
from moonraker_octoflash import klipper_socket
from moonraker_octoflash.errors import UnavailableError
from moonraker_octoflash.klipper_socket import Connection, KlipperSocketError
from moonraker_octoflash.moonraker.klipper_state import KlipperState
from moonraker_octoflash.moonraker.services import MoonrakerKlipperService
from moonraker_octoflash.service import KlipperService
from moonraker_octoflash.sim.klippy import KlippyStandIn, SimMcu

TOOLHEAD_VERSION = "v0.13.0-3-gabcdef12"


def _mcus() -> List[SimMcu]:
    return [SimMcu("mcu", {"canbus_uuid": "aabbccddeeff"}),
            SimMcu("Toolhead", {"canbus_uuid": "112233445566"}, version=TOOLHEAD_VERSION,
                   mcu_type="stm32g0b1xx")]


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # AF_UNIX paths are short (108 bytes): a deep pytest tmp_path may not fit
    path = str(tmp_path / "klippy.sock")
    return path if len(path) < 100 else os.path.join("/tmp", f"oft-{os.getpid()}-klippy.sock")


@pytest.fixture
async def klipper(sock_path: str):
    standin = KlippyStandIn(sock_path, mcus=_mcus())
    yield standin
    await standin.stop()


class _Server:
    error = Exception

    def __init__(self, kconn: Any) -> None:
        self.kconn = kconn
        self.handlers: Dict[str, List[Any]] = {}

    def lookup_component(self, name: str) -> Any:
        assert name == "klippy_connection", name     # nothing may go through Moonraker here
        return self.kconn

    def register_event_handler(self, event: str, callback: Any) -> None:
        self.handlers.setdefault(event, []).append(callback)

    async def send_event(self, event: str) -> None:
        for callback in self.handlers.get(event, []):
            await callback()

    def get_event_loop(self) -> Any:
        return asyncio.get_running_loop()


class _StartsTheStandIn(KlipperService):
    """Klipper's service: its start opens Klipper's socket."""

    def __init__(self, standin: KlippyStandIn) -> None:
        self.standin = standin

    async def stop(self) -> None:
        await self.standin.stop()

    async def start(self) -> None:
        await self.standin.start()

    async def is_active(self) -> bool:
        return self.standin.running


async def test_a_klipper_answers_only_while_it_listens(klipper, sock_path):
    assert await klipper_socket.answers(None) is False
    assert await klipper_socket.answers(sock_path) is False          # no socket file
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)                                             # a file nobody listens on
    stale.close()
    assert os.path.exists(sock_path)
    assert await klipper_socket.answers(sock_path) is False
    await klipper.start()
    assert await klipper_socket.answers(sock_path) is True
    await klipper.stop()
    assert await klipper_socket.answers(sock_path) is False


async def test_requests_get_klippers_answers_and_its_errors(klipper, sock_path):
    await klipper.start()
    async with Connection(sock_path, 5) as conn:
        info = await conn.request("info")
        status = await conn.request("objects/query", {"objects": {"mcu Toolhead": ["mcu_version"]}})
        with pytest.raises(KlipperSocketError) as caught:
            await conn.request("no/such/endpoint")
        assert (await conn.request("info"))["state"] == "ready"   # the connection goes on
    assert info["state"] == "ready"
    assert status["status"]["mcu Toolhead"] == {"mcu_version": TOOLHEAD_VERSION}
    assert str(caught.value) == ("Klipper answered no/such/endpoint with an error: webhooks: "
                                 "No registered callback for path 'no/such/endpoint'")
    assert await klipper_socket.query(sock_path, {"print_stats": ["state"]}) == \
        {"print_stats": {"state": "standby"}}


async def test_a_klipper_that_hangs_or_hangs_up_is_an_error_not_a_wait(sock_path):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()          # reads the request, never answers

    server = await asyncio.start_unix_server(silent, path=sock_path)
    try:
        with pytest.raises(KlipperSocketError) as caught:
            async with Connection(sock_path, 0.2) as conn:
                await conn.request("info")
        assert str(caught.value) == "Klipper did not answer info within 0.2 s"
    finally:
        server.close()
        await server.wait_closed()
    os.unlink(sock_path)

    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\x03")
        writer.write(b'{"id": 0, "result": {}}\x03{"id": 1, "res')     # not its answer, then cut
        writer.close()

    server = await asyncio.start_unix_server(hangs_up, path=sock_path)
    try:
        with pytest.raises(KlipperSocketError) as caught:
            await klipper_socket.query(sock_path, {"webhooks": None}, timeout=30)
        assert str(caught.value).startswith("Klipper's socket closed while asked objects/query")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_klipper_moonraker_has_not_reconnected_to_yet_is_running(klipper, sock_path):
    service = MoonrakerKlipperService(_Server(MoonrakerNotConnected(sock_path)), 60.0,
                                      control=_StartsTheStandIn(klipper))
    assert await service.is_active() is False
    await klipper.start()
    # a flash asked for now must stop Klipper, not find it "not running"
    assert await service.is_active() is True
    await klipper.stop()
    assert await service.is_active() is False


async def test_the_print_guard_and_the_plan_read_klipper_itself_meanwhile(klipper, sock_path):
    state = KlipperState(_Server(MoonrakerNotConnected(sock_path)))
    assert await state.print_state() == ("disconnected", "")
    assert await state.read() == {}              # nothing known, nothing running
    await klipper.start()
    klipper.set_print_state("printing", "benchy.gcode")
    assert await state.print_state() == ("printing", "benchy.gcode")
    status = await state.read()
    assert status["mcu Toolhead"]["mcu_version"] == TOOLHEAD_VERSION
    assert status["webhooks"]["state"] == "ready"
    assert status["configfile"]["config"]["mcu Toolhead"] == {"canbus_uuid": "112233445566"}
    # read, not kept: Moonraker's ready event refreshes what the component shows
    assert state.status == {}


class _Reconnecting(MoonrakerNotConnected):
    """Moonraker's klippy_connection as it gets Klipper back, step by step."""

    def __init__(self, uds_address: str) -> None:
        super().__init__(uds_address)
        self.connected = False

    def is_connected(self) -> bool:
        return self.connected


class _State:
    def __init__(self, name: str) -> None:
        self.name = name


async def test_a_start_moonraker_never_gets_back_says_so(klipper, sock_path):
    service = MoonrakerKlipperService(_Server(MoonrakerNotConnected(sock_path)), 0.3,
                                      control=_StartsTheStandIn(klipper))
    with pytest.raises(UnavailableError) as caught:
        await service.start()
    assert str(caught.value) == (
        "Moonraker did not have Klipper back within 0.3 s of starting it (it answers on its "
        "socket, but Moonraker has not connected to it; see klippy.log and moonraker.log)")
    await klipper.stop()

    class _StartsNothing(_StartsTheStandIn):
        async def start(self) -> None:
            pass
    service = MoonrakerKlipperService(_Server(MoonrakerNotConnected(sock_path)), 0.3,
                                      control=_StartsNothing(klipper))
    with pytest.raises(UnavailableError, match=r"0\.3 s of starting it \(it is not running;"):
        await service.start()


@pytest.mark.parametrize("klipper_state, events, back", [
    # a ready Klipper: back once Moonraker has registered the macros' methods (ready)
    ("ready", ["identified"], False),
    ("ready", ["identified", "started"], False),
    ("ready", ["identified", "started", "ready"], True),
    # Klipper in error: Moonraker goes no further than started
    ("error", ["identified"], False),
    ("error", ["identified", "started"], True),
    # Klipper waiting for a board: Moonraker goes no further than identified
    ("startup", ["identified"], True),
    # Moonraker lost it again
    ("ready", ["identified", "started", "ready", "disconnect"], False),
])
async def test_a_start_ends_when_moonraker_has_got_as_far_as_klipper(
        sock_path, klipper_state, events, back):
    kconn = _Reconnecting(sock_path)
    server = _Server(kconn)
    service = MoonrakerKlipperService(server, 30.0)
    kconn.connected = True
    kconn.klippy_info = {"state": klipper_state}
    for event in events:
        if event == "started":
            kconn.state = _State(klipper_state)
        if event == "disconnect":
            kconn.connected = False
        await server.send_event(f"server:klippy_{event}")
    assert service._moonraker_has_klipper() is back


async def test_a_start_returns_at_moonrakers_ready_event(sock_path):
    kconn = _Reconnecting(sock_path)
    server = _Server(kconn)
    service = MoonrakerKlipperService(server, 30.0)

    async def moonraker_reconnects() -> None:
        kconn.connected = True
        kconn.klippy_info = {"state": "ready"}
        await server.send_event("server:klippy_identified")
        kconn.state = _State("ready")
        await server.send_event("server:klippy_started")
        await server.send_event("server:klippy_ready")

    class _Starts(KlipperService):
        async def stop(self) -> None:
            pass

        async def start(self) -> None:
            asyncio.get_running_loop().create_task(moonraker_reconnects())

        async def is_active(self) -> bool:
            return kconn.connected
    service.control = _Starts()
    await asyncio.wait_for(service.start(), 20)
    assert service.moonraker_view == "ready"
