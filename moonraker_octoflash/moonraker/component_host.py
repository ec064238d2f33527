"""The octoflash component as the firmware entries see it.

One place that knows the component's attribute names (``component.py``):
``profiles``, ``builder``, ``runner``, ``settings``, ``pipeline``,
``klipper_status`` and ``start_flash``; and the questions the entries ask
of them: what a build would give, the last flash, can the board be reached.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..errors import OctoflashError
from ..versions import parse_version
from .firmware_state import Pending, Running

if TYPE_CHECKING:
    from moonraker.server import Server
    from ..profiles import Profile

log = logging.getLogger("octoflash.updater")


class ComponentHost:
    """What the entries use of the octoflash component, in one place.

    The component (``component.py``) offers ``profiles``, ``builder``,
    ``runner``, ``settings``, ``pipeline`` and ``klipper_status``.
    """

    def __init__(self, component: Any) -> None:
        self.component = component
        self.server: Server = component.server

    def profiles(self) -> Dict[str, "Profile"]:
        profiles = self.component.profiles
        return dict(profiles() if callable(profiles) else profiles)

    def firmware_profiles(self) -> Dict[str, "Profile"]:
        return {n: p for n, p in self.profiles().items() if p.target == "klipper"}

    @property
    def runner(self) -> Any:
        return getattr(self.component, "runner", None) or getattr(self.component, "jobs", None)

    @property
    def builder(self) -> Any:
        return getattr(self.component, "builder", None)

    def announcements_enabled(self) -> bool:
        settings = getattr(self.component, "settings", None)
        return bool(getattr(settings, "announcements", True))

    def source_path(self, target: str) -> Optional[str]:
        settings = getattr(self.component, "settings", None)
        return getattr(settings, f"{target}_path", None)

    def cached_klipper_status(self) -> Dict[str, Any]:
        return dict(getattr(self.component, "klipper_status", None) or {})

    def last_flash(self, profile: str) -> Optional[Dict[str, Any]]:
        """The newest successful flash job of the profile (its artifact record inside)."""
        runner = self.runner
        if runner is None:
            return None
        for job in runner.jobs(profile=profile):
            if job.kind == "flash" and job.state == "done" and job.artifact:
                return job.to_json()
        return None

    def failed_flash(self, profile: str) -> Optional[Dict[str, Any]]:
        """The profile's newest flash job when it ended without a complete write
        (failed, cancelled, interrupted); None when the newest one succeeded.
        Refusals wrote nothing and are passed over."""
        runner = self.runner
        if runner is None:
            return None
        for job in runner.jobs(profile=profile):
            if job.kind != "flash" or job.state in ("queued", "running", "refused"):
                continue
            return job.to_json() if job.state in ("failed", "cancelled", "interrupted") else None
        return None

    async def pending_version(self, profile: "Profile", running: Running) -> Pending:
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
            ask = getattr(builder, "pending_version", None)
            if ask is not None:
                result: Any = await ask(profile)
            else:
                result = await builder.source_version(profile.target)
        except OctoflashError as exc:
            return Pending(parse_version(None), error=str(exc).split("\n")[0])
        except Exception as exc:   # a broken checkout must not break the update manager
            log.exception("octoflash: reading the source version failed")
            return Pending(parse_version(None), error=f"{exc}")
        if isinstance(result, str):
            # build.py marks a config that differs from the last build with
            # "+config.<sha>"; the last build is not what the board runs.
            text = result.split("+config.", 1)[0]
        else:
            text = getattr(result, "version", None) or getattr(result, "describe", None) or ""
            if getattr(result, "dirty", False) and "dirty" not in text:
                text += "-dirty"
        pending = Pending(parse_version(text))
        flash = running.flash or {}
        artifact = flash.get("artifact") or {}
        if not artifact or running.version.raw not in (artifact.get("dict_version"),
                                                        artifact.get("source_version")):
            return pending
        rendered = getattr(builder, "rendered", None)
        if rendered is not None and artifact.get("rendered_sha256"):
            try:
                pending.profile_changed = rendered(profile)[2] != artifact["rendered_sha256"]
            except OctoflashError as exc:
                pending.error = str(exc).split("\n")[0]
        if artifact.get("source_version") == text and hasattr(builder, "source_version"):
            try:
                source = await builder.source_version(profile.target)
                pending.same_build = \
                    (source.fingerprint or "") == (artifact.get("source_fingerprint") or "")
            except Exception:
                pending.same_build = None
        return pending

    async def start_flash(self, profile: "Profile") -> Any:
        """Start a build-and-flash job the way the component's own API does."""
        start = getattr(self.component, "start_flash", None)
        if start is not None:
            return await start(profile.name, build=True, origin="update_manager")
        return await self.runner.start_flash(profile, build=True, origin="update_manager")

    async def board_problem(self, profile: "Profile") -> Optional[str]:
        """Why the board cannot be reached now, or None (also when it cannot be told)."""
        pipeline = getattr(self.component, "pipeline", None)
        scan = getattr(pipeline, "scan", None)
        if scan is None:
            return None
        try:
            snapshot = await scan()
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
