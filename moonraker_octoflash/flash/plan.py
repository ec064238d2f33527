"""Flash plans: for a profile and an artifact, the exact steps and commands.

A plan is computed without touching anything, so ``octoflash flash
--dry-run`` and the web UI can show it, and the executor runs exactly what
was shown.  A command whose device is only known once the board has
entered Katapult (a bridge's ``usb-katapult_…`` port) carries the
placeholder ``{katapult_device}``, filled in when the device appears.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import time
from typing import Any, Dict, Iterable, List, Optional, TypeVar

from ..artifacts import Artifact, ArtifactFile
from ..discovery.identity import normalize_uuid
from ..discovery.serial import parse_by_id_name
from ..discovery.snapshot import BoardStatus, DeviceSnapshot, profile_is_usb_can_bridge
from ..errors import NotFoundError, OctoflashError, ValidationError
from .config import FlashConfig
from .methods import all_methods, find_method, get_method
from .methods.base import DFU as DFU  # re-exported, as the other transports
from .methods.base import KATAPULT_DEVICE as KATAPULT_DEVICE
from .methods.base import CAN, USB_CAN_BRIDGE, USB_SERIAL, PlanInput

def transport_text(transport: str) -> str:
    """A transport as the plan names it (each method names its own)."""
    for method in all_methods():
        if transport in method.transports:
            return method.transports[transport]
    return transport


H723_HEATER_WARNING = ("On the Octopus Pro H723 v1.0 the heater outputs HE0/HE2 switch on "
                       "while the board is in DFU mode: disconnect the heaters or watch the hot "
                       "end while flashing.")


def dfu_instructions(preset: Any) -> str:
    """How to put this preset's board into DFU mode (the guide's steps, and its warnings)."""
    text = getattr(preset, "dfu_instructions", "") or (
        "Fit the board's BOOT0 jumper and press reset; in DFU mode it shows as 0483:df11.")
    if str(getattr(preset, "mcu", "")).startswith("stm32h723") and "HE0" not in text:
        text = f"{text} {H723_HEATER_WARNING}"
    return text


@dataclasses.dataclass
class FlashStep:
    kind: str          # stop_klipper, the method's own steps (methods/*.step_names),
                       # wait_return, start_klipper, check_version
    title: str
    argv: Optional[List[str]] = None
    timeout: Optional[float] = None
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def command_text(self) -> Optional[str]:
        return shlex.join(self.argv) if self.argv else None

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"kind": self.kind, "title": self.title,
                                "timeout": self.timeout, "params": dict(self.params)}
        if self.argv:
            data["argv"] = list(self.argv)
            data["command"] = self.command_text()
        return data


@dataclasses.dataclass
class FlashPlan:
    profile: Any                      # profiles.Profile
    artifact: Artifact
    method: str                       # a registered method (flash/methods)
    transport: str                    # the method's: dfu, usb-serial, can, usb-can-bridge, ...
    file_name: str                    # the artifact file written
    address: int                      # DFU: where it is written; Katapult: where it is linked
    steps: List[FlashStep]
    needs_klipper_stop: bool
    config: FlashConfig
    warnings: List[str] = dataclasses.field(default_factory=list)
    board_status: Optional[BoardStatus] = None
    dfu_serial: Optional[str] = None
    allow_bootloader_overwrite: bool = False
    # The build that comes first when the profile has no current build
    # (``with_build``): shown, never run by the executor.
    build_steps: List[FlashStep] = dataclasses.field(default_factory=list)
    # The scan the plan was made from; the checks use it again while it is young
    # (``FlashConfig.plan_scan_reuse``), see ``executor._PlanRun.checks``.
    devices: Optional[DeviceSnapshot] = dataclasses.field(default=None, repr=False,
                                                          compare=False)

    @property
    def needs_build(self) -> bool:
        return bool(self.build_steps)

    @property
    def profile_name(self) -> str:
        return str(self.profile.name)

    @property
    def file_path(self) -> str:
        return self.artifact.path(self.file_name)

    def step(self, kind: str) -> Optional[FlashStep]:
        return next((s for s in self.steps if s.kind == kind), None)

    def to_json(self) -> Dict[str, Any]:
        art = self.artifact
        try:
            record = art.file(self.file_name)
            size: Optional[int] = record.size
            sha256: Optional[str] = record.sha256
        except KeyError:
            size = sha256 = None
        return {
            "profile": self.profile_name,
            "preset": self.profile.preset.id,
            "target": self.profile.target,
            "method": self.method,
            "transport": self.transport,
            "artifact": {"id": art.id, "file": self.file_path, "name": self.file_name,
                         "size": size, "sha256": sha256, "mcu": art.mcu,
                         "app_address": f"0x{art.app_address:08x}", "version": art.version},
            "address": f"0x{self.address:08x}",
            "needs_klipper_stop": self.needs_klipper_stop,
            "dfu_serial": self.dfu_serial,
            "board_status": self.board_status.to_json() if self.board_status else None,
            "steps": [s.to_json() for s in self.steps],
            "warnings": list(self.warnings),
            "needs_build": self.needs_build,
            "build_steps": [s.to_json() for s in self.build_steps],
        }

    def format(self) -> str:
        """The plan as a user reads it (``--dry-run``)."""
        art = self.artifact
        lines = [f"Flash plan for '{self.profile_name}' ({self.profile.preset.id})",
                 f"  image:  {self.file_path}" + (" (after the build)" if self.needs_build
                                                  else ""),
                 f"          {art.version}, {art.mcu}, linked at 0x{art.app_address:08x}",
                 f"  method: {transport_text(self.transport)}"]
        if self.board_status is not None:
            lines.append(f"  board:  {self.board_status.state} - {self.board_status.detail}")
        for number, step in enumerate(self.build_steps + self.steps, 1):
            lines.append(f"  {number}. {step.title}")
            if step.argv:
                lines.append(f"       $ {step.command_text()}")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)


# --- ordering ---------------------------------------------------------------------
T = TypeVar("T")


def _flash_rank(profile: Any) -> int:
    if getattr(profile, "canbus_uuid", None):
        return 2 if profile_is_usb_can_bridge(profile) or _katapult_on_usb(profile) else 0
    return 1


def order_for_flash(items: Iterable[T]) -> List[T]:
    """CAN nodes first, then USB/DFU boards, USB-CAN bridges last.

    The nodes behind a bridge are only reachable while the bridge runs, so
    the bridge is written after them.  Accepts profiles or plans.
    """
    listed = list(items)

    def rank(item: Any) -> int:
        return _flash_rank(getattr(item, "profile", item))
    return sorted(listed, key=rank)


# --- building a plan ------------------------------------------------------------------
def _katapult_on_usb(profile: Any) -> bool:
    """A Katapult profile whose bootloader talks USB (the board is a bridge when it runs Klipper)."""
    if profile.target != "katapult":
        return False
    return any(k.startswith("CONFIG_STM32_USB_") and v == "y" for k, v in profile.kconfig().items())


def choose_method(profile: Any, method: Optional[str], status: Optional[BoardStatus],
                  devices: Optional[DeviceSnapshot] = None) -> str:
    methods = [m["method"] for m in profile.preset.flash_methods]
    if method:
        if method not in methods:
            raise ValidationError(
                f"Profile '{profile.name}' (preset {profile.preset.id}) cannot be written with "
                f"'{method}'; it can be written with: {', '.join(methods)}")
        return method
    if profile.flash_method:
        return str(profile.flash_method)
    for name in methods:
        known = find_method(name)
        if known is not None and known.preferred(profile, status, devices):
            return name
    return methods[0]


def _transport(profile: Any) -> str:
    if profile.canbus_uuid:
        if profile_is_usb_can_bridge(profile) or _katapult_on_usb(profile):
            return USB_CAN_BRIDGE
        return CAN
    if profile.serial:
        return USB_SERIAL
    raise ValidationError(
        f"Profile '{profile.name}' does not say how to reach its board through Katapult: "
        "set canbus_uuid (CAN or USB-CAN bridge) or serial (the /dev/serial/by-id path), "
        "or flash it with the dfu method.")


def _flashtool(config: FlashConfig, *args: str) -> List[str]:
    return [config.python, config.flashtool_path] + list(args)


def _chip_serial(profile: Any, devices: Optional[DeviceSnapshot]) -> Optional[str]:
    if profile.serial:
        _k, _m, chip = parse_by_id_name(os.path.basename(profile.serial))
        if chip:
            return chip
    if devices is not None:
        return devices.chip_serial_for(profile)
    return None


def _klipper_object_name(profile: Any, devices: Optional[DeviceSnapshot]) -> str:
    """The profile's MCU as Klipper spells it (``mcu Toolhead``) when the scan saw it.

    A profile may say ``klipper_mcu: toolhead`` for printer.cfg's ``[mcu
    Toolhead]``; the version check matches either way, but the plan names
    the object the user sees in Klipper.
    """
    known = devices.klipper_mcu(profile.klipper_object) if devices is not None else None
    return known.object_name if known is not None else str(profile.klipper_object)


def _return_step(profile: Any, transport: str, config: FlashConfig,
                 dfu_serial: Optional[str] = None) -> FlashStep:
    uuid = normalize_uuid(profile.canbus_uuid)
    interface = profile.canbus_interface or "can0"
    timeout = config.timeouts.reconnect
    if profile.target == "katapult":
        # A new Katapult stays in the bootloader unless an application survived
        # (no mass erase), which it then starts: either is the board back.
        return FlashStep("wait_return", "Wait for Katapult (or the application it starts)",
                         timeout=timeout,
                         params={"expect": "katapult", "mcu": profile.mcu, "uuid": uuid,
                                 "interface": interface, "path": profile.serial})
    if uuid and (transport == USB_CAN_BRIDGE or profile_is_usb_can_bridge(profile)):
        return FlashStep("wait_return", f"Wait for the USB-CAN bridge and {interface} to come back",
                         timeout=timeout,
                         params={"expect": "canbridge", "uuid": uuid, "interface": interface})
    if uuid:
        return FlashStep("wait_return", f"Wait for the node {uuid} to answer on {interface}",
                         timeout=timeout,
                         params={"expect": "can", "uuid": uuid, "interface": interface})
    if profile.serial:
        return FlashStep("wait_return", f"Wait for {profile.serial}", timeout=timeout,
                         params={"expect": "serial", "path": profile.serial})
    return FlashStep("wait_return", "Wait for the board to leave DFU mode", timeout=timeout,
                     params={"expect": "gone", "serial": dfu_serial or profile.dfu_serial})


def make_plan(profile: Any, artifact: Artifact, *, method: Optional[str] = None,
              devices: Optional[DeviceSnapshot] = None,
              config: Optional[FlashConfig] = None,
              allow_bootloader_overwrite: bool = False) -> FlashPlan:
    """The steps that write ``artifact`` to ``profile``'s board; nothing runs here.

    ``devices`` (a recent scan) lets the plan name the board's current
    state, pick DFU when the board already waits in DFU mode, and fill in
    device paths; without it the plan uses what the profile says.
    """
    config = config or FlashConfig()
    if artifact.target != profile.target:
        raise ValidationError(
            f"Artifact {artifact.id} is {artifact.target} firmware but profile "
            f"'{profile.name}' builds {profile.target}")
    status = devices.status_of(profile) if devices is not None else None
    chosen = choose_method(profile, method, status, devices)
    method_info = profile.preset.flash_method(chosen) or {"method": chosen}
    part = get_method(chosen).plan(PlanInput(profile=profile, artifact=artifact,
                                             entry=method_info, devices=devices,
                                             status=status, config=config))
    t = config.timeouts
    steps, warnings, needs_stop = list(part.steps), list(part.warnings), part.needs_klipper_stop
    transport, file_name, address, dfu_serial = (part.transport, part.file_name, part.address,
                                                 part.dfu_serial)
    steps.append(part.return_step or _return_step(profile, transport, config, dfu_serial))
    if needs_stop:
        steps.append(FlashStep("start_klipper", "Start Klipper", timeout=t.start_klipper))
        if profile.target == "klipper" and profile.klipper_object:
            obj = _klipper_object_name(profile, devices)
            steps.append(FlashStep(
                "check_version", f"Check that Klipper's {obj} reports "
                f"{artifact.version}", timeout=t.version_check,
                params={"object": obj, "expected": artifact.version}))
    return FlashPlan(profile=profile, artifact=artifact, method=chosen, transport=transport,
                     file_name=file_name, address=address, steps=steps,
                     needs_klipper_stop=needs_stop, config=config, warnings=warnings,
                     board_status=status, dfu_serial=dfu_serial,
                     allow_bootloader_overwrite=allow_bootloader_overwrite, devices=devices)



# --- a plan before the build ------------------------------------------------------------
NEXT_BUILD = "NEXT-BUILD"


def prospective_artifact(profile: Any, version: str, directory: str,
                         like: Optional[Artifact] = None) -> Artifact:
    """What the next build of ``profile`` gives, for a plan made before it exists.

    The MCU and the application address come from the profile's last build
    when there is one, else from its preset; ``directory`` is where the
    build will be kept (its id is only known once it is made, so the path
    ends in ``NEXT-BUILD``).  The files have no size or hash yet: the
    checks before writing run on the real build.
    """
    preset = profile.preset
    if like is not None and like.target == profile.target:
        main, mcu, address = like.main_file, like.mcu, like.app_address
        start, size = like.bootloader_app_start, like.flash_size
    else:
        main = "klipper.bin" if profile.target == "klipper" else "katapult.bin"
        mcu, address = preset.mcu, preset.app_address
        start, size = getattr(preset, "bootloader_app_start", None), None
    return Artifact(id=NEXT_BUILD, profile=profile.name, preset=preset.id,
                    target=profile.target, mcu=mcu, app_address=address,
                    source_version=version, config_sha256="",
                    files=[ArtifactFile(name=main, size=0, sha256="")], created=time.time(),
                    directory=os.path.join(directory, NEXT_BUILD),
                    bootloader_app_start=start, flash_size=size)


def build_steps(profile: Any, *, make: str, jobs: int, checkout: str, profile_dir: str,
                version: str) -> List[FlashStep]:
    """The build a flash starts with, as the builder runs it (build.py)."""
    config = os.path.join(profile_dir, "config")
    return [
        FlashStep("configure", f"Build '{profile.name}' ({version}): complete its .config "
                  f"with make olddefconfig in {checkout}",
                  argv=[make, "olddefconfig", f"OUT={os.path.join(profile_dir, 'kconfig-out')}/",
                        f"KCONFIG_CONFIG={config}.next"]),
        FlashStep("build", f"Compile {profile.target} for {profile.mcu}",
                  argv=[make, f"-j{jobs}", f"OUT={os.path.join(profile_dir, 'out')}{os.sep}",
                        f"KCONFIG_CONFIG={config}"]),
    ]


def with_build(plan: FlashPlan, steps: List[FlashStep]) -> FlashPlan:
    """``plan`` with the build that has to come first."""
    plan.build_steps = list(steps)
    if plan.artifact.id == NEXT_BUILD:
        plan.warnings.append("The image's address and size are those the profile implies; "
                             "the checks before writing run on the build itself.")
    return plan


async def build_is_current(builder: Any, profile: Any, last: Optional[Artifact]) -> bool:
    """Does ``last`` come from the checkout and the profile as they are now?"""
    if last is None or last.target != profile.target:
        return False
    version = await builder.source_version(profile.target)
    _requested, _text, sha = builder.rendered(profile)
    return (last.source_version, last.source_fingerprint, last.rendered_sha256) == \
        (version.describe, version.fingerprint, sha)


async def plan_with_build(builder: Any, profile: Any, make: Any) -> FlashPlan:
    """The plan of a flash that builds first when the profile has no current build.

    ``await make(artifact)`` makes the flash part of the plan (``make_plan``
    with the caller's devices and options).
    """
    last = await builder.latest(profile.name)
    try:
        current = await build_is_current(builder, profile, last)
        version = (await builder.source_version(profile.target)).describe
    except OctoflashError as exc:
        # No checkout to build from: the latest build is what can be written.
        if last is None:
            raise NotFoundError(f"Profile '{profile.name}' has never been built, and it "
                                f"cannot be built here: {exc}") from None
        current, version = True, last.version
    if current:
        assert last is not None
        result: FlashPlan = await make(last)
        return result
    profile_dir = builder.store.profile_dir(profile.name)
    artifact = prospective_artifact(profile, version, builder.store.artifacts_dir(profile.name),
                                    last)
    steps = build_steps(profile, make=builder.make, jobs=builder.jobs,
                        checkout=builder.checkout(profile.target), profile_dir=profile_dir,
                        version=version)
    return with_build(await make(artifact), steps)
