"""One writer at a time on this machine, whichever process it is.

The job runner keeps one flash at a time inside Moonraker; this lock keeps
the command line and the component (and two command lines) apart.  It is
an ``fcntl.flock`` on ``<data_path>/octoflash-flash.lock``, held from
before Klipper is stopped until Klipper was started again.  The kernel
drops the lock when its process dies, so a crashed writer never blocks the
next one; the JSON record in the file then only tells what the dead writer
left behind: whether it had stopped Klipper, and how to recover the board
it was writing.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from ..errors import ConflictError

LOCK_NAME = "octoflash-flash.lock"
_ATTEMPTS = 4


def writer_lock_path(data_path: str) -> str:
    """The lock file in Moonraker's data folder (the CLI finds it from moonraker.conf)."""
    return os.path.join(os.path.abspath(os.path.expanduser(data_path)), LOCK_NAME)


class WriterBusy(ConflictError):
    """Another process holds the writer lock; ``holder`` is its record."""

    def __init__(self, message: str, holder: Dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def describe_holder(record: Dict[str, Any]) -> str:
    """'job 2026…-ab12 in Moonraker (pid 812) flashing 'octopus' since 21:03:05'."""
    kind = record.get("kind")
    who = {"moonraker": "Moonraker", "cli": "the octoflash command line"}.get(
        str(kind), str(kind or "another process"))
    text = f"job {record['job_id']} in {who}" if record.get("job_id") else who
    if record.get("pid"):
        text += f" (pid {record['pid']})"
    profiles = record.get("profiles") or []
    if profiles:
        text += " flashing " + ", ".join(f"'{p}'" for p in profiles)
    if record.get("started"):
        text += " since " + time.strftime("%H:%M:%S", time.localtime(float(record["started"])))
    return text


def busy_message(record: Dict[str, Any]) -> str:
    return (f"Another flash is running on this machine: {describe_holder(record)}. Only one "
            "board is written at a time; nothing was done. Try again when it has finished.")


class WriterLock:
    """``await lock.acquire()`` … ``await lock.release()``; the record says who holds it.

    Every file operation runs in a thread: the flock is non-blocking, but the
    file lives on a disk (an SD card) that may be slow.
    """

    def __init__(self, path: str, *, kind: str, job_id: Optional[str] = None,
                 profiles: Sequence[str] = ()) -> None:
        self.path = path
        self.record: Dict[str, Any] = {
            "pid": os.getpid(), "host": socket.gethostname(), "kind": kind,
            "job_id": job_id, "profiles": list(profiles), "started": None,
            "klipper_stopped": False, "stage": "", "recovery": None}
        self.previous: Dict[str, Any] = {}     # what the last holder left in the file
        self._fd: Optional[int] = None
        self._writable = True

    @property
    def held(self) -> bool:
        return self._fd is not None

    async def acquire(self) -> Dict[str, Any]:
        """Take the lock or raise ``WriterBusy`` naming the holder; returns the previous record."""
        taking = asyncio.ensure_future(asyncio.to_thread(self._acquire))
        try:
            await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The thread may still get the lock: let go of it as soon as it has.
            def let_go(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._release()
            taking.add_done_callback(let_go)
            raise
        return self.previous

    def _acquire(self) -> None:
        if self._fd is not None:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self._writable = True
        except PermissionError:
            # Made by another user (``sudo octoflash``): the lock still works
            # on a read-only descriptor; only the record cannot be kept.
            fd = os.open(self.path, os.O_RDONLY)
            self._writable = False
        try:
            # A probe (``probe()``) holds a shared lock for an instant: try a few times.
            for attempt in range(_ATTEMPTS):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _ATTEMPTS - 1:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            record = _read_record(fd)
            os.close(fd)
            raise WriterBusy(busy_message(record), record) from None
        except BaseException:
            os.close(fd)
            raise
        self.previous = _read_record(fd)
        self._fd = fd
        self.record["started"] = time.time()
        self._write()

    async def update(self, **fields: Any) -> None:
        """Change the record (stage, klipper_stopped, recovery) while holding the lock."""
        self.record.update(fields)
        if self._fd is not None:
            await asyncio.to_thread(self._write)

    async def release(self) -> None:
        """Let go; a record saying Klipper is still stopped is kept for the next writer."""
        if self._fd is None:
            return
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if not self._writable:
                pass
            elif not self.record.get("klipper_stopped"):
                os.ftruncate(fd, 0)
            else:
                self.record["released"] = time.time()
                _write_record(fd, self.record)
        finally:
            os.close(fd)      # closing the last descriptor drops the flock

    def _write(self) -> None:
        if self._fd is not None and self._writable:
            _write_record(self._fd, self.record)


def _read_record(fd: int) -> Dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        record = json.loads(data.decode("utf-8")) if data.strip() else {}
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_record(fd: int, record: Dict[str, Any]) -> None:
    data = json.dumps(record, indent=1).encode("utf-8")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)


async def probe(path: str) -> Tuple[bool, Dict[str, Any]]:
    """(free, record): whether a writer could start now, and what the file says."""
    def check() -> Tuple[bool, Dict[str, Any]]:
        if not os.path.exists(path):
            return True, {}
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return True, {}
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False, _read_record(fd)
            record = _read_record(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True, record
        finally:
            os.close(fd)
    return await asyncio.to_thread(check)
