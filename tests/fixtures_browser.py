"""Headless Chromium driven over the Chrome DevTools protocol (its websocket, with tornado)."""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from typing import Any, Dict, List, Optional

from tornado.websocket import websocket_connect

from fixtures_moonraker import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--remote-debugging-port=0"]


class Browser:
    """One headless Chromium and its first tab, over the DevTools protocol."""

    def __init__(self, profile_dir: str) -> None:
        self.profile_dir = profile_dir
        self.proc: Optional[subprocess.Popen] = None
        self.conn: Any = None
        self._ids = itertools.count(1)
        self._waiting: Dict[int, asyncio.Future] = {}
        self.exceptions: List[str] = []
        self.console_errors: List[str] = []
        self._reader: Optional[asyncio.Task] = None

    async def start(self) -> Browser:
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = os.path.join(self.profile_dir, "DevToolsActivePort")
        await wait_until(lambda: os.path.exists(port_file) and open(port_file).read().strip(),
                         30, what="Chromium's DevTools port")
        port = open(port_file).read().split()[0]
        targets = await asyncio.to_thread(self._json, f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in targets if t["type"] == "page")
        self.conn = await websocket_connect(page["webSocketDebuggerUrl"],
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
