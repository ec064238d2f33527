"""Stopping and starting Klipper around a flash.

A flash that needs a board Klipper uses stops Klipper first (it would hold
the serial port or the CAN node) and starts it again however the flash
ends.  The flash code only sees ``KlipperService``; the command line uses
``SystemctlService``, the Moonraker adapter one backed by Moonraker's
machine component, and boards Klipper does not use get ``NullService``.
"""
from __future__ import annotations

import abc
import os
import shutil
from typing import List, Optional

from .errors import UnavailableError
from .tools import ToolError, run_tool


class KlipperService(abc.ABC):
    """Start/stop control of the Klipper host process."""

    name = "klipper"

    @abc.abstractmethod
    async def stop(self) -> None:
        ...

    @abc.abstractmethod
    async def start(self) -> None:
        ...

    @abc.abstractmethod
    async def is_active(self) -> bool:
        ...

    def control_problem(self) -> Optional[str]:
        """Why Klipper cannot be stopped and started this way here, or None."""
        return None

    def describe(self) -> str:
        return self.name


class NullService(KlipperService):
    """For boards Klipper does not use: nothing to stop, nothing to start."""

    name = "none"

    async def stop(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def is_active(self) -> bool:
        return False

    def describe(self) -> str:
        return "no service (Klipper is left alone)"


class SystemctlService(KlipperService):
    """Klipper as a systemd unit, controlled with ``systemctl`` (``sudo -n`` when not root).

    ``sudo -n`` never prompts: without a sudoers rule for systemctl the stop
    fails at once with a message saying so, before anything is written.

    Without systemd (no ``systemctl``, or a system not booted with it: no
    ``/run/systemd/system``) Klipper counts as running when its API socket
    (``api_socket``, ``<data_path>/comms/klippy.sock``) accepts a connection;
    a Klipper that does not run needs no stop, and one that runs must be
    stopped by the user.
    """

    def __init__(self, unit: str = "klipper", *, systemctl: str = "systemctl",
                 use_sudo: Optional[bool] = None, timeout: float = 60.0,
                 api_socket: Optional[str] = None,
                 systemd_dir: str = "/run/systemd/system") -> None:
        self.unit = unit
        self.name = unit
        self.systemctl = systemctl
        self.use_sudo = (os.geteuid() != 0) if use_sudo is None else use_sudo
        self.timeout = timeout
        self.api_socket = api_socket
        self.systemd_dir = systemd_dir

    def has_systemd(self) -> bool:
        found = shutil.which(self.systemctl) is not None or (
            os.sep in self.systemctl and os.path.exists(self.systemctl))
        return found and os.path.isdir(self.systemd_dir)

    async def _api_socket_answers(self) -> bool:
        from .klipper_socket import answers
        return await answers(self.api_socket, min(self.timeout, 5.0))

    def _argv(self, action: str) -> List[str]:
        argv = [self.systemctl, action, self.unit]
        if action in ("stop", "start") and self.use_sudo:
            argv = ["sudo", "-n"] + argv
        return argv

    async def _run(self, action: str) -> None:
        if not self.has_systemd():
            where = f" (its API socket {self.api_socket} answers)" if self.api_socket else ""
            raise UnavailableError(
                f"Cannot {action} {self.unit}: systemd does not run here, and Klipper "
                f"{'runs' + where if action == 'stop' else 'must be started by you'}.",
                hint=f"{action.capitalize()} Klipper yourself, then flash again"
                     if action == "stop" else "Start Klipper the way you usually start it.")
        try:
            result = await run_tool(self._argv(action), timeout=self.timeout,
                                    what=f"systemctl {action} {self.unit}")
        except ToolError as exc:
            raise UnavailableError(f"Cannot {action} {self.unit}: {exc}") from exc
        if result.returncode != 0:
            tail = " ".join(result.tail(3))
            hint = None
            if self.use_sudo and ("password" in tail.lower() or "sudo" in tail.lower()):
                hint = (f"sudo asked for a password. Allow it without one, e.g. a file in "
                        f"/etc/sudoers.d with: {os.environ.get('USER', 'pi')} ALL=(root) "
                        f"NOPASSWD: /usr/bin/systemctl {action} {self.unit}")
            raise UnavailableError(
                f"Cannot {action} {self.unit} (systemctl exit {result.returncode}): {tail}",
                hint=hint)

    async def stop(self) -> None:
        await self._run("stop")

    async def start(self) -> None:
        await self._run("start")

    async def is_active(self) -> bool:
        if not self.has_systemd():
            return await self._api_socket_answers()
        try:
            result = await run_tool([self.systemctl, "is-active", self.unit],
                                    timeout=self.timeout, what="systemctl is-active")
        except ToolError:
            return False
        return result.returncode == 0

    def describe(self) -> str:
        return f"systemd unit {self.unit}"
