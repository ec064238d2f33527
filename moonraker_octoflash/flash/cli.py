"""``octoflash scan`` and ``octoflash flash``: the command line of discovery and flashing.

``add_parsers(subparsers)`` is called by ``moonraker_octoflash.cli``; each
handler gets the CLI context (settings and profiles from moonraker.conf)
and the output streams, and returns the exit code: 0 when every board was
flashed, 1 when one was refused or failed.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, TextIO, Tuple

from ..discovery import DeviceSnapshot, scan
from ..errors import NotFoundError, ValidationError
from ..events import Progress
from ..settings import data_path_for_config
from ..service import KlipperService, SystemctlService
from ..machine import Machine, load_machine
from .config import FlashConfig
from .executor import FlashContext, execute_plans
from .methods import all_methods, device_labels, method_names
from .plan import FlashPlan, make_plan, order_for_flash
from .remote import find_moonraker, flash_through_moonraker
from .writer_lock import WriterLock, busy_message, probe, writer_lock_path


# --- environment: the machine the [octoflash] settings name ------------------------
class _Environment:
    def __init__(self, settings: Any, listen_time: Optional[float] = None) -> None:
        self.settings = settings
        self.machine: Machine = load_machine(settings)
        self.config = FlashConfig.from_settings(settings)
        tools = self.machine.tool_paths()
        if tools or self.machine.by_id_dir:
            self.config = self.config.with_tools(tools, by_id_dir=self.machine.by_id_dir)
        self.listen_time = listen_time if listen_time is not None else \
            float(getattr(settings, "can_listen_time", 0.5))

    def scan_options(self) -> Dict[str, Any]:
        return self.machine.scan_options(listen_time=self.listen_time)

    def service(self, unit: str, data_path: str) -> KlipperService:
        control = self.machine.klipper_control()
        if control is not None:
            return control
        # Without systemd, Klipper runs when its API socket answers.
        return SystemctlService(unit, api_socket=os.path.join(data_path, "comms", "klippy.sock"))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """What the machine runs inside this process (a simulated CAN bus) runs while we work."""
        _run_apart(self.machine.open)
        try:
            yield
        finally:
            _run_apart(self.machine.close)


    async def scan(self, *, can: bool = True) -> DeviceSnapshot:
        return await scan(can=can, **self.scan_options())


def _run_apart(call: Callable[[], Awaitable[None]]) -> None:
    """Run ``call()`` to its end on an event loop of its own, in a thread: the
    command's handlers are synchronous, and may be called inside another loop."""
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: asyncio.run(call())).result()  # type: ignore[arg-type]


# --- scan --------------------------------------------------------------------------
def format_snapshot(snapshot: DeviceSnapshot, profiles: Dict[str, Any]) -> str:
    lines: List[str] = []
    lines.append("USB devices:" if snapshot.usb else "USB devices: none of DFU, Katapult or Klipper")
    for d in snapshot.usb:
        what = dict(device_labels(), klipper="Klipper (serial)",
                    canbridge="Klipper USB-CAN bridge").get(d.kind, d.kind)
        extra = []
        if d.mcu:
            extra.append(d.mcu)
        if d.serial:
            extra.append(f"serial {d.serial}")
        if d.canbus_uuid and d.kind in ("canbridge", "katapult"):
            extra.append(f"canbus_uuid {d.canbus_uuid}")
        if d.dfu_layout:
            extra.append(f"flash \"{d.dfu_layout}\"")
        lines.append(f"  {d.usb_id} {what} on {d.port_path or '?'}: {', '.join(extra)}")
        for path in d.serial_paths:
            lines.append(f"      {path}")
    others = [p for p in snapshot.serial_ports if not any(p.path in d.serial_paths for d in snapshot.usb)]
    if others:
        lines.append(f"Other serial ports in {snapshot.by_id_dir}:")
        lines.extend(f"  {p.path}" for p in others)
    if snapshot.can_interfaces:
        lines.append("CAN interfaces: " + ", ".join(
            f"{i.name} ({'up' if i.up else 'down'}"
            + (f", txqueuelen {i.txqueuelen}" if i.txqueuelen is not None else "") + ")"
            for i in snapshot.can_interfaces))
        if snapshot.can_nodes:
            lines.append("CAN nodes answering (not claimed by a running Klipper):")
            lines.extend(f"  {n.interface} {n.uuid} {n.application}" for n in snapshot.can_nodes)
        else:
            lines.append("CAN nodes answering: none (nodes used by a running Klipper stay silent)")
    else:
        lines.append("CAN interfaces: none up")
    if profiles:
        lines.append("Profiles:")
        width = max(len(n) for n in profiles)
        for name, profile in profiles.items():
            status = snapshot.status_of(profile)
            lines.append(f"  {name:<{width}}  {status.state:<10} {status.detail}")
    for w in snapshot.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def cmd_scan(ctx: Any, out: TextIO, err: TextIO) -> int:
    env = _Environment(ctx.settings, ctx.args.listen)

    async def run() -> DeviceSnapshot:
        with env.running():
            return await env.scan(can=not ctx.args.no_can)
    snapshot = asyncio.run(run())
    if ctx.args.json:
        data = snapshot.to_json()
        data["profiles"] = {name: snapshot.status_of(p).to_json()
                            for name, p in ctx.profiles.items()}
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(format_snapshot(snapshot, ctx.profiles) + "\n")
    return 0


# --- flash -------------------------------------------------------------------------
class _Printer:
    """One line per step and tool line; a redrawn line for percentages on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.partial = False

    def __call__(self, event: Progress) -> None:
        if event.kind == "progress":
            if self.tty:
                width = shutil.get_terminal_size((80, 20)).columns
                self.out.write("\r" + f"  {event.message}"[:width - 1])
                self.out.flush()
                self.partial = True
            return
        if self.partial:
            self.out.write("\n")
            self.partial = False
        if event.kind == "step":
            if event.stage != "done":
                self.out.write(f"[{event.stage}] {event.message}\n")
        else:
            self.out.write(f"    {event.message}\n")
        self.out.flush()


def _find_artifact(ctx: Any, profile: Any, artifact_id: Optional[str]) -> Any:
    from ..artifacts import ArtifactStore
    store = ArtifactStore(ctx.settings.build_path, keep=ctx.settings.builds_kept)
    artifact = store.get(profile.name, artifact_id) if artifact_id else store.latest(profile.name)
    if artifact is None:
        raise NotFoundError(f"No build of '{profile.name}' in {ctx.settings.build_path}.",
                            hint=f"Build it first: octoflash build {profile.name}")
    return artifact


def _builder(ctx: Any) -> Any:
    from ..build import Builder
    return Builder.from_settings(ctx.settings)


async def _build_first(builder: Any, plans: List[FlashPlan], env: Any, args: Any,
                       out: TextIO) -> List[FlashPlan]:
    """Build the profiles whose plan starts with a build; plan them again on the build."""
    devices = await env.scan()
    ready: List[FlashPlan] = []
    for plan in plans:
        if not plan.needs_build:
            ready.append(plan)
            continue
        result = await builder.build(plan.profile, on_progress=_Printer(out))
        ready.append(make_plan(plan.profile, result.artifact, method=args.method,
                               devices=devices, config=env.config,
                               allow_bootloader_overwrite=args.allow_bootloader_overwrite))
    return ready


def _confirm(plans: List[FlashPlan], out: TextIO) -> Tuple[bool, str]:
    return _confirm_count(len(plans), out)


def _confirm_count(count: int, out: TextIO) -> Tuple[bool, str]:
    if not sys.stdin.isatty():
        return False, ("not asking on a non-terminal: pass --yes to flash, or --dry-run "
                       "to see the plan")
    out.write(f"Flash {count} board{'s' if count != 1 else ''} as shown? [y/N] ")
    out.flush()
    try:
        answer = input()
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes"), "not confirmed; nothing was done"


def cmd_flash(ctx: Any, out: TextIO, err: TextIO) -> int:
    args = ctx.args
    if not args.profiles:
        raise ValidationError("Name at least one profile to flash (see `octoflash scan`)")
    env = _Environment(ctx.settings, None)
    profiles = order_for_flash([ctx.profile(name) for name in args.profiles])
    data_path = data_path_for_config(ctx.config_path)
    lock_path = writer_lock_path(data_path)
    if not args.dry_run and not args.local:
        # The Moonraker of this config runs: it does the job (one job runner,
        # one history).  It has no bootloader-overwrite switch: that stays here.
        link, why = find_moonraker(ctx.config_path, ctx.settings.build_path)
        if link is not None and not args.allow_bootloader_overwrite:
            return flash_through_moonraker(
                link, profiles, args, out, err,
                confirm=lambda count: _confirm_count(count, err if args.json else out))
        if why:
            (err if args.json else out).write(f"note: {why}\n")
    if not args.dry_run:
        # Another writer (Moonraker or another octoflash) is at work: say so
        # before even scanning, and again (race-free) when the flash starts.
        free, holder = asyncio.run(probe(lock_path))
        if not free:
            err.write(f"octoflash flash: {busy_message(holder)}\n")
            return 1
    json_out = bool(args.json)
    log = err if json_out else out
    from .plan import plan_with_build
    builder = _builder(ctx) if not args.artifact else None

    async def plan_all() -> Tuple[List[FlashPlan], DeviceSnapshot]:
        devices = await env.scan()
        plans = []
        for p in profiles:
            async def make(artifact: Any, p: Any = p) -> FlashPlan:
                return make_plan(p, artifact, method=args.method, devices=devices,
                                 config=env.config,
                                 allow_bootloader_overwrite=args.allow_bootloader_overwrite)
            if builder is None:
                plans.append(await make(_find_artifact(ctx, p, args.artifact)))
            else:
                # Without --artifact the flash writes a current build: when
                # there is none, the plan starts with the build.
                plans.append(await plan_with_build(builder, p, make))
        return plans, devices

    with env.running():
        plans, _devices = asyncio.run(plan_all())
        if not json_out or args.dry_run:
            for plan in plans:
                (log if json_out else out).write(plan.format() + "\n")
        if args.dry_run:
            if json_out:
                json.dump({"plans": [p.to_json() for p in plans]}, out, indent=2)
                out.write("\n")
            else:
                out.write("Dry run: nothing was done.\n")
            return 0
        if not args.yes:
            if json_out:
                raise ValidationError("--json needs --yes (there is no prompt in JSON mode)")
            ok, why = _confirm(plans, out)
            if not ok:
                err.write(f"octoflash flash: {why}\n")
                return 1
        if any(p.needs_build for p in plans):
            plans = asyncio.run(_build_first(builder, plans, env, args, log))
        from .pipeline import can_watcher
        flash_ctx = FlashContext(service=env.service(args.klipper_service, data_path),
                                 on_progress=_Printer(log),
                                 discover=env.scan,
                                 watch_can=can_watcher(env.scan_options, env.scan),
                                 writer_lock=WriterLock(lock_path, kind="cli",
                                                        profiles=[p.profile_name for p in plans]))
        results = asyncio.run(execute_plans(plans, flash_ctx))
    if json_out:
        json.dump({"plans": [p.to_json() for p in plans],
                   "results": [r.to_json() for r in results]}, out, indent=2)
        out.write("\n")
    else:
        for result in results:
            out.write(result.summary() + "\n")
    return 0 if all(r.ok for r in results) else 1


def add_parsers(subparsers: Any) -> None:
    p = subparsers.add_parser("scan", help="list boards on USB, serial and CAN, and each "
                                           "profile's state")
    p.add_argument("--json", action="store_true", help="print what was found as JSON")
    p.add_argument("--listen", type=float, default=None, metavar="SECONDS",
                   help="how long to listen for CAN answers (default from [octoflash], 0.5)")
    p.add_argument("--no-can", action="store_true", help="do not query the CAN interfaces")
    p.set_defaults(handler=cmd_scan)

    p = subparsers.add_parser("flash", help="write the latest build of profiles to their boards")
    p.add_argument("profiles", nargs="*", metavar="PROFILE")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print plans and results as JSON")
    p.add_argument("--method", choices=method_names(),
                   help="how to write (default: the profile's, else the preset's first): "
                        + "; ".join(f"{m.name}, {m.label}: {m.enter.rstrip('.')}"
                                    for m in all_methods()))
    p.add_argument("--artifact", metavar="ID", help="a build id instead of the latest build")
    p.add_argument("--allow-bootloader-overwrite", action="store_true",
                   help="write an image linked at 0x08000000 even where Katapult was seen "
                        "(it erases the bootloader)")
    p.add_argument("--klipper-service", default="klipper", metavar="UNIT",
                   help="systemd unit stopped and started around the flash (default klipper)")
    p.add_argument("--local", action="store_true",
                   help="flash from here even when Moonraker (with octoflash) runs; by "
                        "default Moonraker is asked to do it")
    p.set_defaults(handler=cmd_flash)
