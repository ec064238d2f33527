#!/usr/bin/env python3
"""Benchmark: cached per-profile builds against the naive way.

Three profiles (Octopus F446 and H723 USB-CAN bridges, and an STM32G0B1
CAN toolhead) are built once, then, after a small committed source change,
rebuilt through the Builder (own OUT folder per profile, incremental make)
and the naive way (copy each profile's config to the checkout's .config,
``make clean && make``), measured in the same run.  A no-op rebuild (nothing
changed) is measured too.

    python3 bench/build_cache.py                       # the simulated Klipper tree
    python3 bench/build_cache.py --klipper-path ~/klipper   # a real checkout (cloned
                                                            # to a temp dir first)

The last line printed is one JSON object with the figures, among them
``ratio_vs_naive`` (naive seconds / cached seconds: higher is better) and
``noop_seconds`` (all three profiles, nothing to do).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moonraker_octoflash.build import Builder
from moonraker_octoflash.sim.trees import no_cross_compiler
from moonraker_octoflash.presets import Preset
from moonraker_octoflash.profiles import Profile, profile_from_json
from moonraker_octoflash.sim.trees import change_source, install_tree

# A CAN toolhead (BTT EBB36/42-like) as the third, non-Octopus profile.
TOOLHEAD = Preset(
    id="bench-stm32g0b1-can-toolhead", title="STM32G0B1 CAN toolhead (benchmark only)",
    board="CAN toolhead (STM32G0B1)", target="klipper", mcu="stm32g0b1xx",
    app_address=0x08002000, description="Klipper on CAN (PB0/PB1) behind an 8 KiB Katapult.",
    kconfig={"CONFIG_LOW_LEVEL_OPTIONS": "y", "CONFIG_MACH_STM32": "y",
             "CONFIG_MACH_STM32G0B1": "y", "CONFIG_STM32_FLASH_START_2000": "y",
             "CONFIG_STM32_CLOCK_REF_8M": "y", "CONFIG_STM32_MMENU_CANBUS_PB0_PB1": "y",
             "CONFIG_CANBUS_FREQUENCY": "1000000"},
    flash_methods=({"method": "katapult"},))


def bench_profiles() -> List[Profile]:
    return [profile_from_json({"name": "octopus-f446", "preset": "btt-octopus-f446-canbridge"}),
            profile_from_json({"name": "octopus-h723", "preset": "btt-octopus-h723-canbridge"}),
            Profile(name="toolhead-g0b1", preset=TOOLHEAD)]


def prepare_checkout(work: Path, klipper_path: str) -> Path:
    dest = work / "klipper"
    if not klipper_path:
        return install_tree("klipper", dest)
    # Never edit the user's checkout: the source change happens in a clone.
    subprocess.run(["git", "clone", "-q", os.path.abspath(os.path.expanduser(klipper_path)),
                    str(dest)], check=True, timeout=600)
    return dest


def run_make(checkout: Path, *args: str) -> None:
    subprocess.run(["make", *args], cwd=str(checkout), check=True, timeout=1800,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def naive_rebuild(checkout: Path, builder: Builder, profiles: List[Profile], jobs: int) -> float:
    """make clean && make into out/ per profile, each config copied to .config."""
    started = time.monotonic()
    for profile in profiles:
        shutil.copyfile(os.path.join(builder.store.profile_dir(profile.name), "config"),
                        checkout / ".config")
        run_make(checkout, "clean")
        run_make(checkout, f"-j{jobs}")
    return time.monotonic() - started


async def cached_rebuild(builder: Builder, profiles: List[Profile]) -> Dict[str, object]:
    started = time.monotonic()
    skipped = []
    for profile in profiles:
        result = await builder.build(profile)
        skipped.append(result.skipped)
    return {"seconds": time.monotonic() - started, "skipped": skipped}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--klipper-path", default="",
                        help="a real Klipper checkout (cloned to a temp dir; needs arm-none-eabi-gcc)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="source changes to measure (the median is reported)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    profiles = bench_profiles()
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as tmp:
        work = Path(tmp)
        checkout = prepare_checkout(work, args.klipper_path)
        builder = Builder(str(work / "builds"), klipper_path=str(checkout), jobs=args.jobs,
                          cross_compiler=no_cross_compiler)
        tree = "real" if args.klipper_path else "simulated"
        print(f"Klipper tree: {tree} ({checkout}), {len(profiles)} profiles, -j{args.jobs}")

        cold = await cached_rebuild(builder, profiles)
        print(f"first build (cold, all objects):     {cold['seconds']:7.2f} s")
        noop = await cached_rebuild(builder, profiles)
        assert all(noop["skipped"]), "nothing changed, yet a profile was rebuilt"
        print(f"no-op rebuild (nothing changed):     {noop['seconds']:7.3f} s")

        cached: List[float] = []
        naive: List[float] = []
        for n in range(1, args.rounds + 1):
            version = change_source(checkout, "src/sched.c", note=f"benchmark change {n}")
            result = await cached_rebuild(builder, profiles)
            assert not any(result["skipped"]), "a source change must rebuild every profile"
            cached.append(float(result["seconds"]))
            naive.append(naive_rebuild(checkout, builder, profiles, args.jobs))
            print(f"round {n} ({version}): cached {cached[-1]:6.2f} s, "
                  f"naive make clean && make {naive[-1]:6.2f} s")

    cached_s = statistics.median(cached)
    naive_s = statistics.median(naive)
    figures = {
        "tree": tree,
        "profiles": [p.name for p in profiles],
        "jobs": args.jobs,
        "rounds": args.rounds,
        "cold_seconds": round(float(cold["seconds"]), 3),
        "incremental_seconds": round(cached_s, 3),
        "naive_seconds": round(naive_s, 3),
        "ratio_vs_naive": round(naive_s / cached_s, 2),
        "noop_seconds": round(float(noop["seconds"]), 4),
    }
    print(f"after a one-file change, three profiles: cached {cached_s:.2f} s vs naive "
          f"{naive_s:.2f} s -> {figures['ratio_vs_naive']}x faster")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
