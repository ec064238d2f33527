"""Each MCU's firmware as an entry in Moonraker's update manager.

For every profile that builds Klipper firmware there is one entry,
``octoflash_<profile>``, in ``machine.update.status``; Mainsail and Fluidd
list it with the other software.  ``version`` is the firmware the board
runs (Klipper's ``mcu_version`` for it; the firmware octoflash last wrote
when Klipper does not report it), ``remote_version`` what a build of the
profile would give now.  Both are published in the form that the clients'
semver comparison orders correctly (``versions.py`` explains why Klipper's
own strings cannot be used as they are).

The Update button (``machine.update.client``/``upgrade`` with the entry's
name) builds and flashes the profile through the component's job runner
and streams the job's progress as ``notify_update_response``.  "Update
all" (``machine.update.full``) flashes only profiles with ``auto_update:
True``, and only after Moonraker has updated Klipper itself (the firmware
must come from the updated checkout): those flashes run when the full
update has finished, in the runner's order (CAN nodes first, the USB-CAN
bridge last).

Entries refresh on Moonraker's schedule, when Klipper connects, restarts or
goes away, after every flash and when profiles change.  An announcement
tells about each board with older firmware than a build would give (off
with ``announcements: False`` in ``[octoflash]``).

Bootloader profiles (target ``katapult``) get no entry: a bootloader is
written on purpose from octoflash's page or command line, never as an
"update".
"""
from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from ..discovery.klipper import same_mcu
from ..errors import OctoflashError
from ..versions import UNKNOWN, parse_version
from .announcer import FirmwareAnnouncer, Notice
from .component_host import (FLASH_FINISHED_EVENT, KLIPPER_MCUS_EVENT, PROFILES_CHANGED_EVENT,
                             ComponentHost, OctoflashComponent)
from .firmware_state import (EntryState, Running, assess, can_flash_again, describe_reason,
                             is_conclusive, version_ref)
from .moonraker_internals import KLIPPY_DISCONNECT, KLIPPY_STARTED, MoonrakerInternals

if TYPE_CHECKING:
    from ..job_records import JobUpdate
    from ..profiles import Profile

log = logging.getLogger("octoflash.updater")

ENTRY_PREFIX = "octoflash_"
# Mainsail lists entries of the types git_repo, zip, web, web_beta, python
# and executable; Fluidd lists every entry.  "python" is the type whose
# changelog link both clients build from current_hash/remote_hash (channel
# "dev"): it opens the commits between the running firmware and the checkout.
CONFIGURED_TYPE = "python"
REFRESH_DELAY_CONNECT = 1.0      # after Klipper (re)connects: let the component read it first
REFRESH_DELAY_DISCONNECT = 3.0   # Klipper going away during a flash is followed by a restart
DEFERRED_FLASH_MAX_AGE = 30 * 60.0   # a full update's flashes survive a Moonraker restart this long
PROGRESS_STEP = 10.0             # percent between streamed progress lines
# Fluidd keeps no text of the update response that completes an update
# (store/version/mutations.ts, setUpdateResponse): every result line is sent
# before it, and the completing message only closes the dialog.
CLOSING_LINE = "Done."
ANNOUNCEMENT_CHARS = 180          # about four lines of Fluidd's notification menu
UNKNOWN_HASH = "unknown"
DEFAULT_REPOS = {"klipper": ("Klipper3d", "klipper"), "katapult": ("Arksine", "katapult")}
_GITHUB_RE = re.compile(r"github\.com[:/](?P<owner>[^/\s]+)/(?P<repo>[^/\s]+?)(?:\.git)?/?$")


def as_html_text(text: str) -> str:
    """Mainsail (v-html) and Fluidd (v-safe-html) show update messages as HTML:
    a compiler's ``<stdint.h>`` must arrive as text."""
    return html.escape(text, quote=False)


def plain_error(text: str) -> str:
    """One line for an error Moonraker sends back and repeats in the update dialog."""
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line.replace("<", "(").replace(">", ")")


def entry_name(profile_name: str) -> str:
    return ENTRY_PREFIX + profile_name


def profile_fingerprint(profile: Profile) -> str:
    """Changes whenever the profile's settings change (Moonraker refreshes on it)."""
    text = json.dumps(profile.to_json(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the entry --------------------------------------------------------------------

class FirmwareUpdater:
    """One profile's firmware, as an update-manager entry.

    Moonraker holds the entry's ``slot`` (moonraker_internals.py) and asks
    this object through it; the entry says things in the update dialog and
    saves its data through the slot as well.
    """

    def __init__(self, manager: FirmwareUpdates, profile: Profile) -> None:
        self.name = entry_name(profile.name)
        self.manager = manager
        self.profile_name = profile.name
        self.state: Optional[EntryState] = None
        self.saved_status: Dict[str, Any] = {}    # the last state, from the database
        self.deferred_since: Optional[float] = None
        self.slot = manager.internals.make_entry(self.name, profile_fingerprint(profile), self)

    # asked by the update manager (moonraker_internals.EntryBehaviour)

    def restore(self, storage: Dict[str, Any]) -> None:
        self.saved_status = dict(storage.get("octoflash_status") or {})
        deferred = storage.get("deferred_full_update")
        if isinstance(deferred, (int, float)) and time.time() - deferred < DEFERRED_FLASH_MAX_AGE:
            self.deferred_since = float(deferred)
            self.manager.resume_deferred(self)

    async def refresh(self) -> None:
        await self.manager.refresh_entries([self], notify=False)

    async def update(self) -> bool:
        return await self.manager.update_entry(self)

    def close(self) -> None:
        self.manager.close()

    def persistent_data(self) -> Dict[str, Any]:
        return {"octoflash_status": self.update_status() if self.state is not None
                else self.saved_status,
                "deferred_full_update": self.deferred_since}

    # through the slot

    async def initialize(self) -> None:
        """For an entry added after Moonraker's start (the update manager initialized the others)."""
        await self.slot.initialize()

    def store(self) -> None:
        """Save the entry's data without marking a refresh."""
        self.slot.store()

    def notify_status(self, msg: str, is_complete: bool = False) -> None:
        self.slot.notify_status(as_html_text(msg), is_complete)

    @property
    def profile(self) -> Optional[Profile]:
        return self.manager.host.profiles().get(self.profile_name)

    def update_status(self) -> Dict[str, Any]:
        profile = self.profile
        if self.state is None:
            if self.saved_status:
                return dict(self.saved_status)
            return self._status(profile, None)
        return self._status(profile, self.state)

    def _status(self, profile: Optional[Profile], state: Optional[EntryState]) -> Dict[str, Any]:
        target = profile.target if profile else "klipper"
        owner, repo = self.manager.source_repo(target)
        links = self.manager.links_enabled(target)
        version = state.update.version if state else UNKNOWN
        remote = state.update.remote_version if state else UNKNOWN
        status: Dict[str, Any] = {
            "name": self.name,
            "configured_type": CONFIGURED_TYPE,
            "detected_type": "octoflash",
            "channel": "dev",
            "channel_invalid": False,
            "need_channel_update": False,
            "debug_enabled": self.manager.internals.debug_enabled(),
            "is_valid": True,
            # Never "dirty", "corrupt" or "detached": both clients would replace
            # the Update button with a git recovery that does not apply here.
            "is_dirty": False,
            "corrupt": False,
            "detached": False,
            "pristine": True,
            "owner": owner,
            "repo_name": repo,
            "remote_url": f"https://github.com/{owner}/{repo}",
            "version": version,
            "remote_version": remote,
            "rollback_version": UNKNOWN,
            "commits_behind": [],
            "commits_behind_count": 0,
            "git_messages": [],
            "warnings": list(state.warnings) if state else
            ["Not checked yet: the firmware version is read when Moonraker refreshes."],
            "anomalies": list(state.anomalies) if state else [],
            "info_tags": [f"desc={self._description(profile)}"],
        }
        if state is not None and state.update.state == "unknown":
            # Fluidd shows a green "UP TO DATE" unless hasUpdate (semver, else
            # current_hash != remote_hash), dirty or invalid; unequal hashes make
            # it offer Update (which flashes again, see update_entry).  Mainsail
            # reads only the versions and shows "Unknown".  Its info button opens
            # changelog_url outside channel "dev": the commits a build would
            # contain, not a comparison with an unknown commit.
            current = version_ref(state.running.version) if state.running.version.known \
                else UNKNOWN_HASH
            wanted = version_ref(state.pending.version) if state.pending.version.known \
                else UNKNOWN_HASH
            if current == wanted:
                current = UNKNOWN_HASH + "-" + current
            status["current_hash"] = current
            status["remote_hash"] = wanted
            status["channel"] = "stable"
            if wanted != UNKNOWN_HASH and links:
                status["changelog_url"] = f"https://github.com/{owner}/{repo}/commits/{wanted}"
            elif state.pending.version.tag_name:
                status["changelog_url"] = \
                    f"https://github.com/{owner}/{repo}/releases/tag/{state.pending.version.tag_name}"
        elif state is not None and state.update.version != UNKNOWN \
                and state.update.remote_version != UNKNOWN:
            # Only with both versions known: Fluidd falls back to comparing
            # these when a version is not semver, which would offer updates
            # for unknown firmware.
            current = version_ref(state.running.version)
            wanted = version_ref(state.pending.version)
            status["current_hash"] = current
            status["remote_hash"] = wanted
            if links:
                status["changelog_url"] = \
                    f"https://github.com/{owner}/{repo}/compare/{current}...{wanted}"
            else:
                # Both clients build a GitHub compare link from the hashes on
                # channel "dev"; outside it they open changelog_url: the
                # release the versions count from, which GitHub does have.
                status["channel"] = "stable"
                tag = state.pending.version.tag_name
                if tag:
                    status["changelog_url"] = f"https://github.com/{owner}/{repo}/releases/tag/{tag}"
        status["octoflash"] = dict(state.to_json() if state else {"state": "unknown"},
                                   profile=self.profile_name,
                                   auto_update=bool(profile.auto_update) if profile else False)
        return status

    def _description(self, profile: Optional[Profile]) -> str:
        if profile is None:
            return f"{self.profile_name} firmware (profile removed)"
        what = profile.description or profile.preset.board
        # Klipper's spelling (``mcu Toolhead``) once it was read, whatever
        # case the profile's klipper_mcu uses
        mcu = profile.klipper_object
        known = self.state.running.klipper_object if self.state else None
        if known and (mcu is None or same_mcu(known, mcu)):
            mcu = known
        where = f", [{mcu}]" if mcu else ""
        return f"{profile.name} firmware ({what}{where})"


# --- all entries of one component ------------------------------------------------

class FirmwareUpdates:
    """Creates the entries, keeps them fresh, runs their updates and announcements."""

    def __init__(self, component: OctoflashComponent, internals: MoonrakerInternals) -> None:
        self.internals = internals
        self.host = ComponentHost(component)
        self.server = self.host.server
        self.entries: Dict[str, FirmwareUpdater] = {}
        self.announcer = FirmwareAnnouncer(internals)
        self._repo_cache: Dict[str, Tuple[str, str]] = {}
        self._not_github: Set[str] = set()   # targets whose origin is known and not on GitHub
        self._refresh_handle: Optional[asyncio.TimerHandle] = None
        self._refresh_task: Optional[asyncio.Task[None]] = None
        self._deferred_task: Optional[asyncio.Task[None]] = None
        self._active_job: Optional[str] = None
        self._last_percent: Optional[float] = None
        self.sync_profiles()
        on = internals.on_event
        on(KLIPPY_STARTED, self._on_klippy_started)
        on(KLIPPY_DISCONNECT, self._on_klippy_disconnect)
        on(KLIPPER_MCUS_EVENT, self._on_klipper_mcus)
        on(FLASH_FINISHED_EVENT, self._on_flash_finished)
        on(PROFILES_CHANGED_EVENT, self._on_profiles_changed)
        component.add_job_listener(self._on_job_update)

    # --- entries -----------------------------------------------------------

    def sync_profiles(self) -> List[FirmwareUpdater]:
        """Add entries for new firmware profiles, drop those of removed ones.

        Returns the entries added; entries added after Moonraker's start are
        initialized by the caller (``refresh_soon`` does it).
        """
        wanted = self.host.firmware_profiles()
        added: List[FirmwareUpdater] = []
        for name in list(self.entries):
            entry = self.entries[name]
            if entry.profile_name not in wanted:
                del self.entries[name]
                self.internals.remove_entry(entry.slot)
        for pname, profile in wanted.items():
            name = entry_name(pname)
            if name in self.entries:
                self.entries[name].slot.set_config_hash(profile_fingerprint(profile))
                continue
            if self.internals.has_entry(name):
                self.server.add_warning(
                    f"octoflash: the update manager already has an entry named '{name}'; "
                    f"profile '{pname}' gets none. Rename the profile or that entry.",
                    warn_id=f"octoflash_entry_{pname}")
                continue
            entry = FirmwareUpdater(self, profile)
            self.entries[name] = entry
            self.internals.add_entry(entry.slot)
            added.append(entry)
        return added

    def entry_for(self, profile_name: str) -> Optional[FirmwareUpdater]:
        return self.entries.get(entry_name(profile_name))

    def state_of(self, profile_name: str) -> Optional[Dict[str, Any]]:
        """The entry's last reading (``EntryState.to_json()``), for the component's
        own API; None when the profile has no entry or was not read yet."""
        entry = self.entry_for(profile_name)
        if entry is None or entry.state is None:
            return None
        return entry.state.to_json()

    # --- reading versions --------------------------------------------------

    def _running(self, profile: Profile, connected: bool,
                 status: Dict[str, Any]) -> Running:
        from ..discovery.klipper import klipper_mcus
        from ..discovery.snapshot import DeviceSnapshot
        mcu = None
        if connected:
            mcu = DeviceSnapshot(klipper_mcus=klipper_mcus(status)).klipper_mcu_for(profile)
        klipper_object = mcu.object_name if mcu is not None else profile.klipper_object
        flash = self.host.last_flash(profile.name)
        if mcu is not None and mcu.mcu_version:
            return Running(parse_version(mcu.mcu_version), "klipper",
                           f"reported by Klipper for [{mcu.object_name}]", mcu.object_name,
                           flash)
        failed = self.host.failed_flash(profile.name)
        if failed is not None:
            # after a failed write the last good flash no longer tells what it runs
            return Running(parse_version(None), "", "", klipper_object, flash, failed)
        if flash is not None:
            artifact = flash.get("artifact") or {}
            text = artifact.get("dict_version") or artifact.get("source_version")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(flash.get("finished") or 0))
            return Running(parse_version(text), "last_flash",
                           f"octoflash wrote {text} on {when} (job {flash.get('job_id')})",
                           klipper_object, flash)
        return Running(parse_version(None), "", "", klipper_object)

    async def refresh_entries(self, entries: Optional[List[FirmwareUpdater]] = None,
                              notify: bool = True) -> None:
        """Read the versions of ``entries`` (all when None), then update announcements."""
        for entry in self.sync_profiles():
            await entry.initialize()
        targets = list(self.entries.values()) if entries is None else \
            [e for e in entries if e.name in self.entries]
        if targets:
            await self.host.ready()     # the builder and the job history
            await self._read_source_repos()
            connected, status = await self.host.read_klipper_status()
            for entry in targets:
                profile = entry.profile
                if profile is None:
                    continue
                running = self._running(profile, connected, status)
                pending = await self.host.pending_version(profile, running)
                entry.state = assess(profile, running, pending, connected)
                entry.store()
        await self.update_announcements()
        if notify:
            self.internals.notify_update_refreshed()

    def links_enabled(self, target: str) -> bool:
        """Whether GitHub links can show the checkout's commits: not when its
        origin is elsewhere (a local clone, the demo), where they would point
        at commits GitHub does not have."""
        return target not in self._not_github

    def source_repo(self, target: str) -> Tuple[str, str]:
        return self._repo_cache.get(target, DEFAULT_REPOS.get(target, DEFAULT_REPOS["klipper"]))

    async def _read_source_repos(self) -> None:
        """GitHub owner/name of the checkouts (forks link to their own commits)."""
        from ..tools import run_tool
        for target in DEFAULT_REPOS:
            path = self.host.source_path(target)
            if not path or target in self._repo_cache:
                continue
            self._repo_cache[target] = DEFAULT_REPOS[target]   # asked once per run
            try:
                result = await run_tool(["git", "-C", path, "remote", "get-url", "origin"],
                                        timeout=5.0, what="git remote")
            except Exception:
                continue
            m = _GITHUB_RE.search(result.lines[0].strip()) if result.returncode == 0 \
                and result.lines else None
            if m:
                self._repo_cache[target] = (m.group("owner"), m.group("repo"))
            elif result.returncode == 0 and result.lines and result.lines[0].strip():
                self._not_github.add(target)

    # --- when to refresh ---------------------------------------------------------

    def refresh_soon(self, delay: float = 0.0) -> None:
        """Refresh every entry after ``delay`` seconds; later calls move it."""
        loop = asyncio.get_event_loop()
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
        self._refresh_handle = loop.call_later(delay, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh_handle = None
        if self._refresh_task is not None and not self._refresh_task.done():
            # One is running: run again when it ends, with what happened meanwhile.
            self._refresh_task.add_done_callback(lambda _t: self.refresh_soon(0.2))
            return
        self._refresh_task = asyncio.get_event_loop().create_task(self._locked_refresh())

    async def _locked_refresh(self) -> None:
        try:
            # The update manager's lock: never read versions in the middle of
            # one of its updates or refreshes.
            async with self.internals.request_lock:
                await self.refresh_entries()
        except Exception:
            log.exception("octoflash: refreshing the firmware entries failed")

    async def _on_klippy_started(self, *args: Any) -> None:
        self.refresh_soon(REFRESH_DELAY_CONNECT)

    async def _on_klippy_disconnect(self, *args: Any) -> None:
        self.refresh_soon(REFRESH_DELAY_DISCONNECT)

    async def _on_klipper_mcus(self, status: Optional[Dict[str, Any]] = None) -> None:
        if status is not None and self.host.is_own_read(status):
            return
        self.refresh_soon(0.2)

    async def _on_flash_finished(self, *args: Any) -> None:
        self.refresh_soon(0.2)

    async def _on_profiles_changed(self, *args: Any) -> None:
        self.refresh_soon(0.0)

    # --- announcements -------------------------------------------------------------

    async def update_announcements(self) -> None:
        """One announcement per board that should get new firmware.

        Only a sure state changes one: while Klipper has not (yet) reported a
        board it knows, an earlier announcement stays as it is, so a restart
        of Moonraker or Klipper neither flickers the bell nor brings back
        one the user dismissed.
        """
        wanted: Dict[str, Notice] = {}
        keep: List[str] = []
        if self.host.announcements_enabled():
            for entry in self.entries.values():
                state = entry.state
                if state is None or not is_conclusive(state):
                    keep.append(entry.profile_name)
                elif state.update.update_available:
                    wanted[entry.profile_name] = self._notice(entry, state)
        try:
            await self.announcer.sync(wanted, keep)
        except Exception:
            log.exception("octoflash: updating announcements failed")

    def _notice(self, entry: FirmwareUpdater, state: EntryState) -> Notice:
        """Short enough for Fluidd's bell, which shows a few lines of the
        description (line-clamp) above the link."""
        profile = entry.profile
        target = profile.target if profile else "klipper"
        owner, repo = self.source_repo(target)
        url = f"https://github.com/{owner}/{repo}/compare/" \
              f"{version_ref(state.running.version)}...{version_ref(state.pending.version)}" \
            if self.links_enabled(target) else ""
        title = f"Firmware update for {entry.profile_name}"
        description = f"{describe_reason(state)[:1].upper()}{describe_reason(state)[1:]}. " \
                      f"Update '{entry.name}' in the update manager."
        if len(description) > ANNOUNCEMENT_CHARS:
            description = description[:ANNOUNCEMENT_CHARS - 1] + "…"
        return Notice(title, description, url)

    # --- updating ------------------------------------------------------------------

    async def update_entry(self, entry: FirmwareUpdater) -> bool:
        """``machine.update.client/upgrade`` for one entry; ``full`` defers (see module)."""
        profile = entry.profile
        if profile is None:
            raise self.server.error(f"Profile '{entry.profile_name}' no longer exists", 404)
        if self.internals.is_full_update():
            return self._defer(entry, profile)
        await self.refresh_entries([entry], notify=False)
        state = entry.state
        again = state is not None and can_flash_again(state)
        if state is None or not (state.update.update_available or again):
            version = state.running.version.short() if state else UNKNOWN
            why = "already up to date" if state and state.update.state == "up_to_date" else \
                f"no update known ({state.update.state if state else 'not checked'})"
            detail = f": {state.warnings[0]}" if state and state.warnings and not \
                state.update.state == "up_to_date" else ""
            self._conclude(entry, f"{why} ({version}); nothing written{detail}. To write it "
                                  f"anyway, flash '{entry.profile_name}' from octoflash's page.")
            return False
        if again:
            entry.notify_status(f"the board's firmware is unknown; writing it again: a build "
                                f"gives {state.pending.version.short()}")
        else:
            entry.notify_status(f"{describe_reason(state)}")
        try:
            await self._flash(entry, profile)
        except Exception as exc:
            # Moonraker ends the update with "Error updating …" in the completing
            # message, which Fluidd does not show: say it before.
            entry.notify_status(f"FAILED: {plain_error(str(exc))}")
            raise
        await self.refresh_entries([entry], notify=False)
        after = entry.state
        now = after.running.version.short() if after else UNKNOWN
        if after is not None and (after.update.update_available or after.update.state ==
                                  "unknown"):
            self._conclude(entry, f"flashed, but the board does not report the new firmware "
                                  f"(it reports {now}); check it in octoflash's page")
        else:
            self._conclude(entry, f"firmware updated, the board runs {now}")
        return True

    @staticmethod
    def _conclude(entry: FirmwareUpdater, line: str) -> None:
        """The result line, then the completing message (see CLOSING_LINE)."""
        entry.notify_status(line)
        entry.notify_status(CLOSING_LINE, is_complete=True)

    async def _flash(self, entry: FirmwareUpdater, profile: Profile) -> None:
        """Build and flash through the job runner, streaming its progress; raise on failure."""
        await self.host.ready()
        problem = await self.host.board_problem(profile)
        if problem:
            raise self.server.error(plain_error(f"Update refused: {problem}"), 503)
        try:
            job = await self.host.start_flash(profile)
        except OctoflashError as exc:
            raise self.server.error(plain_error(f"Update refused: {str(exc).splitlines()[0]}"),
                                    exc.status) from None
        self._active_job = job.id
        self._last_percent = None
        entry.notify_status(f"job {job.id} started: build, then flash")
        try:
            await self.host.runner.wait(job.id)
        finally:
            self._active_job = None
        if job.state != "done":
            detail = (job.error or job.message or job.state).splitlines()[0]
            recovery = f" {job.recovery}" if job.recovery else ""
            raise self.server.error(plain_error(f"{job.kind} {job.state}: {detail}{recovery}"),
                                    500)

    def _on_job_update(self, update: JobUpdate) -> None:
        """Stream the running update's job into ``notify_update_response``."""
        job = update.job
        if self._active_job is None or job.id != self._active_job:
            return
        if self.entry_for(job.profile) is None:
            return
        notify = self.internals.notify_update_response
        if update.event == "output":
            if update.message:
                notify(as_html_text(update.message))
        elif update.event == "step":
            self._last_percent = None
            notify(as_html_text(f"[{job.stage}] {update.message or job.message}"))
        elif update.event == "progress" and job.percent is not None:
            last = self._last_percent
            if last is None or job.percent - last >= PROGRESS_STEP or job.percent >= 100:
                self._last_percent = job.percent
                notify(as_html_text(f"[{job.stage}] {job.percent:.0f}%"))

    # --- "update all" ------------------------------------------------------------

    def _defer(self, entry: FirmwareUpdater, profile: Profile) -> bool:
        if not profile.auto_update:
            entry.notify_status("skipped by 'update all' (auto_update is off for this "
                                "board); use its own Update button")
            return False
        state = entry.state
        if state is not None and state.update.state == "unknown":
            entry.notify_status("not flashed by 'update all': its firmware is unknown (see the "
                                "entry's warning); use its own Update button")
            return False
        if state is not None and state.update.state == "up_to_date" and not \
                self._klipper_may_change():
            entry.notify_status("already up to date; nothing to flash")
            return False
        entry.deferred_since = time.time()
        entry.store()
        entry.notify_status("will be built and flashed when the update has finished "
                            "(after Klipper's own update, so the firmware matches it)")
        self._start_deferred()
        return False

    def _klipper_may_change(self) -> bool:
        status = self.internals.entry_status("klipper")
        return bool(status.get("commits_behind") or
                    status.get("remote_version", UNKNOWN) != status.get("version", UNKNOWN))

    def resume_deferred(self, entry: FirmwareUpdater) -> None:
        """A full update's flashes that a Moonraker restart interrupted: run them now."""
        self._start_deferred()

    def _start_deferred(self) -> None:
        if self._deferred_task is None or self._deferred_task.done():
            self._deferred_task = asyncio.get_event_loop().create_task(self._run_deferred())

    async def _run_deferred(self) -> None:
        await asyncio.sleep(0.5)   # let the full update take its next step first
        try:
            async with self.internals.request_lock:   # free once the full update has ended
                pass
            # After Klipper's update it restarts; its MCUs tell what they run
            # once it is back.  Waited for outside the lock.
            await self._wait_for_klipper()
            await self.host.ready()
            async with self.internals.request_lock:
                await self._deferred_flashes()
        except Exception:
            log.exception("octoflash: flashing after 'update all' failed")

    async def _deferred_flashes(self) -> None:
        from ..jobs import update_order
        chosen = [e for e in self.entries.values() if e.deferred_since is not None]
        if not chosen:
            return
        internals = self.internals
        app = chosen[0].name if len(chosen) == 1 else "octoflash"
        internals.begin_update(app, id(self))
        ok: List[str] = []
        failed: List[str] = []
        try:
            await self.refresh_entries(chosen, notify=False)
            profiles = update_order([e.profile for e in chosen if e.profile is not None])
            for profile in profiles:
                entry = self.entry_for(profile.name)
                if entry is None:
                    continue
                entry.deferred_since = None
                entry.store()
                if internals.klipper_printing():
                    entry.notify_status("not flashed: Klipper is printing")
                    failed.append(profile.name)
                    continue
                state = entry.state
                if state is None or not state.update.update_available:
                    entry.notify_status("already up to date; nothing to flash")
                    continue
                entry.notify_status(describe_reason(state))
                try:
                    await self._flash(entry, profile)
                except Exception as exc:
                    entry.notify_status(f"FAILED: {plain_error(str(exc))}")
                    failed.append(profile.name)
                else:
                    ok.append(profile.name)
            await self.refresh_entries(notify=False)
            summary = f"{len(ok)} board(s) flashed" + \
                (f"; failed: {', '.join(failed)}" if failed else "")
            internals.notify_update_response(
                as_html_text(f"Firmware update after 'update all': {summary}"))
            internals.notify_update_response(CLOSING_LINE, is_complete=True)
        finally:
            for entry in chosen:
                if entry.deferred_since is not None:
                    entry.deferred_since = None
                    entry.store()
            internals.end_update()
            internals.notify_update_refreshed()

    def close(self) -> None:
        """Moonraker is stopping: no more refreshes (running jobs end with the runner)."""
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None
        for task in (self._refresh_task, self._deferred_task):
            if task is not None and not task.done():
                task.cancel()

    async def _wait_for_klipper(self, timeout: float = 120.0) -> None:
        """Until Klipper is past its start-up (ready, or in error: an MCU with
        old firmware is exactly what puts it there), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.internals.klipper_connected() and \
                    self.internals.klipper_state() not in ("startup", "disconnected"):
                return
            await asyncio.sleep(0.5)


def attach(component: OctoflashComponent) -> Optional[FirmwareUpdates]:
    """Add the firmware entries to the update manager, when ``[update_manager]`` is configured
    and this Moonraker has what they need (``MoonrakerInternals.check``).

    Called from the component's ``__init__``: entries must be in the update
    manager before its ``component_init``, which forgets unknown names.
    """
    internals = MoonrakerInternals.for_server(component.server)
    if internals is None:
        return None
    if not internals.check().entries_usable:
        return None
    return FirmwareUpdates(component, internals)
