#!/usr/bin/env python3
"""Benchmark: how long one discovery pass takes, and how long it holds the event loop.

A simulated machine (Octopus as USB-CAN bridge, a CAN toolhead, a board in
DFU mode, a Klipper USB-serial board) is scanned repeatedly through the same
code as a real one: pyusb (simulated backend), the by-id folder, the CAN
admin query on python-can's virtual bus.  Target: a pass well under 2 s
with the default 0.5 s CAN window, and no event-loop stall a user could
notice.

    python3 bench/bench_discovery.py [--rounds 20] [--listen 0.5]

The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moonraker_octoflash.discovery import scan
from moonraker_octoflash.sim.board import SimulatedMachine


def _figures(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)
    return {"median": round(statistics.median(ordered), 4),
            "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 4),
            "max": round(ordered[-1], 4)}


async def _measure(machine: SimulatedMachine, rounds: int, listen: float, can: bool) -> Dict:
    options = machine.scan_options(listen_time=listen)
    durations: List[float] = []
    gaps: List[float] = []
    for _ in range(rounds):
        stop = asyncio.Event()
        ticks: List[float] = []

        async def ticker(stop: asyncio.Event = stop, ticks: List[float] = ticks) -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)
        task = asyncio.create_task(ticker())
        start = time.monotonic()
        snapshot = await scan(can=can, **options)
        durations.append(time.monotonic() - start)
        end = time.monotonic()
        stop.set()
        await task
        # Gaps between ticks, and from the last tick to the scan's end: the
        # longest time the loop could not run anything else.
        marks = [start] + [t for t in ticks if t <= end] + [end]
        gaps.extend(b - a for a, b in zip(marks, marks[1:]))
        assert len(snapshot.usb) == 3, snapshot.to_json()
    return {"scan_seconds": _figures(durations), "loop_gap_seconds": _figures(gaps)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--listen", type=float, default=0.5, help="CAN listening window, s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        machine = SimulatedMachine(os.path.join(tmp, "sim"))
        machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
        machine.add_board("toolhead", "stm32g0b1xx", transport="can", firmware={"version": "v1"})
        machine.add_board("spare", "stm32h723xx", bootloader=None, mode="dfu")
        machine.add_board("serial", "stm32f407xx", firmware={"version": "v1"})
        nodes = machine.can_nodes()
        try:
            with_can = await _measure(machine, args.rounds, args.listen, can=True)
            without_can = await _measure(machine, args.rounds, args.listen, can=False)
        finally:
            nodes.stop()
    print(f"scan with CAN ({args.listen:g} s window): median {with_can['scan_seconds']['median']:.3f} s, "
          f"max {with_can['scan_seconds']['max']:.3f} s; longest loop gap "
          f"{with_can['loop_gap_seconds']['max'] * 1000:.1f} ms")
    print(f"scan without CAN: median {without_can['scan_seconds']['median']:.3f} s, "
          f"max {without_can['scan_seconds']['max']:.3f} s; longest loop gap "
          f"{without_can['loop_gap_seconds']['max'] * 1000:.1f} ms")
    print(json.dumps({"rounds": args.rounds, "listen": args.listen, "with_can": with_can,
                      "without_can": without_can}))


if __name__ == "__main__":
    asyncio.run(main())
