"""Firmware entries in a real Moonraker 0.11 update manager.

The Moonraker tests run the real component on the demo's simulated machine
(``octopus_printer`` in fixtures_moonraker.py): the real builder on a small
Klipper-like git checkout, the real planner, checks and executor with the
``flashtool.py`` double writing into the simulated boards' flash, and a
Klipper stand-in reporting what each board runs.  Situations are made as
they happen on a printer: a board gets other firmware (``set_firmware``),
a commit lands in the checkout (``commit_to_source``), a print starts,
Klipper stops, a board goes dark, a profile changes through the API.

The module shares one Moonraker, and its tests pass in any order: each
starts with ``arrange`` (``scene`` fixture), which brings the printer back
to the module's starting point — the octopus two commits behind the
checkout, the toolhead and the spare board on it (the spare one behind),
the checkout where it started, Klipper ready, no print — or to the
versions the test asks for.  A test that needs a board octoflash has
flashed, flashes it itself.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List

import pytest

from fixtures_moonraker import (CAN_NODE_OVERRIDES, MoonrakerWebsocket, RpcError,
                                SimulatedPrinter, octopus_printer, wait_until)
from moonraker_octoflash.moonraker.firmware_state import Pending, Running, assess, is_conclusive
from moonraker_octoflash.moonraker.moonraker_internals import KNOWN_VERSIONS, release_of
from moonraker_octoflash.profiles import profile_from_json
from moonraker_octoflash.versions import parse_version
from semver_oracle import clients_offer_update, semver_gt, semver_valid

pytestmark = pytest.mark.moonraker

# --- the entry's reasoning, without Moonraker ----------------------------------------

A_OLD = "v0.13.0-730-g84104bbbd"
A_NEW = "v0.13.0-1004-g0a1b2c3d"


def _profile(**kw: Any) -> Any:
    data = {"name": "octopus", "preset": "btt-octopus-f446-canbridge"}
    data.update(kw)
    return profile_from_json(data, source="config")


def _assess(running: str, pending: str, source: str = "klipper", connected: bool = True,
            klipper_object: Any = "mcu", **profile: Any) -> Any:
    return assess(_profile(**profile), Running(parse_version(running), source, "", klipper_object),
                  Pending(parse_version(pending)), connected)


def test_unknown_firmware_says_what_to_do():
    down = _assess("", A_NEW, source="", connected=False)
    assert down.update.state == "unknown"
    assert down.warnings == ["The firmware on this board is unknown: Klipper is not connected "
                             "and octoflash has not written this board yet."]
    unmapped = _assess("", A_NEW, source="", klipper_object=None)
    assert "set klipper_mcu in [octoflash octopus]" in unmapped.warnings[0]


def test_notes_for_newer_and_dirty_firmware_and_update_all():
    ahead = _assess(A_NEW, A_OLD)
    assert ahead.update.state == "ahead" and not ahead.update.update_available
    assert any("newer than a build" in a for a in ahead.anomalies)
    dirty = _assess(A_OLD + "-dirty-20260101_120000-host", A_NEW, auto_update=True)
    assert dirty.update.state == "behind"
    assert dirty.anomalies == [f"The running firmware {A_OLD}-dirty was built from a checkout "
                               "with uncommitted changes."]
    skipped = _assess(A_OLD, A_NEW)
    assert any("'Update all' leaves this board alone" in a for a in skipped.anomalies)


def test_announcements_wait_for_klipper_to_report_a_board_it_knows():
    assert is_conclusive(_assess(A_OLD, A_NEW))
    assert not is_conclusive(_assess(A_OLD, A_NEW, source="last_flash"))
    assert is_conclusive(_assess(A_OLD, A_NEW, source="last_flash", klipper_object=None))
    assert not is_conclusive(_assess("?", A_NEW, source=""))


# --- what the clients conclude from an entry --------------------------------------------
# Read from Fluidd 192279a8 (src/store/version/getters.ts hasUpdate,
# src/components/settings/VersionStatus.vue, src/store/version/mutations.ts)
# and Mainsail df0ef3e3 (src/components/panels/Machine/UpdatePanel/Entry.vue).

def fluidd_has_update(entry: Dict[str, Any]) -> bool:
    version, remote = semver_valid(entry["version"]), semver_valid(entry["remote_version"])
    if version and remote:
        return semver_gt(remote, version)
    if "current_hash" in entry and "remote_hash" in entry:
        return entry["current_hash"] != entry["remote_hash"]
    return False


def fluidd_shows(entry: Dict[str, Any]) -> str:
    """Fluidd's chip or button: "UP TO DATE", "UPDATE", "DIRTY" or "INVALID"."""
    valid, dirty = entry.get("is_valid", True), entry.get("is_dirty", False)
    if not valid:
        return "INVALID"
    if dirty:
        return "DIRTY"
    return "UPDATE" if fluidd_has_update(entry) else "UP TO DATE"


def mainsail_shows(entry: Dict[str, Any]) -> str:
    """Mainsail's button for a "python" entry: "Update", "Unknown" or "Up-to-date"."""
    version, remote = semver_valid(entry["version"]), semver_valid(entry["remote_version"])
    if version and remote and semver_gt(remote, version):
        return "Update"
    if not version or not remote:
        return "Unknown"
    return "Up-to-date"


def fluidd_lines(client: MoonrakerWebsocket, start: int, app: str) -> List[str]:
    """The update dialog's lines in Fluidd: it keeps no text of the completing message."""
    return [n["params"][0]["message"] for n in client.notifications[start:]
            if n["method"] == "notify_update_response"
            and n["params"][0]["application"] == app and not n["params"][0]["complete"]]


# --- a real Moonraker, the real component, the simulated machine -----------------------

@pytest.fixture(scope="module")
def printer(tmp_path_factory: Any, linked_component: str, moonraker_python: str) -> Any:
    p = octopus_printer(str(tmp_path_factory.mktemp("updater")), moonraker_python)
    # A third CAN node Klipper uses ([mcu spare]) without a profile yet: the
    # tests make one through the API.
    p.add_board("spare", "spare", version=p.installed["octopus"], transport="can")
    p.start()
    p.mark_scene()
    yield p
    p.close()


@pytest.fixture
async def client(printer: SimulatedPrinter, ws_factory: Any) -> MoonrakerWebsocket:
    return await ws_factory(printer)


@pytest.fixture
async def scene(printer: SimulatedPrinter, client: MoonrakerWebsocket) -> Any:
    """``await scene(octopus=..., toolhead=...)``: the module's starting point, or
    the versions asked for; returns the time after which entries were read anew."""
    async def arranged(**versions: str) -> float:
        return await arrange(printer, client, **versions)
    return arranged


async def arrange(printer: SimulatedPrinter, client: MoonrakerWebsocket,
                  **wanted: str) -> float:
    """Bring the printer to the module's starting point (or the versions in
    ``wanted``, by board name) and wait until the entries have read it."""
    firmware = {"octopus": old(printer), "toolhead": new(printer), "spare": old(printer)}
    firmware.update(wanted)
    read_after = time.time()
    start = len(client.notifications)
    if printer.set_scene(firmware):               # Klipper restarted: the entries follow
        await client.wait_notification("notify_klippy_ready", start=start)
    else:
        for name in [n for n in await versions(client) if n.startswith("octoflash_")]:
            await refresh_when_ready(client, name)
    await wait_until(lambda: _entries_read_after(client, read_after), 30,
                     what="the entries read after the scene was set")
    return read_after


async def _entries_read_after(client: MoonrakerWebsocket, since: float) -> bool:
    info = await versions(client)
    ours = [e for name, e in info.items() if name.startswith("octoflash_")]
    return bool(ours) and all(e["octoflash"].get("checked", 0.0) > since for e in ours)


def old(printer: SimulatedPrinter) -> str:
    """The firmware the octopus came with: the checkout's version two commits back."""
    return printer.installed["octopus"]


def new(printer: SimulatedPrinter) -> str:
    """The checkout's version when the module started (what the toolhead came with)."""
    return printer.installed["toolhead"]


def as_published(describe: str) -> str:
    """How the entry publishes a git describe: ``v0.13.0-3-gabc`` -> ``v0.13.0-3+gabc``."""
    release, commit = describe.rsplit("-g", 1)
    return f"{release}+g{commit}"


async def versions(client: MoonrakerWebsocket) -> Dict[str, Any]:
    return (await client.call("machine.update.status"))["version_info"]


async def entry_when(client: MoonrakerWebsocket, name: str, check: Any,
                     timeout: float = 30.0) -> Any:
    async def probe() -> Any:
        entry = (await versions(client)).get(name)
        return entry if entry is not None and check(entry) else None
    return await wait_until(probe, timeout, what=f"{name} state")


def state_is(state: str, read_after: float = 0.0) -> Any:
    """The entry is in ``state`` by what Klipper reports, read after ``read_after``
    (after a Moonraker restart the entry first shows its saved state)."""
    return lambda e: e["octoflash"]["state"] == state and \
        e["octoflash"]["running_source"] == "klipper" and \
        e["octoflash"].get("checked", 0.0) > read_after


async def our_announcements(client: MoonrakerWebsocket) -> Dict[str, Any]:
    entries = (await client.call("server.announcements.list"))["entries"]
    return {e["feed"]: e for e in entries if e["feed"].startswith("octoflash/")}


def update_messages(client: MoonrakerWebsocket, start: int, app: str = "") -> List[str]:
    return [n["params"][0]["message"] for n in client.notifications[start:]
            if n["method"] == "notify_update_response"
            and (not app or n["params"][0]["application"] == app)]


async def final_response(client: MoonrakerWebsocket, app: str, start: int,
                         timeout: float = 30.0) -> Dict[str, Any]:
    """The ``complete`` update response of ``app`` (it may follow the call's answer)."""
    return await client.wait_notification(
        "notify_update_response", lambda r: r["application"] == app and r["complete"],
        timeout, start=start)


async def restart_klipper(printer: SimulatedPrinter, client: MoonrakerWebsocket) -> None:
    """Klipper restarts and reads its boards again (after ``set_firmware``)."""
    start = len(client.notifications)
    printer.restart_klipper()
    await client.wait_notification("notify_klippy_ready", start=start)


async def restart_moonraker(printer: SimulatedPrinter) -> None:
    """Stop and start Moonraker on the same data.  In a thread: on shutdown
    Moonraker waits for its websocket clients to answer the close, and the
    test's clients answer on this event loop."""
    await asyncio.to_thread(printer.restart)


async def refresh_when_ready(client: MoonrakerWebsocket, name: str, timeout: float = 60.0) -> Any:
    """``machine.update.refresh`` once Moonraker accepts it.

    Right after a start Moonraker answers 503 "Server is busy" until its own
    first refresh of every entry has ended; that state is not published, so
    the call itself is the probe.
    """
    async def refreshed() -> Any:
        try:
            return {"result": await client.call("machine.update.refresh", {"name": name})}
        except RpcError as exc:
            if exc.code != 503:
                raise
            return None
    return (await wait_until(refreshed, timeout, what="Moonraker accepting a refresh"))["result"]


async def test_one_entry_per_firmware_profile_with_what_the_clients_read(printer, client, scene):
    await scene()
    entry = await entry_when(client, "octoflash_octopus", state_is("behind"))
    info = await versions(client)
    assert "octoflash_toolhead" in info
    assert "octoflash_bootloader" not in info          # a bootloader is never an "update"
    # Fields Mainsail's Entry.vue and Fluidd's version getters read.
    assert entry["configured_type"] == "python"          # listed by both clients
    assert entry["is_valid"] is True and entry["is_dirty"] is False
    assert entry["corrupt"] is False and entry["detached"] is False
    assert entry["channel"] == "dev" and entry["commits_behind"] == []
    assert entry["info_tags"] == ["desc=octopus firmware (Octopus main board, [mcu])"]
    assert entry["version"] == as_published(old(printer))
    assert entry["remote_version"] == as_published(new(printer))
    old_commit, new_commit = old(printer).rsplit("-g", 1)[1], new(printer).rsplit("-g", 1)[1]
    assert entry["current_hash"] == old_commit and entry["remote_hash"] == new_commit
    assert entry["changelog_url"].endswith(
        f"/Klipper3d/klipper/compare/{old_commit}...{new_commit}")
    assert entry["octoflash"]["running_source"] == "klipper"
    assert entry["octoflash"]["running_version"] == old(printer)
    # The clients' semver rule offers exactly this update.
    assert clients_offer_update(entry["version"], entry["remote_version"])
    head = await entry_when(client, "octoflash_toolhead", state_is("up_to_date"))
    assert head["version"] == head["remote_version"] == as_published(new(printer))
    assert not clients_offer_update(head["version"], head["remote_version"])
    # printer.cfg says [mcu Toolhead], the profile klipper_mcu: toolhead;
    # the entry names the section as Klipper spells it.
    assert head["octoflash"]["klipper_object"] == "mcu Toolhead"
    assert head["info_tags"] == ["desc=toolhead firmware (CAN toolhead, [mcu Toolhead])"]
    # Only an outdated board that 'update all' skips has a note.
    assert head["anomalies"] == [] and entry["anomalies"] == []


async def test_this_moonraker_has_every_internal_the_entries_use(printer, client):
    """moonraker_internals.check() at start finds the Moonraker the tests run (0.11.0;
    0.10.0 in the Python 3.9 run) as the entries expect it: no warning."""
    info = await client.call("server.info")
    assert release_of(info["moonraker_version"]) in KNOWN_VERSIONS, info["moonraker_version"]
    assert not [w for w in info["warnings"] if "octoflash" in w], info["warnings"]
    assert f"Moonraker {info['moonraker_version']} has every internal the firmware entries use" \
        in printer.output()


async def test_a_profile_naming_only_its_klipper_mcu_finds_it_in_any_case(printer, client,
                                                                           scene):
    await scene()
    # No canbus_uuid or serial: only the name (in another case) finds the board.
    await client.call("server.octoflash.post_profile", {
        "name": "head", "preset": "btt-octopus-f446-canbridge", "klipper_mcu": "TOOLHEAD"})
    try:
        entry = await entry_when(client, "octoflash_head", state_is("up_to_date"))
        assert entry["octoflash"]["klipper_object"] == "mcu Toolhead"
        assert entry["version"] == as_published(new(printer))
    finally:
        await client.call("server.octoflash.delete_profile", {"name": "head"})
    await wait_until(lambda: _entry_gone(client, "octoflash_head"), 10, what="entry removed")


async def test_announcement_names_the_profile_and_both_versions(printer, client, scene):
    await scene()                                    # only the octopus is behind
    note = await scene_announcement(printer, client)
    assert sorted(await our_announcements(client)) == ["octoflash/octopus"]
    assert "octopus" in note["title"]
    assert old(printer) in note["description"] and new(printer) in note["description"]
    # Fluidd's bell shows a few lines of it above the link
    assert len(note["description"]) <= 180 and "octoflash_octopus" in note["description"]
    assert note["priority"] == "normal" and note["source"] == "internal"


async def test_update_button_builds_flashes_and_streams_to_the_end(printer, client, scene):
    await scene()
    # a commit of its own: whatever earlier tests built, this update compiles
    head = printer.commit_to_source("the update button")
    await refresh_when_ready(client, "octoflash_octopus")
    await entry_when(client, "octoflash_octopus",
                     lambda e: e["remote_version"] == as_published(head))
    start = len(client.notifications)
    since = time.time()
    assert await client.call("machine.update.upgrade", {"name": "octoflash_octopus"},
                             timeout=180) == "ok"
    await final_response(client, "octoflash_octopus", start)
    # the result is the last line Fluidd shows too, before the completing message
    assert fluidd_lines(client, start, "octoflash_octopus")[-1].endswith(
        f"firmware updated, the board runs {head}")
    responses = [n["params"][0] for n in client.notifications[start:]
                 if n["method"] == "notify_update_response"
                 and n["params"][0]["application"] == "octoflash_octopus"]
    assert responses[-1]["complete"] is True
    assert all(not r["complete"] for r in responses[:-1])
    text = "\n".join(r["message"] for r in responses)
    for expected in ("[build]", "src/sched.o", "Built klipper.bin for octopus",
                     "[stop_klipper]", "[write_katapult]", "100%", "Programming Complete",
                     "[start_klipper]"):
        assert expected in text, expected
    assert printer.written_boards(since) == ["octopus"]
    assert printer.running_version("octopus") == head
    entry = (await versions(client))["octoflash_octopus"]
    assert entry["version"] == entry["remote_version"] == as_published(head)
    assert entry["octoflash"]["state"] == "up_to_date"
    # The clients were told to read the new state, and the announcement went.
    await client.wait_notification(
        "notify_update_refreshed",
        lambda p: p["version_info"]["octoflash_octopus"]["octoflash"]["state"] == "up_to_date",
        start=start)
    await wait_until(lambda: _no_announcement(client, "octoflash/octopus"), 10,
                     what="the octopus announcement removed")


async def _no_announcements(client: MoonrakerWebsocket) -> bool:
    return not await our_announcements(client)


async def test_update_of_an_up_to_date_board_writes_nothing(printer, client, scene):
    await scene()
    await entry_when(client, "octoflash_toolhead", state_is("up_to_date"))
    start = len(client.notifications)
    since = time.time()
    assert await client.call("machine.update.client", {"name": "octoflash_toolhead"}) == "ok"
    await final_response(client, "octoflash_toolhead", start)
    assert "already up to date" in fluidd_lines(client, start, "octoflash_toolhead")[-1]
    assert printer.written_boards(since) == []
    entry = (await versions(client))["octoflash_toolhead"]
    assert (fluidd_shows(entry), mainsail_shows(entry)) == ("UP TO DATE", "Up-to-date")


async def test_klipper_down_shows_the_last_flashed_firmware(printer, client, scene):
    # The octopus is flashed by octoflash; a profile made now for the spare
    # board never was.
    await scene()
    await _update(printer, client, "octoflash_octopus")
    never = f"never{int(time.time() * 1000) % 100000}"
    await client.call("server.octoflash.post_profile", {
        "name": never, "preset": "btt-octopus-f446-canbridge", "klipper_mcu": "spare",
        "canbus_uuid": printer.board("spare").canbus_uuid, "kconfig": dict(CAN_NODE_OVERRIDES)})
    await entry_when(client, f"octoflash_{never}", state_is("behind"))
    printer.stop_klipper()
    try:
        entry = await entry_when(client, "octoflash_octopus",
                                 lambda e: e["octoflash"]["running_source"] == "last_flash")
        assert entry["octoflash"]["running_version"] == new(printer)
        assert any("octoflash wrote " + new(printer) in a for a in entry["anomalies"])
        head = await entry_when(client, f"octoflash_{never}",
                                lambda e: e["octoflash"]["running_source"] == "")
        assert head["version"] == "?"
        assert any("Klipper is not connected" in w for w in head["warnings"])
        assert not clients_offer_update(head["version"], head["remote_version"])
        # unknown firmware never looks up to date: Mainsail says "Unknown";
        # Fluidd, which falls back on the hashes, offers Update (no chip)
        assert mainsail_shows(head) == "Unknown"
        assert fluidd_shows(head) == "UPDATE"
        assert head["channel"] != "dev" and "changelog_url" not in head or \
            "/commits/" in head["changelog_url"]
    finally:
        start = len(client.notifications)
        printer.start_klipper()
        await client.wait_notification("notify_klippy_ready", start=start)
        await client.call("server.octoflash.delete_profile", {"name": never})


async def _update(printer: SimulatedPrinter, client: MoonrakerWebsocket, app: str) -> None:
    """The Update button of ``app``, to its end: the board runs the checkout's version."""
    start = len(client.notifications)
    assert await client.call("machine.update.upgrade", {"name": app}, timeout=180) == "ok"
    await final_response(client, app, start)
    assert printer.running_version(app[len("octoflash_"):]) == printer.describe()


async def test_update_is_refused_while_printing(printer, client, scene):
    await scene()
    printer.set_firmware("octopus", old(printer))
    await restart_klipper(printer, client)
    await entry_when(client, "octoflash_octopus", state_is("behind"))
    printer.set_print_state("printing", "benchy.gcode")
    since = time.time()
    try:
        await wait_until(lambda: _printing(client), 10, what="Moonraker to see the print")
        with pytest.raises(RpcError) as err:
            await client.call("machine.update.upgrade", {"name": "octoflash_octopus"})
        # Moonraker's update manager refuses first ("Klippy is printing").
        assert "printing" in err.value.message
        assert printer.written_boards(since) == []
    finally:
        printer.set_print_state("standby")


async def _printing(client: MoonrakerWebsocket) -> bool:
    status = await client.call("printer.objects.query", {"objects": {"print_stats": ["state"]}})
    return status["status"]["print_stats"]["state"] == "printing"


async def test_a_can_node_klipper_names_in_other_case_is_updated(printer, client, scene):
    await scene()
    printer.set_firmware("toolhead", old(printer))
    await restart_klipper(printer, client)
    head = await entry_when(client, "octoflash_toolhead", state_is("behind"))
    assert head["version"] == as_published(old(printer))
    assert head["octoflash"]["klipper_object"] == "mcu Toolhead"
    start = len(client.notifications)
    since = time.time()
    assert await client.call("machine.update.upgrade", {"name": "octoflash_toolhead"},
                             timeout=180) == "ok"
    await final_response(client, "octoflash_toolhead", start)
    assert fluidd_lines(client, start, "octoflash_toolhead")[-1].endswith(
        f"firmware updated, the board runs {new(printer)}")
    text = "\n".join(update_messages(client, start, "octoflash_toolhead"))
    assert "[request_bootloader]" in text and "Programming Complete" in text
    assert printer.written_boards(since) == ["toolhead"]
    assert printer.running_version("toolhead") == new(printer)


async def test_changed_profile_counts_as_an_update(printer, client, scene):
    await scene()                                    # the spare board is behind
    # A profile made through the API gets its entry; once flashed, changing
    # its settings makes its firmware outdated although the checkout is not.
    spare = printer.board("spare")
    profile: Dict[str, Any] = {
        "name": "spare", "preset": "btt-octopus-f446-canbridge", "klipper_mcu": "spare",
        "canbus_uuid": spare.canbus_uuid, "kconfig": dict(CAN_NODE_OVERRIDES)}
    start = len(client.notifications)
    await client.call("server.octoflash.post_profile", profile)
    await entry_when(client, "octoflash_spare", state_is("behind"))
    assert await client.call("machine.update.upgrade", {"name": "octoflash_spare"},
                             timeout=180) == "ok"
    await final_response(client, "octoflash_spare", start)
    await entry_when(client, "octoflash_spare", state_is("up_to_date"))
    assert printer.running_version("spare") == new(printer)

    profile["kconfig"]["CONFIG_INITIAL_PINS"] = "\"PA1\""
    await client.call("server.octoflash.post_profile", profile)
    entry = await entry_when(client, "octoflash_spare", state_is("differs"))
    assert entry["version"] == as_published(new(printer))
    release, commit = new(printer).rsplit("-g", 1)
    assert entry["remote_version"] == f"{release}.profile-changed+g{commit}"
    assert clients_offer_update(entry["version"], entry["remote_version"])
    assert any("auto_update: True" in a for a in entry["anomalies"])
    notes = await wait_until(lambda: our_announcements(client), 10, what="announcement")
    assert "settings changed" in notes["octoflash/spare"]["description"]

    # Deleting the profile removes its entry and its announcement.
    await client.call("server.octoflash.delete_profile", {"name": "spare"})
    await wait_until(lambda: _entry_gone(client, "octoflash_spare"), 10, what="entry removed")
    await wait_until(lambda: _no_announcement(client, "octoflash/spare"), 10,
                     what="announcement removed")


async def _entry_gone(client: MoonrakerWebsocket, name: str) -> bool:
    return name not in await versions(client)


async def _no_announcement(client: MoonrakerWebsocket, feed: str) -> bool:
    return feed not in await our_announcements(client)


async def test_update_all_flashes_only_auto_update_profiles(printer, client, scene):
    await scene()
    printer.set_firmware("octopus", old(printer))
    printer.set_firmware("toolhead", old(printer))
    await restart_klipper(printer, client)
    await entry_when(client, "octoflash_toolhead", state_is("behind"))
    await entry_when(client, "octoflash_octopus", state_is("behind"))
    start = len(client.notifications)
    since = time.time()
    assert await client.call("machine.update.full", timeout=180) == "ok"
    # The firmware is built after the full update (Klipper's own update first).
    done = await client.wait_notification(
        "notify_update_response",
        lambda r: not r["complete"] and "after 'update all'" in r["message"], 120, start=start)
    assert "1 board(s) flashed" in done["message"]
    await client.wait_notification("notify_update_response", lambda r: r["complete"], 30,
                                   start=start)
    assert printer.written_boards(since) == ["octopus"]
    messages = update_messages(client, start)
    assert any("octoflash_toolhead: skipped by 'update all'" in m for m in messages)
    # Moonraker's full update ends before the build starts.
    complete = messages.index("Full Update Complete")
    assert complete < next(i for i, m in enumerate(messages) if m.startswith("[build]"))
    head = await entry_when(client, "octoflash_toolhead", state_is("behind"))
    assert head["version"] == as_published(old(printer))
    await entry_when(client, "octoflash_octopus", state_is("up_to_date"))
    # Only the board left behind is still announced.
    await wait_until(lambda: _announced(client, ["octoflash/toolhead"]), 10,
                     what="only the toolhead announced")


async def _announced(client: MoonrakerWebsocket, feeds: List[str]) -> bool:
    return sorted(await our_announcements(client)) == feeds


async def test_update_is_refused_when_the_board_cannot_be_reached(printer, client, scene):
    # The toolhead is written by octoflash with new(printer); then the
    # checkout moves on and the board goes dark: Klipper waits for it in
    # startup, the entry offers the update from octoflash's record, and the
    # Update button says why nothing can be written.
    await scene(toolhead=old(printer))
    await _update(printer, client, "octoflash_toolhead")
    printer.commit_to_source("src/sched.c: a fix")
    toolhead = printer.board("toolhead")
    toolhead.set_mode("off")
    try:
        printer.restart_klipper()
        entry = await entry_when(
            client, "octoflash_toolhead",
            lambda e: e["octoflash"]["running_source"] == "last_flash"
            and e["octoflash"]["state"] == "behind")
        assert entry["octoflash"]["running_version"] == new(printer)
        start = len(client.notifications)
        since = time.time()
        with pytest.raises(RpcError) as err:
            await client.call("machine.update.upgrade", {"name": "octoflash_toolhead"})
        assert "cannot be reached" in err.value.message
        await final_response(client, "octoflash_toolhead", start)
        assert "cannot be reached" in fluidd_lines(client, start, "octoflash_toolhead")[-1]
        assert printer.written_boards(since) == []
    finally:
        toolhead.reset()
        await restart_klipper(printer, client)


async def test_dismissed_announcement_survives_a_moonraker_restart(printer, client, scene,
                                                                    ws_factory):
    await scene()                                    # the octopus is behind: announced
    notes = await scene_announcement(printer, client)
    start = len(client.notifications)
    await client.call("server.announcements.dismiss", {"entry_id": notes["entry_id"]})
    # Restart once the bell shows it dismissed, as a user would (Moonraker
    # queues the database write without waiting for it).
    await client.wait_notification("notify_announcement_dismissed",
                                   lambda p: p["entry_id"] == notes["entry_id"], 10, start=start)
    restarted = time.time()
    await restart_moonraker(printer)
    again = await ws_factory(printer)
    await entry_when(again, "octoflash_octopus", state_is("behind", restarted))
    await refresh_when_ready(again, "octoflash_octopus")
    after = await _announcement(again, "octoflash/octopus")
    assert (after["entry_id"], after["dismissed"]) == (notes["entry_id"], True)


async def _announcement(client: MoonrakerWebsocket, feed: str) -> Any:
    return (await our_announcements(client)).get(feed)


async def scene_announcement(printer: SimulatedPrinter, client: MoonrakerWebsocket) -> Any:
    """The octopus's announcement once it tells the scene's versions: one left
    by an earlier test with other versions is replaced (a new entry id) when
    the entries' refresh after the scene reaches the bell."""
    async def told() -> Any:
        note = await _announcement(client, "octoflash/octopus")
        text = f"It runs {old(printer)}; a build would give {new(printer)}. "
        return note if note and note["description"].startswith(text) else None
    return await wait_until(told, 20, what="the octopus announced with the scene's versions")


async def test_announcements_can_be_turned_off(printer, client, scene, ws_factory):
    await scene()
    await wait_until(lambda: our_announcements(client), 20, what="an announcement")
    printer.octoflash_options["announcements"] = "False"
    try:
        restarted = time.time()
        await restart_moonraker(printer)
        quiet = await ws_factory(printer)
        entry = await entry_when(quiet, "octoflash_octopus", state_is("behind", restarted))
        assert clients_offer_update(entry["version"], entry["remote_version"])
        await wait_until(lambda: _no_announcements(quiet), 10, what="announcements removed")
    finally:
        del printer.octoflash_options["announcements"]
        await restart_moonraker(printer)


async def test_update_all_flashes_after_a_moonraker_restart(printer, client, scene, ws_factory):
    # Moonraker restarts at the end of a full update that updated Moonraker
    # itself; the firmware flashes it deferred run after the restart.
    await scene()
    await entry_when(client, "octoflash_octopus", state_is("behind"))
    printer.stop_klipper()                       # the flashes wait for Klipper
    start = len(client.notifications)
    since = time.time()
    assert await client.call("machine.update.full", timeout=60) == "ok"
    await client.wait_notification("notify_update_response",
                                   lambda r: "will be built and flashed" in r["message"], 10,
                                   start=start)
    await asyncio.to_thread(printer.stop)     # see restart_moonraker
    assert printer.written_boards(since) == []
    await asyncio.to_thread(printer.start)
    client = await ws_factory(printer)
    printer.start_klipper()
    done = await client.wait_notification(
        "notify_update_response",
        lambda r: not r["complete"] and "after 'update all'" in r["message"], 120)
    assert "1 board(s) flashed" in done["message"], update_messages(client, 0)
    assert printer.written_boards(since) == ["octopus"]
    assert printer.running_version("octopus") == printer.describe()



async def test_a_failed_flash_says_how_to_recover_and_offers_update_again(printer, client,
                                                                         scene):
    await scene(toolhead=old(printer))
    # The toolhead is behind.  Its write fails half way:
    # the update ends with the failure in a line both clients show, and the
    # entry tells what happened and offers the way forward in both clients.
    await entry_when(client, "octoflash_toolhead", state_is("behind"))
    toolhead = printer.board("toolhead")
    toolhead.set_fault("katapult_write_error")
    start = len(client.notifications)
    try:
        with pytest.raises(RpcError):
            await client.call("machine.update.upgrade", {"name": "octoflash_toolhead"},
                              timeout=180)
        await final_response(client, "octoflash_toolhead", start)
        assert "FAILED: flash failed" in fluidd_lines(client, start, "octoflash_toolhead")[-1]
    finally:
        toolhead.set_fault("katapult_write_error", False)
    entry = await entry_when(client, "octoflash_toolhead",
                             lambda e: e["octoflash"]["state"] == "unknown")
    assert any("last flash of it failed" in w and "Update flashes it again" in w
               for w in entry["warnings"]), entry["warnings"]
    assert not any("has not written this board" in w for w in entry["warnings"])
    assert (mainsail_shows(entry), fluidd_shows(entry)) == ("Unknown", "UPDATE")
    # Update writes it again
    start = len(client.notifications)
    assert await client.call("machine.update.upgrade", {"name": "octoflash_toolhead"},
                             timeout=180) == "ok"
    await final_response(client, "octoflash_toolhead", start)
    lines = fluidd_lines(client, start, "octoflash_toolhead")
    assert any("writing it again" in line for line in lines)
    assert "firmware updated, the board runs" in lines[-1]
    entry = await entry_when(client, "octoflash_toolhead", state_is("up_to_date"))
    assert fluidd_shows(entry) == "UP TO DATE"
