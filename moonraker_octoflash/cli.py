"""``octoflash``: the command line for SSH users.

Profiles are read from Moonraker's config file (``[octoflash NAME]``
sections), so the command line and the web UI build the same firmware into
the same place.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, TextIO

from . import __version__
from .errors import OctoflashError, ValidationError

if TYPE_CHECKING:
    from .events import Progress
    from .presets import Preset
    from .profiles import Profile

# Each command imports what it uses when it runs (``python -X importtime``):
# a no-op build or a preset list should not pay for the flash methods, the
# device discovery or Moonraker's parts.
DEFAULT_CONFIG = "~/printer_data/config/moonraker.conf"
# The commands defined here; any other (or --help) also loads the feature
# modules' parsers (flash, scan, link-component).
CORE_COMMANDS = ("presets", "show-config", "build")


class CliContext:
    """What every subcommand needs: settings and profiles from the config file."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config_path = os.path.expanduser(args.config)
        from .settings import Settings, data_path_for_config
        self.profiles: Dict[str, Profile] = {}
        self.warnings: List[str] = []
        options: Dict[str, str] = {}
        if os.path.isfile(self.config_path):
            from .profiles import load_profiles_from_config
            self.profiles, self.warnings, options = load_profiles_from_config(self.config_path)
        self.settings = Settings.from_options(options, data_path_for_config(self.config_path))
        for name in ("klipper_path", "katapult_path"):
            value = getattr(args, name, None)
            if value:
                setattr(self.settings, name, os.path.abspath(os.path.expanduser(value)))

    def profile(self, name: str) -> Profile:
        if name in self.profiles:
            return self.profiles[name]
        hint = ""
        broken = [w for w in self.warnings if f"octoflash {name}]" in w or f"'{name}'" in w]
        if broken:
            hint = "\nThat section has a problem: " + broken[0]
        elif not os.path.isfile(self.config_path):
            hint = f"\nNo config file at {self.config_path} (use --config PATH)."
        elif self.profiles:
            hint = f"\nProfiles in {self.config_path}: {', '.join(self.profiles)}"
        else:
            hint = f"\n{self.config_path} has no [octoflash NAME] sections."
        raise ValidationError(f"No profile named '{name}'.{hint}")

    def selected_profiles(self, names: Sequence[str], preset: Optional[str]) -> List[Profile]:
        if preset:
            if names:
                raise ValidationError("Give profile names or --preset, not both")
            from .presets import get_preset
            from .profiles import profile_from_json
            get_preset(preset)
            return [profile_from_json({"name": preset, "preset": preset}, source="cli")]
        if not names:
            raise ValidationError("Name at least one profile, or use --preset ID")
        return [self.profile(n) for n in names]


# --- presets -----------------------------------------------------------------

def cmd_presets(ctx: CliContext, out: TextIO) -> int:
    if ctx.args.from_klipper:
        return _presets_from_klipper(ctx, out)
    from .presets import list_presets
    presets = list_presets()
    if ctx.args.json:
        import json
        json.dump([p.to_json() for p in presets], out, indent=2)
        out.write("\n")
        return 0
    _preset_lines(presets, out)
    return 0


def _preset_lines(presets: Sequence[Preset], out: TextIO, source: bool = False) -> None:
    width = max((len(p.id) for p in presets), default=0)
    for p in presets:
        methods = ", ".join(m["method"] for m in p.flash_methods)
        where = f"  config/{p.klipper_configs[0]}" if source and p.klipper_configs else ""
        out.write(f"{p.id:<{width}}  {p.target:<8}  {p.mcu:<12}  0x{p.app_address:08x}  "
                  f"{methods}{where}\n")


def _presets_from_klipper(ctx: CliContext, out: TextIO) -> int:
    """The presets the config/*.cfg headers of the Klipper checkout describe."""
    from .klipper_configs import read_checkout
    result = read_checkout(ctx.settings.klipper_path)
    if ctx.args.json:
        import json
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
        return 0
    _preset_lines(result.presets, out, source=True)
    out.write(f"{result.files_read} files read in {ctx.settings.klipper_path}/config: "
              f"{len(result.presets)} presets from their headers, {len(result.skipped)} files "
              f"skipped (no header, or one that cannot be read with certainty), "
              f"{len(result.covered)} covered by the built-in presets.\n")
    return 0


# --- show-config -------------------------------------------------------------

def cmd_show_config(ctx: CliContext, out: TextIO) -> int:
    names = [ctx.args.profile] if ctx.args.profile else []
    profile = ctx.selected_profiles(names, ctx.args.preset)[0]
    from .kconfig import render_config
    out.write(render_config(profile.kconfig()))
    return 0


# --- build -------------------------------------------------------------------

class ProgressPrinter:
    """A one-line progress display on a terminal; plain lines otherwise."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.last_stage = ""

    def __call__(self, event: Progress) -> None:
        if self.tty:
            import re
            import shutil
            width = shutil.get_terminal_size((80, 20)).columns
            pct = f"{event.percent:5.1f}%" if event.percent is not None else "      "
            # Long absolute paths would push the step off the line: keep their tail.
            message = re.sub(r"/\S+/(\S+/\S+)", r"…/\1", event.message.strip())
            text = f"{self.label}: {event.stage:<9} {pct} {message}"
            self.out.write("\r" + text[:width - 1].ljust(width - 1))
            self.out.flush()
            return
        if event.kind == "step" or event.stage != self.last_stage:
            self.out.write(f"{self.label}: [{event.stage}] {event.message}\n")
        elif event.kind == "output":
            self.out.write(f"{self.label}:   {event.message}\n")
        self.last_stage = event.stage

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def make_builder(settings: Any) -> Any:
    from .build import Builder
    return Builder.from_settings(settings)


async def _build_all(ctx: CliContext, profiles: List[Profile], out: TextIO,
                     err: TextIO) -> int:
    """Build the profiles together (one shared make jobserver); one line or record each."""
    builder = make_builder(ctx.settings)
    stream = err if ctx.args.json else out
    printers = {p.name: ProgressPrinter(stream, p.name) for p in profiles}
    outcomes = await builder.build_many(profiles, force=ctx.args.force,
                                        on_progress=lambda name: printers[name])
    records: List[Dict[str, Any]] = []
    failed = 0
    for profile, result in zip(profiles, outcomes):
        printers[profile.name].finish()
        if isinstance(result, OctoflashError):
            failed += 1
            err.write(f"{profile.name}: build failed: {result}\n")
            records.append({"profile": profile.name, "ok": False, "error": str(result)})
            continue
        if isinstance(result, BaseException):
            raise result
        art = result.artifact
        record = art.to_json()
        record.update(ok=True, skipped=result.skipped)
        records.append(record)
        if not ctx.args.json:
            state = "up to date, not rebuilt" if result.skipped else "built"
            main = art.file()
            out.write(f"{profile.name}: {state}: {art.path()} ({main.size} bytes, "
                      f"sha256 {main.sha256[:16]}…, {art.source_version}, {art.mcu}, "
                      f"app at 0x{art.app_address:08x})\n")
    if ctx.args.json:
        import json
        json.dump(records, out, indent=2)
        out.write("\n")
    return 1 if failed else 0


def cmd_build(ctx: CliContext, out: TextIO, err: TextIO) -> int:
    profiles = ctx.selected_profiles(ctx.args.profiles, ctx.args.preset)
    import asyncio
    return asyncio.run(_build_all(ctx, profiles, out, err))


# --- parser ------------------------------------------------------------------

def _optional_parsers(subparsers: Any) -> None:
    """Subcommands whose modules live with their feature (flash, moonraker)."""
    for module in ("moonraker_octoflash.flash.cli", "moonraker_octoflash.moonraker.link"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        add = getattr(mod, "add_parsers", None)
        if add is not None:
            add(subparsers)


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """The command word of ``argv`` (skipping ``--config PATH``), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif arg.startswith("-"):
            if arg in ("-h", "--help", "--version"):
                return None
        else:
            return arg
    return None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The whole parser; for a core command in ``argv``, without the feature modules' commands."""
    parser = argparse.ArgumentParser(
        prog="octoflash",
        description="Build and flash Klipper and Katapult firmware (moonraker-octoflash).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"Moonraker config file with the [octoflash NAME] profiles (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("presets", help="list the built-in presets")
    p.add_argument("--json", action="store_true", help="print the presets as JSON")
    p.add_argument("--from-klipper", action="store_true",
                   help="list the presets the config/*.cfg headers of the Klipper checkout describe")
    p.add_argument("--klipper-path", metavar="DIR",
                   help="Klipper checkout (default from [octoflash] or ~/klipper)")
    p.set_defaults(handler=lambda ctx, out, err: cmd_presets(ctx, out))

    p = sub.add_parser("show-config", help="print the CONFIG_ lines a profile or preset requests")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("profile", nargs="?", help="profile name")
    g.add_argument("--preset", metavar="ID", help="a preset id instead of a profile")
    p.set_defaults(handler=lambda ctx, out, err: cmd_show_config(ctx, out))

    p = sub.add_parser("build", help="build firmware for profiles (or a preset)")
    p.add_argument("profiles", nargs="*", metavar="PROFILE")
    p.add_argument("--preset", metavar="ID", help="build a preset as it is")
    p.add_argument("--klipper-path", metavar="DIR", help="Klipper checkout (default from [octoflash] or ~/klipper)")
    p.add_argument("--katapult-path", metavar="DIR", help="Katapult checkout (default from [octoflash] or ~/katapult)")
    p.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    p.add_argument("--json", action="store_true", help="print the artifact records as JSON")
    p.set_defaults(handler=cmd_build)

    if argv is None or _command_in(argv) not in CORE_COMMANDS:
        _optional_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        ctx = CliContext(args)
        for warning in ctx.warnings:
            err.write(f"warning: {warning}\n")
        handler: Callable[..., int] = args.handler
        return handler(ctx, out, err)
    except OctoflashError as exc:
        err.write(f"octoflash: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("octoflash: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
