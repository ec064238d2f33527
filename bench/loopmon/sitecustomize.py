"""Bench only: an asyncio slow-callback monitor loaded into the Moonraker under test.

``bench/bench_moonraker_latency.py`` puts this folder first in the
``PYTHONPATH`` of the Moonraker it starts, with ``OCTOFLASH_LOOPMON_FILE``
set; Python imports ``sitecustomize`` at start, and this one times every
callback the event loop runs (``asyncio.Handle._run``).  A callback that
holds the loop for ``OCTOFLASH_LOOPMON_MS`` (default 20) or more is written
to the file as one JSON line: when (``time.monotonic()``, the clock the
bench reads too), how long, how much of it the loop's thread computed
(``cpu_ms``: the rest it waited for a core, or in a system call), which task or
function (and the request, for a Tornado handler), and the line of the
innermost coroutine it resumed from (where the slow stretch began) and
the one it stopped at.  Not part of the product; nothing here is imported
by it.
"""
from __future__ import annotations

import json
import os
import threading
import time


def _install() -> None:
    path = os.environ.get("OCTOFLASH_LOOPMON_FILE")
    if not path:
        return
    import asyncio.events

    threshold = float(os.environ.get("OCTOFLASH_LOOPMON_MS", "20")) / 1000.0
    original = asyncio.events.Handle._run
    lock = threading.Lock()

    def innermost(coro: object) -> object:
        for _ in range(50):
            inner = getattr(coro, "cr_await", None)
            if inner is None or getattr(inner, "cr_frame", None) is None:
                break
            coro = inner
        return coro

    def where(coro: object) -> str:
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            return ""
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        return f"{name} ({code.co_filename}:{frame.f_lineno})"

    def request_of(coro: object) -> str:
        """The HTTP request a Tornado handler's task serves ("GET /server/info"), or ""."""
        frame = getattr(coro, "cr_frame", None)
        handler = frame.f_locals.get("self") if frame is not None else None
        request = getattr(handler, "request", None)
        if request is None:
            return ""
        return f"{getattr(request, 'method', '')} {getattr(request, 'path', '')}"

    def timed_run(self: asyncio.events.Handle) -> None:
        callback = self._callback
        owner = getattr(callback, "__self__", None)
        coro = owner.get_coro() if owner is not None and hasattr(owner, "get_coro") else None
        resumed = where(innermost(coro)) if coro is not None else ""
        request = request_of(coro)     # now: a task that ends in this step has no frame after
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            original(self)
        finally:
            held = time.perf_counter() - started
            cpu = time.thread_time() - cpu_started
            if held >= threshold:
                if coro is not None:
                    name = getattr(owner, "get_name", lambda: "task")() + ": " + \
                        getattr(coro, "__qualname__", repr(coro))
                else:
                    name = getattr(callback, "__qualname__", None) or repr(callback)
                record = {"t": time.monotonic(), "ms": round(held * 1000, 2),
                          "cpu_ms": round(cpu * 1000, 2), "callback": name,
                          "resumed_at": resumed,
                          "stopped_at": where(innermost(coro)) if coro is not None else "",
                          "request": request}
                with lock, open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]


_install()
