"""The tool runner: argument lists, line splitting on \\r, timeouts, cancellation."""
import asyncio
import os
import sys
import time

import pytest

from fixtures_moonraker import wait_until
from moonraker_octoflash.errors import ToolError
from moonraker_octoflash.tools import ToolTimeout, run_tool

PY = sys.executable


async def test_lines_split_on_carriage_returns_and_streams_tagged():
    seen = []
    script = ("import sys\n"
              "sys.stdout.write('Erase   [==   ]  10%\\rErase   [=====]  100%\\nDone\\n')\n"
              "sys.stderr.write('dfu-util: oops\\n')\n"
              "sys.exit(74)\n")
    result = await run_tool([PY, "-c", script], timeout=10,
                            on_line=lambda stream, line: seen.append((stream, line)))
    assert result.returncode == 74
    assert ("stdout", "Erase   [==   ]  10%") in seen
    assert ("stdout", "Erase   [=====]  100%") in seen
    assert ("stderr", "dfu-util: oops") in seen
    assert result.stderr_lines == ["dfu-util: oops"]


async def test_arguments_are_not_interpreted_by_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    result = await run_tool([PY, "-c", "import sys; print(sys.argv[1])", f"x; touch {marker}"],
                            timeout=10)
    assert result.lines == [f"x; touch {marker}"]
    assert not marker.exists()


async def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
              "print('started', flush=True)\n"
              "time.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(ToolTimeout) as exc:
        await run_tool([PY, "-c", script], timeout=1.5, what="make")
    assert time.monotonic() - start < 10
    assert "make did not finish within 1.5 s" in str(exc.value)
    assert "started" in str(exc.value)
    child = int(pidfile.read_text())
    assert await _ends(child)


async def test_cancellation_kills_the_program(tmp_path):
    pidfile = tmp_path / "pid"
    task = asyncio.ensure_future(run_tool(
        [PY, "-c", f"import os,time; open({str(pidfile)!r},'w').write(str(os.getpid())); time.sleep(60)"],
        timeout=60))
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _ends(int(pidfile.read_text()))


async def test_missing_program_is_a_clear_error():
    with pytest.raises(ToolError) as exc:
        await run_tool(["/nonexistent/dfu-util", "-l"], timeout=5)
    assert "'/nonexistent/dfu-util' was not found" in str(exc.value)


async def _ends(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` is gone (a killed process may take a moment to be reaped)."""
    await wait_until(lambda: not _alive(pid), timeout, interval=0.02, what=f"process {pid} gone")
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_unfinished_lines_reach_on_partial_as_they_are_drawn():
    """flashtool draws '#' marks without a line end; each arrives once, live."""
    script = ("import sys, time\n"
              "sys.stdout.write('Flashing x\\n[')\n"
              "for _ in range(5):\n"
              "    sys.stdout.write('#'); sys.stdout.flush(); time.sleep(0.05)\n"
              "sys.stdout.write(']\\nWrite complete\\n')\n")
    partial = []
    lines = []
    await run_tool([PY, "-c", script], timeout=10,
                   on_partial=lambda s, t: partial.append(t),
                   on_line=lambda s, l: lines.append(l))
    assert "".join(partial).count("#") == 5
    assert len(partial) >= 3          # several chunks: the marks came one by one
    assert lines == ["Flashing x", "[#####]", "Write complete"]
