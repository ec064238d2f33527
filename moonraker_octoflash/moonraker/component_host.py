"""The octoflash component as the firmware entries see it.

One place that knows what the entries use of the component
(``component.py``), typed by ``OctoflashComponent``: ``profiles``,
``builder``, ``runner``, ``settings``, ``pipeline``, ``klipper`` (the one
reader of Klipper's state, ``klipper_state.py``), ``start_flash`` and the
events it sends; and the questions the entries ask of them: what Klipper
reports, what a build would give, the last flash, can the board be reached.
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Optional, Protocol, Tuple

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
    from .klipper_state import KlipperState

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
    def klipper(self) -> KlipperState: ...

    async def start_flash(self, name: str, *, build: bool = True, origin: str = "api") -> Job: ...

    async def ready(self) -> None:
        """Until the component has started up (its builder, runner and job history)."""

    def add_job_listener(self, listener: Callable[[Any], None]) -> None:
        """Every job's updates, from the start-up on."""


class ComponentHost:
    """What the entries use of the octoflash component, in one place."""

    def __init__(self, component: OctoflashComponent) -> None:
        self.component = component
        self.server: Server = component.server
        self._own_reads: Deque[Dict[str, Any]] = collections.deque(maxlen=4)

    def profiles(self) -> Dict[str, Profile]:
        return dict(self.component.profiles)

    def firmware_profiles(self) -> Dict[str, Profile]:
        return {n: p for n, p in self.profiles().items() if p.target == "klipper"}

    async def ready(self) -> None:
        await self.component.ready()

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
        """(connected, status): Klipper's MCUs and their config sections, read now by the
        component's one reader (its last copy when Klipper does not answer)."""
        klipper = self.component.klipper
        if not klipper.is_connected():
            return False, {}
        status = dict(await klipper.refresh())
        self._own_reads.append(status)
        return True, status

    def is_own_read(self, status: Dict[str, Any]) -> bool:
        """Is this ``octoflash:klipper_mcus`` payload one that ``read_klipper_status`` made
        the reader send?  Then it is no news to the entries (and refreshing on it would
        read, and be told, again and again)."""
        return status in self._own_reads

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
