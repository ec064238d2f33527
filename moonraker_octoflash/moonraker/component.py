"""The Moonraker component: it wires octoflash's parts together inside Moonraker.

The rooms, each in its own module:

* ``klipper_state.KlipperState``: the one reader of Klipper's MCUs, config
  sections and print state (the update-manager entries read it too);
* ``profile_store.ProfileStore``: moonraker.conf and API profiles;
* ``api.OctoflashApi``: endpoints, JSON-RPC methods, remote methods;
* ``console.JobConsole``: notifications and console lines of jobs;
* ``services``: job history in Moonraker's database, Klipper's service;
* ``updater``, ``web``, ``request_guard``, ``klipper_recovery``.

This module keeps what joins them: the settings and the ``Machine``, the
builder, the flash pipeline and the job runner, the print guard, and the
requests to build and flash.  What other parts of the package use:
``profiles``, ``builder``, ``runner``, ``settings``, ``pipeline``,
``klipper`` (``status``, ``host_version``), ``await profile_status(profile)``,
``start_flash``; the Moonraker events ``octoflash:klipper_mcus`` (Klipper's
MCU status, after Klipper is ready and whenever a read while it is not
finds something changed), ``octoflash:flash_finished`` (a flash job's JSON,
whatever its outcome) and ``octoflash:profiles_changed`` (names); ``db``:
the ``octoflash`` database namespace (keys ``profiles`` and ``job.<id>``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import (ConflictError, NotFoundError, OctoflashError, UnavailableError,
                      ValidationError, clip_text)
from ..imports import import_in_thread
from ..machine import Machine, RealMachine, load_machine
from ..settings import Settings
from . import request_guard, web
from .api import OctoflashApi, one_line
from .klipper_state import KlipperState
from .profile_store import ProfileStore

if TYPE_CHECKING:
    from moonraker.confighelper import ConfigHelper

    from ..build import Builder
    from ..flash.pipeline import CoreFlashPipeline
    from ..jobs import Job, JobRunner
    from ..profiles import Profile
    from .console import JobConsole
    from .services import MoonrakerKlipperService

log = logging.getLogger("octoflash")

DEVICE_CACHE_SECONDS = 5.0
# How often the start-up task looks whether Moonraker listens yet, and how
# long after that it waits before it makes octoflash's parts (unless a request
# for octoflash comes first): Moonraker's first answers, and the clients'
# first requests, do not wait for octoflash.
LISTEN_POLL_SECONDS = 0.02
START_UP_DELAY = 0.5


class OctoFlash:
    def __init__(self, config: ConfigHelper, started: Optional[float] = None) -> None:
        # Only what must be there before Moonraker listens: the settings and
        # moonraker.conf's profiles (their problems are warnings at start),
        # the machine, the endpoints and events.  The builder, the flash
        # pipeline, the job runner with its history and the recovery after a
        # crash come in ``_start_up``, a task that runs once Moonraker
        # listens; every request waits for it (``ready``).
        # What octoflash costs Moonraker's start, logged once it has started up:
        # seconds in its import and __init__, in component_init, and after.
        self.start_costs: Dict[str, float] = {}
        started = time.perf_counter() if started is None else started
        self.server = config.get_server()
        self.eventloop = self.server.get_event_loop()
        self.data_path = str(self.server.get_app_args().get("data_path", "~/printer_data"))
        self.config_warnings: List[str] = []
        self.settings = self._read_settings(config)
        self.last_devices: Optional[Dict[str, Any]] = None
        self._devices_at = 0.0
        self._devices_lock = asyncio.Lock()
        self._config_check: Optional[asyncio.Task] = None
        self._klipper_recovery: Optional[asyncio.Task] = None
        self._start_up_task: Optional[asyncio.Task] = None
        self._start_now = asyncio.Event()      # a request is waiting: start up at once
        self._closing = False
        self._job_listeners: List[Callable[[Any], None]] = []
        # set by _start_up
        self.builder: Optional[Builder] = None
        self.pipeline: CoreFlashPipeline = None  # type: ignore[assignment]
        self.runner: JobRunner = None  # type: ignore[assignment]
        self.service: MoonrakerKlipperService = None  # type: ignore[assignment]
        self.console: JobConsole = None  # type: ignore[assignment]

        database = self.server.lookup_component("database")
        self.db = database.register_local_namespace("octoflash")
        self.machine = self._load_machine()
        self.klipper = KlipperState(self.server)
        self.store = ProfileStore(self.db, self.warn, self._job_holding, None)
        self.store.read_config(config)

        self.api = OctoflashApi(self)
        self.api.register()
        self.server.register_notification("octoflash:job_update",
                                          notify_name="octoflash_job_update")
        self.server.register_notification("octoflash:devices",
                                          notify_name="octoflash_devices")
        self.server.register_remote_method("octoflash_build", self.api._remote_build)
        self.server.register_remote_method("octoflash_flash", self.api._remote_flash)
        self.server.register_remote_method("octoflash_update_all", self.api._remote_update_all)
        self.server.register_event_handler("server:klippy_identified", self.klipper.on_identified)
        self.server.register_event_handler("server:klippy_started", self._on_klippy_started)
        self.server.register_event_handler("server:klippy_ready", self.klipper.on_ready)
        self.server.register_event_handler("server:klippy_disconnect", self.klipper.on_disconnect)

        # The update-manager entries and the page: a failure to set either up
        # (Moonraker's internals not as expected) is a warning, not a crash.
        self.updater: Any = None
        try:
            self.updater = self._attach_updater()
        except Exception as exc:
            self.warn(f"octoflash: update-manager entries unavailable: {exc}", "updater")
        try:
            web.register(self)
        except Exception as exc:
            self.warn(f"octoflash: the web page is unavailable: {exc}", "web")
        self.start_costs["load"] = time.perf_counter() - started

    def _attach_updater(self) -> Any:
        """The update-manager entries (``updater.attach``); without ``[update_manager]``
        neither the updater nor Moonraker's update-manager modules are imported."""
        if self.server.lookup_component("update_manager", None) is None and \
                not self.server.config.has_section("update_manager"):
            log.info("octoflash: no [update_manager]; firmware entries are not added")
            return None
        from . import updater
        return updater.attach(self)

    # --- life cycle -----------------------------------------------------------

    async def component_init(self) -> None:
        started = time.perf_counter()
        if request_guard.can_guard(self.server):
            # Every component is loaded now, so Moonraker's own routes exist.
            request_guard.guard_moonraker_routes(self.server)
        await self.store.load()
        # The rest once Moonraker listens: it does not wait for octoflash.
        self._start_up_task = self.eventloop.create_task(self._start_up(wait_for_listen=True))
        self.start_costs["component_init"] = time.perf_counter() - started

    async def ready(self) -> None:
        """Until the start-up has made the builder, the runner and read the job
        history (what every request and remote method needs); at once after."""
        self._start_now.set()
        task = self._start_up_task
        if task is None:
            # Asked before component_init (or without it): start up now.
            task = self._start_up_task = self.eventloop.create_task(
                self._start_up(wait_for_listen=False))
        if not task.done():
            await asyncio.shield(task)
        elif task.cancelled():
            raise UnavailableError("octoflash is shutting down")
        elif task.exception() is not None:
            raise UnavailableError(f"octoflash could not start: {task.exception()}")
        if self.runner is None:
            raise UnavailableError("octoflash is shutting down")

    async def _start_up(self, wait_for_listen: bool) -> None:
        """The parts Moonraker need not wait for: made, the history read, a
        flash interrupted by a crash seen to.  Requests wait for it (``ready``)."""
        if wait_for_listen:
            # Moonraker sends no event when it starts listening: look at its flag.
            while not self.server.is_running() and not self._closing:  # noqa: ASYNC110
                await asyncio.sleep(LISTEN_POLL_SECONDS)
            try:
                await asyncio.wait_for(self._start_now.wait(), START_UP_DELAY)
            except asyncio.TimeoutError:
                pass
        if self._closing:
            return
        started = time.perf_counter()
        try:
            await self._make_and_load()
            costs = self.start_costs
            costs["start_up"] = time.perf_counter() - started
            log.info("octoflash: started; %.1f ms in Moonraker's start (import and __init__ "
                     "%.1f ms, component_init %.1f ms), %.1f ms after it (parts, job history)",
                     1000 * (costs["load"] + costs["component_init"]), 1000 * costs["load"],
                     1000 * costs["component_init"], 1000 * costs["start_up"])
        except Exception as exc:
            log.exception("octoflash: the start-up failed")
            self.warn(f"octoflash could not start: {exc}", "start_up")
            raise

    async def _make_and_load(self) -> None:
        # Importing the parts takes tens of milliseconds (more on a Pi): in a
        # thread, so that Moonraker's loop goes on answering meanwhile.
        await import_in_thread(PART_MODULES)
        self._make_parts()
        self.store.builder = self.builder
        # Reading the checkouts' Kconfig takes a child process each: after start.
        self._config_check = self.eventloop.create_task(self.store.check_config_profiles())
        loaded = await self.runner.load()
        # A flash that died with Moonraker may have left Klipper stopped: see to
        # it now (starting Klipper waits for it to connect; requests need not).
        from .klipper_recovery import after_crash
        interrupted = [j for j in self.runner.interrupted_on_load if j in
                       {job.id for job in loaded if job.kind == "flash"}]
        self._klipper_recovery = self.eventloop.create_task(after_crash(self, interrupted))
        await self.machine.open()

    def _make_parts(self) -> None:  # its modules are imported first (PART_MODULES)
        """The builder, the flash pipeline, the job runner, Klipper's service, the console."""
        from ..build import Builder
        from ..flash.pipeline import CoreFlashPipeline
        from ..flash.writer_lock import writer_lock_path
        from ..jobs import JobRunner
        from .console import JobConsole
        from .services import MoonrakerJobStorage, MoonrakerKlipperService
        self.service = MoonrakerKlipperService(self.server, self.settings.reconnect_timeout,
                                               control=self.machine.klipper_control())
        self.builder = Builder.from_settings(self.settings, self.machine)
        self.pipeline = CoreFlashPipeline(self.settings, self.service,
                                          klipper_status=self.klipper.read,
                                          machine=self.machine,
                                          writer_lock_path=writer_lock_path(self.data_path))
        runner = JobRunner(self.builder, pipeline=self.pipeline,
                           storage=MoonrakerJobStorage(self.db),
                           preflight=self._preflight,
                           find_artifact=self.find_artifact,
                           history_size=self.settings.job_history)
        self.console = JobConsole(self.server, self._after_flash)
        runner.add_listener(self.console.on_job_update)
        for listener in self._job_listeners:
            runner.add_listener(listener)
        self.runner = runner

    def add_job_listener(self, listener: Callable[[Any], None]) -> None:
        """A listener of every job's updates, from now or from the start-up on."""
        self._job_listeners.append(listener)
        if self.runner is not None:
            self.runner.add_listener(listener)

    def _job_holding(self, name: str) -> Optional[Job]:
        return self.runner.job_holding(name) if self.runner is not None else None

    async def on_exit(self) -> None:
        self._closing = True
        self.klipper.close()
        start_up = self._start_up_task
        if start_up is not None and not start_up.done():
            start_up.cancel()
            try:
                await start_up
            except BaseException:
                pass
        for task in (self._config_check, self._klipper_recovery):
            if task is not None:
                task.cancel()
        # before the database closes: running jobs are recorded as interrupted
        if self.runner is not None:
            await self.runner.close()
        await self.machine.close()

    async def _on_klippy_started(self, state: Any = None) -> None:
        if request_guard.can_guard(self.server):
            # Moonraker registers Klipper's endpoints (/printer/gcode/script)
            # when Klipper has started; guard them once they exist.
            request_guard.guard_moonraker_routes(self.server)
        self.klipper.on_started()

    def _after_flash(self) -> None:
        # Klipper restarted with new firmware: read its MCUs and the devices again
        self.eventloop.create_task(self.klipper.refresh())
        self.eventloop.create_task(self.scan_devices(force=True, quiet=True))

    # --- configuration ------------------------------------------------------

    def warn(self, message: str, key: str) -> None:
        message = clip_text(message, 2000)
        self.config_warnings.append(message)
        self.server.add_warning(message, warn_id=f"octoflash_{key}")

    def _read_settings(self, config: ConfigHelper) -> Settings:
        known = set(Settings.option_names())
        good: Dict[str, str] = {}
        # Read every option (validate_config warns about unread ones), then
        # check each alone so one bad value falls back to its default only.
        for option in config.get_options():
            raw = config.get(option)
            if option not in known:
                self.warn(f"[octoflash]: unknown option '{option}' is ignored; known options "
                           f"are {', '.join(sorted(known))}", f"option_{option}")
                continue
            try:
                Settings.from_options({option: raw}, self.data_path)
            except ValidationError as exc:
                self.warn(f"{exc}; the default is used", f"option_{option}")
                continue
            good[option] = raw
        good.setdefault("build_path", os.path.join(self.data_path, "octoflash"))
        return Settings.from_options(good, self.data_path)

    def _load_machine(self) -> Machine:
        try:
            return load_machine(self.settings)
        except OctoflashError as exc:
            self.warn(f"{one_line(str(exc))}; this computer is used", "machine")
            return RealMachine(self.settings)

    # --- profiles ---------------------------------------------------------------

    @property
    def profiles(self) -> Dict[str, Profile]:
        return self.store.profiles

    @property
    def config_profiles(self) -> Dict[str, Profile]:
        return self.store.config_profiles

    @property
    def api_profiles(self) -> Dict[str, Profile]:
        return self.store.api_profiles

    def get_profile(self, name: str) -> Profile:
        return self.store.get(name, self.config_warnings)

    async def save_profile(self, args: Dict[str, Any]) -> Dict[str, Any]:
        profile, action = await self.store.save(args)
        self.server.send_event("octoflash:profiles_changed", [profile.name])
        return {"profile": await self.describe_profile(profile), "action": action}

    async def delete_profile(self, name: str) -> Dict[str, Any]:
        await self.store.delete(name, self.config_warnings)
        self.server.send_event("octoflash:profiles_changed", [name])
        return {"profile": name, "action": "deleted"}

    # --- Klipper ------------------------------------------------------------------

    @property
    def klipper_status(self) -> Dict[str, Any]:
        return self.klipper.status

    @property
    def host_version(self) -> Optional[str]:
        return self.klipper.host_version

    async def _preflight(self, profile: Profile, plan: Optional[Any]) -> None:
        """Refuse a flash while printing, or when Klipper must stop and cannot be stopped."""
        state, filename = await self.klipper.print_state()
        if state in ("printing", "paused"):
            what = f" ({filename})" if filename else ""
            raise ConflictError(
                f"Klipper is {state}{what}: flashing '{profile.name}' would stop Klipper and end "
                "the print. Flash when the print has finished or has been cancelled.")
        recovery = self._klipper_recovery
        if recovery is not None and not recovery.done():
            # Moonraker has just started, and the check of what a crashed flash
            # left holds the writer lock (while it starts Klipper again, for
            # seconds): this flash waits for it rather than being told that
            # another flash runs.
            await asyncio.shield(recovery)
        other = await self.pipeline.other_writer()
        if other:
            raise ConflictError(other)
        if not self.klipper.is_connected():
            return
        needs_stop = self.klipper.uses(profile) if plan is None \
            else self.pipeline.needs_klipper_stopped(plan)
        if needs_stop:
            problem = self.service.control_problem()
            if problem:
                raise UnavailableError(problem)

    async def find_artifact(self, profile: Profile, artifact_id: str) -> Any:
        if self.builder is None:
            raise UnavailableError("Earlier builds cannot be looked up: builds are unavailable")
        if artifact_id == "latest":
            found = await self.builder.latest(profile.name)
            if found is None:
                raise NotFoundError(f"Profile '{profile.name}' has not been built yet; "
                                    "flash with build: true or build it first")
            return found
        return await self.builder.artifact(profile.name, artifact_id)

    async def latest_artifact(self, profile: Profile) -> Optional[Any]:
        try:
            return await self.find_artifact(profile, "latest")
        except OctoflashError:
            return None

    async def profile_status(self, profile: Profile) -> Dict[str, Any]:
        """What the clients show per profile: running version, latest build, out of date."""
        from ..versions import parse_version, update_state
        mcu = self.klipper.mcu_of(profile, self.klipper.mcus())
        artifact = await self.latest_artifact(profile)
        running = mcu.mcu_version if mcu is not None else None
        out_of_date: Optional[bool] = None
        # The update-manager entry orders versions as the clients do and
        # knows a changed profile; without it, compare with Klipper's host.
        update = self.updater.state_of(profile.name) if self.updater is not None else None
        if profile.target == "klipper":
            if update is not None and update.get("state") not in (None, "unknown"):
                if running and update.get("running_version") != running:
                    # The reading predates the firmware the board runs now (it
                    # was just flashed): judge that firmware against the same build.
                    judged = update_state(parse_version(running),
                                          parse_version(update.get("pending_version") or ""))
                    out_of_date = judged.update_available
                else:
                    out_of_date = update["state"] in ("behind", "differs")
            elif running and self.klipper.host_version:
                out_of_date = running != self.klipper.host_version
        holder = self.runner.job_holding(profile.name)
        return {
            "klipper_mcu": mcu.object_name if mcu is not None else profile.klipper_object,
            "mcu_version": running,
            "mcu_type": mcu.mcu_type if mcu is not None else None,
            "connected": bool(mcu is not None and mcu.connected),
            "host_version": self.klipper.host_version,
            "out_of_date": out_of_date,
            "update": update,
            "latest_build": artifact.to_json() if artifact is not None else None,
            "job_id": holder.id if holder is not None else None,
        }

    async def describe_profile(self, profile: Profile) -> Dict[str, Any]:
        data = profile.describe()
        try:
            data["status"] = await self.profile_status(profile)
        except Exception as exc:   # status is a convenience; the profile itself must show
            data["status"] = {"error": str(exc)}
        return data

    def _need_builder(self) -> None:
        if self.builder is None:
            raise UnavailableError("Builds are not available: the build module failed to load "
                                   "(see Moonraker's log)")

    async def start_build(self, name: str, force: bool = False, origin: str = "api") -> Job:
        profile = self.get_profile(name)
        self._need_builder()
        return await self.runner.start_build(profile, force=force, origin=origin)

    async def start_flash(self, name: str, *, build: bool = True, force: bool = False,
                          method: Optional[str] = None, artifact_id: Optional[str] = None,
                          origin: str = "api") -> Job:
        profile = self.get_profile(name)
        if method and profile.preset.flash_method(method) is None:
            allowed = ", ".join(m["method"] for m in profile.preset.flash_methods)
            raise ValidationError(f"Profile '{name}' cannot be flashed with '{method}'; "
                                  f"its preset allows: {allowed}")
        if build and not artifact_id and self.builder is None:
            await self._preflight(profile, None)     # printing says more than a missing module
            self._need_builder()
        return await self.runner.start_flash(profile, build=build, force=force, method=method,
                                             artifact_id=artifact_id, origin=origin)

    async def update_candidates(self, include_current: bool = False) -> List[Profile]:
        """Profiles marked auto_update whose board runs another version than the host."""
        chosen = []
        for profile in self.profiles.values():
            if not profile.auto_update or profile.target != "klipper":
                continue
            if include_current or (await self.profile_status(profile))["out_of_date"] is not False:
                chosen.append(profile)
        return chosen

    async def start_update_all(self, include_current: bool = False,
                               origin: str = "api") -> Optional[Job]:
        profiles = await self.update_candidates(include_current)
        if not profiles:
            if not any(p.auto_update for p in self.profiles.values()):
                raise ValidationError("No profile has 'auto_update: True'; mark the boards "
                                      "that 'update all' may flash")
            return None
        self._need_builder()
        return await self.runner.start_update_all(profiles, origin=origin)

    async def scan_devices(self, force: bool = False, quiet: bool = False) -> Dict[str, Any]:
        async with self._devices_lock:
            if not force and self.last_devices is not None and \
                    time.monotonic() - self._devices_at < DEVICE_CACHE_SECONDS:
                return self.last_devices
            try:
                snapshot = await self.pipeline.scan()
            except OctoflashError:
                if quiet:
                    return self.last_devices or {}
                raise
            data = snapshot.to_json() if hasattr(snapshot, "to_json") else dict(snapshot)
            profiles = {}
            if hasattr(snapshot, "status_of"):
                for name, profile in self.profiles.items():
                    profiles[name] = snapshot.status_of(profile).to_json()
            data["profiles"] = profiles
            if self.last_devices is None or _devices_changed(self.last_devices, data):
                self.server.send_event("octoflash:devices", data)
            self.last_devices = data
            self._devices_at = time.monotonic()
            return data


# The modules the start-up task makes the component's parts from
# (_make_parts, _make_and_load): imported in a thread first (imports.py).
PART_MODULES = ("moonraker_octoflash.build", "moonraker_octoflash.flash.pipeline",
                "moonraker_octoflash.flash.writer_lock", "moonraker_octoflash.jobs",
                "moonraker_octoflash.moonraker.console",
                "moonraker_octoflash.moonraker.services",
                "moonraker_octoflash.moonraker.klipper_recovery")


def _devices_changed(before: Dict[str, Any], after: Dict[str, Any]) -> bool:
    volatile = ("taken_at", "duration")

    def strip(d: Dict[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in d.items() if k not in volatile}
    return strip(before) != strip(after)


def load_component(config: ConfigHelper, started: Optional[float] = None) -> OctoFlash:
    """``started``: when Moonraker began to load the component (before its import)."""
    return OctoFlash(config, started)
