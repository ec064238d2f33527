"""Fixtures for the Moonraker tests: a real Moonraker 0.11, a websocket client, a Klipper stand-in.

The component is installed exactly as a user installs it:
``link_component()`` links ``octoflash.py`` into the ``moonraker`` package
importable from this Python.  Each test module starts its own Moonraker
(one per module keeps the suite fast) on a free port with a data folder in
tmp; ``MoonrakerProcess.restart()`` stops and starts it on the same data.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from moonraker_octoflash.sim.klippy import KlippyStandIn, SimMcu, StandInThread  # noqa: E402

MACROS_FILE = os.path.join(REPO, "docs", "macros.cfg")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MoonrakerClient:
    """Blocking HTTP calls to a Moonraker (fixtures, polling) and its websocket URL."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"

    # --- blocking HTTP (fixtures, polling) ----------------------------------

    def request(self, method: str, path: str, args: Optional[Dict[str, Any]] = None,
                body: Optional[Any] = None, timeout: float = 10.0) -> Tuple[int, Dict[str, Any]]:
        url = self.base_url + path
        if args:
            url += "?" + urllib.parse.urlencode(
                {k: (json.dumps(v) if isinstance(v, bool) else v) for k, v in args.items()})
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return exc.code, json.loads(payload)
            except ValueError:
                return exc.code, {"error": {"message": payload.decode(errors="replace")}}

    def get(self, path: str, timeout: float = 10.0, **args: Any) -> Tuple[int, Dict[str, Any]]:
        return self.request("GET", path, args or None, timeout=timeout)

    def post(self, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: float = 10.0) -> Tuple[int, Dict[str, Any]]:
        return self.request("POST", path, body=body or {}, timeout=timeout)

    def delete(self, path: str, **args: Any) -> Tuple[int, Dict[str, Any]]:
        return self.request("DELETE", path, args or None)

    def result(self, method: str, path: str, **kw: Any) -> Any:
        status, payload = self.request(method, path, **kw)
        assert status == 200, f"{method} {path} -> {status}: {payload}"
        return payload["result"]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0,
                 what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def wait_klippy_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            status, payload = self.get("/server/info")
            return status == 200 and payload["result"]["klippy_state"] == "ready"
        self.wait_for(ready, timeout, "Klipper ready in Moonraker")

    def wait_job(self, job_id: str, timeout: float = 60.0) -> Dict[str, Any]:
        def ended() -> Optional[Dict[str, Any]]:
            job = self.result("GET", "/server/octoflash/job", args={"job_id": job_id})["job"]
            return job if job["state"] not in ("queued", "running") else None
        return self.wait_for(ended, timeout, f"job {job_id} to end")


class MoonrakerProcess(MoonrakerClient):
    """A Moonraker 0.11 subprocess with its own data folder."""

    def __init__(self, data_dir: str, extra_config: str = "", provider: str = "none") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_config = extra_config
        self.provider = provider
        self.proc: Optional[subprocess.Popen] = None
        self.klippy_socket = os.path.join(data_dir, "comms", "klippy.sock")
        self.output_path = os.path.join(data_dir, "moonraker-output.txt")

    def write_config(self) -> str:
        for sub in ("config", "logs", "comms", "gcodes"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        path = os.path.join(self.data_dir, "config", "moonraker.conf")
        text = textwrap.dedent(f"""\
            [server]
            host: 127.0.0.1
            port: {self.port}
            klippy_uds_address: {self.klippy_socket}

            [machine]
            provider: {self.provider}
            validate_service: False

            [authorization]
            trusted_clients:
              127.0.0.0/8

            """) + textwrap.dedent(self.extra_config)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        out = open(self.output_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moonraker", "-d", self.data_dir, "-n"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Moonraker exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            try:
                status, _ = self.get("/server/info", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Moonraker did not answer within {timeout} s:\n{self.output()[-4000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        """Stop without letting Moonraker clean up (a crash or power cut)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def output(self) -> str:
        try:
            with open(self.output_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class MoonrakerWebsocket:
    """A JSON-RPC 2.0 client on Moonraker's websocket, collecting notifications."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self._next_id = 0
        self._pending: Dict[int, asyncio.Future] = {}
        self.notifications: List[Dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader: Optional[asyncio.Task] = None

    async def __aenter__(self) -> "MoonrakerWebsocket":
        from tornado.websocket import websocket_connect
        self.conn = await websocket_connect(self.url)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.call("server.connection.identify", {
            "client_name": "octoflash-tests", "version": "1", "type": "other",
            "url": "https://example.invalid"})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.conn is not None:
            self.conn.close()

    async def _read(self) -> None:
        while True:
            message = await self.conn.read_message()
            if message is None:
                break
            data = json.loads(message)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.notifications.append(data)
                self._arrived.set()

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None,
                   timeout: float = 15.0) -> Any:
        self._next_id += 1
        req_id = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self.conn.write_message(json.dumps(
            {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": req_id}))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RpcError(reply["error"].get("code", 0), reply["error"].get("message", ""))
        return reply["result"]

    def of(self, name: str) -> List[Any]:
        """The first param of every notification called ``name``, in arrival order."""
        return [n["params"][0] if n.get("params") else None
                for n in self.notifications if n["method"] == name]

    async def wait_notification(self, name: str, predicate: Callable[[Any], bool] = lambda p: True,
                                timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            matches = [p for p in self.of(name)[seen:]]
            for payload in matches:
                if predicate(payload):
                    return payload
            seen += len(matches)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} notification matched within {timeout} s; "
                                     f"got {self.of(name)[-5:]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass


def start_standin(moonraker: MoonrakerProcess, mcus: Optional[List[SimMcu]] = None,
                  software_version: str = "v0.13.0-100-gabcdef01",
                  macro_files: Optional[List[str]] = None,
                  control_path: Optional[str] = None) -> StandInThread:
    """A Klipper stand-in on the Moonraker's socket, its config in the data folder."""
    data = moonraker.data_dir
    klipper_dir = os.path.join(data, "klipper")
    for sub in ("config", "docs", os.path.join("..", "config"), os.path.join("..", "logs")):
        os.makedirs(os.path.join(klipper_dir, sub), exist_ok=True)
    printer_cfg = os.path.join(data, "config", "printer.cfg")
    if not os.path.exists(printer_cfg):
        with open(printer_cfg, "w", encoding="utf-8") as f:
            f.write("[include octoflash-macros.cfg]\n")
    standin = KlippyStandIn(moonraker.klippy_socket, mcus=mcus or [SimMcu()],
                            software_version=software_version,
                            macro_files=macro_files if macro_files is not None else [MACROS_FILE],
                            config_file=printer_cfg, klipper_path=klipper_dir,
                            log_file=os.path.join(data, "logs", "klippy.log"))
    return StandInThread(standin, control_path).start()


@pytest.fixture(scope="session")
def linked_component() -> str:
    """The component installed into the importable Moonraker with link_component()."""
    from moonraker_octoflash.moonraker.link import link_component
    return link_component()


@pytest.fixture
async def ws_factory():
    """Open websockets to a Moonraker; all are closed after the test."""
    opened: List[MoonrakerWebsocket] = []

    async def open_ws(moonraker: MoonrakerProcess) -> MoonrakerWebsocket:
        ws = MoonrakerWebsocket(moonraker.ws_url)
        await ws.__aenter__()
        opened.append(ws)
        return ws
    yield open_ws
    for ws in opened:
        await ws.__aexit__(None, None, None)


class DemoThread(MoonrakerClient):
    """The demo (real Moonraker, simulated boards, Klipper stand-in) run from a test.

    The stand-in and its control socket live on an event loop in a thread;
    ``call(fn, ...)`` runs on that loop (set the print state, read the
    stand-in).  ``kill_moonraker()``/``start_moonraker()`` play a crash and
    a restart on the same data.
    """

    def __init__(self, data_dir: str) -> None:
        import threading
        from moonraker_octoflash.demo import Demo
        self.port = free_port()
        self.demo = Demo(data_dir, self.port)
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="octoflash-demo")

    def start(self) -> "DemoThread":
        self._thread.start()
        self.demo.prepare()
        self.call(self.demo.start, timeout=90)
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        async def runner() -> Any:
            result = fn(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(timeout)

    @property
    def standin(self) -> Any:
        return self.demo.standin

    @property
    def machine(self) -> Any:
        return self.demo.machine

    def set_print_state(self, state: str, filename: str = "") -> None:
        self.call(self.demo.standin.set_print_state, state, filename)

    def kill_moonraker(self) -> None:
        proc = self.demo.moonraker
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_moonraker(self) -> None:
        proc = self.demo.moonraker
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)

    def start_moonraker(self) -> None:
        self.demo._start_moonraker()
        self.call(self.demo._wait_moonraker, timeout=90)

    def output(self) -> str:
        try:
            with open(os.path.join(self.data_dir, "logs", "moonraker.log"),
                      encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self.demo.stop, timeout=60)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
