#!/usr/bin/env python3
"""Benchmark: rebuilding several profiles, against the naive way, same images.

Three profiles (Octopus F446 and H723 USB-CAN bridges, and an STM32G0B1 CAN
toolhead) are built once; then, for each round, a small source change is
committed and the three are rebuilt three ways, in the same run:

* naive: each profile's config copied to the checkout's ``.config``, then
  ``make clean && make -jN``, one profile after the other;
* cached, one by one: ``Builder.build`` per profile (own OUT folder,
  incremental make), as octoflash did before;
* together: ``Builder.build_many`` (incremental, every profile's make on one
  shared jobserver of N slots, so one profile's link overlaps another's
  compiles).

Every image of every way is compared byte for byte with the naive one.
With ccache installed (real Klipper), a ``--force`` rebuild of the three
and the first build of a second printer with the same profiles (another
build folder) are measured with and without ccache (an empty cache of
its own at the start).

    python3 bench/build_cache.py                                 # the simulated tree
    OCTOFLASH_KLIPPER_PATH=~/klipper python3 bench/build_cache.py   # a real checkout
                                                    # (cloned to a temp dir first)

The last line is one JSON object; ``ratio_vs_naive`` is naive seconds / together
seconds (median of the rounds; higher is better).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moonraker_octoflash.build import Builder
from moonraker_octoflash.presets import Preset
from moonraker_octoflash.profiles import Profile, profile_from_json
from moonraker_octoflash.sim.trees import change_source, install_tree, no_cross_compiler

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


def real_cross_compiler(mcu: str) -> Optional[str]:
    return "arm-none-eabi-gcc"


def prepare_checkout(work: Path, klipper_path: str) -> Path:
    dest = work / "klipper"
    if not klipper_path:
        return install_tree("klipper", dest)
    # Never edit the user's checkout: the source change happens in a clone.
    subprocess.run(["git", "clone", "-q", os.path.abspath(os.path.expanduser(klipper_path)),
                    str(dest)], check=True, timeout=600)
    return dest


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_make(checkout: Path, *args: str) -> None:
    subprocess.run(["make", *args], cwd=str(checkout), check=True, timeout=1800,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def naive_rebuild(checkout: Path, builder: Builder, profiles: List[Profile], jobs: int
                  ) -> Dict[str, object]:
    """make clean && make per profile, each config copied to .config; the images' sha256."""
    images = {}
    started = time.monotonic()
    for profile in profiles:
        shutil.copyfile(os.path.join(builder.store.profile_dir(profile.name), "config"),
                        checkout / ".config")
        run_make(checkout, "clean")
        run_make(checkout, f"-j{jobs}")
        images[profile.name] = sha256(str(checkout / "out" / "klipper.bin"))
    return {"seconds": time.monotonic() - started, "images": images}


def _record(results: List[object], started: float) -> Dict[str, object]:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return {"seconds": time.monotonic() - started,
            "skipped": [r.skipped for r in results],  # type: ignore[attr-defined]
            "images": {r.artifact.profile: r.artifact.file("klipper.bin").sha256  # type: ignore[attr-defined]
                       for r in results}}


async def one_by_one(builder: Builder, profiles: List[Profile], force: bool = False
                     ) -> Dict[str, object]:
    started = time.monotonic()
    results = [await builder.build(p, force=force) for p in profiles]
    return _record(list(results), started)


async def together(builder: Builder, profiles: List[Profile], force: bool = False
                   ) -> Dict[str, object]:
    started = time.monotonic()
    results = await builder.build_many(profiles, force=force)
    return _record(list(results), started)


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--klipper-path", default=os.environ.get("OCTOFLASH_KLIPPER_PATH", ""),
                        help="a real Klipper checkout (cloned to a temp dir; needs "
                             "arm-none-eabi-gcc); default $OCTOFLASH_KLIPPER_PATH")
    parser.add_argument("--rounds", type=int, default=3,
                        help="source changes to measure (the median is reported)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    profiles = bench_profiles()
    real = bool(args.klipper_path)
    compiler = real_cross_compiler if real else no_cross_compiler
    with tempfile.TemporaryDirectory(prefix="octoflash-bench-") as tmp:
        work = Path(tmp)
        # ccache (when installed) starts empty, in the temp folder
        os.environ["CCACHE_DIR"] = str(work / "ccache")
        checkout = prepare_checkout(work, args.klipper_path)

        def new_builder(name: str, ccache: str = "no") -> Builder:
            return Builder(str(work / name), klipper_path=str(checkout), jobs=args.jobs,
                           cross_compiler=compiler, ccache=ccache)

        # Without ccache here: rounds measure the jobserver and incremental make alone.
        sequential = new_builder("one-by-one")
        parallel = new_builder("together")
        tree = "real" if real else "simulated"
        print(f"Klipper tree: {tree} ({checkout}), {len(profiles)} profiles, -j{args.jobs}, "
              f"load average {os.getloadavg()[0]:.2f}")

        cold_seq = await one_by_one(sequential, profiles)
        cold_par = await together(parallel, profiles)
        print(f"first build, one by one:  {cold_seq['seconds']:7.2f} s")
        print(f"first build, together:    {cold_par['seconds']:7.2f} s")
        assert cold_seq["images"] == cold_par["images"], "the first builds differ"
        noop = await together(parallel, profiles)
        assert all(noop["skipped"]), "nothing changed, yet a profile was rebuilt"  # type: ignore[attr-defined]
        print(f"no-op (nothing changed):  {noop['seconds']:7.3f} s")

        naive_s: List[float] = []
        seq_s: List[float] = []
        par_s: List[float] = []
        identical = True
        for n in range(1, args.rounds + 1):
            version = change_source(checkout, "src/sched.c", note=f"benchmark change {n}")
            par = await together(parallel, profiles)
            seq = await one_by_one(sequential, profiles)
            assert not any(par["skipped"]) and not any(seq["skipped"]), \
                "a source change must rebuild every profile"  # type: ignore[attr-defined]
            naive = naive_rebuild(checkout, parallel, profiles, args.jobs)
            same = par["images"] == naive["images"] == seq["images"]
            identical = identical and same
            par_s.append(float(par["seconds"]))  # type: ignore[arg-type]
            seq_s.append(float(seq["seconds"]))  # type: ignore[arg-type]
            naive_s.append(float(naive["seconds"]))  # type: ignore[arg-type]
            print(f"round {n} ({version}): together {par_s[-1]:6.2f} s, one by one "
                  f"{seq_s[-1]:6.2f} s, naive make clean && make {naive_s[-1]:6.2f} s, "
                  f"images {'identical' if same else 'DIFFER'}")

        ccache_figures: Dict[str, object] = {}
        if real and shutil.which("ccache"):
            plain = new_builder("force-plain", ccache="no")
            cached = new_builder("force-ccache", ccache="auto")
            await together(plain, profiles)
            fill = await together(cached, profiles)        # fills the empty cache
            force_plain = await together(plain, profiles, force=True)
            force_cached = await together(cached, profiles, force=True)
            second = await together(new_builder("second-printer", ccache="auto"), profiles)
            same = force_plain["images"] == force_cached["images"] == second["images"] \
                == fill["images"]
            identical = identical and same
            ccache_figures = {
                "force_seconds_without_ccache": round(float(force_plain["seconds"]), 2),  # type: ignore[arg-type]
                "force_seconds_with_ccache": round(float(force_cached["seconds"]), 2),  # type: ignore[arg-type]
                "second_printer_seconds_with_ccache": round(float(second["seconds"]), 2),  # type: ignore[arg-type]
                "first_build_seconds_without_ccache": round(float(cold_par["seconds"]), 2),  # type: ignore[arg-type]
            }
            print(f"--force rebuild of the three: {force_plain['seconds']:.2f} s without ccache, "
                  f"{force_cached['seconds']:.2f} s with; a second printer's first build "
                  f"{second['seconds']:.2f} s with ccache (images "
                  f"{'identical' if same else 'DIFFER'})")

    naive_m, seq_m, par_m = (statistics.median(x) for x in (naive_s, seq_s, par_s))
    figures = {
        "bench": "build_cache",
        "tree": tree,
        "profiles": [p.name for p in profiles],
        "jobs": args.jobs,
        "rounds": args.rounds,
        "cold_seconds_one_by_one": round(float(cold_seq["seconds"]), 3),  # type: ignore[arg-type]
        "cold_seconds_together": round(float(cold_par["seconds"]), 3),  # type: ignore[arg-type]
        "naive_seconds": round(naive_m, 3),
        "one_by_one_seconds": round(seq_m, 3),
        "together_seconds": round(par_m, 3),
        "ratio_vs_naive": round(naive_m / par_m, 2),
        "ratio_one_by_one_vs_naive": round(naive_m / seq_m, 2),
        "images_identical": identical,
        "noop_seconds": round(float(noop["seconds"]), 4),  # type: ignore[arg-type]
        "load_average": round(os.getloadavg()[0], 2),
        **ccache_figures,
    }
    print(f"after a one-file change, three profiles: together {par_m:.2f} s, one by one "
          f"{seq_m:.2f} s, naive {naive_m:.2f} s -> {figures['ratio_vs_naive']}x faster")
    print(json.dumps(figures))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
