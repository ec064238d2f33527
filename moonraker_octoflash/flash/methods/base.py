"""What a flash method is: the interface every method module implements."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

if TYPE_CHECKING:
    from ...artifacts import Artifact
    from ...discovery.snapshot import BoardStatus, DeviceSnapshot
    from ..checks import CheckResult
    from ..config import FlashConfig
    from ..executor import _PlanRun
    from ..plan import FlashPlan, FlashStep
    from ..results import StepRecord

# Where a plan's argv names the Katapult serial port it is waiting for (``flash.plan``).
KATAPULT_DEVICE = "{katapult_device}"

# Transports (also ``flash.plan``'s): defined here so that a method module names them
# without importing the planner.
DFU = "dfu"
USB_SERIAL = "usb-serial"
CAN = "can"
USB_CAN_BRIDGE = "usb-can-bridge"


@dataclasses.dataclass
class PlanInput:
    """What a method plans from: the profile, the build, the preset's entry, the last scan."""
    profile: Any                              # profiles.Profile
    artifact: Artifact
    entry: Mapping[str, Any]                  # the preset's flash_methods entry for the method
    devices: Optional[DeviceSnapshot]
    status: Optional[BoardStatus]
    config: FlashConfig


@dataclasses.dataclass
class PlanPart:
    """A method's part of a plan; the planner adds the return, Klipper's start, the version."""
    transport: str
    file_name: str
    address: int
    steps: List[FlashStep]
    needs_klipper_stop: bool
    warnings: List[str] = dataclasses.field(default_factory=list)
    dfu_serial: Optional[str] = None
    return_step: Optional[FlashStep] = None     # None: the planner's, from the profile


class FlashMethod:
    """One way of writing a board.  Subclasses fill in the class attributes."""

    name: str = ""                                  # as profiles, presets and --method say it
    label: str = ""                                 # short, for the page and the CLI
    tool: str = ""                                  # the program that writes
    summary: str = ""                               # one sentence for the docs
    enter: str = ""                                 # how a user makes the board ready for it
    usb_ids: Mapping[Tuple[int, int], str] = {}     # boot-loader USB ids discovery recognises
    device_labels: Mapping[str, str] = {}           # those device kinds, as a user reads them
    device_kinds: Tuple[str, ...] = ()              # USB device kinds it writes through
    connections: Tuple[str, ...] = ()               # profile connections it serves
    transports: Mapping[str, str] = {}              # its transports, as the plan names them
    transports_short: Mapping[str, str] = {}        # the same, in the flash's progress line
    step_names: Mapping[str, str] = {}              # its step kinds, human-readable
    write_kinds: frozenset = frozenset()            # steps/stages during which flash is written
    bootloader_kinds: frozenset = frozenset()       # steps after the board was sent to a loader
    board_state: Optional[str] = None               # a board seen in this state picks the method

    # --- planning ----------------------------------------------------------------
    def offer(self, preset: Any) -> Optional[Dict[str, Any]]:
        """A flash_methods entry for a preset that does not list this method, or None."""
        return None

    def preferred(self, profile: Any, status: Optional[BoardStatus],
                  devices: Optional[DeviceSnapshot] = None) -> bool:
        """True when the board's state makes this the method to use (no method asked for)."""
        return self.board_state is not None and status is not None and \
            status.state == self.board_state

    def plan(self, given: PlanInput) -> PlanPart:
        raise NotImplementedError

    # --- checks before writing ----------------------------------------------------------
    def board_check(self, plan: FlashPlan, devices: DeviceSnapshot) -> Optional[CheckResult]:
        """The board's own word on its chip, as this method's device tells it."""
        return None

    def checks(self, plan: FlashPlan, devices: Optional[DeviceSnapshot]) -> List[CheckResult]:
        """This method's checks that need no tool; raise ``CheckRefused`` to refuse."""
        return []

    # --- running -----------------------------------------------------------------------
    async def run_step(self, run: _PlanRun, step: FlashStep, record: StepRecord) -> None:
        from ..results import WriteFailed
        raise WriteFailed(f"Unknown flash step '{step.kind}' for the {self.name} method")

    def returned(self, devices: DeviceSnapshot, params: Mapping[str, Any]) -> Optional[str]:
        """The board as it came back, for this method's own ``wait_return`` expectations."""
        return None

    # --- recovery ----------------------------------------------------------------------
    def recovery(self, plan: FlashPlan, *, write_started: bool, in_bootloader: bool,
                 write_complete: bool = False, board_back: bool = False) -> Optional[str]:
        return None

    def describe(self) -> Dict[str, Any]:
        return {"name": self.name, "label": self.label, "tool": self.tool,
                "summary": self.summary, "enter": self.enter,
                "device_kinds": list(self.device_kinds), "connections": list(self.connections),
                "usb_ids": {f"{v:04x}:{p:04x}": k for (v, p), k in self.usb_ids.items()},
                "device_labels": dict(self.device_labels),
                "steps": dict(self.step_names)}
