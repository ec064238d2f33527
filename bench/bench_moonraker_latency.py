"""How fast Moonraker answers a light request while octoflash builds and flashes.

Runs the demo (a real Moonraker 0.11 with the component, the simulated
Octopus and toolhead, the small source trees) and times ``GET /server/info``
back to back: idle, during a forced build, and during a flash.  Prints the
median, 95th percentile and slowest answer of each phase.

    python3 bench/bench_moonraker_latency.py
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moonraker_octoflash.sim.demo import Demo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["result"]


def _sample(base: str, until) -> List[float]:
    times: List[float] = []
    while not until():
        start = time.perf_counter()
        with urllib.request.urlopen(base + "/server/info", timeout=10) as resp:
            resp.read()
        times.append(time.perf_counter() - start)
    return times


def _job_running(base: str, job_id: str) -> bool:
    job = _call(base, "GET", f"/server/octoflash/job?job_id={job_id}")["job"]
    return job["state"] in ("queued", "running")


def _report(name: str, times: List[float]) -> None:
    ordered = sorted(times)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    print(f"{name:<22} n={len(times):<5} median={statistics.median(times) * 1000:7.2f} ms  "
          f"p95={p95 * 1000:7.2f} ms  max={ordered[-1] * 1000:7.2f} ms")


def main() -> int:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as data:
        port = _free_port()
        demo = Demo(data, port)
        demo.prepare()
        asyncio.run_coroutine_threadsafe(demo.start(), loop).result(90)
        base = f"http://127.0.0.1:{port}"
        try:
            while _call(base, "GET", "/server/info")["klippy_state"] != "ready":
                time.sleep(0.2)
            deadline = time.monotonic() + 3
            _report("idle", _sample(base, lambda: time.monotonic() > deadline))
            job = _call(base, "POST", "/server/octoflash/build", {"profile": "octopus", "force": True})
            _report("during a build", _sample(base, lambda: not _job_running(base, job["job"]["job_id"])))
            job = _call(base, "POST", "/server/octoflash/flash", {"profile": "toolhead", "force": True})
            _report("during build+flash", _sample(base, lambda: not _job_running(base, job["job"]["job_id"])))
        finally:
            asyncio.run_coroutine_threadsafe(demo.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
