"""The Moonraker component: configuration, API, notifications, macros, history.

A thin adapter around the core: requests become ``JobRunner`` calls,
progress becomes notifications and console lines, profiles made through
the API and the job history live in Moonraker's database (namespace
``octoflash``), and Klipper is stopped and started through Moonraker's
machine component.

What other parts of the package may use (the update-manager entries in
``updater.py`` get this object through ``updater.attach(component)``):

* ``profiles`` (name -> Profile, config and API profiles together),
  ``builder``, ``runner`` (JobRunner), ``settings``;
* ``klipper_status``: the latest ``mcu`` / ``mcu NAME`` / ``configfile``
  (the MCU sections of ``settings`` and ``config``) / ``webhooks`` status
  read from Klipper, ``host_version``.  It is read when Klipper is ready,
  and also while it is connected but not ready (startup, error): a board
  Klipper cannot reach keeps it in startup, and that is when the others'
  versions and the missing one's "not connected" matter most;
* ``await profile_status(profile)``: running version, latest build, out of date;
* Moonraker events sent by this component (``register_event_handler``):
  ``octoflash:klipper_mcus`` (payload: ``klipper_status``) after Klipper is
  ready and its MCUs were read, and whenever a read while Klipper is not
  ready finds something changed, ``octoflash:flash_finished`` (payload: the
  job's JSON) after every flash job, whatever its outcome, and
  ``octoflash:profiles_changed`` (payload: list of profile names);
* ``db``: the ``octoflash`` database namespace (keys ``profiles`` and
  ``job.<id>`` are taken).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, List,
                    Optional, Tuple)

from .. import __version__
from ..discovery.identity import normalize_uuid
from ..discovery.klipper import KlipperMcu, find_mcu, is_mcu_section, klipper_mcus
from ..flash.methods import method_names
from ..flash.methods import to_json as flash_methods_json
from ..flash.writer_lock import writer_lock_path
from ..errors import (ConflictError, NotFoundError, OctoflashError,
                      UnavailableError, ValidationError, clip_text)
from ..jobs import (DONE, CoreFlashPipeline, Job, JobRunner,
                    JobStorage, JobUpdate)
from ..presets import list_presets
from ..profiles import Profile, name_clash, profile_from_json, profile_from_options
from ..schemas import load_schema, validator_for
from ..service import KlipperService
from ..settings import Settings
from ..versions import parse_version, update_state
from . import request_guard
from .klipper_recovery import after_crash

if TYPE_CHECKING:
    from moonraker.common import WebRequest
    from moonraker.confighelper import ConfigHelper
    from moonraker.server import Server

log = logging.getLogger("octoflash")

JOB_KEY_PREFIX = "job."
PROFILES_KEY = "profiles"
CONSOLE_INTERVAL = 2.0          # seconds between progress lines in the console, per job
OUTPUT_NOTIFY_INTERVAL = 0.2    # seconds between output-line notifications, per job
DEVICE_CACHE_SECONDS = 5.0
KLIPPER_QUERY_TIMEOUT = 5.0
# While Klipper is in startup (retrying a board it cannot reach, for up to
# 90 s) its MCUs are read this often: the reachable ones report on their own
# time, and the state ends without an event when Klipper gives up (error).
STARTUP_POLL_INTERVAL = 2.0

# Request arguments, checked with JSON Schema like profiles are.  Names and
# profile names reuse the profile schema's own definitions.
_NAME = load_schema("profile")["properties"]["name"]


def _request_schema(properties: Dict[str, Any], required: List[str]) -> Dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


# A flash request's arguments, from the API and from a macro alike.
_FLASH_ARGS = _request_schema(
    {"profile": _NAME, "build": {"type": "boolean"}, "force": {"type": "boolean"},
     "method": {"enum": method_names()},
     "artifact_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
    ["profile"])


def _one_line(text: str) -> str:
    """A message fit for an HTTP reason phrase (one line, printable, no '<')."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    text = clip_text(text.replace("<", "(").replace(">", ")"), 2000)
    return "".join(ch if 32 <= ord(ch) < 127 or 160 <= ord(ch) < 256 else "?" for ch in text)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValidationError(f"Argument '{name}' must be true or false, not {value!r}")


# --- Moonraker-backed parts --------------------------------------------------

class MoonrakerJobStorage(JobStorage):
    """Job history in the ``octoflash`` namespace, one key per job."""

    def __init__(self, namespace: Any) -> None:
        self.ns = namespace

    async def load_all(self) -> List[Dict[str, Any]]:
        items = await self.ns.items()
        return [dict(v) for k, v in items if k.startswith(JOB_KEY_PREFIX) and isinstance(v, dict)]

    async def save(self, job: Dict[str, Any]) -> None:
        await self.ns.insert(JOB_KEY_PREFIX + job["job_id"], job)

    async def delete(self, job_id: str) -> None:
        try:
            await self.ns.delete(JOB_KEY_PREFIX + job_id)
        except Exception:
            pass


class MoonrakerKlipperService(KlipperService):
    """Stops and starts Klipper through Moonraker's machine component."""

    name = "klipper (through Moonraker)"

    def __init__(self, server: Server, reconnect_timeout: float = 60.0) -> None:
        self.server = server
        self.reconnect_timeout = reconnect_timeout

    @property
    def _kconn(self) -> Any:
        return self.server.lookup_component("klippy_connection")

    def control_problem(self) -> Optional[str]:
        """Why Moonraker cannot stop Klipper here, or None."""
        machine = self.server.lookup_component("machine")
        provider = machine.get_provider_type()
        if provider == "none":
            return ("Moonraker cannot stop and start Klipper here ([machine] provider: none), "
                    "and flashing a board Klipper is using needs Klipper stopped. Set "
                    "'provider: systemd_dbus' (or systemd_cli) in [machine], or stop Klipper "
                    "yourself (sudo systemctl stop klipper) and flash again.")
        return None

    async def is_active(self) -> bool:
        return bool(self._kconn.is_connected())

    async def stop(self) -> None:
        problem = self.control_problem()
        if problem:
            raise UnavailableError(problem)
        machine = self.server.lookup_component("machine")
        try:
            await machine.do_service_action("stop", self._kconn.unit_name)
        except self.server.error as exc:
            raise UnavailableError(f"Moonraker could not stop Klipper: {exc}") from None
        await self._wait(lambda: not self._kconn.is_connected(), 15.0)

    async def start(self) -> None:
        machine = self.server.lookup_component("machine")
        try:
            await machine.do_service_action("start", self._kconn.unit_name)
        except self.server.error as exc:
            raise UnavailableError(
                f"Moonraker could not start Klipper again: {exc}. Start it with "
                "'sudo systemctl start klipper'.") from None
        await self._wait(lambda: self._kconn.is_connected(), self.reconnect_timeout)

    async def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            await asyncio.sleep(0.2)
        return condition()


class StandInKlipperService(MoonrakerKlipperService):
    """Demo mode: stops and starts the Klipper stand-in of the simulated machine."""

    name = "simulated klipper"

    def __init__(self, server: Server, control_path: str, reconnect_timeout: float = 60.0) -> None:
        super().__init__(server, reconnect_timeout)
        self.control_path = control_path

    def control_problem(self) -> Optional[str]:
        if not os.path.exists(self.control_path):
            return (f"The simulated Klipper's control socket {self.control_path} is missing; "
                    "is the demo running?")
        return None

    async def stop(self) -> None:
        await self._control("stop")
        await self._wait(lambda: not self._kconn.is_connected(), 15.0)

    async def start(self) -> None:
        await self._control("start")
        await self._wait(lambda: self._kconn.is_connected(), self.reconnect_timeout)

    async def _control(self, action: str) -> Dict[str, Any]:
        from ..sim.klippy import CommandError, control_request
        try:
            return await control_request(self.control_path, action)
        except (OSError, CommandError, asyncio.TimeoutError) as exc:
            raise UnavailableError(f"simulated Klipper: cannot {action}: {exc}") from None


# --- the component -----------------------------------------------------------

class OctoFlash:
    def __init__(self, config: ConfigHelper) -> None:
        self.server = config.get_server()
        self.eventloop = self.server.get_event_loop()
        self.data_path = str(self.server.get_app_args().get("data_path", "~/printer_data"))
        self.config_warnings: List[str] = []
        self.settings = self._read_settings(config)
        self.config_profiles: Dict[str, Profile] = self._read_profiles(config)
        self.api_profiles: Dict[str, Profile] = {}
        self.klipper_status: Dict[str, Any] = {}
        self.host_version: Optional[str] = None
        self.last_devices: Optional[Dict[str, Any]] = None
        self._devices_at = 0.0
        self._devices_lock = asyncio.Lock()
        self._profiles_lock = asyncio.Lock()
        self._config_check: Optional[asyncio.Task] = None
        self._console_at: Dict[str, float] = {}
        self._notify_at: Dict[str, float] = {}
        self._sim_can: Any = None     # simulated CAN nodes (demo)
        self._startup_watch: Optional[asyncio.Task] = None

        database = self.server.lookup_component("database")
        self.db = database.register_local_namespace("octoflash")
        if self.settings.simulation:
            self.service: MoonrakerKlipperService = StandInKlipperService(
                self.server, os.path.join(self.settings.simulation, "klippy-control.sock"),
                self.settings.reconnect_timeout)
        else:
            self.service = MoonrakerKlipperService(self.server, self.settings.reconnect_timeout)
        self.builder = self._make_builder()
        self.pipeline = CoreFlashPipeline(self.settings, self.service,
                                          klipper_status=self._fresh_klipper_status,
                                          simulation=self.settings.simulation or None,
                                          writer_lock_path=writer_lock_path(self.data_path))
        self._klipper_recovery: Optional[asyncio.Task] = None
        self.runner = JobRunner(self.builder, pipeline=self.pipeline,
                                storage=MoonrakerJobStorage(self.db),
                                preflight=self._preflight,
                                find_artifact=self._find_artifact,
                                history_size=self.settings.job_history)
        self.runner.add_listener(self._on_job_update)

        self._register_api()
        self.server.register_notification("octoflash:job_update",
                                          notify_name="octoflash_job_update")
        self.server.register_notification("octoflash:devices",
                                          notify_name="octoflash_devices")
        self.server.register_remote_method("octoflash_build", self._remote_build)
        self.server.register_remote_method("octoflash_flash", self._remote_flash)
        self.server.register_remote_method("octoflash_update_all", self._remote_update_all)
        self.server.register_event_handler("server:klippy_identified",
                                           self._on_klippy_identified)
        self.server.register_event_handler("server:klippy_started", self._on_klippy_started)
        self.server.register_event_handler("server:klippy_ready", self._on_klippy_ready)
        self.server.register_event_handler("server:klippy_disconnect", self._on_klippy_disconnect)

        self.updater: Any = None
        try:   # the update-manager entries, when that module is present
            from . import updater as _updater
        except ImportError:
            _updater = None  # type: ignore[assignment]
        if _updater is not None and hasattr(_updater, "attach"):
            try:
                self.updater = _updater.attach(self)
            except Exception as exc:
                self._warn(f"octoflash: update-manager entries unavailable: {exc}", "updater")
        try:   # the octoflash page (web/), served by Moonraker
            from . import web as _web
            _web.register(self)
        except Exception as exc:
            self._warn(f"octoflash: the web page is unavailable: {exc}", "web")

    # --- configuration ------------------------------------------------------

    def _warn(self, message: str, key: str) -> None:
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
                self._warn(f"[octoflash]: unknown option '{option}' is ignored; known options "
                           f"are {', '.join(sorted(known))}", f"option_{option}")
                continue
            try:
                Settings.from_options({option: raw}, self.data_path)
            except ValidationError as exc:
                self._warn(f"{exc}; the default is used", f"option_{option}")
                continue
            good[option] = raw
        good.setdefault("build_path", os.path.join(self.data_path, "octoflash"))
        return Settings.from_options(good, self.data_path)

    def _read_profiles(self, config: ConfigHelper) -> Dict[str, Profile]:
        profiles: Dict[str, Profile] = {}
        for section_name in config.get_prefix_sections("octoflash "):
            section = config.getsection(section_name)
            name = section_name[len("octoflash "):].strip()
            options = {opt: section.get(opt) for opt in section.get_options()}
            other = name_clash(name, profiles)
            if other is not None:
                self._warn(f"[{section_name}]: a profile named '{other}' exists already; "
                           "names that differ only in letter case are not allowed. This "
                           "profile is not loaded; rename the section.", f"profile_{name}")
                continue
            try:
                profiles[name] = profile_from_options(name, options)
            except OctoflashError as exc:
                self._warn(f"[{section_name}]: {_one_line(str(exc))}. This profile is not "
                           "loaded; fix the section and restart Moonraker.", f"profile_{name}")
        return profiles

    def _make_builder(self) -> Any:
        try:
            from ..build import Builder
        except ImportError as exc:
            self._warn(f"octoflash: builds are unavailable ({exc})", "builder")
            return None
        s = self.settings
        return Builder(s.build_path, klipper_path=s.klipper_path, katapult_path=s.katapult_path,
                       keep=s.builds_kept, jobs=s.build_jobs, nice=s.build_nice,
                       make_timeout=s.make_timeout)

    async def component_init(self) -> None:
        if request_guard.can_guard(self.server):
            # Every component is loaded now, so Moonraker's own routes exist.
            request_guard.guard_moonraker_routes(self.server)
        stored = await self.db.get(PROFILES_KEY, {}) or {}
        for name, data in stored.items():
            try:
                profile = profile_from_json(data, source="api")
            except OctoflashError as exc:
                self._warn(f"octoflash: profile '{name}' saved through the API cannot be "
                           f"used any more: {_one_line(str(exc))}", f"stored_{name}")
                continue
            other = name if name in self.config_profiles else \
                name_clash(name, self.config_profiles)
            if other is not None:
                self._warn(f"octoflash: profile '{name}' saved through the API has the name of "
                           f"[octoflash {other}] in moonraker.conf; the moonraker.conf "
                           "section is used", f"shadow_{name}")
                continue
            self.api_profiles[name] = profile
        # Reading the checkouts' Kconfig takes a child process each: not at
        # Moonraker's start, but right after it.
        self._config_check = self.eventloop.create_task(self._check_config_profiles())
        loaded = await self.runner.load()
        # A flash that died with Moonraker may have left Klipper stopped: see to
        # it once Moonraker runs (starting Klipper waits for it to connect).
        interrupted = [j for j in self.runner.interrupted_on_load if j in
                       {job.id for job in loaded if job.kind == "flash"}]
        self._klipper_recovery = self.eventloop.create_task(after_crash(self, interrupted))
        if self.settings.simulation:
            # python-can's virtual bus reaches only this process: the
            # simulated CAN nodes must answer from inside Moonraker.
            from ..sim.board import SimulatedMachine
            machine = SimulatedMachine(self.settings.simulation)
            self._sim_can = await asyncio.to_thread(machine.can_nodes)

    async def _check_config_profiles(self) -> None:
        """Check moonraker.conf profiles against the checkouts' Kconfig.

        A symbol the checkout does not have, cannot set, or a value that does
        not fit its type is a warning now; a build of that profile is refused
        with the same words before make runs.
        """
        if self.builder is None:
            return
        for name, profile in self.config_profiles.items():
            try:
                await self.builder.check_kconfig(profile)
            except ValidationError as exc:
                self._warn(f"[octoflash {name}]: {_one_line(str(exc))}. Builds of this "
                           "profile are refused until it is fixed.", f"kconfig_{name}")
            except OctoflashError:
                continue        # no checkout yet: the build says so

    async def on_exit(self) -> None:
        if self._startup_watch is not None:
            self._startup_watch.cancel()
        if self._config_check is not None:
            self._config_check.cancel()
        if self._klipper_recovery is not None:
            self._klipper_recovery.cancel()
        # before the database closes: running jobs are recorded as interrupted
        await self.runner.close()
        if self._sim_can is not None:
            await asyncio.to_thread(self._sim_can.stop)

    @property
    def profiles(self) -> Dict[str, Profile]:
        merged = dict(self.api_profiles)
        merged.update(self.config_profiles)
        return dict(sorted(merged.items()))

    def get_profile(self, name: str) -> Profile:
        profile = self.profiles.get(name)
        if profile is None:
            broken = [w for w in self.config_warnings if f"[octoflash {name}]" in w]
            hint = f" Its section has a problem: {broken[0]}" if broken else \
                (f" Known profiles: {', '.join(self.profiles)}." if self.profiles else
                 " No profiles yet: add an [octoflash NAME] section or POST /server/octoflash/profile.")
            raise NotFoundError(f"No profile named '{name}'.{hint}")
        return profile

    # --- Klipper state ------------------------------------------------------

    @property
    def klippy(self) -> Any:
        return self.server.lookup_component("klippy_connection")

    @property
    def klippy_apis(self) -> Any:
        return self.server.lookup_component("klippy_apis")

    def _klippy_state(self) -> str:
        """Moonraker's view of Klipper: startup, ready, error, shutdown, disconnected."""
        return str(getattr(self.klippy.state, "name", self.klippy.state)).lower()

    async def _on_klippy_identified(self) -> None:
        # Klipper answered its first info request.  Moonraker tells nothing
        # more until Klipper leaves startup, which with an unreachable board
        # takes up to 90 s: read the MCUs meanwhile.
        if self._startup_watch is None or self._startup_watch.done():
            self._startup_watch = self.eventloop.create_task(self._watch_startup())

    async def _watch_startup(self) -> None:
        while True:
            await asyncio.sleep(STARTUP_POLL_INTERVAL)
            if not self.klippy.is_connected() or self._klippy_state() != "startup":
                return
            await self._refresh_klipper_status()

    async def _on_klippy_started(self, state: Any = None) -> None:
        if request_guard.can_guard(self.server):
            # Moonraker registers Klipper's endpoints (/printer/gcode/script)
            # when Klipper has started; guard them once they exist.
            request_guard.guard_moonraker_routes(self.server)
        # ready is handled by klippy_ready; error and shutdown end up here only
        if not self.klippy.is_ready():
            self.eventloop.create_task(self._refresh_klipper_status())

    async def _on_klippy_ready(self) -> None:
        self.eventloop.create_task(self._refresh_klipper_status())

    async def _on_klippy_disconnect(self) -> None:
        # What runs on the boards is unknown until Klipper reports again (a
        # flash happens now); which board is which ([mcu] sections) stays.
        self.klipper_status = {k: v for k, v in self.klipper_status.items()
                               if k == "configfile"}

    async def _refresh_klipper_status(self) -> Dict[str, Any]:
        """Read the MCUs, their config sections and the host version from Klipper.

        Works in every state in which Klipper answers: in startup it lists
        its objects and reports ``{}`` for a board it has not reached yet.
        """
        if not self.klippy.is_connected():
            return self.klipper_status
        ready = self.klippy.is_ready()
        try:
            objects = await asyncio.wait_for(self.klippy_apis.get_object_list(default=[]),
                                             KLIPPER_QUERY_TIMEOUT)
            query: Dict[str, Any] = {name: None for name in objects if is_mcu_section(name)}
            # settings: typed, with defaults, but keyed in lower case;
            # config: the section names as printer.cfg writes them
            query["configfile"] = ["settings", "config"]
            query["webhooks"] = None
            query["print_stats"] = ["state", "filename"]
            status = await asyncio.wait_for(self.klippy_apis.query_objects(query, default={}),
                                            KLIPPER_QUERY_TIMEOUT)
        except (asyncio.TimeoutError, Exception) as exc:
            log.info("octoflash: could not read Klipper's MCUs: %s", exc)
            return self.klipper_status
        if status:
            configfile = status.get("configfile") or {}
            status["configfile"] = {
                part: {k: v for k, v in (configfile.get(part) or {}).items() if is_mcu_section(k)}
                for part in ("settings", "config")}
            changed = status != self.klipper_status
            self.klipper_status = status
            info = self.klippy.klippy_info or {}
            self.host_version = info.get("software_version") or self.host_version
            if ready or changed:
                self.server.send_event("octoflash:klipper_mcus", dict(self.klipper_status))
        return self.klipper_status

    async def _fresh_klipper_status(self) -> Dict[str, Any]:
        return await self._refresh_klipper_status()

    async def print_state(self) -> Tuple[str, str]:
        """(state, filename) of ``print_stats``, asked from Klipper when it is there."""
        if not self.klippy.is_connected():
            return "disconnected", ""
        try:
            status = await asyncio.wait_for(
                self.klippy_apis.query_objects({"print_stats": ["state", "filename"]}, default={}),
                KLIPPER_QUERY_TIMEOUT)
            stats = status.get("print_stats") or {}
        except (asyncio.TimeoutError, Exception):
            stats = self.server.lookup_component("job_state").get_last_stats()
        return str(stats.get("state") or "unknown"), str(stats.get("filename") or "")

    def _klipper_uses(self, profile: Profile) -> bool:
        """Is this profile's board one of Klipper's MCUs (so Klipper must stop to flash it)?"""
        if profile.klipper_mcu:
            return True
        return self._klipper_mcu_of(profile, klipper_mcus(self.klipper_status)) is not None

    @staticmethod
    def _klipper_mcu_of(profile: Profile, mcus: List[KlipperMcu]) -> Optional[KlipperMcu]:
        """The MCU that is this profile's board: by its name (any case), else uuid or serial."""
        if profile.klipper_mcu:
            found = find_mcu(mcus, profile.klipper_mcu)
            if found is not None:
                return found
        uuid = normalize_uuid(profile.canbus_uuid)
        for candidate in mcus:
            if uuid and candidate.canbus_uuid == uuid:
                return candidate
            if profile.serial and candidate.serial and \
                    os.path.basename(candidate.serial) == os.path.basename(profile.serial):
                return candidate
        return None

    async def _preflight(self, profile: Profile, plan: Optional[Any]) -> None:
        """Refuse a flash while printing, or when Klipper must stop and cannot be stopped."""
        state, filename = await self.print_state()
        if state in ("printing", "paused"):
            what = f" ({filename})" if filename else ""
            raise ConflictError(
                f"Klipper is {state}{what}: flashing '{profile.name}' would stop Klipper and end "
                "the print. Flash when the print has finished or has been cancelled.")
        other = await self.pipeline.other_writer()
        if other:
            raise ConflictError(other)
        if not self.klippy.is_connected():
            return
        needs_stop = self._klipper_uses(profile) if plan is None \
            else self.pipeline.needs_klipper_stopped(plan)
        if needs_stop:
            problem = self.service.control_problem()
            if problem:
                raise UnavailableError(problem)

    async def _find_artifact(self, profile: Profile, artifact_id: str) -> Any:
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
            return await self._find_artifact(profile, "latest")
        except OctoflashError:
            return None

    async def profile_status(self, profile: Profile) -> Dict[str, Any]:
        """What the clients show per profile: running version, latest build, out of date."""
        mcu = self._klipper_mcu_of(profile, klipper_mcus(self.klipper_status))
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
            elif running and self.host_version:
                out_of_date = running != self.host_version
        holder = self.runner.job_holding(profile.name)
        return {
            "klipper_mcu": mcu.object_name if mcu is not None else profile.klipper_object,
            "mcu_version": running,
            "mcu_type": mcu.mcu_type if mcu is not None else None,
            "connected": bool(mcu is not None and mcu.connected),
            "host_version": self.host_version,
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

    # --- jobs: events out -----------------------------------------------------

    def _on_job_update(self, update: JobUpdate) -> None:
        job = update.job
        now = time.monotonic()
        payload = update.to_json()
        if update.event == "output":
            if now - self._notify_at.get(job.id, 0.0) >= OUTPUT_NOTIFY_INTERVAL:
                self._notify_at[job.id] = now
                self.server.send_event("octoflash:job_update", payload)
        else:
            self.server.send_event("octoflash:job_update", payload)
        self._to_console(update, now)
        if update.final:
            self._notify_at.pop(job.id, None)
            self._console_at.pop(job.id, None)
            if job.kind == "flash":
                self.server.send_event("octoflash:flash_finished", job.to_json())
                # Klipper restarted with new firmware: read its MCUs again
                self.eventloop.create_task(self._refresh_klipper_status())
                self.eventloop.create_task(self._scan_devices(force=True, quiet=True))

    def _to_console(self, update: JobUpdate, now: float) -> None:
        job = update.job
        label = f"octoflash {job.kind} {job.profile}".rstrip()
        if update.final:
            prefix = "// " if job.state == DONE else "!! "
            self._console(f"{prefix}{label}: {update.message or job.message}")
            return
        if update.event == "state" and job.state == "running":
            self._console(f"// {label}: started (job {job.id})")
            return
        if update.event == "step":
            self._console_at[job.id] = now
            self._console(f"// {label}: [{job.stage}] {update.message or job.message}")
            return
        if update.event in ("progress", "output"):
            if now - self._console_at.get(job.id, 0.0) < CONSOLE_INTERVAL:
                return
            self._console_at[job.id] = now
            pct = f" {job.percent:.0f}%" if job.percent is not None else ""
            self._console(f"// {label}: [{job.stage}]{pct} {update.message}"[:200])

    def _console(self, text: str) -> None:
        self.server.send_event("server:gcode_response", text)

    # --- jobs: requests in ----------------------------------------------------

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

    # remote methods: called by Klipper macros, answer in the console
    async def _remote(self, what: str, call: Callable[[], Awaitable[Optional[Job]]]) -> None:
        try:
            job = await call()
        except OctoflashError as exc:
            self._console(f"!! octoflash: {what} refused: {_one_line(str(exc))}")
            return
        except Exception as exc:
            log.exception("octoflash: remote method failed")
            self._console(f"!! octoflash: {what} failed: {exc}")
            return
        if job is None:
            self._console(f"// octoflash: {what}: every board is up to date")
        else:
            self._console(f"// octoflash: {what}: job {job.id} started; progress follows here")

    async def _remote_build(self, profile: Any = "", force: Any = False, **_: Any) -> None:
        async def call() -> Job:
            name = self._macro_profile(profile)
            return await self.start_build(name, force=_as_bool(force, "FORCE"), origin="macro")
        await self._remote(f"build {_macro_text(profile)}".strip(), call)

    async def _remote_flash(self, profile: Any = "", build: Any = True, force: Any = False,
                            flash_method: Any = None, **_: Any) -> None:
        # "flash_method", not "method": Klipper's action_call_remote_method()
        # takes the method's own name as its first argument, "method".
        async def call() -> Job:
            name = self._macro_profile(profile)
            args: Dict[str, Any] = {"profile": name}
            if flash_method:
                args["method"] = flash_method
            _check_args(_FLASH_ARGS, args)
            return await self.start_flash(name, build=_as_bool(build, "BUILD"),
                                          force=_as_bool(force, "FORCE"),
                                          method=args.get("method"), origin="macro")
        await self._remote(f"flash {_macro_text(profile)}".strip(), call)

    async def _remote_update_all(self, all: Any = False, **_: Any) -> None:
        await self._remote("update all", lambda: self.start_update_all(
            include_current=_as_bool(all, "ALL"), origin="macro"))

    @staticmethod
    def _macro_profile(name: Any) -> str:
        """A macro's PROFILE=, checked as the API checks a profile name."""
        if not name:
            raise ValidationError("Give the profile: PROFILE=name")
        text = str(name).strip()
        _check_args(_request_schema({"profile": _NAME}, ["profile"]), {"profile": text})
        return text

    # --- devices --------------------------------------------------------------

    async def _scan_devices(self, force: bool = False, quiet: bool = False) -> Dict[str, Any]:
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

    # --- API ------------------------------------------------------------------

    def _register_api(self) -> None:
        from moonraker.common import RequestType, TransportType
        get, post, delete = RequestType.GET, RequestType.POST, RequestType.DELETE
        routes: List[Tuple[str, Any, Callable[..., Awaitable[Any]]]] = [
            ("/server/octoflash/presets", get, self._handle_presets_request),
            ("/server/octoflash/profiles", get, self._handle_profiles_request),
            ("/server/octoflash/profile", get | post | delete, self._handle_profile_request),
            ("/server/octoflash/devices", get, self._handle_devices_request),
            ("/server/octoflash/plan", get, self._handle_plan_request),
            ("/server/octoflash/build", post, self._handle_build_request),
            ("/server/octoflash/flash", post, self._handle_flash_request),
            ("/server/octoflash/update_all", post, self._handle_update_all_request),
            ("/server/octoflash/jobs", get, self._handle_jobs_request),
            ("/server/octoflash/job", get, self._handle_job_request),
            ("/server/octoflash/job/cancel", post, self._handle_job_cancel_request),
            ("/server/octoflash/status", get, self._handle_status_request),
        ]
        # Changes over HTTP are checked for cross-site requests (request_guard);
        # where that cannot be done, they are offered over the websocket only.
        guarded = request_guard.can_guard(self.server)
        if not guarded:
            self._warn("octoflash: this Moonraker's HTTP routes are not the ones octoflash "
                       "knows; profile changes, builds and flashes are accepted over the "
                       "websocket only", "http_guard")
        for path, types, handler in routes:
            changes = bool(types & (post | delete))
            transports = TransportType.all()
            if changes and not guarded:
                transports &= ~TransportType.HTTP
            self.server.register_endpoint(path, types, self._translate_errors(handler),
                                          transports=transports)
            if changes and guarded:
                request_guard.guard_route(self.server, path)

    def _translate_errors(self, handler: Callable[[WebRequest], Awaitable[Any]]
                          ) -> Callable[[WebRequest], Awaitable[Any]]:
        """OctoflashError -> Moonraker error with the same 4xx/5xx code and a one-line message."""
        async def wrapper(web_request: WebRequest) -> Any:
            try:
                return await handler(web_request)
            except OctoflashError as exc:
                raise self.server.error(_one_line(str(exc)), exc.status) from None
        wrapper.__name__ = handler.__name__
        return wrapper

    @staticmethod
    def _args(web_request: WebRequest, schema: Dict[str, Any], booleans: Tuple[str, ...] = ()
              ) -> Dict[str, Any]:
        """The request's arguments, booleans given as text converted, checked by the schema."""
        args = {k: v for k, v in web_request.get_args().items()}
        for name in booleans:
            if name in args:
                args[name] = _as_bool(args[name], name)
        _check_args(schema, args)
        return args

    async def _handle_presets_request(self, web_request: WebRequest) -> Dict[str, Any]:
        from ..klipper_configs import checkout_report
        return {"presets": [p.to_json() for p in list_presets()],
                "from_klipper": await asyncio.to_thread(checkout_report, self.settings.klipper_path)}

    async def _handle_profiles_request(self, web_request: WebRequest) -> Dict[str, Any]:
        return {"profiles": [await self.describe_profile(p) for p in self.profiles.values()],
                "warnings": [w for w in self.config_warnings if "[octoflash " in w]}

    async def _handle_profile_request(self, web_request: WebRequest) -> Dict[str, Any]:
        action = web_request.get_action()
        if action == "GET":
            args = self._args(web_request, _request_schema({"name": _NAME}, ["name"]))
            return {"profile": await self.describe_profile(self.get_profile(args["name"]))}
        if action == "DELETE":
            args = self._args(web_request, _request_schema({"name": _NAME}, ["name"]))
            return await self._delete_profile(args["name"])
        return await self._save_profile(web_request.get_args())

    async def _save_profile(self, args: Dict[str, Any]) -> Dict[str, Any]:
        data = args.get("profile") if isinstance(args.get("profile"), dict) else dict(args)
        if isinstance(data.get("auto_update"), str):
            data["auto_update"] = _as_bool(data["auto_update"], "auto_update")
        profile = profile_from_json(data, source="api")
        name = profile.name
        if self.builder is not None:
            try:
                await self.builder.check_kconfig(profile)
            except (NotFoundError, UnavailableError):
                pass            # no checkout configured yet: the build checks it
        # One save or delete at a time: each writes the whole profile list, so
        # two at once would each write a list without the other's profile.
        async with self._profiles_lock:
            self._check_profile_writable(name, "change it")
            other = name_clash(name, self.profiles)
            if other is not None:
                raise ConflictError(f"A profile named '{other}' exists already; names that "
                                    "differ only in letter case are not allowed, choose "
                                    "another name")
            action = "updated" if name in self.api_profiles else "created"
            stored = {n: p.to_json() for n, p in self.api_profiles.items()}
            stored[name] = profile.to_json()
            await self.db.insert(PROFILES_KEY, stored)
            self.api_profiles[name] = profile
        self.server.send_event("octoflash:profiles_changed", [name])
        return {"profile": await self.describe_profile(profile), "action": action}

    def _check_profile_writable(self, name: str, verb: str) -> None:
        if name in self.config_profiles:
            raise ConflictError(f"Profile '{name}' comes from moonraker.conf ([octoflash {name}]) "
                                f"and is read-only here; {verb} in the config file, or choose "
                                "another name")
        holder = self.runner.job_holding(name)
        if holder is not None:
            raise ConflictError(f"Profile '{name}' is in use by job {holder.id}; {verb} "
                                "when the job has finished")

    async def _delete_profile(self, name: str) -> Dict[str, Any]:
        async with self._profiles_lock:
            return await self._delete_profile_locked(name)

    async def _delete_profile_locked(self, name: str) -> Dict[str, Any]:
        if name in self.config_profiles:
            raise ConflictError(f"Profile '{name}' comes from moonraker.conf ([octoflash {name}]) "
                                "and is read-only here; remove the section from the config file")
        if name not in self.api_profiles:
            self.get_profile(name)   # raises NotFoundError with the known names
        holder = self.runner.job_holding(name)
        if holder is not None:
            raise ConflictError(f"Profile '{name}' is in use by job {holder.id}; delete it "
                                "when the job has finished")
        stored = {n: p.to_json() for n, p in self.api_profiles.items() if n != name}
        await self.db.insert(PROFILES_KEY, stored)
        del self.api_profiles[name]
        self.server.send_event("octoflash:profiles_changed", [name])
        return {"profile": name, "action": "deleted"}

    async def _handle_devices_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema({"refresh": {"type": "boolean"}}, []),
                          booleans=("refresh",))
        return {"devices": await self._scan_devices(force=bool(args.get("refresh")))}

    async def _handle_plan_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"profile": _NAME, "method": {"enum": method_names()},
             "artifact_id": {"type": "string", "maxLength": 64}}, ["profile"]))
        profile = self.get_profile(args["profile"])
        artifact = await self._find_artifact(profile, args["artifact_id"]) \
            if args.get("artifact_id") else await self.latest_artifact(profile)
        if artifact is None:
            return {"plan": None, "artifact": None, "needs_build": True,
                    "text": f"Profile '{profile.name}' has not been built yet: a flash builds "
                            "it first, or POST /server/octoflash/build"}
        plan = await self.pipeline.prepare(profile, artifact, {"method": args.get("method")})
        data = plan.to_json() if hasattr(plan, "to_json") else dict(plan)
        text = plan.format() if hasattr(plan, "format") else ""
        return {"plan": data, "artifact": artifact.to_json(), "needs_build": False, "text": text}

    async def _handle_build_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"profile": _NAME, "force": {"type": "boolean"}}, ["profile"]), booleans=("force",))
        job = await self.start_build(args["profile"], force=bool(args.get("force", False)))
        return {"job": job.to_json()}

    async def _handle_flash_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _FLASH_ARGS, booleans=("build", "force"))
        job = await self.start_flash(args["profile"], build=bool(args.get("build", True)),
                                     force=bool(args.get("force", False)),
                                     method=args.get("method"),
                                     artifact_id=args.get("artifact_id"))
        return {"job": job.to_json()}

    async def _handle_update_all_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema({"all": {"type": "boolean"}}, []),
                          booleans=("all",))
        job = await self.start_update_all(include_current=bool(args.get("all", False)))
        return {"job": job.to_json() if job is not None else None,
                "message": "every board is up to date" if job is None else job.message}

    async def _handle_jobs_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = web_request.get_args()
        limit = args.get("limit")
        if limit is not None:
            try:
                limit = int(limit)
            except (TypeError, ValueError):
                raise ValidationError(f"'limit' must be a number, not {limit!r}") from None
        _check_args(_request_schema({"profile": _NAME, "limit": {"type": "integer", "minimum": 1}},
                                    []), dict(args, **({"limit": limit} if limit else {})))
        jobs = self.runner.jobs(profile=args.get("profile"), limit=limit)
        return {"jobs": [j.to_json(full=False) for j in jobs],
                "flash_job": self.runner.flash_job.id if self.runner.flash_job else None}

    async def _handle_job_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"job_id": {"type": "string", "maxLength": 64}}, ["job_id"]))
        return {"job": self.runner.get(args["job_id"]).to_json()}

    async def _handle_job_cancel_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"job_id": {"type": "string", "maxLength": 64}}, ["job_id"]))
        job = await self.runner.cancel(args["job_id"])
        return {"job": job.to_json()}

    async def _handle_status_request(self, web_request: WebRequest) -> Dict[str, Any]:
        state, filename = await self.print_state()
        flash_job = self.runner.flash_job
        s = self.settings
        return {
            "version": __version__,
            "flash_methods": flash_methods_json(),
            "simulation": bool(s.simulation),
            "klipper": {
                "connected": bool(self.klippy.is_connected()),
                "state": self._klippy_state(),
                "print_state": state, "print_filename": filename,
                "software_version": self.host_version,
                "service_control": self.service.control_problem() is None,
                "service_problem": self.service.control_problem(),
            },
            "builds_available": self.builder is not None,
            "flash_job": flash_job.id if flash_job is not None else None,
            "active_jobs": [j.to_json(full=False) for j in self.runner.active_jobs()],
            "profiles": len(self.profiles),
            "warnings": list(self.config_warnings),
            "paths": {"klipper_path": s.klipper_path, "katapult_path": s.katapult_path,
                      "build_path": s.build_path, "dfu_util_path": s.dfu_util_path,
                      "flashtool_path": s.flashtool_path},
        }


def _macro_text(value: Any) -> str:
    """A macro argument as it may appear in a console line (short, one line)."""
    return clip_text(_one_line(str(value)), 80)


def _devices_changed(before: Dict[str, Any], after: Dict[str, Any]) -> bool:
    volatile = ("taken_at", "duration")
    strip = lambda d: {k: v for k, v in d.items() if k not in volatile}   # noqa: E731
    return strip(before) != strip(after)


def _check_args(schema: Dict[str, Any], args: Dict[str, Any]) -> None:
    """Check request arguments against a JSON Schema; raise ValidationError naming each problem."""
    validator = validator_for(schema)
    errors = sorted(validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    messages = []
    for err in errors:
        where = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            messages.append(f"{err.message.replace(' is a required property', '')} is required")
        elif err.validator == "pattern" and where in ("name", "profile"):
            messages.append(f"{err.instance!r} is not a valid profile name (letters, digits, "
                            "'_' and '-', starting with a letter or digit, at most 64 characters)")
        elif err.validator == "enum":
            messages.append(f"{where}: {err.instance!r} is not one of "
                            f"{', '.join(map(str, err.validator_value))}")
        else:
            messages.append(f"{where}: {err.message}" if where else err.message)
    raise ValidationError("; ".join(dict.fromkeys(messages)))


def load_component(config: ConfigHelper) -> OctoFlash:
    return OctoFlash(config)
