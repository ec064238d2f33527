"""What a flash costs beyond its tool: octoflash's time around the write, on the simulated machine.

Runs the demo (a real Moonraker 0.11 with the component, Klipper's stand-in,
the simulated Octopus and CAN toolhead), builds the toolhead once, then
flashes it ``--rounds`` times through the API with the build already
done (``build: false``).  From each job's record:

* ``tool``: the time the flash's own tool runs took: ``flashtool.py -r``
  (into Katapult), ``-s`` (its status) and ``-f`` (the write), each from
  its start to its end as ``run_tool`` saw it (a step's ``tool_seconds``);
  a user flashing by hand runs the same three.  ``write`` is the last
  alone;
* ``reboots``: the board's own reboots (the simulated board's ``boot_delay``,
  set here; once per wait step: into its bootloader, and back into Klipper),
  which octoflash can only wait for: the part of them its wait steps spent
  (a reboot that began inside a tool's run, as the simulated ``-r`` reboots
  the board before its process ends, is tool time already);
* ``total``: the job, from its start to its end;
* ``added`` = total - tool - reboots: planning, checks, stopping and
  starting Klipper, waiting for the board beyond its reboot, reading its
  version back, and octoflash's own time inside the tool steps.

The breakdown of ``added`` is printed and in the JSON line: ``plan`` and
``checks`` (the job's steps of those names), ``stop_klipper``, each step's
time beyond its tool run (``in_steps``), each wait beyond the reboot
(``waits``),
``klipper_back`` (from Klipper's start until Moonraker has it again: the
service start and Moonraker's reconnection, which looks for Klipper's
socket every 0.25 s and asks its first question 0.25 s after connecting),
``version_check`` (until Klipper reports the board's new version) and
``other`` (the rest: the job's own bookkeeping, the print guard, the
writer lock).

``moonraker_ready_after_end_seconds``: how long after the job's end the
bench's websocket hears Moonraker tell its clients (Mainsail, Fluidd) that
Klipper is ready (``notify_klippy_ready``); about zero when the job ends
with Klipper back in Moonraker, as it should.

    python3 bench/bench_flash_overhead.py [--rounds 5] [--boot-delay 0.5] [--slow-sync-ms 20]

``--slow-sync-ms N`` plays a slow disk, as an SD card is: every ``fsync``
and ``fdatasync`` of the demo's processes (Moonraker's database commits
above all) waits N ms more.  It builds a small preload library with the
system's C compiler (``cc``) and runs the demo with ``LD_PRELOAD``.

The last line is one JSON object; ``added_ratio`` is added / tool
(median of the rounds; the target is <= 0.05).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_moonraker_latency import _call, _free_port, _wait_job  # noqa: E402

from moonraker_octoflash.sim.demo import Demo  # noqa: E402

WRITE_KINDS = ("write", "flash", "flashtool", "write_katapult", "katapult_write")
# The steps whose tool run a flash by hand runs too (the others' runs, e.g. a
# wait's flashtool -q, are octoflash's choice and count as added).
TOOL_KINDS = WRITE_KINDS + ("request_bootloader", "katapult_status")


def _tool_seconds(job: Dict[str, Any], kinds: Any) -> float:
    return sum(float(step.get("tool_seconds") or 0.0)
               for step in (job.get("result") or {}).get("steps") or []
               if step["kind"] in kinds)


def _reboot_waited(job: Dict[str, Any], boot_delay: float) -> float:
    """The part of the board's reboots that the job spent in its wait steps: a reboot
    that began inside a tool's run (the simulated ``-r`` reboots the board before its
    process ends) is tool time already, and is not taken off twice."""
    return sum(min(boot_delay, float(step.get("duration") or 0.0))
               for step in (job.get("result") or {}).get("steps") or []
               if step["kind"].startswith("wait_"))


def _breakdown(job: Dict[str, Any], boot_delay: float, total: float) -> Dict[str, float]:
    """Where the added time went (see the module text)."""
    parts: Dict[str, float] = {"plan": 0.0, "checks": 0.0, "stop_klipper": 0.0,
                               "in_steps": 0.0, "waits": 0.0, "klipper_back": 0.0}
    for step in job.get("steps") or []:
        if step.get("finished") is None:
            continue
        took = float(step["finished"]) - float(step["started"])
        if step.get("stage") == "plan":
            parts["plan"] += took
        elif step.get("stage") == "check":
            parts["checks"] += took
    def first(stage: str) -> Any:
        return min((float(s["started"]) for s in job.get("steps") or []
                    if s.get("stage") == stage), default=None)
    start, version = first("start_klipper"), first("check_version")
    if start is not None:
        parts["klipper_back"] = float(job["finished"]) - start
        if version is not None:
            parts["version_check"] = float(job["finished"]) - version
            parts["klipper_back"] = version - start
    for step in (job.get("result") or {}).get("steps") or []:
        took = float(step.get("duration") or 0.0)
        if step["kind"] == "stop_klipper":
            parts["stop_klipper"] += took
        elif step["kind"].startswith("wait_"):
            parts["waits"] += max(0.0, took - boot_delay)
        elif step["kind"] not in ("start_klipper", "check_version"):
            parts["in_steps"] += took - float(step.get("tool_seconds") or 0.0) \
                if step["kind"] in TOOL_KINDS else took
    tool = _tool_seconds(job, TOOL_KINDS)
    parts["other"] = total - tool - _reboot_waited(job, boot_delay) - sum(parts.values())
    return {k: round(v, 4) for k, v in parts.items()}


class _JobEnds:
    """Moonraker's websocket, on which the page and Mainsail follow a job: the
    bench learns that a flash ended from its last ``notify_octoflash_job_update``
    and then reads the job's record once.  (Asking for the whole record every
    0.1 s, as it did, put a request on Moonraker's event loop in the middle of
    each step, and its time showed up as octoflash's.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.url = f"ws://127.0.0.1:{port}/websocket"
        self.ended: Dict[str, str] = {}
        self.ready_at: List[float] = []      # each notify_klippy_ready, as received
        self.changed = threading.Condition()
        self.conn: Any = None

    def connect(self) -> None:
        asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result(30)

    async def _connect(self) -> None:
        from tornado.websocket import websocket_connect
        self.conn = await websocket_connect(self.url, max_message_size=50 * 1024 * 1024)
        self.loop.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.conn.read_message()
            if message is None:
                return
            data = json.loads(message)
            if data.get("method") == "notify_klippy_ready":
                with self.changed:
                    self.ready_at.append(time.time())
                    self.changed.notify_all()
            if data.get("method") != "notify_octoflash_job_update":
                continue
            for update in data.get("params") or []:
                if isinstance(update, dict) and update.get("final"):
                    with self.changed:
                        self.ended[str(update.get("job_id"))] = str(update.get("state"))
                        self.changed.notify_all()

    def wait(self, job_id: str, timeout: float = 300.0) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: job_id in self.ended, timeout):
                raise SystemExit(f"job {job_id} did not end in {timeout:g} s")

    def ready_after(self, since: float, timeout: float = 60.0) -> float:
        """When Moonraker next said Klipper is ready (as Mainsail learns it) after ``since``."""
        with self.changed:
            if not self.changed.wait_for(lambda: any(t > since for t in self.ready_at), timeout):
                raise SystemExit(f"Moonraker did not report Klipper ready in {timeout:g} s")
            return min(t for t in self.ready_at if t > since)

    def close(self) -> None:
        if self.conn is not None:
            self.loop.call_soon_threadsafe(self.conn.close)


_SLOW_SYNC_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
/* every fsync/fdatasync waits OCTOFLASH_BENCH_SYNC_MS more: a slow disk */
static void slow(void) {
    const char *text = getenv("OCTOFLASH_BENCH_SYNC_MS");
    long ms = text ? atol(text) : 0;
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    if (ms > 0) nanosleep(&t, NULL);
}
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}
int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
"""


def _slow_sync_library(folder: str) -> str:
    """The preload library of ``--slow-sync-ms``, built in ``folder``."""
    import shutil
    import subprocess
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("--slow-sync-ms needs a C compiler (cc)")
    source = os.path.join(folder, "slow_sync.c")
    library = os.path.join(folder, "slow_sync.so")
    with open(source, "w", encoding="utf-8") as f:
        f.write(_SLOW_SYNC_C)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"],
                   check=True, timeout=120)
    return library


def _step_seconds(job: Dict[str, Any]) -> Dict[str, float]:
    """Each step of the flash's own record (the executor's), in seconds."""
    result = job.get("result") or {}
    seconds: Dict[str, float] = {}
    for step in result.get("steps") or []:
        if step.get("duration") is not None:
            seconds[step["kind"]] = seconds.get(step["kind"], 0.0) + float(step["duration"])
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--boot-delay", type=float, default=0.5,
                        help="the simulated board's reboot time, seconds")
    parser.add_argument("--tool-delay", type=float, default=0.05,
                        help="the simulated flashtool's time per block (its write speed)")
    parser.add_argument("--profile", default="toolhead")
    parser.add_argument("--slow-sync-ms", type=int, default=0,
                        help="make each fsync of the demo's processes this much slower "
                             "(an SD card); 0: the disk as it is")
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rounds: List[Dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as data:
        if args.slow_sync_ms > 0:
            os.environ["LD_PRELOAD"] = _slow_sync_library(data)
            os.environ["OCTOFLASH_BENCH_SYNC_MS"] = str(args.slow_sync_ms)
        port = _free_port()
        demo = Demo(data, port)
        demo.prepare()
        assert demo.machine is not None
        board = demo.machine.board(args.profile)
        board.update(lambda s: s.__setitem__("boot_delay", args.boot_delay))
        demo.machine.tool_delay = args.tool_delay
        asyncio.run_coroutine_threadsafe(demo.start(), loop).result(120)
        base = f"http://127.0.0.1:{port}"
        ends = _JobEnds(loop, port)
        print(f"load average at start: {os.getloadavg()[0]:.2f}; board reboot "
              f"{args.boot_delay:g} s, tool delay {args.tool_delay:g} s", flush=True)
        try:
            while _call(base, "GET", "/server/info")["klippy_state"] != "ready":
                time.sleep(0.2)
            built = _call(base, "POST", "/server/octoflash/build", {"profile": args.profile})
            _wait_job(base, built["job"]["job_id"])
            ends.connect()
            for n in range(1, args.rounds + 1):
                while _call(base, "GET", "/server/info")["klippy_state"] != "ready":
                    time.sleep(0.1)
                job = _call(base, "POST", "/server/octoflash/flash",
                            {"profile": args.profile, "build": False})["job"]
                ends.wait(job["job_id"])
                done = _call(base, "GET", f"/server/octoflash/job?job_id={job['job_id']}")["job"]
                if done["state"] != "done":
                    raise SystemExit(f"the flash ended {done['state']}: {done.get('error')}")
                steps = _step_seconds(done)
                total = float(done["finished"]) - float(done["started"])
                tool = _tool_seconds(done, TOOL_KINDS)
                write = _tool_seconds(done, WRITE_KINDS)
                # the board reboots once per wait: into its bootloader, back to Klipper;
                # only the part of it that was waited for outside the tools is taken off
                reboot = _reboot_waited(done, args.boot_delay)
                added = total - tool - reboot
                parts = _breakdown(done, args.boot_delay, total)
                klipper_started = min(float(st["started"]) for st in done["steps"]
                                      if st.get("stage") == "start_klipper")
                moonraker_lag = ends.ready_after(klipper_started) - float(done["finished"])
                rounds.append({"total": total, "tool": tool, "write": write, "reboot": reboot,
                               "added": added, "moonraker_lag": moonraker_lag, **steps,
                               **{f"added.{k}": v for k, v in parts.items()}})
                print(f"round {n}: total {total:6.3f} s, tool {tool:6.3f} s (write "
                      f"{write:.3f}), reboots {reboot:g} s, added {added:6.3f} s  | " +
                      ", ".join(f"{k} {v:.3f}" for k, v in steps.items()), flush=True)
                print("   added: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()) +
                      f"; Moonraker has Klipper ready {moonraker_lag:+.3f} s after the end",
                      flush=True)
        finally:
            ends.close()
            asyncio.run_coroutine_threadsafe(demo.stop(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)

    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in rounds)
    kinds = sorted({k for r in rounds for k in r if "." not in k} -
                   {"total", "tool", "write", "added", "reboot", "moonraker_lag"})
    part_names = [k.split(".", 1)[1] for k in rounds[0] if k.startswith("added.")]
    figures = {
        "bench": "flash_overhead",
        "rounds": len(rounds),
        "board_reboot_seconds": args.boot_delay,
        "reboots_seconds": round(med("reboot"), 3),
        "total_seconds": round(med("total"), 3),
        "tool_seconds": round(med("tool"), 3),
        "write_seconds": round(med("write"), 3),
        "added_seconds": round(med("added"), 3),
        "added_ratio": round(med("added") / med("tool"), 3) if med("tool") else None,
        "added_ratio_of_write": round(med("added") / med("write"), 3) if med("write") else None,
        "added_breakdown_seconds": {k: round(med(f"added.{k}"), 3) for k in part_names},
        "moonraker_ready_after_end_seconds": round(med("moonraker_lag"), 3),
        "steps_seconds": {k: round(med(k), 3) for k in kinds},
        "load_average": round(os.getloadavg()[0], 2),
        "slow_sync_ms": args.slow_sync_ms,
    }
    print(f"median: total {figures['total_seconds']} s = tool {figures['tool_seconds']} s + "
          f"reboots {figures['reboots_seconds']} s + octoflash {figures['added_seconds']} s "
          f"({figures['added_ratio']} of the tools' time, {figures['added_ratio_of_write']} of "
          f"the write's; target 0.05)")
    print("median added: " + ", ".join(f"{k} {v}" for k, v in
                                        figures["added_breakdown_seconds"].items()))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
