"""The one place external programs are run.

Every program (``make``, ``dfu-util``, ``flashtool.py``, ``git``) runs from
an argument list, never through a shell, with a timeout.  Output is read as
it arrives and split on both ``\\n`` and ``\\r`` so that progress bars that
redraw themselves (dfu-util) become separate lines.  On timeout or
cancellation the whole process group is killed, so a ``make -j`` leaves no
compiler behind.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from .errors import ToolError

LineCallback = Callable[[str, str], None]   # (stream, line)

# While set (a list), every program run in this context adds its run time, in
# seconds, from its start to its end: a flash step tells the time its tool took
# from the time octoflash took around it (``flash/executor.py``).
TOOL_SECONDS: contextvars.ContextVar[Optional[List[float]]] = contextvars.ContextVar(
    "octoflash_tool_seconds", default=None)


@dataclasses.dataclass
class ToolResult:
    argv: List[str]
    returncode: int
    lines: List[str]               # stdout and stderr lines, in arrival order
    stderr_lines: List[str]
    duration: float

    def tail(self, count: int = 15) -> List[str]:
        return self.lines[-count:]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


class ToolTimeout(ToolError):
    pass


def find_program(name: str) -> Optional[str]:
    """Absolute path of a program given by name or path, or None."""
    if os.sep in name:
        path = os.path.expanduser(name)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(name)


def _kill_group(proc: _Spawned) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def _pump(stream: asyncio.StreamReader, name: str, lines: List[str],
                err_lines: List[str], on_line: Optional[LineCallback],
                on_partial: Optional[LineCallback]) -> None:
    buf = b""
    partial_sent = 0      # bytes of the unfinished line already given to on_partial
    while True:
        chunk = await stream.read(4096)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            raw, buf = buf[:cut], buf[cut + 1:]
            partial_sent = 0
            _emit(raw, name, lines, err_lines, on_line)
        if on_partial is not None and len(buf) > partial_sent:
            # Progress marks written without a line end (flashtool's '#').
            on_partial(name, buf[partial_sent:].decode("utf-8", errors="replace"))
            partial_sent = len(buf)
    if buf:
        _emit(buf, name, lines, err_lines, on_line)


def _emit(raw: bytes, name: str, lines: List[str], err_lines: List[str],
          on_line: Optional[LineCallback]) -> None:
    line = raw.decode("utf-8", errors="replace").rstrip()
    if not line.strip():
        return
    lines.append(line)
    if name == "stderr":
        err_lines.append(line)
    if on_line is not None:
        on_line(name, line)


class _Spawned:
    """A program started from a worker thread, read through the event loop.

    ``asyncio.create_subprocess_exec`` forks and waits for the exec on the
    event loop itself, which holds Moonraker's loop for tens of
    milliseconds on a busy machine; here the fork and exec happen in a
    thread, and only the reading of the output is the loop's.
    """

    def __init__(self, popen: subprocess.Popen, stdout: asyncio.StreamReader,
                 stderr: asyncio.StreamReader, transports: List[asyncio.BaseTransport]) -> None:
        self.popen = popen
        self.stdout = stdout
        self.stderr = stderr
        self._transports = transports

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()

    async def wait(self) -> int:
        """The exit code; called once the output has ended, so the wait is short."""
        code = self.popen.poll()
        if code is None:
            code = await asyncio.to_thread(self.popen.wait)
        for transport in self._transports:
            transport.close()
        return code


async def _spawn(argv: List[str], *, cwd: Optional[str], env: Optional[Dict[str, str]],
                 pass_fds: Sequence[int]) -> _Spawned:
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(asyncio.to_thread(
        subprocess.Popen, argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        pass_fds=tuple(pass_fds)))
    try:
        popen = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The thread may still start it: stop the program as soon as it runs.
        def stop(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:
                started = done.result()
                try:
                    os.killpg(started.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    started.kill()
                threading.Thread(target=started.wait, daemon=True).start()
        starting.add_done_callback(stop)
        raise
    readers: List[asyncio.StreamReader] = []
    transports: List[asyncio.BaseTransport] = []
    try:
        for pipe in (popen.stdout, popen.stderr):
            reader = asyncio.StreamReader()
            pipe_transport, _protocol = await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, reader), pipe)
            readers.append(reader)
            transports.append(pipe_transport)
    except BaseException:
        for transport in transports:
            transport.close()
        popen.kill()
        raise
    return _Spawned(popen, readers[0], readers[1], transports)


async def run_tool(argv: Sequence[str], *, timeout: float,
                   cwd: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None,
                   on_line: Optional[LineCallback] = None,
                   on_partial: Optional[LineCallback] = None,
                   nice: int = 0,
                   what: Optional[str] = None,
                   pass_fds: Sequence[int] = ()) -> ToolResult:
    """Run ``argv`` and return its result; it is an error only if it cannot run.

    ``on_partial(stream, text)`` receives the text of an unfinished line as
    it arrives (each byte once), for tools that draw progress without
    ending the line; the whole line still reaches ``on_line`` when it ends.
    A non-zero exit code is returned, not raised: callers judge success by
    the tool's own output where its exit code lies (dfu-util).  A timeout
    raises ``ToolTimeout``; cancelling the awaiting task kills the program.
    ``pass_fds`` stay open in the program (a make jobserver's pipe).
    """
    argv = [str(a) for a in argv]
    label = what or os.path.basename(argv[0])
    if find_program(argv[0]) is None:
        raise ToolError(f"{label}: program '{argv[0]}' was not found")
    if nice > 0 and shutil.which("nice"):
        argv = ["nice", "-n", str(nice)] + argv
    full_env: Optional[Dict[str, str]] = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    start = time.monotonic()
    spent = TOOL_SECONDS.get()
    try:
        return await _run(argv, label, timeout=timeout, cwd=cwd, env=full_env, on_line=on_line,
                          on_partial=on_partial, pass_fds=pass_fds, start=start)
    finally:
        if spent is not None:
            spent.append(time.monotonic() - start)


async def _run(argv: List[str], label: str, *, timeout: float, cwd: Optional[str],
               env: Optional[Dict[str, str]], on_line: Optional[LineCallback],
               on_partial: Optional[LineCallback], pass_fds: Sequence[int],
               start: float) -> ToolResult:
    try:
        proc = await _spawn(argv, cwd=cwd, env=env, pass_fds=tuple(pass_fds))
    except OSError as exc:
        raise ToolError(f"{label}: cannot start '{argv[0]}': {exc.strerror or exc}") from exc
    lines: List[str] = []
    err_lines: List[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(
        _pump(proc.stdout, "stdout", lines, err_lines, on_line, on_partial),
        _pump(proc.stderr, "stderr", lines, err_lines, on_line, on_partial))
    try:
        await asyncio.wait_for(asyncio.shield(readers), timeout)
        await proc.wait()
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        readers.cancel()
        raise ToolTimeout(f"{label} did not finish within {timeout:g} s and was stopped",
                          log_tail=lines[-15:]) from None
    except BaseException:
        # Cancelled (or the callback raised): never leave the program running.
        _kill_group(proc)
        readers.cancel()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except BaseException:
            pass
        raise
    finally:
        # make -j may leave children in the group even after the parent exits.
        if proc.returncode is not None:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                pass
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return ToolResult(argv=argv, returncode=proc.returncode or 0, lines=lines,
                      stderr_lines=err_lines, duration=time.monotonic() - start)
