"""Shared pytest set-up.  Each area keeps its fixtures in its own module."""
import atexit
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest

from moonraker_octoflash.sim.trees import PYCACHE_ENV

pytest_plugins = ["fixtures_build", "fixtures_flash", "fixtures_moonraker"]

# The simulated compiler spends a fixed amount of CPU per file so that the
# demo's builds take a visible while; no test is about how long a compile
# takes (the benchmarks in bench/ keep the cost), and the images do not
# depend on it.  Builds in tests, in make and in Moonraker, inherit this.
os.environ.setdefault("OCTOFLASH_SIMCC_ROUNDS", "0")

# Every test checks its documents in full (and writes nothing to ~/.cache):
# the memory of valid documents is tested on its own (test_schema_memo.py).
os.environ.setdefault("OCTOFLASH_SCHEMA_CACHE", "0")

# The suite starts thousands of Python processes (Moonraker, the tool
# doubles, the Kconfig helpers, the simulated compiler): they read this
# project's modules from bytecode as an installed package would, instead of
# compiling every module again in every process (a shell that sets
# PYTHONDONTWRITEBYTECODE would make each of them do so).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# The simulated checkouts of this test process share one bytecode folder for
# their stand-in tools (sim/trees.py): a build's scripts then no longer compile
# the standard library's modules they import again in every new output folder.
if not os.environ.get(PYCACHE_ENV):
    _sim_pycache = tempfile.mkdtemp(prefix="octoflash-sim-pycache-")
    os.environ[PYCACHE_ENV] = _sim_pycache
    atexit.register(shutil.rmtree, _sim_pycache, True)

# The test files that take longest start first, so that the parallel workers
# (pytest-xdist, one file whole per worker) end together instead of one long
# file running alone at the end.  Only the order of files changes: the order
# of tests inside each file, and of the other files, stays as collected
# (shuffled by pytest-randomly where it runs).
LONGEST_FILES = ["test_updater.py", "test_web.py", "test_install.py", "test_build.py",
                 "test_moonraker_crash.py", "test_moonraker_jobs.py", "test_cross_site.py",
                 "test_toolhead_presets_build.py", "test_presets_build.py",
                 "test_flash_katapult.py", "test_hostile_input.py", "test_flash_cancel.py",
                 "test_cli.py", "test_build_parallel.py"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


_WORKER_CASES = {"count": 0}


def pytest_sessionfinish(session):
    """A test worker (pytest-xdist) hands its count of hostile cases to the controller."""
    import hostile
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["hostile_cases"] = hostile.CASES["count"]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_CASES["count"] += getattr(node, "workeroutput", {}).get("hostile_cases", 0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    import hostile
    count = hostile.CASES["count"] + _WORKER_CASES["count"]
    if count:
        terminalreporter.write_line(f"hostile-input cases run: {count}")
