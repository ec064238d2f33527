"""Tool paths and per-phase timeouts of a flash."""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, Optional

from ..discovery.serial import DEFAULT_BY_ID_DIR


@dataclasses.dataclass
class PhaseTimeouts:
    """Seconds each phase may take before it is stopped and reported."""
    stop_klipper: float = 60.0
    start_klipper: float = 60.0
    request_bootloader: float = 30.0    # flashtool -r (a bridge's USB reconnect included)
    bootloader_wait: float = 20.0       # Katapult showing up after the request
    device_wait: float = 120.0          # the user putting the board into DFU mode
    status: float = 30.0                # flashtool -s
    write: float = 300.0                # dfu-util / flashtool writing and verifying
    reconnect: float = 60.0             # the board coming back after the write
    version_check: float = 60.0         # Klipper reporting the new mcu_version

    def to_json(self) -> Dict[str, float]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FlashConfig:
    dfu_util: str = "dfu-util"
    flashtool: str = "~/katapult/scripts/flashtool.py"
    python: str = sys.executable        # runs flashtool.py (it needs pyserial for -d)
    by_id_dir: str = DEFAULT_BY_ID_DIR
    timeouts: PhaseTimeouts = dataclasses.field(default_factory=PhaseTimeouts)
    # Waiting for a board: a probe every ``fast_poll_interval`` for the first
    # ``fast_poll_for`` seconds (a reboot takes about a second: the wait ends soon
    # after the board is back), then every ``poll_interval``.
    poll_interval: float = 0.5
    fast_poll_interval: float = 0.1
    fast_poll_for: float = 5.0
    # The checks before writing use the plan's own scan when it is at most this many
    # seconds old (a job plans and checks within a fraction of a second); an older
    # plan (a command line that waited for its "y") gets a fresh scan.  0: always scan.
    plan_scan_reuse: float = 5.0
    # A wait for a CAN node that has not answered for this many seconds clears the
    # bus's Katapult node ids (flashtool.py -q) once: a node left with an id is silent.
    can_clear_after: float = 2.0
    tool_env: Dict[str, str] = dataclasses.field(default_factory=dict)
    klipper_path: str = "~/klipper"     # a method may build its tool there (rp2040_flash)
    tools: Dict[str, str] = dataclasses.field(default_factory=dict)   # other tools, by name

    def poll_delay(self, waited: float) -> float:
        """Seconds until the next probe, after ``waited`` seconds of waiting."""
        if waited < self.fast_poll_for:
            return min(self.fast_poll_interval, self.poll_interval)
        return self.poll_interval

    def tool(self, name: str) -> Optional[str]:
        """The path of a method's tool when one was given (``with_tools``), else None."""
        return self.tools.get(name)

    @property
    def flashtool_path(self) -> str:
        return os.path.expanduser(self.flashtool)

    @classmethod
    def from_settings(cls, settings: Any) -> FlashConfig:
        """From the ``[octoflash]`` settings shared by the CLI and the Moonraker component."""
        timeouts = PhaseTimeouts(
            write=float(getattr(settings, "flash_timeout", 300.0)),
            device_wait=float(getattr(settings, "device_wait_timeout", 120.0)),
            reconnect=float(getattr(settings, "reconnect_timeout", 60.0)))
        flashtool = getattr(settings, "flashtool_path", "") or os.path.join(
            getattr(settings, "katapult_path", "~/katapult"), "scripts", "flashtool.py")
        return cls(dfu_util=getattr(settings, "dfu_util_path", "dfu-util") or "dfu-util",
                   flashtool=flashtool,
                   python=getattr(settings, "flashtool_python", "") or sys.executable,
                   by_id_dir=getattr(settings, "serial_by_id_path", DEFAULT_BY_ID_DIR)
                   or DEFAULT_BY_ID_DIR,
                   timeouts=timeouts,
                   klipper_path=getattr(settings, "klipper_path", "~/klipper") or "~/klipper")

    def with_tools(self, paths: Dict[str, str], by_id_dir: Optional[str] = None) -> FlashConfig:
        """A copy using other tool paths (``SimulatedMachine.tool_paths()``)."""
        return dataclasses.replace(self, dfu_util=paths.get("dfu_util", self.dfu_util),
                                   flashtool=paths.get("flashtool", self.flashtool),
                                   by_id_dir=by_id_dir or self.by_id_dir,
                                   tools=dict(self.tools, **paths))

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("tool_env", None)
        return data
