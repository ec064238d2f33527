"""The check of Moonraker's internals at start, and the entry shim, without a Moonraker process.

A stand-in server offers exactly what moonraker_internals.py's table lists;
each test takes one thing away or changes the version, and the firmware
entries must then warn and carry on or stay out, never raise.  The real
Moonraker (test_updater.py) shows no warning.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Tuple

import pytest

from moonraker_octoflash.moonraker import moonraker_internals, updater
from moonraker_octoflash.moonraker.announcer import FirmwareAnnouncer, Notice
from moonraker_octoflash.moonraker.component_host import ComponentHost
from moonraker_octoflash.moonraker.moonraker_internals import (KNOWN_VERSIONS, WARNING_ID,
                                                               MoonrakerInternals, release_of)

HEAD = "octoflash: update-manager entries were made for Moonraker 0.10–0.11; this Moonraker is "


class Helper:
    """update_manager.cmd_helper"""

    def __init__(self) -> None:
        self.db: Dict[str, Any] = {}
        self.lines: List[Tuple[str, bool]] = []
        self.refreshed = 0
        self.update_info: Optional[Tuple[str, int]] = None
        self.full = False

    def get_umdb(self) -> Helper.Db:
        return Helper.Db(self.db)

    class Db(dict):
        def __init__(self, store: Dict[str, Any]) -> None:
            super().__init__()
            self.store = store

        def __setitem__(self, key: str, value: Any) -> None:
            self.store[key] = value

        async def get(self, key: str, default: Any = None) -> Any:
            return self.store.get(key, default)

    def get_refresh_interval(self) -> float:
        return 7 * 24 * 3600.0

    def is_full_update(self) -> bool:
        return self.full

    def set_update_info(self, app: str, uid: int) -> None:
        self.update_info = (app, uid)

    def clear_update_info(self) -> None:
        self.update_info = None

    def notify_update_response(self, message: str, is_complete: bool = False) -> None:
        self.lines.append((message, is_complete))

    def notify_update_refreshed(self) -> None:
        self.refreshed += 1


class UpdateManager:
    def __init__(self) -> None:
        self.updaters: Dict[str, Any] = {}
        self.cmd_request_lock = asyncio.Lock()
        self.cmd_helper = Helper()


class Klippy:
    state = "ready"

    def is_connected(self) -> bool:
        return True

    def is_printing(self) -> bool:
        return False


class Announcements:
    def __init__(self) -> None:
        self.entries: List[Dict[str, Any]] = []

    async def get_announcements(self, include_dismissed: bool = False) -> List[Dict[str, Any]]:
        return list(self.entries)

    def add_internal_announcement(self, title: str, desc: str, url: str, priority: str,
                                  feed: str) -> Dict[str, Any]:
        entry = {"entry_id": f"{feed}/1", "title": title, "description": desc, "url": url,
                 "priority": priority, "feed": feed, "source": "internal"}
        self.entries.append(entry)
        return entry

    async def remove_announcement(self, entry_id: str) -> None:
        self.entries = [e for e in self.entries if e["entry_id"] != entry_id]


class Config:
    def has_section(self, name: str) -> bool:
        return True

    def read_supplemental_dict(self, obj: Dict[str, Any]) -> Section:
        return Section(next(iter(obj)))


class Section:
    def __init__(self, name: str) -> None:
        self.name = name
        self.server: Any = None

    def get_server(self) -> Any:
        return self.server

    def getint(self, option: str, default: Any = None) -> Any:
        return default


class Server:
    def __init__(self, version: str = "0.11.0") -> None:
        self.version = version
        self.config = Config()
        self.warnings: List[Tuple[str, Optional[str]]] = []
        self.events: Dict[str, List[Any]] = {}
        self.components: Dict[str, Any] = {
            "update_manager": UpdateManager(), "klippy_connection": Klippy(),
            "announcements": Announcements()}

    def get_app_args(self) -> Dict[str, Any]:
        return {"software_version": self.version}

    def load_component(self, config: Any, name: str, default: Any = None) -> Any:
        return self.components.get(name, default)

    def lookup_component(self, name: str, default: Any = None) -> Any:
        return self.components.get(name, default)

    def is_debug_enabled(self) -> bool:
        return False

    def register_event_handler(self, event: str, callback: Any) -> None:
        self.events.setdefault(event, []).append(callback)

    def add_warning(self, message: str, warn_id: Optional[str] = None) -> None:
        self.warnings.append((message, warn_id))


class Component:
    """Only ``server`` is read before the check decides."""

    def __init__(self, server: Server) -> None:
        self.server = server


@pytest.mark.parametrize("version, release", [
    ("0.11.0", (0, 11)), ("0.10.0", (0, 10)), ("v0.10.0-45-g1234abc", (0, 10)),
    ("v0.9.3-12-gabcdef0-dirty", (0, 9)), ("t0.11.0-g1234abc-shallow", (0, 11)),
    ("1.0.0", (1, 0)), ("?", None), ("", None),
])
def test_the_release_is_read_from_pypi_and_git_versions(version, release):
    assert release_of(version) == release


@pytest.mark.parametrize("version", ["0.10.0", "0.11.0", "v0.11.0-38-gf00dfee"])
async def test_a_known_moonraker_with_every_internal_gives_no_warning(version):
    server = Server(version)
    report = MoonrakerInternals(server, server.components["update_manager"]).check()
    assert report.known_version and report.entries_usable and report.announcements_usable
    assert report.warning() is None and server.warnings == []


@pytest.mark.parametrize("version", ["v0.12.0-3-gabc1234", "0.9.3", "?"])
async def test_an_unknown_version_warns_and_keeps_the_entries(version):
    server = Server(version)
    internals = MoonrakerInternals(server, server.components["update_manager"])
    report = internals.check()
    assert not report.known_version and report.entries_usable
    [(message, warn_id)] = server.warnings
    assert warn_id == WARNING_ID
    assert message.startswith(HEAD + version + ": ")
    assert "they stay on" in message
    assert internals.announcements_available()


async def test_a_missing_update_manager_internal_turns_the_entries_off_without_raising():
    server = Server()
    del server.components["update_manager"].cmd_request_lock
    assert updater.attach(Component(server)) is None
    [(message, _)] = server.warnings
    assert message.startswith(HEAD + "0.11.0: it lacks update_manager.cmd_request_lock")
    assert "firmware entries are off" in message
    assert server.components["update_manager"].updaters == {}
    assert server.events == {}


async def test_a_missing_base_deploy_member_turns_the_entries_off(monkeypatch):
    base = pytest.importorskip("moonraker.components.update_manager.base_deploy").BaseDeploy
    monkeypatch.delattr(base, "_save_state")
    server = Server()
    assert updater.attach(Component(server)) is None
    [(message, _)] = server.warnings
    assert "it lacks BaseDeploy._save_state" in message


async def test_without_base_deploy_the_entries_stay_out(monkeypatch):
    monkeypatch.setattr(moonraker_internals, "_BASE_DEPLOY_FOUND", False)
    server = Server()
    report = MoonrakerInternals(server, server.components["update_manager"]).check()
    assert report.missing == ["update_manager.base_deploy.BaseDeploy"]


async def test_a_missing_klipper_call_turns_the_entries_off(monkeypatch):
    monkeypatch.delattr(Klippy, "is_printing")
    server = Server()
    report = MoonrakerInternals(server, server.components["update_manager"]).check()
    assert report.missing == ["klippy_connection.is_printing"]
    assert not report.entries_usable


async def test_missing_announcement_calls_turn_only_the_announcements_off(monkeypatch):
    monkeypatch.delattr(Announcements, "add_internal_announcement")
    server = Server()
    internals = MoonrakerInternals(server, server.components["update_manager"])
    report = internals.check()
    assert report.entries_usable and not report.announcements_usable
    [(message, _)] = server.warnings
    assert message == HEAD + ("0.11.0: it lacks announcements.add_internal_announcement, so "
                              "firmware announcements are off (the entries stay).")
    assert not internals.announcements_available()
    assert await internals.list_announcements() == []
    assert internals.add_announcement("t", "d", "", "normal", "octoflash/x") is None


async def test_a_check_that_fails_itself_is_a_warning():
    class Broken(Server):
        def lookup_component(self, name: str, default: Any = None) -> Any:
            raise RuntimeError("components are elsewhere now")

    server = Broken("0.13.0")
    report = MoonrakerInternals(server, UpdateManager()).check()
    assert not report.entries_usable
    [(message, _)] = server.warnings
    assert message.startswith(HEAD + "0.13.0: it lacks (the check failed: components are "
                              "elsewhere now)")


async def test_without_update_manager_nothing_is_checked():
    server = Server("0.42.0")
    server.components.pop("update_manager")
    server.config.has_section = lambda name: False
    assert MoonrakerInternals.for_server(server) is None
    assert server.warnings == []


class Behaviour:
    """What updater.FirmwareUpdater answers (EntryBehaviour)."""

    def __init__(self) -> None:
        self.restored: Optional[Dict[str, Any]] = None
        self.refreshed = 0

    def restore(self, storage: Dict[str, Any]) -> None:
        self.restored = storage

    async def refresh(self) -> None:
        self.refreshed += 1

    async def update(self) -> bool:
        return True

    def update_status(self) -> Dict[str, Any]:
        return {"name": "octoflash_octopus", "version": "v0.13.0-1"}

    def persistent_data(self) -> Dict[str, Any]:
        return {"octoflash_status": {"state": "behind"}}

    def close(self) -> None:
        pass


async def test_an_entry_is_a_base_deploy_that_asks_octoflash(monkeypatch):
    base = pytest.importorskip("moonraker.components.update_manager.base_deploy").BaseDeploy
    server = Server()
    um = server.components["update_manager"]
    monkeypatch.setattr(base, "cmd_helper", um.cmd_helper, raising=False)
    internals = MoonrakerInternals(server, um)
    um.cmd_helper.db["octoflash_octopus"] = {"last_refresh_time": 5.0, "octoflash_status": {}}
    behaviour = Behaviour()
    slot = internals.make_entry("octoflash_octopus", "hash1", behaviour)
    assert isinstance(slot, base) and slot.name == "octoflash_octopus"
    assert not internals.has_entry("octoflash_octopus")
    internals.add_entry(slot)
    assert internals.has_entry("octoflash_octopus")
    assert internals.entry_status("octoflash_octopus")["version"] == "v0.13.0-1"

    await slot.initialize()
    assert behaviour.restored == um.cmd_helper.db["octoflash_octopus"]
    slot.set_config_hash("hash2")
    slot.store()      # saves without marking a refresh
    saved = um.cmd_helper.db["octoflash_octopus"]
    assert saved["last_config_hash"] == "hash2" and saved["last_refresh_time"] == 5.0
    assert saved["octoflash_status"] == {"state": "behind"}
    await slot.refresh()
    assert behaviour.refreshed == 1 and um.cmd_helper.db["octoflash_octopus"]["last_refresh_time"] > 5.0
    assert slot.needs_refresh() is True

    internals.begin_update("octoflash_octopus", 7)
    slot.notify_status("building")
    assert um.cmd_helper.lines[-1] == ("Firmware octoflash_octopus: building", False)
    internals.end_update()

    other = internals.make_entry("octoflash_octopus", "hash3", Behaviour())
    internals.remove_entry(other)         # not the one registered: stays
    assert internals.has_entry("octoflash_octopus")
    internals.remove_entry(slot)
    assert not internals.has_entry("octoflash_octopus")


async def test_klipper_is_asked_through_the_internals():
    server = Server()
    internals = MoonrakerInternals(server, server.components["update_manager"])
    assert internals.klipper_connected() and not internals.klipper_printing()
    assert internals.klipper_state() == "ready"


class KlipperReader:
    """klipper_state.KlipperState: reads, and tells everyone what it read."""

    def __init__(self) -> None:
        self.connected = True
        self.status: Dict[str, Any] = {"mcu": {"mcu_version": "v0.13.0-1-gabc"}}
        self.sent: List[Dict[str, Any]] = []

    def is_connected(self) -> bool:
        return self.connected

    async def refresh(self) -> Dict[str, Any]:
        self.status = {"mcu": {"mcu_version": "v0.13.0-1-gabc",
                               "last_stats": {"bytes_read": len(self.sent)}}}
        self.sent.append(dict(self.status))       # octoflash:klipper_mcus
        return self.status


async def test_the_entries_read_klipper_through_the_components_reader():
    component = Component(Server())
    component.klipper = KlipperReader()
    host = ComponentHost(component)
    connected, status = await host.read_klipper_status()
    assert connected and status["mcu"]["mcu_version"] == "v0.13.0-1-gabc"
    # what the reader told everyone after this read is no news to the entries
    assert host.is_own_read(component.klipper.sent[-1])
    await component.klipper.refresh()                # the component read on its own
    assert not host.is_own_read(component.klipper.sent[-1])
    component.klipper.connected = False
    assert await host.read_klipper_status() == (False, {})


def test_the_versions_the_table_was_checked_on_are_the_known_ones():
    doc = moonraker_internals.__doc__ or ""
    assert KNOWN_VERSIONS == ((0, 10), (0, 11))
    assert "0.10.0" in doc and "0.11.0" in doc
    for name in (moonraker_internals.UPDATE_MANAGER_ATTRIBUTES
                 + moonraker_internals.COMMAND_HELPER_METHODS
                 + moonraker_internals.BASE_DEPLOY_MEMBERS
                 + moonraker_internals.KLIPPY_CONNECTION_MEMBERS
                 + moonraker_internals.ANNOUNCEMENTS_METHODS
                 + moonraker_internals.CONFIG_METHODS):
        assert name in doc, f"{name} is checked but not in the module's table"


async def test_announcements_are_kept_in_step_through_the_internals():
    server = Server()
    internals = MoonrakerInternals(server, server.components["update_manager"])
    bell = server.components["announcements"]
    # two left by earlier runs for one profile: one goes at once, the other is replaced
    bell.entries += [{"entry_id": f"octoflash/octopus/{n}", "feed": "octoflash/octopus",
                      "source": "internal", "title": "Firmware update for octopus",
                      "description": "old", "url": "", "priority": "normal"} for n in (1, 2)]
    announcer = FirmwareAnnouncer(internals)
    notice = Notice("Firmware update for octopus", "it runs v1; a build would give v2", "")
    await announcer.sync({"octopus": notice})
    assert [(e["feed"], e["description"]) for e in bell.entries] == \
        [("octoflash/octopus", notice.description)]
    await announcer.sync({}, keep=["octopus"])     # not known for sure now: left alone
    assert len(bell.entries) == 1
    await announcer.sync({})
    assert bell.entries == []


async def test_an_update_manager_that_cannot_be_loaded_is_a_warning():
    class Unloadable(Server):
        def load_component(self, config: Any, name: str, default: Any = None) -> Any:
            raise ImportError("no module named update_manager")

    server = Unloadable()
    server.components.pop("update_manager")
    assert updater.attach(Component(server)) is None
    [(message, _)] = server.warnings
    assert message.startswith(HEAD + "0.11.0: it lacks (reaching the update manager failed: "
                              "no module named update_manager)")
