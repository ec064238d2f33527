"""Headless Chromium driven over the Chrome DevTools protocol (its websocket, with tornado)."""
from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from typing import Any, Dict, List, Optional

from tornado.websocket import websocket_connect

from fixtures_moonraker import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SETPRIV = shutil.which("setpriv")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--remote-debugging-port=0"]


class _Chromium:
    """The test process's one headless Chromium, started at first use.

    Starting Chromium costs about a second of CPU; each test's ``Browser`` is
    a browser context of its own in it instead (its own cookies, storage and
    cache, like a separate profile), closed with the test.
    """

    proc: Optional[subprocess.Popen] = None
    profile_dir: Optional[str] = None
    port: str = ""

    @classmethod
    async def devtools_port(cls) -> str:
        if cls.proc is not None and cls.proc.poll() is None:
            return cls.port
        cls.profile_dir = tempfile.mkdtemp(prefix="octoflash-chromium-")
        # The kernel ends Chromium with the test process that started it, however that
        # ends (util-linux's setpriv): one left by an interrupted run went on using
        # half a core, and slowed every run after it.
        guard = [SETPRIV, "--pdeathsig", "KILL"] if SETPRIV else []
        cls.proc = subprocess.Popen(
            [*guard, CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={cls.profile_dir}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            # its own temporary files go with its profile (it left a folder in TMPDIR)
            env={**os.environ, "TMPDIR": cls.profile_dir})
        port_file = os.path.join(cls.profile_dir, "DevToolsActivePort")
        await wait_until(lambda: os.path.exists(port_file) and open(port_file).read().strip(),
                         30, what="Chromium's DevTools port")
        cls.port = open(port_file).read().split()[0]
        return cls.port

    @classmethod
    def stop(cls) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            cls.proc.terminate()
            try:
                cls.proc.wait(10)
            except subprocess.TimeoutExpired:
                cls.proc.kill()
        if cls.proc is not None:
            # its helpers (the network service) outlive it a moment and wrote into the
            # profile after it was removed, leaving a folder in TMPDIR: end them too
            try:
                os.killpg(cls.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if cls.profile_dir is not None:
            shutil.rmtree(cls.profile_dir, ignore_errors=True)
        cls.proc = None


atexit.register(_Chromium.stop)


class Browser:
    """A fresh browser context in the shared headless Chromium and its one
    tab, over the DevTools protocol."""

    def __init__(self) -> None:
        self.conn: Any = None
        self._browser_conn: Any = None
        self._context_id: Optional[str] = None
        self._ids = itertools.count(1)
        self._waiting: Dict[int, asyncio.Future] = {}
        self.exceptions: List[str] = []
        self.console_errors: List[str] = []
        self._reader: Optional[asyncio.Task] = None

    async def _browser_call(self, method: str, **params: Any) -> Dict[str, Any]:
        """A command to the browser itself (not a tab); its events are not needed."""
        msg_id = next(self._ids)
        await self._browser_conn.write_message(json.dumps({"id": msg_id, "method": method,
                                                           "params": params}))
        while True:
            text = await asyncio.wait_for(self._browser_conn.read_message(), 30)
            if text is None:
                raise RuntimeError(f"{method}: Chromium closed its DevTools connection")
            msg = json.loads(text)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def start(self) -> Browser:
        port = await _Chromium.devtools_port()
        version = await asyncio.to_thread(self._json, f"http://127.0.0.1:{port}/json/version")
        self._browser_conn = await websocket_connect(version["webSocketDebuggerUrl"])
        self._context_id = (await self._browser_call("Target.createBrowserContext"))[
            "browserContextId"]
        target = await self._browser_call("Target.createTarget", url="about:blank",
                                          browserContextId=self._context_id)
        self.conn = await websocket_connect(
            f"ws://127.0.0.1:{port}/devtools/page/{target['targetId']}",
            max_message_size=50 * 1024 * 1024)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        return self

    @staticmethod
    def _json(url: str) -> Any:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)

    async def _read(self) -> None:
        while True:
            text = await self.conn.read_message()
            if text is None:
                return
            msg = json.loads(text)
            if "id" in msg and msg["id"] in self._waiting:
                self._waiting.pop(msg["id"]).set_result(msg)
            elif msg.get("method") == "Runtime.exceptionThrown":
                detail = msg["params"]["exceptionDetails"]
                self.exceptions.append(detail.get("exception", {}).get("description")
                                       or detail.get("text", ""))
            elif msg.get("method") == "Runtime.consoleAPICalled" and \
                    msg["params"].get("type") == "error":
                self.console_errors.append(" ".join(
                    str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"]))

    async def send(self, method: str, **params: Any) -> Dict[str, Any]:
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        await self.conn.write_message(json.dumps({"id": msg_id, "method": method,
                                                  "params": params}))
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_js(self, expression: str, timeout: float = 30.0, what: str = "") -> Any:
        async def probe() -> Any:
            return await self.js(expression)
        return await wait_until(probe, timeout, 0.1, what or expression)

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.conn is not None:
            self.conn.close()
        if self._browser_conn is not None:
            if self._context_id is not None:
                await self._browser_call("Target.disposeBrowserContext",
                                         browserContextId=self._context_id)
            self._browser_conn.close()
