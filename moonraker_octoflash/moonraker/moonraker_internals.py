"""The parts of Moonraker's inside that the firmware entries rely on, in one place.

Moonraker offers a component no way to add entries to its update manager or
announcements to the notification bell; octoflash does both through the
internals below, and no other module of the entries touches them (they read
Klipper's MCUs through the component's reader, klipper_state.py).
``attach`` (updater.py) runs ``MoonrakerInternals.check()`` at start: it
reads the running Moonraker's version and looks for every internal in the
table.  On a version outside 0.10–0.11 it warns and works on; when an
internal is missing it warns and leaves the entries (or only the
announcements) out.  Moonraker itself always keeps running.

internal                                      what for                                  checked on
--------------------------------------------  ----------------------------------------  ----------
server.get_app_args()["software_version"]     the version check() compares              0.10, 0.11
server.load_component(config,                 load the update manager when it was not   0.10, 0.11
  "update_manager", None)                     loaded yet (components load in no fixed
                                              order)
server.config.read_supplemental_dict()        an empty config section per entry         0.10, 0.11
                                              (BaseDeploy reads its options from one)
server.is_debug_enabled()                     the entries' debug_enabled                0.10, 0.11
UpdateManager.updaters (dict name ->          add, find and remove entries; read        0.10, 0.11
  BaseDeploy)                                 Klipper's own entry
UpdateManager.cmd_request_lock                octoflash's refreshes and deferred        0.10, 0.11
  (asyncio.Lock)                              flashes never run inside Moonraker's
                                              updates
UpdateManager.cmd_helper (CommandHelper):     "update all" detection, lines in the      0.10, 0.11
  is_full_update, set_update_info,            update dialog, the refreshed status, the
  clear_update_info, notify_update_response,  entries' saved data
  notify_update_refreshed, get_umdb
update_manager.base_deploy.BaseDeploy         each entry is a _FirmwareDeploy, its      0.10, 0.11
  (class): __init__(config, name, prefix,     subclass; Moonraker calls initialize,
  cfg_hash), initialize,                      needs_refresh, refresh, update,
  get_persistent_data, _save_state,           rollback, get_update_status,
  notify_status, cmd_helper, cfg_hash,        get_last_refresh_time and close on it
  last_refresh_time, last_cfg_hash
announcements component:                      "Firmware update for NAME" in the         0.10, 0.11
  get_announcements(include_dismissed=),      notification bell
  add_internal_announcement(title, desc,
  url, priority, feed),
  remove_announcement(entry_id)
klippy_connection component: is_connected(),  is Klipper there, printing, past its      0.10, 0.11
  is_printing(), state (an enum with name),   start-up; where Klipper's own socket is
  klippy_info (Klipper's last info answer),   (without it, a Klipper that Moonraker has
  uds_address (the configured socket path)    not connected to yet counts as stopped)
events server:klippy_started,                 refresh the entries when Klipper comes    0.10, 0.11
  server:klippy_disconnect                    or goes
events server:klippy_identified,              a start after a flash ends when Moonraker  0.10, 0.11
  klippy_started, klippy_ready (in that       has Klipper back (services.py); ready
  order, ready after the remote methods are   comes only from a ready Klipper
  registered)

"checked on": read in the ``moonraker`` packages on PyPI, 0.11.0 (the tests
on Python >= 3.10) and 0.10.0 (the Python 3.9 run); their update managers
and ``base_deploy.py`` are identical, and everything above is the same in
both.  tests/test_updater.py runs the entries on each (0.10.0 in the Python
3.9 run of .ci/run).

Used directly elsewhere, as every component does: ``server.error``,
``server.add_warning``, ``server.lookup_component``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

if TYPE_CHECKING:
    from moonraker.server import Server

try:   # importable only inside Moonraker (and in the tests)
    from moonraker.components.update_manager.base_deploy import BaseDeploy
    _BASE_DEPLOY_FOUND = True
except ImportError:   # check() reports it and no entry is made
    BaseDeploy = object
    _BASE_DEPLOY_FOUND = False

log = logging.getLogger("octoflash.updater")

KNOWN_VERSIONS: Tuple[Tuple[int, int], ...] = ((0, 10), (0, 11))
KNOWN_RANGE = "0.10–0.11"
WARNING_ID = "octoflash_moonraker_internals"

KLIPPY_STARTED = "server:klippy_started"
KLIPPY_DISCONNECT = "server:klippy_disconnect"

# What check() looks for; the table above says why each is used.
SERVER_METHODS = ("get_app_args", "load_component", "is_debug_enabled",
                  "register_event_handler", "lookup_component")
CONFIG_METHODS = ("read_supplemental_dict",)
UPDATE_MANAGER_ATTRIBUTES = ("updaters", "cmd_request_lock", "cmd_helper")
COMMAND_HELPER_METHODS = ("is_full_update", "set_update_info", "clear_update_info",
                          "notify_update_response", "notify_update_refreshed", "get_umdb")
BASE_DEPLOY_MEMBERS = ("initialize", "needs_refresh", "refresh", "update", "get_update_status",
                       "get_persistent_data", "get_last_refresh_time", "_save_state",
                       "notify_status", "close")
BASE_DEPLOY_INIT_ARGUMENTS = ("config", "name", "prefix", "cfg_hash")
KLIPPY_CONNECTION_MEMBERS = ("is_connected", "is_printing", "state")
ANNOUNCEMENTS_METHODS = ("get_announcements", "add_internal_announcement", "remove_announcement")

_VERSION_RE = re.compile(r"^[vt]?(\d+)\.(\d+)")


def release_of(version: str) -> Optional[Tuple[int, int]]:
    """(major, minor) of a Moonraker version: ``0.11.0`` from PyPI, ``v0.10.0-12-gabc``
    from a git checkout, ``t0.10.0-g…-shallow`` from a shallow clone; None for ``?``."""
    m = _VERSION_RE.match(version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _lacks(owner: Any, names: Tuple[str, ...], prefix: str) -> List[str]:
    return [f"{prefix}{name}" for name in names if not hasattr(owner, name)]


@dataclasses.dataclass
class InternalsReport:
    """What ``check()`` found."""
    version: str
    known_version: bool
    missing: List[str]                  # needed by the entries: they are left out
    missing_announcements: List[str]    # needed by the announcements only

    @property
    def entries_usable(self) -> bool:
        return not self.missing

    @property
    def announcements_usable(self) -> bool:
        return not self.missing and not self.missing_announcements

    def warning(self) -> Optional[str]:
        """The Moonraker warning, or None when all is as expected."""
        if self.known_version and not self.missing and not self.missing_announcements:
            return None
        head = (f"octoflash: update-manager entries were made for Moonraker {KNOWN_RANGE}; "
                f"this Moonraker is {self.version}: ")
        if self.missing:
            return head + (f"it lacks {', '.join(self.missing)}, so the firmware entries are "
                           "off (octoflash's page and API still work).")
        if self.missing_announcements:
            return head + (f"it lacks {', '.join(self.missing_announcements)}, so firmware "
                           "announcements are off (the entries stay).")
        return head + ("every internal they use was found, so they stay on; if an entry "
                       "misbehaves, report it with this Moonraker version.")


class EntryBehaviour(Protocol):
    """What an octoflash entry answers when the update manager asks (updater.FirmwareUpdater)."""

    def restore(self, storage: Dict[str, Any]) -> None:
        """The entry's saved data, read from Moonraker's database at initialization."""

    async def refresh(self) -> None: ...

    async def update(self) -> bool: ...

    def update_status(self) -> Dict[str, Any]: ...

    def persistent_data(self) -> Dict[str, Any]:
        """The entry's own data to save beside Moonraker's."""

    def close(self) -> None: ...


class EntrySlot(Protocol):
    """An entry as the update manager holds it; what the entry may ask of it."""

    @property
    def name(self) -> str: ...

    async def initialize(self) -> Dict[str, Any]:
        """Read the saved data (Moonraker does it for entries present at its start)."""

    def store(self) -> None:
        """Save the entry's data without marking a refresh."""

    def notify_status(self, msg: str, is_complete: bool = False) -> None:
        """A line in the update dialog (``notify_update_response``), prefixed with the entry."""

    def set_config_hash(self, cfg_hash: str) -> None: ...


class _FirmwareDeploy(BaseDeploy):
    """One entry in the update manager: ``BaseDeploy``'s bookkeeping, the rest asked
    of octoflash's entry."""

    def __init__(self, config: Any, name: str, cfg_hash: str, entry: EntryBehaviour) -> None:
        super().__init__(config, name=name, prefix="Firmware", cfg_hash=cfg_hash)
        self.last_refresh_time = 0.0     # until the update manager initializes the entry
        self.last_cfg_hash = ""
        self.entry = entry

    async def initialize(self) -> Dict[str, Any]:
        storage: Dict[str, Any] = await super().initialize()
        self.entry.restore(storage)
        return storage

    def needs_refresh(self, log_remaining_time: bool = False) -> bool:
        # Reading versions is cheap (Klipper's status, git describe): do it
        # whenever Moonraker refreshes, not only once a refresh_interval.
        return True

    async def refresh(self) -> None:
        await self.entry.refresh()
        self._save_state()

    async def update(self) -> bool:
        return await self.entry.update()

    def get_update_status(self) -> Dict[str, Any]:
        return self.entry.update_status()

    def get_persistent_data(self) -> Dict[str, Any]:
        data: Dict[str, Any] = super().get_persistent_data()
        data.update(self.entry.persistent_data())
        return data

    def close(self) -> None:
        self.entry.close()

    def store(self) -> None:
        # _save_state would also mark a refresh, which makes Moonraker skip a
        # user's "check for updates" for a minute.
        self.cmd_helper.get_umdb()[self.name] = self.get_persistent_data()

    def set_config_hash(self, cfg_hash: str) -> None:
        self.cfg_hash = cfg_hash


class MoonrakerInternals:
    """The only place the firmware entries touch Moonraker's internals (see the module)."""

    def __init__(self, server: Server, update_manager: Any) -> None:
        self.server = server
        self._um = update_manager
        self._announcements_usable = True

    @classmethod
    def for_server(cls, server: Server) -> Optional[MoonrakerInternals]:
        """The update manager's internals, or None without ``[update_manager]`` (or when it
        cannot be reached: then with the warning ``check()`` gives)."""
        try:
            um = server.lookup_component("update_manager", None)
            if um is None:
                if not server.config.has_section("update_manager"):
                    log.info("octoflash: no [update_manager]; firmware entries are not added")
                    return None
                # Moonraker loads components in no particular order: load it now.
                um = server.load_component(server.config, "update_manager", None)
        except Exception as exc:
            log.exception("octoflash: reaching the update manager failed")
            internals = cls(server, None)
            internals._report(InternalsReport(
                internals.moonraker_version(), False,
                [f"(reaching the update manager failed: {exc})"], []))
            return None
        if um is None:
            log.info("octoflash: the update manager failed to load; no firmware entries")
            return None
        return cls(server, um)

    # --- the check at start ---------------------------------------------------

    def moonraker_version(self) -> str:
        try:
            return str(self.server.get_app_args().get("software_version") or "?")
        except Exception:
            return "?"

    def check(self) -> InternalsReport:
        """Compare the running Moonraker with the table; log, and warn when it differs."""
        version = self.moonraker_version()
        release = release_of(version)
        try:
            missing, missing_announcements = self._find_missing()
        except Exception as exc:   # a Moonraker this far off must not be stopped by it
            log.exception("octoflash: checking Moonraker's internals failed")
            missing, missing_announcements = [f"(the check failed: {exc})"], []
        report = InternalsReport(version, release in KNOWN_VERSIONS, missing,
                                 missing_announcements)
        self._report(report)
        return report

    def _report(self, report: InternalsReport) -> None:
        self._announcements_usable = report.announcements_usable
        warning = report.warning()
        if warning is None:
            log.info("octoflash: Moonraker %s has every internal the firmware entries use",
                     report.version)
            return
        log.warning(warning)
        try:
            self.server.add_warning(warning, warn_id=WARNING_ID)
        except Exception:
            log.exception("octoflash: adding a Moonraker warning failed")

    def _find_missing(self) -> Tuple[List[str], List[str]]:
        server = self.server
        missing = _lacks(server, SERVER_METHODS, "server.")
        missing += _lacks(server.config, CONFIG_METHODS, "config.")
        missing += _lacks(self._um, UPDATE_MANAGER_ATTRIBUTES, "update_manager.")
        helper = getattr(self._um, "cmd_helper", None)
        if helper is not None:
            missing += _lacks(helper, COMMAND_HELPER_METHODS, "update_manager.cmd_helper.")
        if not isinstance(getattr(self._um, "updaters", None), dict):
            missing.append("update_manager.updaters as a dict")
        if not _BASE_DEPLOY_FOUND:
            missing.append("update_manager.base_deploy.BaseDeploy")
        else:
            missing += _lacks(BaseDeploy, BASE_DEPLOY_MEMBERS, "BaseDeploy.")
            arguments = inspect.signature(BaseDeploy.__init__).parameters
            missing += [f"BaseDeploy({name}=)" for name in BASE_DEPLOY_INIT_ARGUMENTS
                        if name not in arguments]
        klippy = server.lookup_component("klippy_connection", None)
        missing += ["klippy_connection"] if klippy is None else \
            _lacks(klippy, KLIPPY_CONNECTION_MEMBERS, "klippy_connection.")
        announcements = server.lookup_component("announcements", None)
        missing_announcements = ["announcements"] if announcements is None else \
            _lacks(announcements, ANNOUNCEMENTS_METHODS, "announcements.")
        return missing, missing_announcements

    # --- the update manager -----------------------------------------------------

    def make_entry(self, name: str, cfg_hash: str, entry: EntryBehaviour) -> EntrySlot:
        """A new entry, not yet in the update manager (``add_entry``)."""
        # BaseDeploy reads its options from a config section; the entry has
        # none of its own (Moonraker's refresh_interval applies).
        config = self.server.config.read_supplemental_dict({f"update_manager {name}": {}})
        slot: EntrySlot = _FirmwareDeploy(config, name, cfg_hash, entry)
        return slot

    def has_entry(self, name: str) -> bool:
        return name in self._um.updaters

    def add_entry(self, slot: EntrySlot) -> None:
        self._um.updaters[slot.name] = slot

    def remove_entry(self, slot: EntrySlot) -> None:
        """Take the entry out, unless the name now belongs to another updater."""
        if self._um.updaters.get(slot.name) is slot:
            del self._um.updaters[slot.name]

    def entry_status(self, name: str) -> Dict[str, Any]:
        """Another updater's status (``{}`` when there is none), e.g. Klipper's."""
        updater = self._um.updaters.get(name)
        return dict(updater.get_update_status()) if updater is not None else {}

    @property
    def request_lock(self) -> asyncio.Lock:
        """Held by Moonraker through each update and refresh."""
        lock: asyncio.Lock = self._um.cmd_request_lock
        return lock

    def is_full_update(self) -> bool:
        """Is the running update "update all" (``machine.update.full``)?"""
        return bool(self._um.cmd_helper.is_full_update())

    def begin_update(self, app: str, uid: int) -> None:
        """An update of octoflash's own starts: the dialog's lines go to ``app``."""
        self._um.cmd_helper.set_update_info(app, uid)

    def end_update(self) -> None:
        self._um.cmd_helper.clear_update_info()

    def notify_update_response(self, message: str, is_complete: bool = False) -> None:
        self._um.cmd_helper.notify_update_response(message, is_complete)

    def notify_update_refreshed(self) -> None:
        self._um.cmd_helper.notify_update_refreshed()

    def debug_enabled(self) -> bool:
        return bool(self.server.is_debug_enabled())

    # --- announcements -----------------------------------------------------------

    def _announcements(self) -> Optional[Any]:
        if not self._announcements_usable:
            return None
        return self.server.lookup_component("announcements", None)

    def announcements_available(self) -> bool:
        return self._announcements() is not None

    async def list_announcements(self) -> List[Dict[str, Any]]:
        """Every announcement, dismissed ones too."""
        component = self._announcements()
        if component is None:
            return []
        entries: List[Dict[str, Any]] = await component.get_announcements(include_dismissed=True)
        return entries

    def add_announcement(self, title: str, description: str, url: str, priority: str,
                         feed: str) -> Optional[Dict[str, Any]]:
        """Shown at once; Moonraker gives it the id ``<feed>/<current second>``."""
        component = self._announcements()
        if component is None:
            return None
        entry: Dict[str, Any] = component.add_internal_announcement(
            title, description, url, priority, feed)
        return entry

    async def remove_announcement(self, entry_id: str) -> None:
        component = self._announcements()
        if component is not None:
            await component.remove_announcement(entry_id)

    # --- Klipper -------------------------------------------------------------------

    def _klippy(self) -> Any:
        return self.server.lookup_component("klippy_connection")

    def klipper_connected(self) -> bool:
        return bool(self._klippy().is_connected())

    def klipper_printing(self) -> bool:
        return bool(self._klippy().is_printing())

    def klipper_state(self) -> str:
        """startup, ready, error, shutdown or disconnected."""
        state = self._klippy().state
        return str(getattr(state, "name", state)).lower()

    # --- events ----------------------------------------------------------------------

    def on_event(self, event: str, callback: Callable[..., Any]) -> None:
        """Moonraker's events (``KLIPPY_STARTED``, ``KLIPPY_DISCONNECT``) and the component's."""
        self.server.register_event_handler(event, callback)
