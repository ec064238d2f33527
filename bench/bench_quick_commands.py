"""What octoflash costs when there is nothing to do: no-op builds, preset lists, Moonraker's start.

Measured as whole processes, as a user meets them (median of ``--runs``,
after one warm-up run that is not counted):

* ``octoflash build A B C`` of three profiles that are up to date
  (simulated Klipper tree, or a clone of ``$OCTOFLASH_KLIPPER_PATH``);
* ``octoflash presets``;
* ``python -c pass``, the floor any command pays;
* importing the Moonraker component (``moonraker_octoflash.moonraker.component``);
* a real Moonraker 0.11 started with ``[octoflash]`` and two profiles, and
  without any octoflash section, alternately: seconds until it first
  answers ``/server/info``, and its resident memory (VmRSS) once octoflash
  has started up (without octoflash: a second after the first answer);
* what the component itself logs it spent ("octoflash: started; ..."): in
  Moonraker's start (its import, ``__init__`` and ``component_init``, which
  Moonraker waits for before it listens) and in its start-up task after
  Moonraker listens.  The difference of first answers is the user's view
  but is noisy on a busy machine (two processes of ~0.6 s each); the
  component's own figure is not.

Octoflash runs from its compiled bytecode, as installed (see ``ENV``).

    python3 bench/bench_quick_commands.py [--runs 5]

The last line is one JSON object with the medians; the targets are
``build_noop_seconds`` <= 0.25, ``presets_seconds`` <= 0.15,
``moonraker_start_added_seconds`` <= 0.05 (and ``component_in_start_seconds``,
its part that the component measures), ``moonraker_rss_added_mb`` <= 10.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)

PYTHON = sys.executable
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
# As a user meets them: an installed package runs from its compiled bytecode
# (pip compiles it; an editable install writes it at the first import), as
# Moonraker's own modules here do.  With PYTHONDONTWRITEBYTECODE set, as in
# some shells, every run would compile octoflash's modules again and count
# that; the warm-up run writes the bytecode.
ENV.pop("PYTHONDONTWRITEBYTECODE", None)


def timed(argv: List[str], runs: int, **kw: object) -> float:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV, timeout=120, **kw)  # type: ignore[call-overload]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=ENV, timeout=120, **kw)  # type: ignore[call-overload]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTED_RE = re.compile(r"octoflash: started; ([0-9.]+) ms in Moonraker's start .*?, "
                        r"([0-9.]+) ms after it")


def moonraker_start(data: str, extra: str) -> Tuple[float, float, Optional[Tuple[float, float]]]:
    """Seconds until Moonraker answers; its VmRSS (MB) once octoflash has started up
    (without octoflash: a second later); and what the component logged it spent
    in Moonraker's start and after it (seconds), when it is configured."""
    for sub in ("config", "logs", "comms", "gcodes"):
        os.makedirs(os.path.join(data, sub), exist_ok=True)
    port = _free_port()
    Path(data, "config", "moonraker.conf").write_text(textwrap.dedent(f"""\
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

        """) + extra)
    log_path = os.path.join(data, "logs", "console.log")
    log_file = open(log_path, "wb")
    start = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "-m", "moonraker", "-d", data, "-n"], env=ENV,
                            stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log_file.close()
    deadline = time.monotonic() + 120
    try:
        while True:
            if time.monotonic() > deadline:
                raise SystemExit(f"Moonraker did not answer within 120 s ({data})")
            if proc.poll() is not None:
                raise SystemExit(f"Moonraker exited ({proc.returncode}); see {data}/logs")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server/info",
                                            timeout=1) as resp:
                    resp.read()
                break
            except OSError:
                time.sleep(0.005)
        seconds = time.perf_counter() - start
        costs: Optional[Tuple[float, float]] = None
        settle = time.monotonic() + (15 if "[octoflash]" in extra else 1.0)
        while time.monotonic() < settle:
            found = STARTED_RE.search(Path(log_path).read_text(errors="replace"))
            if found:
                costs = (float(found.group(1)) / 1000, float(found.group(2)) / 1000)
                break
            time.sleep(0.05)
        if "[octoflash]" in extra and costs is None:
            raise SystemExit(f"octoflash did not log its start-up; see {log_path}")
        with open(f"/proc/{proc.pid}/status", encoding="ascii") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        return seconds, rss, costs
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    klipper_path = os.environ.get("OCTOFLASH_KLIPPER_PATH", "")
    figures: Dict[str, object] = {"bench": "quick_commands", "runs": args.runs,
                                  "tree": "real" if klipper_path else "simulated"}
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as tmp:
        from moonraker_octoflash.moonraker.link import link_component
        from moonraker_octoflash.sim.trees import install_tree
        link_component()
        if klipper_path:
            checkout = Path(tmp, "klipper")
            subprocess.run(["git", "clone", "-q", klipper_path, str(checkout)], check=True,
                           timeout=600)
        else:
            checkout = install_tree("klipper", Path(tmp, "klipper"))
        conf = Path(tmp, "printer_data", "config", "moonraker.conf")
        conf.parent.mkdir(parents=True)
        sections = textwrap.dedent(f"""\
            [octoflash]
            klipper_path: {checkout}
            build_path: {tmp}/builds

            [octoflash octopus]
            preset: btt-octopus-f446-canbridge

            [octoflash h723]
            preset: btt-octopus-h723-canbridge

            [octoflash toolhead]
            preset: btt-ebb-klipper-1m
            """)
        conf.write_text(sections)
        cli = [PYTHON, "-m", "moonraker_octoflash.cli", "--config", str(conf)]
        subprocess.run(cli + ["build", "octopus", "h723", "toolhead"], check=True, env=ENV,
                       stdout=subprocess.DEVNULL, timeout=1800)

        steps: List[Tuple[str, Callable[[], float]]] = [
            ("python_floor_seconds", lambda: timed([PYTHON, "-c", "pass"], args.runs)),
            ("build_noop_seconds",
             lambda: timed(cli + ["build", "octopus", "h723", "toolhead"], args.runs)),
            ("presets_seconds", lambda: timed(cli + ["presets"], args.runs)),
            ("component_import_seconds", lambda: timed(
                [PYTHON, "-c", "import moonraker_octoflash.moonraker.component"], args.runs)),
        ]
        for key, measure in steps:
            figures[key] = round(measure(), 4)
            print(f"{key:<28} {figures[key]:.4f} s", flush=True)

        two_profiles = "\n".join(sections.split("\n\n")[:3]) + "\n"
        with_s: List[float] = []
        without_s: List[float] = []
        with_mb: List[float] = []
        without_mb: List[float] = []
        in_start: List[float] = []
        after_start: List[float] = []
        for n in range(args.runs + 1):
            s1, m1, costs = moonraker_start(os.path.join(tmp, f"with-{n}"), two_profiles)
            s0, m0, _ = moonraker_start(os.path.join(tmp, f"without-{n}"), "")
            if n == 0:
                continue          # warm-up
            assert costs is not None
            in_start.append(costs[0])
            after_start.append(costs[1])
            with_s.append(s1)
            without_s.append(s0)
            with_mb.append(m1)
            without_mb.append(m0)
        figures.update(
            moonraker_start_with_seconds=round(statistics.median(with_s), 3),
            moonraker_start_without_seconds=round(statistics.median(without_s), 3),
            moonraker_start_added_seconds=round(
                statistics.median(a - b for a, b in zip(with_s, without_s)), 3),
            moonraker_rss_with_mb=round(statistics.median(with_mb), 1),
            moonraker_rss_without_mb=round(statistics.median(without_mb), 1),
            moonraker_rss_added_mb=round(
                statistics.median(a - b for a, b in zip(with_mb, without_mb)), 1),
            # what the component logs: its import, __init__ and component_init
            # (Moonraker waits for them), and its start-up task after Moonraker listens
            component_in_start_seconds=round(statistics.median(in_start), 4),
            component_after_start_seconds=round(statistics.median(after_start), 4))
        print(f"Moonraker first answer: {figures['moonraker_start_with_seconds']} s with "
              f"octoflash, {figures['moonraker_start_without_seconds']} s without; RSS "
              f"{figures['moonraker_rss_with_mb']} MB vs {figures['moonraker_rss_without_mb']} MB")
        print(f"octoflash's own time in Moonraker's start (its log): "
              f"{figures['component_in_start_seconds']:.4f} s; its start-up after it "
              f"{figures['component_after_start_seconds']:.4f} s", flush=True)
    figures["load_average"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
