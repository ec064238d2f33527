"""Fixtures for the Moonraker tests: a real Moonraker 0.11, a websocket client, a Klipper stand-in.

The component is installed exactly as a user installs it:
``link_component()`` links ``octoflash.py`` into the ``moonraker`` package
importable from this Python.  Each test module starts its own Moonraker
(one per module keeps the suite fast) on a free port with a data folder in
tmp; ``MoonrakerProcess.restart()`` stops and starts it on the same data.

Moonraker's update manager loads only when the Python running Moonraker is
a virtualenv; ``moonraker_python`` gives one (``make_venv``).
``SimulatedPrinter`` assembles what the demo runs — the real component on a
simulated machine (boards, tool doubles, source trees, Klipper stand-in) —
with the boards and profiles a test module chooses.
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

from moonraker_octoflash.discovery.serial import klipper_by_id_name
from moonraker_octoflash.sim.board import SimulatedMachine, make_klipper_image
from moonraker_octoflash.sim.machine import machine_option
from moonraker_octoflash.sim.klippy import KlippyStandIn, SimMcu, StandInThread
from moonraker_octoflash.sim.trees import change_source, install_tree

MACROS_FILE = os.path.join(REPO, "docs", "macros.cfg")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_venv(path: str) -> str:
    """A Python for Moonraker that is a virtualenv; returns its interpreter.

    Moonraker's update manager refuses to load when the Python running
    Moonraker is not a virtualenv ("Invalid virtualenv at path ..."), as it
    is with a plain pip install.  When the tests already run in one
    (scripts/test uses .venv), that is it.  Otherwise a virtualenv without
    pip is made at ``path`` over this Python's packages
    (``--system-site-packages``), so it imports the same Moonraker, with the
    component linked in, and this checkout's package.
    """
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix) and \
            os.path.isfile(os.path.join(sys.prefix, "bin", "activate")):
        return sys.executable
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                        "--system-site-packages", path], check=True, timeout=60)
    return python


class MoonrakerNotConnected:
    """Moonraker's klippy_connection in the moment after Klipper's start, before
    Moonraker has connected to it again (it looks for the socket every 0.25 s):
    octoflash asks Klipper on its own socket then."""

    def __init__(self, uds_address: str) -> None:
        self.uds_address = uds_address
        self.klippy_info: Dict[str, Any] = {}
        self.state: Any = "disconnected"

    def is_connected(self) -> bool:
        return False

    def is_ready(self) -> bool:
        return False


def poll_until(predicate: Callable[[], Any], timeout: float = 20.0,
               what: str = "condition") -> Any:
    """Ask ``predicate`` until it answers something truthy (blocking: for code
    outside an event loop); AssertionError naming ``what`` when time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_until(check: Callable[[], Any], timeout: float = 30.0,
                     interval: float = 0.2, what: str = "condition") -> Any:
    """Poll an async or plain callable until it returns something truthy (without
    blocking the test's event loop, which reads the websockets)."""
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
        return poll_until(predicate, timeout, what)

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
    """A Moonraker 0.11 subprocess with its own data folder.

    ``python``: the interpreter running Moonraker (default this one; the
    ``moonraker_python`` fixture's virtualenv for the update manager).
    """

    def __init__(self, data_dir: str, extra_config: str = "", provider: str = "none",
                 python: Optional[str] = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_config = extra_config
        self.provider = provider
        self.python = python or sys.executable
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
        # The port comes from free_port(), which cannot hold it until Moonraker
        # binds: another process (a parallel test worker) may take it in
        # between.  Moonraker then stays up without its HTTP server, so a
        # start that fails to bind is retried on another port.
        for _attempt in range(5):
            if self._start_once(timeout):
                return
            self.kill()
            self.port = free_port()
        raise RuntimeError(f"Moonraker found no free port:\n{self.output()[-4000:]}")

    def _start_once(self, timeout: float) -> bool:
        """Start Moonraker and wait for its answer; False when its port was taken."""
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        offset = len(self.output())
        out = open(self.output_path, "ab")
        self.proc = subprocess.Popen(
            [self.python, "-m", "moonraker", "-d", self.data_dir, "-n"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Moonraker exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            if "Address already in use" in self.output()[offset:]:
                return False
            try:
                status, _ = self.get("/server/info", timeout=1)
                if status == 200:
                    return True
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

    async def __aenter__(self) -> MoonrakerWebsocket:
        from tornado.websocket import websocket_connect
        # update-manager status notifications carry every entry: allow big ones
        self.conn = await websocket_connect(self.url, max_message_size=50 * 1024 * 1024)
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
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(ConnectionError("websocket closed"))
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
                                timeout: float = 30.0, start: int = 0) -> Any:
        """The first ``name`` notification matching ``predicate`` among those received
        from index ``start`` of ``notifications`` on (``len(ws.notifications)``
        taken before an action: only what followed it)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            # Cleared before looking (nothing runs in between on this loop): a
            # notification arriving after the look wakes the wait below.
            self._arrived.clear()
            matches = [n["params"][0] if n.get("params") else None
                       for n in self.notifications[start:] if n["method"] == name][seen:]
            for payload in matches:
                if predicate(payload):
                    return payload
            seen += len(matches)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} notification matched within {timeout} s; "
                                     f"got {self.of(name)[-5:]}")
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


class SimulatedPrinter(MoonrakerProcess):
    """The demo's parts, assembled with the boards and profiles a test chooses.

    The real component in a real Moonraker (run by ``python``: pass the
    ``moonraker_python`` virtualenv to have the update manager) on a
    simulated machine: boards behind Katapult whose flash the ``dfu-util``
    and ``flashtool.py`` doubles write, small Klipper-like and
    Katapult-like git checkouts built with real ``make`` and Kconfig, and a
    Klipper stand-in whose MCUs report what each board's flash runs (read
    afresh whenever it starts, as Klipper does).  The component stops and
    starts the stand-in through its control socket around a flash.

        printer = SimulatedPrinter(root, moonraker_python)
        octopus = printer.add_board("octopus", "mcu", version=OLD, bridge=True)
        printer.profiles = f"[octoflash octopus]\\ncanbus_uuid: {octopus.canbus_uuid}..."
        printer.start()

    Situations are made with the real means: ``set_firmware`` (a board
    flashed by other means), ``commit_to_source`` (the checkout moves on),
    ``set_print_state``, ``stop_klipper``/``start_klipper``, board modes
    (``board(name).set_mode("off")``), profiles through the API.
    """

    def __init__(self, root: str, python: Optional[str] = None, *,
                 update_manager: bool = True, tool_delay: float = 0.05) -> None:
        super().__init__(os.path.join(root, "data"), python=python)
        self.sim_dir = os.path.join(self.data_dir, "sim")
        self.klipper_tree = str(install_tree("klipper", os.path.join(self.sim_dir, "klipper")))
        self.katapult_tree = str(install_tree("katapult", os.path.join(self.sim_dir, "katapult")))
        self.machine = SimulatedMachine(os.path.join(self.sim_dir, "machine"))
        self.machine.tool_delay = tool_delay
        self.machine.set_klipper_running(False)
        self.update_manager = update_manager
        self.octoflash_options: Dict[str, str] = {}   # more [octoflash] options (announcements)
        self.profiles = ""                            # the [octoflash NAME] sections
        # printer.cfg's [mcu] sections: (name, board, options)
        self.klipper_sections: List[Tuple[str, str, Dict[str, Any]]] = []
        self.installed: Dict[str, str] = {}     # the version each board got in add_board
        self.klipper: Optional[StandInThread] = None
        # Klipper's own (host) folder, which Moonraker's update manager looks
        # at: not a git checkout, so its "klipper" entry has nothing to update
        # (a checkout there could not be fetched without network).
        self.klipper_host_dir = os.path.join(self.data_dir, "klipper")

    # --- setting up ---------------------------------------------------------

    def add_board(self, name: str, klipper_name: Optional[str], *, version: str,
                  transport: str = "usb", bridge: bool = False,
                  mcu: str = "stm32f446xx") -> Any:
        """A board behind Katapult running Klipper ``version``; ``klipper_name``: its
        ``[mcu]`` (``mcu``) or ``[mcu NAME]`` (NAME) in printer.cfg, None if
        Klipper does not use it."""
        board = self.machine.add_board(name, mcu, transport=transport, bootloader="katapult",
                                       firmware={"version": version, "bridge": bridge})
        self.installed[name] = version
        if klipper_name is not None:
            if bridge or transport == "can":
                options: Dict[str, Any] = {"canbus_uuid": board.canbus_uuid,
                                           "canbus_interface": board.can_interface}
            else:
                options = {"serial": os.path.join(self.machine.by_id_dir,
                                                  klipper_by_id_name(mcu, board.chip_id))}
            self.klipper_sections.append((klipper_name, name, options))
        return board

    def _klipper_mcus(self) -> List[SimMcu]:
        """What a starting Klipper finds: each board's running firmware, or no answer."""
        mcus = []
        for klipper_name, board_name, options in self.klipper_sections:
            status = self.machine.klipper_mcu_status(board_name)
            mcus.append(SimMcu(
                name=klipper_name, settings=dict(options),
                version=status["mcu_version"] if status else "",
                mcu_type=(status or {}).get("mcu_constants", {}).get(
                    "MCU", self.machine.board(board_name).mcu),
                reachable=status is not None))
        return mcus

    def write_config(self) -> str:
        tools = self.machine.tool_paths()
        options = {
            "klipper_path": self.klipper_tree, "katapult_path": self.katapult_tree,
            "dfu_util_path": tools["dfu_util"], "flashtool_path": tools["flashtool"],
            "serial_by_id_path": self.machine.by_id_dir, "device_wait_timeout": "20",
            "reconnect_timeout": "20", "machine": machine_option(self.machine.directory)}
        options.update(self.octoflash_options)
        text = ""
        if self.update_manager:
            text += textwrap.dedent("""\
                [update_manager]
                enable_auto_refresh: False
                enable_system_updates: False

                [announcements]
                enable_moonlight: False

                """)
        text += "[octoflash]\n" + "".join(f"{k}: {v}\n" for k, v in options.items()) + "\n"
        self.extra_config = text + textwrap.dedent(self.profiles)
        return super().write_config()

    def start(self, timeout: float = 30.0) -> None:
        if self.klipper is None:
            self._start_klipper_standin()
        super().start(timeout)

    def _start_klipper_standin(self) -> None:
        for sub in ("config", "docs"):
            os.makedirs(os.path.join(self.klipper_host_dir, sub), exist_ok=True)
        for sub in ("config", "logs"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        printer_cfg = os.path.join(self.data_dir, "config", "printer.cfg")
        with open(printer_cfg, "w", encoding="utf-8") as f:
            f.write("[include octoflash-macros.cfg]\n")
        machine = self.machine
        standin = KlippyStandIn(
            self.klippy_socket, mcus=self._klipper_mcus,
            software_version=self.describe(), macro_files=[MACROS_FILE],
            config_file=printer_cfg, klipper_path=self.klipper_host_dir,
            log_file=os.path.join(self.data_dir, "logs", "klippy.log"),
            on_start=lambda: machine.set_klipper_running(True),
            on_stop=lambda: machine.set_klipper_running(False))
        # The component's simulation mode stops and starts Klipper here.
        control = os.path.join(machine.directory, "klippy-control.sock")
        self.klipper = StandInThread(standin, control).start()

    def close(self) -> None:
        self.stop()
        if self.klipper is not None:
            self.klipper.close()
            self.klipper = None

    # --- situations ---------------------------------------------------------

    @property
    def standin(self) -> KlippyStandIn:
        assert self.klipper is not None
        return self.klipper.standin

    def board(self, name: str) -> Any:
        return self.machine.board(name)

    def set_firmware(self, board_name: str, version: str) -> None:
        """The board gets Klipper ``version`` by other means (another host, an SD
        card) and is reset; Klipper notices when it next starts."""
        board = self.machine.board(board_name)
        app_start = board.katapult_app_start()
        # the same kind of Klipper as in flash now (USB-CAN bridge or not)
        bridge = bool((board.region_at(app_start) or {}).get("bridge"))
        image = make_klipper_image(board.mcu, version, bridge=bridge,
                                   canbus=bridge or board.transport == "can")
        board.write_flash(app_start, image, name="klipper.bin")
        board.reset(delay=0.0)

    def running_version(self, board_name: str) -> Optional[str]:
        fw = self.machine.board(board_name).running_firmware()
        return fw["version"] if fw else None

    def written_boards(self, since: float) -> List[str]:
        """Boards whose application area was written after ``since`` (time.time())."""
        written = []
        for board in self.machine.boards():
            app = board.katapult_app_start()
            if any(e["event"] == "write" and e["time"] > since and e.get("address") == app
                   for e in board.state.get("history", [])):
                written.append(board.name)
        return written

    def commit_to_source(self, note: str = "tweak") -> str:
        """A commit lands in the Klipper checkout; returns its new ``git describe``."""
        return change_source(self.klipper_tree, note=note)

    def commit_to_katapult(self, note: str = "tweak") -> str:
        """A commit lands in the Katapult checkout; returns its new ``git describe``."""
        return change_source(self.katapult_tree, note=note)

    def describe(self, revision: str = "HEAD") -> str:
        """``git describe`` of the Klipper checkout (at ``revision``)."""
        result = subprocess.run(["git", "-C", self.klipper_tree, "describe", "--tags", "--long",
                                 revision], stdout=subprocess.PIPE, check=True, timeout=30)
        return result.stdout.decode().strip()

    def git_head(self, tree: str) -> str:
        return subprocess.run(["git", "-C", tree, "rev-parse", "HEAD"],
                              stdout=subprocess.PIPE, check=True,
                              timeout=30).stdout.decode().strip()

    def mark_scene(self) -> None:
        """Remember the checkouts' commits as the module's starting point (for set_scene)."""
        self.start_heads = {tree: self.git_head(tree)
                            for tree in (self.klipper_tree, self.katapult_tree)}

    def set_scene(self, firmware: Optional[Dict[str, str]] = None) -> bool:
        """Bring the printer back to the module's starting point: the checkouts
        at their first commits (``mark_scene``), no faults, every board
        running its firmware (``firmware``: the version a named board runs), no
        print, Klipper running.  Klipper is restarted when anything changed, so
        it reads its boards again; returns whether it was."""
        firmware = firmware or {}
        changed = False
        for tree, head in getattr(self, "start_heads", {}).items():
            if self.git_head(tree) != head:             # a test moved the checkout on
                subprocess.run(["git", "-C", tree, "reset", "-q", "--hard", head],
                               check=True, timeout=30)
                changed = True
        for board in self.machine.boards():
            for fault in list(board.state.get("faults", [])):
                board.set_fault(fault, False)
            if board.mode not in ("klipper", "klipper-canbridge"):   # off, in Katapult
                board.reset(delay=0.0)
                changed = True
            if board.running_firmware() is None and board.name not in firmware \
                    and board.name in self.installed:
                # a write that was cut short: the board stays in Katapult
                self.set_firmware(board.name, self.installed[board.name])
        for name, version in firmware.items():
            if self.running_version(name) != version:
                self.set_firmware(name, version)
                changed = True
        self.set_print_state("standby")
        if changed or not self.klipper_running():
            if self.klipper_running():
                self.stop_klipper()
            self.start_klipper()
            changed = True
        return changed

    def klipper_running(self) -> bool:
        assert self.klipper is not None
        return bool(self.klipper.call(lambda: self.standin.running))

    def stop_klipper(self) -> None:
        assert self.klipper is not None
        self.klipper.call(self.standin.stop)

    def start_klipper(self) -> None:
        assert self.klipper is not None
        self.klipper.call(self.standin.start)

    def restart_klipper(self) -> None:
        """Klipper restarts and reads its MCUs again (as after ``set_firmware``)."""
        self.stop_klipper()
        self.start_klipper()

    def set_print_state(self, state: str, filename: str = "") -> None:
        assert self.klipper is not None
        self.klipper.call(self.standin.set_print_state, state, filename)


# A CAN node of the Octopus presets (as the demo's toolhead): CAN on PD0/PD1
# instead of the USB-CAN bridge.
CAN_NODE_OVERRIDES = {"CONFIG_STM32_USBCANBUS_PA11_PA12": "n",
                      "CONFIG_STM32_CMENU_CANBUS_PD0_PD1": "n",
                      "CONFIG_STM32_MMENU_CANBUS_PD0_PD1": "y"}
CAN_NODE_KCONFIG = "kconfig:\n" + "".join(f"  {k}={v}\n" for k, v in CAN_NODE_OVERRIDES.items())


def octopus_printer(root: str, python: Optional[str], *,
                    tool_delay: float = 0.05) -> SimulatedPrinter:
    """The machine of the update-manager and page tests (not started yet).

    * ``octopus``: STM32F446 USB-CAN bridge behind Katapult, Klipper's
      ``[mcu]``, ``auto_update: True``; it runs the checkout's version of two
      commits ago;
    * ``toolhead``: a CAN node behind Katapult that printer.cfg calls
      ``[mcu Toolhead]`` while its profile says ``klipper_mcu: toolhead``;
      it runs the checkout's version;
    * ``bootloader``: a Katapult profile (no board of its own).
    """
    printer = SimulatedPrinter(root, python, tool_delay=tool_delay)
    octopus = printer.add_board("octopus", "mcu", version=printer.describe("HEAD~2"),
                                bridge=True)
    toolhead = printer.add_board("toolhead", "Toolhead", version=printer.describe(),
                                 transport="can")
    printer.profiles = textwrap.dedent(f"""\
        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        description: Octopus main board
        klipper_mcu: mcu
        canbus_uuid: {octopus.canbus_uuid}
        auto_update: True

        [octoflash toolhead]
        preset: btt-octopus-f446-canbridge
        description: CAN toolhead
        klipper_mcu: toolhead
        canbus_uuid: {toolhead.canbus_uuid}
        """) + CAN_NODE_KCONFIG + textwrap.dedent("""
        [octoflash bootloader]
        preset: btt-octopus-f446-katapult
        """)
    return printer


@pytest.fixture(scope="session")
def moonraker_python(tmp_path_factory: Any) -> str:
    """A virtualenv Python for Moonraker (its update manager needs one); see make_venv."""
    return make_venv(str(tmp_path_factory.mktemp("moonraker-venv")))


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
        from moonraker_octoflash.sim.demo import Demo
        self.port = free_port()
        self.demo = Demo(data_dir, self.port)
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="octoflash-demo")

    def start(self) -> DemoThread:
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory: Any, linked_component: str) -> Any:
    """The demo, as ``scripts/demo`` runs it, once per test module (DemoThread)."""
    env = DemoThread(str(tmp_path_factory.mktemp("demo"))).start()
    env.wait_klippy_ready()
    yield env
    env.close()
