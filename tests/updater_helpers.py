"""A real Moonraker 0.11 for the update-manager and web tests, and a websocket client.

Moonraker runs as a subprocess from a throw-away virtualenv that sees this
Python's packages (``--system-site-packages``): Moonraker's update manager
refuses to load when the Python running Moonraker is not a virtualenv
("Invalid virtualenv at path ..."), as it is with a plain pip install.

The octoflash component is handed to Moonraker without touching Moonraker's
installed files: a small bootstrap registers the component module under the
name ``moonraker.components.octoflash`` before Moonraker starts, so the
``[octoflash]`` section loads it exactly as the linked file would.

``Machine`` puts it together: the component of ``updater_component.py``
(the real one with a builder and flash double driven by a state file), a
Klipper stand-in that reports the boards' versions from that file, and
Moonraker with three profiles (octopus: auto_update, toolhead, and a
Katapult bootloader profile).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional

from tornado.websocket import websocket_connect

from moonraker_octoflash.sim.klippy import KlippyStandIn, SimMcu, StandInThread
from updater_component import read_state, write_state

BOOTSTRAP = textwrap.dedent("""
    import importlib.util, sys
    component_file, data_path = sys.argv[1], sys.argv[2]
    import moonraker.components
    spec = importlib.util.spec_from_file_location("moonraker.components.octoflash",
                                                  component_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["moonraker.components.octoflash"] = module
    spec.loader.exec_module(module)
    sys.argv = ["moonraker", "-d", data_path, "-l", data_path + "/logs/moonraker.log"]
    from moonraker.server import main
    main()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_venv(path: str) -> str:
    """A Python for Moonraker that is a virtualenv; returns its interpreter.

    When the tests already run in one (scripts/test uses .venv), that is it.
    Otherwise a virtualenv without pip is made at ``path`` over this
    Python's packages (``--system-site-packages``).
    """
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix) and \
            os.path.isfile(os.path.join(sys.prefix, "bin", "activate")):
        return sys.executable
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                        "--system-site-packages", path], check=True, timeout=60)
    return python


class MoonrakerProcess:
    """``moonraker -d DATA`` with a given moonraker.conf and component file."""

    def __init__(self, data_path: str, config_text: str, component_file: str,
                 python: str, port: int, env: Optional[Dict[str, str]] = None) -> None:
        self.data_path = data_path
        self.port = port
        self.python = python
        self.component_file = component_file
        self.env = dict(os.environ, **(env or {}))
        self.proc: Optional[subprocess.Popen] = None
        for sub in ("config", "logs", "comms", "gcodes"):
            os.makedirs(os.path.join(data_path, sub), exist_ok=True)
        with open(os.path.join(data_path, "config", "moonraker.conf"), "w") as f:
            f.write(config_text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.data_path, "logs", "moonraker.log")

    def start(self, timeout: float = 30.0) -> "MoonrakerProcess":
        # Python path: the checkout first, so the package under test is imported.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        out = open(os.path.join(self.data_path, "logs", "stdout.txt"), "ab")
        self.proc = subprocess.Popen(
            [self.python, "-c", BOOTSTRAP, self.component_file, self.data_path],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Moonraker exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/server/info", timeout=1) as r:
                    info = json.load(r)["result"]
                if "update_manager" in info.get("components", []) or \
                        "update_manager" in info.get("failed_components", []):
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Moonraker did not start in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, lines: int = 60) -> str:
        text = ""
        for path in (self.log_path, os.path.join(self.data_path, "logs", "stdout.txt")):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
        return text


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RpcClient:
    """Moonraker's JSON-RPC over websocket, keeping every notification received."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.notifications: List[Dict[str, Any]] = []
        self._pending: Dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._reader: Optional[asyncio.Task] = None
        self._changed = asyncio.Event()

    async def connect(self, base_url: str) -> "RpcClient":
        url = base_url.replace("http://", "ws://") + "/websocket"
        self.conn = await websocket_connect(url, max_message_size=50 * 1024 * 1024)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.call("server.connection.identify", {
            "client_name": "octoflash-tests", "version": "1", "type": "other",
            "url": "https://example.invalid"})
        return self

    async def _read(self) -> None:
        while True:
            text = await self.conn.read_message()
            if text is None:
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("websocket closed"))
                return
            msg = json.loads(text)
            if "id" in msg and msg["id"] in self._pending:
                fut = self._pending.pop(msg["id"])
                if not fut.done():
                    fut.set_result(msg)
            elif "method" in msg:
                self.notifications.append(msg)
                self._changed.set()

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None,
                   timeout: float = 60.0) -> Any:
        self._next_id += 1
        req_id = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self.conn.write_message(json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": req_id}))
        msg = await asyncio.wait_for(fut, timeout)
        if "error" in msg:
            raise RpcError(msg["error"].get("code", 0), msg["error"].get("message", ""))
        return msg["result"]

    def of(self, method: str) -> List[Any]:
        """Every notification ``method`` received so far (its first parameter)."""
        return [(n.get("params") or [None])[0] for n in self.notifications
                if n["method"] == method]

    async def wait_for(self, method: str, predicate: Callable[[Any], bool],
                       timeout: float = 30.0, start: int = 0) -> Any:
        """The first ``method`` notification from index ``start`` on matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for n in self.notifications[start:]:
                if n["method"] == method:
                    param = (n.get("params") or [None])[0]
                    if predicate(param):
                        return param
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [n["method"] for n in self.notifications[start:]]
                raise AssertionError(f"no matching {method} in {timeout} s; saw {seen[-30:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.conn is not None:
            self.conn.close()


async def wait_until(check: Callable[[], Any], timeout: float = 30.0,
                     interval: float = 0.2, what: str = "condition") -> Any:
    """Poll an async or plain callable until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s (last: {last!r})")


# --- a machine: Moonraker, the component, Klipper ------------------------------

COMPONENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "updater_component.py")
OLD = "v0.13.0-730-g84104bbbd"
NEW = "v0.13.0-1004-g0a1b2c3d"
UUID = "0e1f2a3b4c5d"


def moonraker_conf(data: str, port: int, announcements: bool = True) -> str:
    return textwrap.dedent(f"""\
        [server]
        host: 127.0.0.1
        port: {port}
        klippy_uds_address: {data}/comms/klippy.sock

        [machine]
        provider: none
        validate_service: False

        [authorization]
        trusted_clients:
          127.0.0.0/8

        [update_manager]
        enable_system_updates: False

        [announcements]
        enable_moonlight: False

        [octoflash]
        simulation: {data}/sim
        build_path: {data}/octoflash
        announcements: {announcements}

        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        description: Octopus main board
        klipper_mcu: mcu
        canbus_uuid: {UUID}
        auto_update: True

        [octoflash toolhead]
        preset: btt-octopus-h723-canbridge
        klipper_mcu: toolhead

        [octoflash bootloader]
        preset: btt-octopus-f446-katapult
        """)


def initial_state() -> Dict[str, Any]:
    return {"checkout": NEW, "boards": {"mcu": OLD, "toolhead": NEW, "spare": NEW},
            "reachable": {"octopus": True, "toolhead": True}, "flashed": []}


class Machine:
    """A Moonraker with the component and a Klipper stand-in reading the state file."""

    def __init__(self, root: str, python: str, announcements: bool = True) -> None:
        self.data = os.path.join(root, "data")
        self.sim = os.path.join(self.data, "sim")
        os.makedirs(self.sim, exist_ok=True)
        write_state(self.sim, initial_state())
        self.port = free_port()
        standin = KlippyStandIn(os.path.join(self.data, "comms", "klippy.sock"),
                                mcus=self._mcus, software_version=NEW)
        self.klipper = StandInThread(standin, os.path.join(self.sim, "klippy-control.sock"))
        self.moonraker = MoonrakerProcess(self.data, moonraker_conf(self.data, self.port,
                                                                    announcements),
                                          COMPONENT, python, self.port)

    def _mcus(self) -> Any:
        boards = read_state(self.sim)["boards"]
        return [SimMcu("mcu", {"canbus_uuid": UUID}, boards["mcu"]),
                SimMcu("toolhead", {"serial": "/dev/serial/by-id/usb-Klipper_stm32h723xx_1-if00"},
                       boards["toolhead"], mcu_type="stm32h723xx"),
                SimMcu("spare", {"serial": "/dev/serial/by-id/usb-Klipper_stm32f446xx_2-if00"},
                       boards.get("spare", NEW))]

    def start(self) -> "Machine":
        self.klipper.start()
        self.moonraker.start()
        return self

    def stop(self) -> None:
        self.moonraker.stop()
        self.klipper.close()

    def state(self) -> Dict[str, Any]:
        return read_state(self.sim)

    def set_state(self, **changes: Any) -> None:
        state = read_state(self.sim)
        state.update(changes)
        write_state(self.sim, state)

    def restart_klipper(self) -> None:
        self.klipper.call(self.klipper.standin.stop)
        self.klipper.call(self.klipper.standin.start)
