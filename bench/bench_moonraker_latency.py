"""How fast Moonraker answers a light request while octoflash works, and what holds its loop.

Runs the demo (a real Moonraker 0.11 with the component, the simulated
Octopus and toolhead, the small source trees) and times ``GET /server/info``
back to back in these phases:

* ``idle``: nothing else runs;
* ``baseline_build``: the same forced build of the Octopus profile, run by
  ``octoflash build --force`` as a process of its own, outside Moonraker
  (at the same ``build_nice``): the CPU contention of a build, without
  octoflash's part inside Moonraker.  Its answers count from the command's
  first progress line on (before it, the command line only starts);
* ``build``: that forced build run by Moonraker (``POST /server/octoflash/build``);
* ``flash``: a forced build and flash of the CAN toolhead (Klipper stopped
  and started around it);
* ``scan``: device scans (``GET /server/octoflash/devices?refresh=true``) back to back
  from a second client;
* ``status``: ``GET /server/octoflash/status`` back to back from a second client.

The two builds take turns ``--repeat`` times (3), and each of the two pools
its runs' answers: one build gives only about a thousand answers, whose p99
is the tenth slowest.  Each run prints the median, p95, p99 and slowest
answer; the JSON line has each phase's pooled figures.  A phase that waits
for a job learns its end from a thread asking every 0.1 s, not before each
answer (which made every other request of the phase a job record).
Moonraker runs with a slow-callback monitor (``bench/loopmon/sitecustomize.py``)
that times every callback of its event loop and names each one that held
it for 20 ms or more, with the phase it fell in, the CPU time its thread
spent in it (what is left was spent waiting for a core, the machine's
contention rather than the callback's work) and, for an HTTP handler, the
request.

    python3 bench/bench_moonraker_latency.py [--threshold-ms 20] [--repeat 3]

The last line is one JSON object: per phase ``p50_ms``, ``p99_ms``,
``max_ms``; ``p99_ratio_build_vs_baseline``; ``slow_callbacks`` (phase,
ms, cpu_ms, callback, request, where it resumed); the targets (worst <= 20 ms in the
octoflash phases, p99 of the build within 1.2x of the baseline).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from moonraker_octoflash.sim.demo import Demo  # noqa: E402

OCTOFLASH_PHASES = ("build", "flash", "scan", "status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(base: str, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["result"]


def _sample(base: str, until: Callable[[], bool],
            counting: Callable[[], bool] = lambda: True) -> List[float]:
    """``/server/info`` back to back until ``until()``; an answer counts when ``counting()``
    was true at its request."""
    times: List[float] = []
    while not until():
        counts = counting()
        start = time.perf_counter()
        with urllib.request.urlopen(base + "/server/info", timeout=10) as resp:
            resp.read()
        if counts:
            times.append(time.perf_counter() - start)
    return times


def _job_running(base: str, job_id: str) -> bool:
    job = _call(base, "GET", f"/server/octoflash/job?job_id={job_id}")["job"]
    return job["state"] in ("queued", "running")


def _ended(base: str, job_id: str) -> Callable[[], bool]:
    """Whether the job has ended, as a thread asking every 0.1 s learns it: asked before
    each sample, the job's record was every other request of the phase, a load that
    the baseline's phase did not have."""
    ended = threading.Event()

    def follow() -> None:
        while _job_running(base, job_id):
            time.sleep(0.1)
        ended.set()
    threading.Thread(target=follow, daemon=True).start()
    return ended.is_set


def _wait_job(base: str, job_id: str) -> Dict[str, Any]:
    while _job_running(base, job_id):
        time.sleep(0.1)
    job: Dict[str, Any] = _call(base, "GET", f"/server/octoflash/job?job_id={job_id}")["job"]
    return job


def _percentile(ordered: List[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def _figures(times: List[float]) -> Dict[str, float]:
    ordered = sorted(times)
    return {"n": len(times),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(_percentile(ordered, 0.95) * 1000, 2),
            "p99_ms": round(_percentile(ordered, 0.99) * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


class Phases:
    """Each phase's answer times; a phase run several times pools its samples."""

    def __init__(self) -> None:
        self.spans: Dict[str, List[List[float]]] = {}
        self.samples: Dict[str, List[float]] = {}
        self.figures: Dict[str, Dict[str, float]] = {}

    def run(self, name: str, body: Callable[[], List[float]]) -> None:
        started = time.monotonic()
        times = body()
        self.spans.setdefault(name, []).append([started, time.monotonic()])
        self.samples.setdefault(name, []).extend(times)
        self.figures[name] = _figures(self.samples[name])
        fig = _figures(times)
        print(f"{name:<15} n={fig['n']:<5} median={fig['p50_ms']:7.2f} ms  "
              f"p95={fig['p95_ms']:7.2f} ms  p99={fig['p99_ms']:7.2f} ms  "
              f"max={fig['max_ms']:7.2f} ms", flush=True)

    def of(self, t: float) -> str:
        for name, spans in self.spans.items():
            if any(a <= t <= b for a, b in spans):
                return name
        return "between phases"


def _in_background(call: Callable[[], None], until: Callable[[], bool]) -> threading.Thread:
    def loop() -> None:
        while not until():
            call()
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--threshold-ms", type=float, default=20.0,
                        help="name every event-loop callback that holds the loop this long")
    parser.add_argument("--window", type=float, default=4.0,
                        help="seconds of the idle, scan and status phases")
    parser.add_argument("--repeat", type=int, default=3,
                        help="forced builds of each kind (outside and inside Moonraker), "
                             "taking turns")
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    phases = Phases()
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as data:
        monitor = os.path.join(data, "slow-callbacks.jsonl")
        os.environ["PYTHONPATH"] = os.path.join(HERE, "loopmon") + os.pathsep + \
            os.environ.get("PYTHONPATH", "")
        os.environ["OCTOFLASH_LOOPMON_FILE"] = monitor
        os.environ["OCTOFLASH_LOOPMON_MS"] = str(args.threshold_ms)
        port = _free_port()
        demo = Demo(data, port)
        demo.prepare()
        asyncio.run_coroutine_threadsafe(demo.start(), loop).result(120)
        # the CLI of the baseline runs without the monitor
        for name in ("OCTOFLASH_LOOPMON_FILE",):
            os.environ.pop(name, None)
        base = f"http://127.0.0.1:{port}"
        conf = os.path.join(data, "config", "moonraker.conf")
        print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
        try:
            while _call(base, "GET", "/server/info")["klippy_state"] != "ready":
                time.sleep(0.2)
            # a first build, so that every forced build below does the same work
            first = _call(base, "POST", "/server/octoflash/build", {"profile": "octopus"})
            _wait_job(base, first["job"]["job_id"])

            deadline = time.monotonic() + args.window
            phases.run("idle", lambda: _sample(base, lambda: time.monotonic() > deadline))

            def baseline() -> List[float]:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moonraker_octoflash.cli", "--config", conf, "build",
                     "octopus", "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=ROOT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
                # Only the answers from the build's first progress line on count: before
                # it, the command line starts (Python, its imports, the settings) on one
                # core, which is not the build's load.
                building = threading.Event()
                lines: List[str] = []

                def read() -> None:
                    for line in proc.stdout:  # type: ignore[union-attr]
                        lines.append(line)
                        building.set()
                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                times = _sample(base, lambda: proc.poll() is not None, counting=building.is_set)
                reader.join(30)
                if proc.returncode != 0 or not lines:
                    raise SystemExit(f"the baseline build failed: {proc.stderr.read()!r}")  # type: ignore[union-attr]
                return times
            def build() -> List[float]:
                job = _call(base, "POST", "/server/octoflash/build",
                            {"profile": "octopus", "force": True})
                return _sample(base, _ended(base, job["job"]["job_id"]))
            # The two builds take turns, so that a change in the machine's load
            # meanwhile falls on both alike; each phase's figures pool its runs.
            for _ in range(args.repeat):
                phases.run("baseline_build", baseline)
                phases.run("build", build)

            def flash() -> List[float]:
                job = _call(base, "POST", "/server/octoflash/flash",
                            {"profile": "toolhead", "force": True})
                job_id = job["job"]["job_id"]
                times = _sample(base, _ended(base, job_id))
                state = _call(base, "GET", f"/server/octoflash/job?job_id={job_id}")["job"]
                if state["state"] != "done":
                    print(f"note: the flash ended {state['state']}: {state.get('error')}")
                return times
            phases.run("flash", flash)

            def side_load(path: str) -> Callable[[], List[float]]:
                def body() -> List[float]:
                    stop = time.monotonic() + args.window
                    worker = _in_background(lambda: _call(base, "GET", path),
                                            lambda: time.monotonic() > stop)
                    times = _sample(base, lambda: time.monotonic() > stop)
                    worker.join(30)
                    return times
                return body
            phases.run("scan", side_load("/server/octoflash/devices?refresh=true"))
            phases.run("status", side_load("/server/octoflash/status"))
        finally:
            asyncio.run_coroutine_threadsafe(demo.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
        slow: List[Dict[str, Any]] = []
        if os.path.exists(monitor):
            with open(monitor, encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    record["phase"] = phases.of(record.pop("t"))
                    slow.append(record)

    in_phases = [r for r in slow if r["phase"] in OCTOFLASH_PHASES]
    print(f"callbacks holding Moonraker's loop >= {args.threshold_ms:g} ms: {len(slow)} "
          f"({len(in_phases)} during octoflash's phases)")
    for r in sorted(slow, key=lambda r: -r["ms"])[:15]:
        print(f"  {r['phase']:<15} {r['ms']:7.1f} ms (CPU {r.get('cpu_ms', 0):.1f} ms)  "
              f"{r['callback']}{'  ' + r['request'] if r.get('request') else ''}  "
              f"resumed at {r['resumed_at'] or '-'}")
    # The callbacks that ran octoflash's own code (resumed or suspended in it), by name.
    own: Dict[str, Dict[str, Any]] = {}
    for r in slow:
        where = f"{r.get('resumed_at') or ''} {r.get('stopped_at') or ''}"
        if "moonraker_octoflash" not in where:
            continue
        key = (f"{r['callback'].split(': ', 1)[-1]} resumed at "
               f"{(r.get('resumed_at') or '-').split(' (')[0]}, suspended at "
               f"{(r.get('stopped_at') or '-').split(' (')[0]}")
        entry = own.setdefault(key, {"callback": key, "count": 0, "max_ms": 0.0, "phases": []})
        entry["count"] += 1
        entry["max_ms"] = max(entry["max_ms"], r["ms"])
        if r["phase"] not in entry["phases"]:
            entry["phases"].append(r["phase"])
    own_list = sorted(own.values(), key=lambda e: -e["max_ms"])
    print(f"of which in octoflash's own code: {sum(e['count'] for e in own_list)}")
    for e in own_list:
        print(f"  {e['count']:3d}x  max {e['max_ms']:6.1f} ms  {e['callback']}  "
              f"({', '.join(e['phases'])})")
    base_p99 = phases.figures["baseline_build"]["p99_ms"]
    ratio = round(phases.figures["build"]["p99_ms"] / base_p99, 2) if base_p99 else None
    worst = max(phases.figures[p]["max_ms"] for p in OCTOFLASH_PHASES)
    worst_callback = max((r["ms"] for r in in_phases), default=0.0)
    result = {
        "bench": "moonraker_latency",
        "phases": phases.figures,
        "p99_ratio_build_vs_baseline": ratio,
        "worst_ms_octoflash_phases": worst,
        "worst_callback_ms": worst_callback,
        "slow_callbacks": sorted(slow, key=lambda r: -r["ms"])[:20],
        "octoflash_callbacks": own_list,
        "threshold_ms": args.threshold_ms,
        "repeat": args.repeat,
        "target_no_callback_over_threshold": not in_phases,
        "target_p99_within_1_2x_baseline": ratio is not None and ratio <= 1.2,
        "load_average": round(os.getloadavg()[0], 2),
        "nproc": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
