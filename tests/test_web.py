"""octoflash's web page in real headless Chromium, served by a real Moonraker.

Chromium is driven over the Chrome DevTools protocol (its websocket, with
tornado); the page talks to Moonraker exactly as in a user's browser.  The
machine behind it is the one of the update-manager tests
(``octopus_printer``): the real component building from a Klipper-like
checkout and flashing simulated boards through the ``flashtool.py``
double, with a Klipper stand-in.  The module shares one Moonraker; the
tests run in file order.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

import pytest

from fixtures_browser import CHROMIUM, Browser
from fixtures_moonraker import SimulatedPrinter, octopus_printer
from moonraker_octoflash.moonraker.web import NAVI_ICON, PAGE_PATH, add_navi_link

pytestmark = [pytest.mark.browser, pytest.mark.moonraker,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")]


@pytest.fixture(scope="module")
def printer(tmp_path_factory: Any, linked_component: str, moonraker_python: str) -> Any:
    p = octopus_printer(str(tmp_path_factory.mktemp("web")), moonraker_python)
    p.start()
    p.wait_klippy_ready()
    yield p
    p.close()


def old(printer: SimulatedPrinter) -> str:
    """The firmware the octopus came with: the checkout's version two commits back."""
    return printer.installed["octopus"]


def new(printer: SimulatedPrinter) -> str:
    """The checkout's version (what the toolhead came with)."""
    return printer.installed["toolhead"]


@pytest.fixture
async def browser(tmp_path: Any, printer: SimulatedPrinter) -> Any:
    b = await Browser(str(tmp_path / "chromium")).start()
    await b.open(printer.base_url + PAGE_PATH)
    await b.wait_js("document.querySelectorAll('#profiles tbody tr').length === 3",
                    what="the profiles table")
    yield b
    errors = b.exceptions + b.console_errors
    await b.close()
    assert errors == [], errors


def row_text(name: str, column: str) -> str:
    return f"document.querySelector('tr[data-profile=\"{name}\"] td.{column}').textContent"


def test_page_files_are_served_with_their_types(printer):
    for suffix, kind in (("", "text/html"), ("/script", "application/javascript"),
                         ("/style", "text/css")):
        with urllib.request.urlopen(printer.base_url + PAGE_PATH + suffix, timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith(kind)
            assert "attachment" not in (r.headers.get("Content-Disposition") or "")
            assert len(r.read()) > 500


async def test_page_lists_boards_with_versions_and_state(printer, browser):
    await browser.wait_js("document.getElementById('connection').textContent === 'connected'")
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'update available'")
    assert await browser.js(row_text("octopus", "running")) == old(printer)
    assert await browser.js(row_text("octopus", "pending")) == new(printer)
    uuid = printer.board("octopus").canbus_uuid
    assert (await browser.js(row_text("octopus", "connection"))).startswith(f"CAN {uuid}")
    await browser.wait_js(f"{row_text('toolhead', 'state')} === 'up to date'")
    assert "Katapult" in await browser.js(
        "document.querySelector('tr[data-profile=\"bootloader\"]').textContent")
    assert (await browser.js("document.getElementById('klipper-state').textContent")) \
        == "Klipper: ready"


async def test_flash_from_the_page_shows_live_progress(printer, browser):
    # Record what the job panel shows while the job runs.
    await browser.js("""
        window.__seen = [];
        new MutationObserver(function () {
          window.__seen.push(document.getElementById('job-stage').textContent + '|' +
                             document.getElementById('job-percent').textContent);
        }).observe(document.getElementById('job'), {subtree: true, childList: true,
                                                    characterData: true});
        true""")
    await browser.js("document.querySelector('tr[data-profile=\"octopus\"] "
                     "button[data-action=flash]').click()")
    text = await browser.wait_js("!document.getElementById('confirm').hidden && "
                                 "document.getElementById('confirm-text').textContent")
    assert "octopus" in text and new(printer) in text
    assert printer.result("GET", "/server/octoflash/jobs")["jobs"] == []   # not before "yes"
    since = time.time()
    # Katapult's write takes half a second here, long enough to watch it move.
    printer.machine.tool_delay = 0.5
    try:
        await browser.js("document.getElementById('confirm-yes').click()")
        await browser.wait_js("document.getElementById('job-state').textContent === 'done'",
                              90, what="the flash job to finish")
    finally:
        printer.machine.tool_delay = 0.05
    assert printer.written_boards(since) == ["octopus"]
    seen = await browser.js("window.__seen")
    between = [s for s in seen if s.startswith("write|") and s.endswith(" %")
               and 0 < int(s.split("|")[1][:-2]) < 100]
    assert between, seen
    assert "write|100 %" in seen
    # Live, the page gets an output line at most every 0.2 s; once the job
    # ends it shows the job's whole log, the tool's last line included.
    log = await browser.wait_js(
        "document.getElementById('job-log').textContent.indexOf('Programming Complete') >= 0"
        " && document.getElementById('job-log').textContent", 15,
        what="the whole log after the job ended")
    for step in ("[build] building octopus", "[compile] make", "[stop_klipper] Stop Klipper",
                 "[write_katapult] Write klipper.bin through Katapult", "[start_klipper]"):
        assert step in log, (step, log)
    assert "  Compiling " in log, log
    # The board's row follows: Klipper restarted with the new firmware.
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'up to date'", 30)
    assert await browser.js(row_text("octopus", "running")) == new(printer)
    first = await browser.wait_js(
        "document.querySelector('#history tbody tr') && "
        "document.querySelector('#history tbody tr').textContent")
    assert "flash" in first and "octopus" in first and "done" in first


async def test_history_shows_a_job_with_its_steps(printer, browser):
    await browser.wait_js("document.querySelectorAll('#history tbody tr').length > 0")
    await browser.js("document.querySelector('#history tbody tr').click()")
    steps = await browser.wait_js(
        "!document.getElementById('job-detail').hidden && "
        "Array.from(document.querySelectorAll('#detail-steps li')).map(l => l.textContent)")
    assert any(s.startswith("build: done") for s in steps), steps
    assert any(s.startswith("write: done") for s in steps), steps


async def test_devices_are_listed(printer, browser):
    await browser.js("document.getElementById('scan').click()")
    items = await browser.wait_js(
        "Array.from(document.querySelectorAll('#device-list li')).map(l => l.textContent)")
    for section, board in (("mcu", "octopus"), ("mcu Toolhead", "toolhead")):
        expected = f"Klipper [{section}]: {printer.running_version(board)} (stm32f446xx)"
        assert expected in items, items
    assert "CAN interface can0 up" in items, items


async def test_refused_flash_says_why(printer, browser):
    printer.set_print_state("printing", "benchy.gcode")
    since = time.time()
    try:
        await browser.js("document.querySelector('tr[data-profile=\"toolhead\"] "
                         "button[data-action=flash]').click()")
        await browser.wait_js("!document.getElementById('confirm').hidden")
        await browser.js("document.getElementById('confirm-yes').click()")
        message = await browser.wait_js("!document.getElementById('action-error').hidden && "
                                        "document.getElementById('action-error').textContent")
        assert "printing" in message and "benchy.gcode" in message
        assert printer.written_boards(since) == []
    finally:
        printer.set_print_state("standby")


async def test_a_job_started_elsewhere_is_followed(printer, browser, ws_factory):
    # The update manager's Update button, pressed in Mainsail while the page is open.
    printer.set_firmware("octopus", old(printer))
    printer.restart_klipper()
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'update available'", 30)
    before = await browser.js("document.getElementById('job-title').textContent")
    client = await ws_factory(printer)
    await client.call("machine.update.upgrade", {"name": "octoflash_octopus"}, timeout=180)
    title = await browser.wait_js(
        "document.getElementById('job-state').textContent === 'done' && "
        f"document.getElementById('job-title').textContent !== {json.dumps(before)} && "
        "document.getElementById('job-title').textContent", 30)
    assert title.startswith("flash octopus")
    log = await browser.js("document.getElementById('job-log').textContent")
    assert "[write_katapult] Write klipper.bin through Katapult" in log, log
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'up to date'", 30)


async def test_a_stale_api_key_on_a_trusted_computer_is_forgotten(printer, browser):
    # A key kept in the tab from before Moonraker's key changed: Moonraker
    # refuses it (and the trust of that connection); the page tries again without.
    await browser.js("sessionStorage.setItem('octoflash.api_key', 'an-old-key'); "
                     "window.octoflashOldPage = true; true")
    await browser.send("Page.reload")
    # Page.reload returns before the new page runs: wait for the reloaded page
    # (it has no mark) to be connected.
    await browser.wait_js("!window.octoflashOldPage && !!document.getElementById('connection') && "
                          "document.getElementById('connection').textContent === 'connected'",
                          what="the reloaded page connected")
    assert await browser.js("document.getElementById('login').hidden") is True
    # Moonraker 0.11 refuses a wrong key even from a trusted address, and the
    # page then forgets it; 0.10 lets the trusted address in, key or not.
    version = printer.result("GET", "/server/info")["moonraker_version"]
    if not version.lstrip("v").startswith("0.10"):
        await browser.wait_js("sessionStorage.getItem('octoflash.api_key') === null",
                              what="the old key forgotten")


def test_mainsail_sidebar_link_is_added_once_and_keeps_other_links(tmp_path):
    theme = tmp_path / ".theme"
    theme.mkdir()
    other = {"title": "Camera", "href": "http://cam.local", "icon": "M0,0"}
    (theme / "navi.json").write_text(json.dumps([other]))
    path = add_navi_link(str(tmp_path))
    first = json.loads(open(path).read())
    assert first[0] == other
    assert first[1]["href"] == PAGE_PATH and first[1]["icon"] == NAVI_ICON
    assert first[1]["target"] == "_blank"
    add_navi_link(str(tmp_path))
    assert json.loads(open(path).read()) == first


def test_sidebar_link_refuses_a_file_it_cannot_read(tmp_path):
    theme = tmp_path / ".theme"
    theme.mkdir()
    (theme / "navi.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON list"):
        add_navi_link(str(tmp_path))
    assert (theme / "navi.json").read_text() == "{not json"
