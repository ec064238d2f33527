"""The octoflash component as the firmware entries see it.

One place that knows what the entries use of the component
(``component.py``), typed by ``OctoflashComponent``: ``profiles``,
``builder``, ``runner``, ``settings``, ``pipeline``, ``klipper_status``,
``start_flash`` and the events it sends; and the questions the entries ask
of them: what Klipper reports, what a build would give, the last flash, can
the board be reached.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol, Tuple

from ..discovery.klipper import is_mcu_section
from ..errors import OctoflashError
from ..versions import parse_version
from .firmware_state import Pending, Running

if TYPE_CHECKING:
    from moonraker.server import Server

    from ..build import Builder
    from ..discovery.snapshot import DeviceSnapshot
    from ..job_records import Job
    from ..jobs import JobRunner
    from ..profiles import Profile
    from ..settings import Settings
    from .moonraker_internals import MoonrakerInternals

log = logging.getLogger("octoflash.updater")

# Events the component sends (component.py says when)
KLIPPER_MCUS_EVENT = "octoflash:klipper_mcus"
FLASH_FINISHED_EVENT = "octoflash:flash_finished"
PROFILES_CHANGED_EVENT = "octoflash:profiles_changed"


class BoardScanner(Protocol):
    async def scan(self) -> DeviceSnapshot: ...


class OctoflashComponent(Protocol):
    """What the firmware entries use of the component (``component.OctoFlash``)."""

    @property
    def server(self) -> Server: ...

    @property
    def profiles(self) -> Dict[str, Profile]: ...

    @property
    def builder(self) -> Optional[Builder]: ...

    @property
    def runner(self) -> JobRunner: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def pipeline(self) -> BoardScanner: ...

    @property
    def klipper_status(self) -> Dict[str, Any]:
        """Klipper's latest MCU status as the component last read it."""

    async def start_flash(self, name: str, *, build: bool = True, origin: str = "api") -> Job: ...


class ComponentHost:
    """What the entries use of the octoflash component, in one place."""

    def __init__(self, component: OctoflashComponent, internals: MoonrakerInternals) -> None:
        self.component = component
        self.internals = internals
        self.server: Server = component.server

    def profiles(self) -> Dict[str, Profile]:
        return dict(self.component.profiles)

    def firmware_profiles(self) -> Dict[str, Profile]:
        return {n: p for n, p in self.profiles().items() if p.target == "klipper"}

    @property
    def runner(self) -> JobRunner:
        return self.component.runner

    @property
    def builder(self) -> Optional[Builder]:
        return self.component.builder

    def announcements_enabled(self) -> bool:
        return bool(self.component.settings.announcements)

    def source_path(self, target: str) -> Optional[str]:
        settings = self.component.settings
        return {"klipper": settings.klipper_path, "katapult": settings.katapult_path}.get(target)

    async def read_klipper_status(self) -> Tuple[bool, Dict[str, Any]]:
        """(connected, status): the MCUs and their config sections, asked of Klipper now;
        the component's last copy when Klipper does not answer."""
        # The component's reader owns the timeout; imported here because
        # component.py imports this module (through updater.py).
        from .component import KLIPPER_QUERY_TIMEOUT
        internals = self.internals
        if not internals.klipper_connected():
            return False, {}
        try:
            names = await asyncio.wait_for(internals.klipper_objects(), KLIPPER_QUERY_TIMEOUT)
            if names is None:
                raise LookupError("no object list")
            query: Dict[str, Any] = {n: None for n in names if is_mcu_section(n)}
            # settings for the boards (lower-cased names, Klipper's defaults);
            # config for the names as printer.cfg writes them, which the
            # objects also use, when Klipper has no object for a section yet
            query["configfile"] = ["settings", "config"]
            status = await asyncio.wait_for(internals.query_klipper(query),
                                            KLIPPER_QUERY_TIMEOUT)
            if status is None:
                raise LookupError("no status")
            return True, status
        except Exception as exc:   # timeouts too: the entries then use the last copy
            log.info("octoflash: Klipper's MCUs not read (%s); using the component's copy", exc)
            return True, dict(self.component.klipper_status)

    def last_flash(self, profile: str) -> Optional[Dict[str, Any]]:
        """The newest successful flash job of the profile (its artifact record inside)."""
        for job in self.runner.jobs(profile=profile):
            if job.kind == "flash" and job.state == "done" and job.artifact:
                return job.to_json()
        return None

    def failed_flash(self, profile: str) -> Optional[Dict[str, Any]]:
        """The profile's newest flash job when it ended without a complete write
        (failed, cancelled, interrupted); None when the newest one succeeded.
        Refusals wrote nothing and are passed over."""
        for job in self.runner.jobs(profile=profile):
            if job.kind != "flash" or job.state in ("queued", "running", "refused"):
                continue
            return job.to_json() if job.state in ("failed", "cancelled", "interrupted") else None
        return None

    async def pending_version(self, profile: Profile, running: Running) -> Pending:
        """What a build would give now, and whether it differs from the running firmware.

        The version comes from ``builder.pending_version(profile)``.  Whether
        the profile changed is judged against the firmware the board runs,
        not the latest build: when that firmware is octoflash's last flash
        of the profile (same version string), its record tells the rendered
        config and the checkout's uncommitted changes it was built with.
        Boards flashed by other means count as built with today's profile.
        """
        builder = self.builder
        if builder is None:
            return Pending(parse_version(None), error="builds are not available here "
                                                      "(see Moonraker's log)")
        try:
            result = await builder.pending_version(profile)
        except OctoflashError as exc:
            return Pending(parse_version(None), error=str(exc).split("\n")[0])
        except Exception as exc:   # a broken checkout must not break the update manager
            log.exception("octoflash: reading the source version failed")
            return Pending(parse_version(None), error=f"{exc}")
        # build.py marks a config that differs from the last build with
        # "+config.<sha>"; the last build is not what the board runs.
        text = result.split("+config.", 1)[0]
        pending = Pending(parse_version(text))
        flash = running.flash or {}
        artifact = flash.get("artifact") or {}
        if not artifact or running.version.raw not in (artifact.get("dict_version"),
                                                        artifact.get("source_version")):
            return pending
        if artifact.get("rendered_sha256"):
            try:
                pending.profile_changed = builder.rendered(profile)[2] != artifact["rendered_sha256"]
            except OctoflashError as exc:
                pending.error = str(exc).split("\n")[0]
        if artifact.get("source_version") == text:
            try:
                source = await builder.source_version(profile.target)
                pending.same_build = \
                    (source.fingerprint or "") == (artifact.get("source_fingerprint") or "")
            except Exception:
                pending.same_build = None
        return pending

    async def start_flash(self, profile: Profile) -> Job:
        """Start a build-and-flash job the way the component's own API does."""
        return await self.component.start_flash(profile.name, build=True, origin="update_manager")

    async def board_problem(self, profile: Profile) -> Optional[str]:
        """Why the board cannot be reached now, or None (also when it cannot be told)."""
        try:
            snapshot = await self.component.pipeline.scan()
            status = snapshot.status_of(profile)
        except OctoflashError as exc:
            return str(exc).split("\n")[0]
        except Exception:
            log.exception("octoflash: looking for the board failed")
            return None
        if status.state == "not_found":
            return (f"the board of profile '{profile.name}' cannot be reached: {status.detail}. "
                    "Check that it is connected and powered (CAN: that the interface is up), "
                    "then try again.")
        return None
