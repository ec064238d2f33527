"""Klipper's API socket, asked directly (klippy's ``-a`` option: ``<data_path>/comms/klippy.sock``).

Moonraker talks to Klipper through this socket, and so can any other
local program: each request is a JSON object ending in the byte 0x03,
and each answer carries the request's ``id`` with either a ``result`` or
an ``error``.  The component asks it itself while Moonraker is not
connected to a Klipper that runs, which happens for up to 0.25 s
after every start of Klipper (Moonraker looks for the socket every
0.25 s):

* whether Klipper runs: a flash asked for right then must still stop it;
* what its boards and its print are: the plan and the print guard read
  them there until Moonraker has Klipper again.

A start after a flash is not over at Klipper's first answer here: it waits
until Moonraker has Klipper back (``services.MoonrakerKlipperService``).
"""
from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Dict, Optional

END = b"\x03"
# Klipper's answers to these requests are small; a limit keeps a wrong
# socket from filling memory.
READ_LIMIT = 4 * 1024 * 1024
_ids = itertools.count(1)


class KlipperSocketError(Exception):
    """Klipper's socket did not answer, or answered with an error."""


async def _open(path: str, timeout: float) -> Any:
    if not path:
        raise KlipperSocketError("Klipper's socket is not known")
    try:
        return await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=READ_LIMIT), timeout)
    except asyncio.TimeoutError:
        raise KlipperSocketError(f"Klipper's socket {path} did not accept within "
                                 f"{timeout:g} s") from None
    except OSError as exc:      # no such file, or refused: a socket file nobody listens on
        raise KlipperSocketError(f"Klipper's socket {path}: {exc.strerror or exc}") from None


async def _close(writer: Any) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def answers(path: Optional[str], timeout: float = 2.0) -> bool:
    """Does a Klipper listen on ``path``?  (A socket file left by a stopped Klipper
    refuses the connection.)"""
    if not path:
        return False
    try:
        _reader, writer = await _open(path, timeout)
    except KlipperSocketError:
        return False
    await _close(writer)
    return True


class Connection:
    """One connection to Klipper's socket, for requests one after the other::

        async with Connection(path, timeout) as klipper:
            objects = (await klipper.request("objects/list"))["objects"]

    ``timeout`` bounds the connect and each request; a request answered with
    an error, a closed connection or a timeout raises ``KlipperSocketError``.
    """

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._reader: Any = None
        self._writer: Any = None

    async def __aenter__(self) -> Connection:
        self._reader, self._writer = await _open(self.path, self.timeout)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await _close(self._writer)

    async def request(self, method: str, params: Optional[Dict[str, Any]] = None
                      ) -> Dict[str, Any]:
        try:
            return await asyncio.wait_for(self._exchange(method, params or {}), self.timeout)
        except asyncio.TimeoutError:
            raise KlipperSocketError(f"Klipper did not answer {method} within "
                                     f"{self.timeout:g} s") from None

    async def _exchange(self, method: str, params: Dict[str, Any]) -> Dict[str, Any]:
        request_id = next(_ids)
        self._writer.write(json.dumps({"id": request_id, "method": method,
                                       "params": params}).encode() + END)
        await self._writer.drain()
        while True:         # anything else on the connection is not this answer
            try:
                data = await self._reader.readuntil(END)
            except asyncio.LimitOverrunError:
                raise KlipperSocketError(f"Klipper's answer to {method} is longer than "
                                         f"{READ_LIMIT} bytes") from None
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise KlipperSocketError(
                    f"Klipper's socket closed while asked {method}: {exc}") from None
            try:
                answer = json.loads(data[:-1])
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("id") == request_id:
                break
        if "error" in answer:
            error = answer["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise KlipperSocketError(f"Klipper answered {method} with an error: {message}")
        result = answer.get("result")
        return result if isinstance(result, dict) else {}


async def query(path: str, wanted: Dict[str, Any], timeout: float = 5.0) -> Dict[str, Any]:
    """``objects/query``: the status of the objects in ``wanted`` (object -> fields or None)."""
    async with Connection(path, timeout) as klipper:
        result = await klipper.request("objects/query", {"objects": wanted})
    status = result.get("status")
    return status if isinstance(status, dict) else {}
