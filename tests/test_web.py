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

import asyncio

import json
import os
import time
import urllib.request
from typing import Any

import pytest

from fixtures_browser import CHROMIUM, Browser
from fixtures_moonraker import CAN_NODE_OVERRIDES, SimulatedPrinter, octopus_printer, wait_until
from moonraker_octoflash.moonraker.web import NAVI_ICON, PAGE_PATH, add_navi_link

pytestmark = [pytest.mark.browser, pytest.mark.moonraker,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")]


@pytest.fixture(scope="module")
def printer(tmp_path_factory: Any, linked_component: str, moonraker_python: str) -> Any:
    p = octopus_printer(str(tmp_path_factory.mktemp("web")), moonraker_python)
    # A CAN toolhead waiting in Katapult that no profile names yet: the page
    # adds it ("add this board").
    p.add_board("spare", None, version=p.describe(), transport="can",
                mcu="stm32f446xx").enter_bootloader()
    p.start()
    p.wait_klippy_ready()
    p.mark_scene()
    yield p
    p.close()


@pytest.fixture
def scene(printer: SimulatedPrinter) -> SimulatedPrinter:
    """The module's starting point for this test, whatever earlier tests did: the
    octopus two commits behind the checkout, the toolhead on it, Klipper ready."""
    if printer.set_scene({"octopus": old(printer), "toolhead": new(printer)}):
        printer.wait_klippy_ready()
    return printer


def old(printer: SimulatedPrinter) -> str:
    """The firmware the octopus came with: the checkout's version two commits back."""
    return printer.installed["octopus"]


def new(printer: SimulatedPrinter) -> str:
    """The checkout's version (what the toolhead came with)."""
    return printer.installed["toolhead"]


@pytest.fixture
async def browser(printer: SimulatedPrinter) -> Any:
    b = await Browser().start()
    await b.open(printer.base_url + PAGE_PATH)
    await b.wait_js("document.querySelectorAll('#boards [data-profile]').length >= 3",
                    what="the boards")
    yield b
    errors = b.exceptions + b.console_errors
    await b.close()
    assert errors == [], errors


def free_spare(printer: SimulatedPrinter) -> Any:
    """The spare CAN board as the module began: waiting in Katapult, no API
    profile naming it (whatever earlier tests made of it)."""
    spare = printer.board("spare")
    for profile in printer.result("GET", "/server/octoflash/profiles")["profiles"]:
        if profile.get("canbus_uuid") == spare.canbus_uuid and profile["source"] == "api":
            printer.delete("/server/octoflash/profile", name=profile["name"])
    if spare.mode != "katapult":
        spare.enter_bootloader()
    return spare


async def record_job_panel(browser: Any, into: str, part: str) -> None:
    """Keep in ``window[into]`` every "<part's text>|<percent>" the job panel shows."""
    await browser.js(f"""
        window.{into} = [];
        new MutationObserver(function () {{
          window.{into}.push(document.getElementById('{part}').textContent + '|' +
                             document.getElementById('job-percent').textContent);
        }}).observe(document.getElementById('job'), {{subtree: true, childList: true,
                                                      characterData: true}});
        true""")


def addable(uuid: str) -> str:
    """Is the CAN node listed among the devices with an "Add this board" button?"""
    return ("Array.from(document.querySelectorAll('#device-list li')).some(l => "
            f"l.textContent.indexOf('CAN node {uuid}') === 0 && "
            "l.querySelector('button[data-action=add-device]'))")


async def click_scan(browser: Any) -> None:
    """Press Scan once no scan is running, and wait for its result: the button is
    disabled from the click until the list shows what this scan found (reading
    the list before would read the previous scan's)."""
    await browser.wait_js("!document.getElementById('scan').disabled", what="Scan enabled")
    assert await browser.js("document.getElementById('scan').click(); "
                            "document.getElementById('scan').disabled")
    await browser.wait_js("!document.getElementById('scan').disabled", 30,
                          what="the scan's result")


def card(name: str, part: str = "") -> str:
    return f"document.querySelector('#boards [data-profile=\"{name}\"] {part}'.trim())"


def row_text(name: str, part: str) -> str:
    return f"{card(name, '.' + part)}.textContent"


def button_of(name: str, action: str) -> str:
    return card(name, f"button[data-action={action}]")


def test_page_files_are_served_with_their_types(printer):
    for suffix, kind in (("", "text/html"), ("/script", "application/javascript"),
                         ("/style", "text/css"), ("/rpc.js", "application/javascript"),
                         ("/boards.js", "application/javascript")):
        with urllib.request.urlopen(printer.base_url + PAGE_PATH + suffix, timeout=5) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith(kind)
            assert "attachment" not in (r.headers.get("Content-Disposition") or "")
            assert len(r.read()) > 500


async def test_page_lists_boards_with_versions_and_state(scene, browser):
    printer = scene
    await browser.wait_js("document.getElementById('connection').textContent === 'connected'")
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'update available'")
    assert await browser.js(row_text("octopus", "running")) == old(printer)
    assert await browser.js(row_text("octopus", "pending")) == new(printer)
    uuid = printer.board("octopus").canbus_uuid
    assert (await browser.js(row_text("octopus", "connection"))).startswith(f"CAN {uuid}")
    await browser.wait_js(f"{row_text('toolhead', 'state')} === 'up to date'")
    # every state says why and what to do
    why = await browser.js(f"{card('octopus', '.state')}.title")
    assert "older Klipper" in why and "Flash it" in why
    explained = await browser.js(row_text("octopus", "explain"))
    assert "update available: The board runs an older Klipper" in explained
    assert "Katapult" in await browser.js(f"{card('bootloader')}.textContent")
    assert (await browser.js("document.getElementById('klipper-state').textContent")) \
        == "Klipper: ready"


async def test_flash_from_the_page_shows_the_plan_then_real_progress(scene, browser):
    printer = scene
    # a commit of its own: whatever earlier tests built, the plan starts with a build
    head = printer.commit_to_source("the page's plan")
    # Record what the job panel shows while the job runs.
    await record_job_panel(browser, "__seen", "job-stage")
    await browser.js(f"{button_of('octopus', 'flash')}.click()")
    steps = await browser.wait_js(
        "!document.getElementById('confirm').hidden && "
        "document.querySelectorAll('#confirm .plan-steps li').length > 0 && "
        "Array.from(document.querySelectorAll('#confirm .plan-steps li')).map(l => l.textContent)",
        what="the plan")
    # never built: the build comes first, with its commands
    assert steps[0].startswith("Build 'octopus'") and "make olddefconfig" in steps[0], steps
    assert steps[1].startswith("Compile klipper for stm32f446") and "make -j" in steps[1], steps
    assert steps[2].startswith("Stop Klipper"), steps
    assert any(s.startswith("Ask the bridge") and "flashtool.py" in s and " -r" in s
               for s in steps), steps
    assert any(s.startswith("Write klipper.bin through Katapult") and "$ " in s for s in steps)
    jobs_before = printer.result("GET", "/server/octoflash/jobs")["jobs"]
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
    # one job, started by "yes"
    assert len(printer.result("GET", "/server/octoflash/jobs")["jobs"]) == len(jobs_before) + 1
    writing = [s for s in seen if s.startswith("Writing ") and s.endswith(" %")]
    between = [s for s in writing if 0 < int(s.split("|")[1][:-2]) < 100]
    assert between, seen
    assert any(s.endswith("|100 %") for s in writing), seen
    assert any(s.startswith("Verifying ") and s.endswith("|100 %") for s in seen), seen
    # no internal step names in the panel
    assert not any(s.split("|")[0] in ("write_katapult", "request_bootloader", "write")
                   for s in seen), seen
    assert any(s.startswith("Asking octopus to enter its bootloader") for s in seen), seen
    # Once the job ends the page shows its whole log, scrolled to its end.
    log = await browser.wait_js(
        "document.getElementById('job-log').textContent.indexOf('Programming Complete') >= 0"
        " && document.getElementById('job-log').textContent", 15,
        what="the whole log after the job ended")
    assert "Compiling " in log, log
    await browser.wait_js("(function (p) { return p.scrollHeight > p.clientHeight && "
                          "p.scrollTop + p.clientHeight >= p.scrollHeight - 2; })"
                          "(document.getElementById('job-log'))", 10,
                          what="the log's last line in view")
    # The result stays until dismissed.
    result = await browser.wait_js("!document.getElementById('result').hidden && "
                                   "document.getElementById('result-title').textContent")
    assert result == "Flash octopus: done"
    # The job record has the write's real percentages, not its first "2%".
    job = printer.result("GET", "/server/octoflash/jobs")["jobs"][0]
    record = printer.result("GET", "/server/octoflash/job", args={"job_id": job["job_id"]})["job"]
    write = next(s for s in record["steps"] if s["stage"] == "write")
    assert write["percent"] == 100.0 and write["message"] == "write 100%", write
    assert write["title"].startswith("Writing ") and write["title"].endswith(" KB")
    # The board's card follows: Klipper restarted with the new firmware.  (Both at
    # once: until the update manager's next refresh the card may still say "up to
    # date" about the version the board ran before, if an earlier test left it so.)
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'up to date' && "
                          f"{row_text('octopus', 'running')} === {json.dumps(head)}", 30,
                          what=f"the card saying up to date with {head}")
    assert not await browser.js("document.getElementById('result').hidden")
    await browser.js("document.getElementById('result-dismiss').click()")
    assert await browser.js("document.getElementById('result').hidden")
    first = await browser.wait_js(
        "document.querySelector('#history [data-job]') && "
        "document.querySelector('#history [data-job]').textContent")
    assert "Flash octopus" in first and "done" in first


async def test_history_shows_a_job_with_its_steps(printer, browser):
    job = printer.result("POST", "/server/octoflash/flash",
                         body={"profile": "octopus", "force": True})["job"]
    assert (await asyncio.to_thread(printer.wait_job, job["job_id"], 120))["state"] == "done"
    await asyncio.to_thread(printer.wait_klippy_ready)
    entry = f"#history [data-job=\"{job['job_id']}\"]"
    await browser.wait_js(f"document.querySelector({json.dumps(entry)}) !== null", 30,
                          what="the job in the history")
    await browser.js(f"document.querySelector({json.dumps(entry + ' button')}).click()")
    steps = await browser.wait_js(
        "!document.getElementById('job-detail').hidden && "
        "Array.from(document.querySelectorAll('#detail-steps li')).map(l => l.textContent)")
    assert any(s.startswith("Building octopus: done") for s in steps), steps
    assert any(s.startswith("Writing ") and ": done 100 %" in s for s in steps), steps


def js_set(selector: str, value: str) -> str:
    """Set an input or select as a user does, and tell the page it changed."""
    return (f"(function (n) {{ n.value = {json.dumps(value)}; "
            "n.dispatchEvent(new Event('input', {bubbles: true})); "
            "n.dispatchEvent(new Event('change', {bubbles: true})); return true; })"
            f"(document.querySelector({json.dumps(selector)}))")


def js_click(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).click()"


def kc_row(symbol: str) -> str:
    return f"#kconfig [data-symbol=\"{symbol}\"]"


def kc_shown(prompt: str) -> str:
    """Is the configurator entry with this prompt on screen?"""
    return ("Array.from(document.querySelectorAll('#kconfig [data-entry]')).some(function (n) {"
            " var l = n.querySelector(':scope > label, :scope > summary');"
            f" return l && l.textContent === {json.dumps(prompt)} && n.offsetParent !== null; }})")


async def test_add_a_detected_board_and_configure_its_firmware(printer, browser):
    spare = free_spare(printer)
    await browser.js("window.octoflash.reload(); true")
    await click_scan(browser)
    await browser.wait_js(addable(spare.canbus_uuid), 20)
    # the boards that have a profile offer no "add"
    octopus_uuid = printer.board("octopus").canbus_uuid
    assert not await browser.js(addable(octopus_uuid))
    await browser.js("Array.from(document.querySelectorAll('#device-list li')).find(l => "
                     f"l.textContent.indexOf('CAN node {spare.canbus_uuid}') === 0)"
                     ".querySelector('button').click()")
    await browser.wait_js("!document.getElementById('editor').hidden")
    assert await browser.js("document.getElementById('editor-title').textContent") == \
        "Add this board"
    assert await browser.js("document.getElementById('field-canbus_uuid').value") == \
        spare.canbus_uuid
    # it runs Katapult: a preset written through Katapult, for a CAN board, is suggested
    assert "can" in await browser.js("document.getElementById('field-preset').value")
    assert "running Katapult" in await browser.js("document.getElementById('editor-form')"
                                                  ".textContent")
    # the API's own check, shown at the field it is about
    await browser.js(js_set("#field-name", "spare board"))
    await browser.js(js_set("#field-preset", "btt-octopus-f446-canbridge"))
    await browser.wait_js(kc_shown("CAN bus speed"), 30, what="the configurator")
    await browser.js(js_click("#editor [data-action=save]"))
    error = await browser.wait_js("!document.getElementById('field-name-error').hidden && "
                                  "document.getElementById('field-name-error').textContent")
    assert "not a valid value for name" in error
    assert await browser.js("document.getElementById('field-name')"
                            ".getAttribute('aria-invalid')") == "true"
    await browser.js(js_set("#field-name", "spare"))
    # Kconfig: low-level options off hides what depends on them; on shows it again
    await browser.js(js_click(kc_row("CONFIG_LOW_LEVEL_OPTIONS") + " input"))
    await browser.wait_js("!" + kc_shown("CAN bus speed"), 20, what="CAN bus speed hidden")
    assert not await browser.js(kc_shown("Clock Reference"))
    await browser.js(js_click(kc_row("CONFIG_LOW_LEVEL_OPTIONS") + " input"))
    await browser.wait_js(kc_shown("CAN bus speed"), 20, what="CAN bus speed shown again")
    # a CAN node, not a USB-CAN bridge: the CAN bus interface menu goes away
    assert await browser.js(kc_shown("CAN bus interface"))
    await browser.js("(function (s) { s.value = 'CONFIG_STM32_MMENU_CANBUS_PD0_PD1'; "
                     "s.dispatchEvent(new Event('change')); return true; })(Array.from("
                     "document.querySelectorAll('#kconfig select')).find(s => s.querySelector("
                     "'option[value=CONFIG_STM32_MMENU_CANBUS_PD0_PD1]')))")
    await browser.wait_js("!" + kc_shown("CAN bus interface"), 20, what="the bridge menu gone")
    # a bad number is refused at its field; a good one changes the .config
    await browser.js(js_set(kc_row("CONFIG_CANBUS_FREQUENCY") + " input", "fast"))
    error = await browser.wait_js(
        f"!document.querySelector('{kc_row('CONFIG_CANBUS_FREQUENCY')} .field-error').hidden && "
        f"document.querySelector('{kc_row('CONFIG_CANBUS_FREQUENCY')} .field-error').textContent")
    assert "CONFIG_CANBUS_FREQUENCY" in error
    await browser.js(js_set(kc_row("CONFIG_CANBUS_FREQUENCY") + " input", "500000"))
    await browser.wait_js("document.getElementById('kc-config').textContent"
                          ".indexOf('CONFIG_CANBUS_FREQUENCY=500000') >= 0", 20)
    overrides = await browser.js("Array.from(document.querySelectorAll('#kc-overrides li'))"
                                 ".map(l => l.textContent)")
    assert "CONFIG_CANBUS_FREQUENCY: 1000000 → 500000" in overrides, overrides
    # low-level options back on: nothing of that detour is left
    assert not any("CLOCK_REF" in o or "LOW_LEVEL" in o for o in overrides), overrides
    assert "CONFIG_STM32_MMENU_CANBUS_PD0_PD1: (not set by the preset) → y" in overrides
    assert any(o.startswith("CONFIG_STM32_USBCANBUS_PA11_PA12: y → n") for o in overrides)
    await browser.js(js_click("#editor [data-action=save]"))
    await browser.wait_js("document.getElementById('editor').hidden && "
                          f"!!{card('spare')}", 20, what="the new profile's card")
    saved = printer.result("GET", "/server/octoflash/profile", args={"name": "spare"})["profile"]
    assert saved["canbus_uuid"] == spare.canbus_uuid and saved["source"] == "api"
    assert saved["kconfig"]["CONFIG_CANBUS_FREQUENCY"] == "500000"
    assert saved["kconfig"]["CONFIG_STM32_CMENU_CANBUS_PD0_PD1"] == "n"   # followed the choice
    # the device list follows the profiles without a new scan: claimed now...
    await browser.wait_js("!" + addable(spare.canbus_uuid), what="no 'add' for a claimed board")
    # ...and addable again once the profile is deleted from the page
    await browser.js(f"{button_of('spare', 'edit')}.click()")
    await browser.wait_js("!document.getElementById('editor').hidden")
    await browser.js(js_click("#editor [data-action=delete]"))
    await browser.wait_js("!document.getElementById('confirm').hidden")
    await browser.js(js_click("#confirm-yes"))
    await browser.wait_js(f"!{card('spare')}", what="the deleted profile's card gone")
    await browser.wait_js(addable(spare.canbus_uuid), what="'add' offered again")


async def test_build_plan_flash_roll_back_and_download(printer, browser):
    """A new profile: built, its plan, flashed; built again changed; rolled back."""
    spare = free_spare(printer)
    name = f"rb{int(time.time() * 1000) % 1000000}"          # no earlier builds of its own
    printer.result("POST", "/server/octoflash/profile", body={
        "name": name, "preset": "btt-octopus-f446-canbridge", "canbus_uuid": spare.canbus_uuid,
        "kconfig": dict(CAN_NODE_OVERRIDES, CONFIG_CANBUS_FREQUENCY="500000")})
    await browser.js("window.octoflash.reload(); true")
    await browser.wait_js(f"!!{card(name)} && !{button_of(name, 'build')}.disabled", 30,
                          what="the profile's card")
    await browser.js(f"{button_of(name, 'build')}.click()")
    await browser.wait_js(f"document.getElementById('job-title').textContent === 'Build {name}' && "
                          "document.getElementById('job-state').textContent === 'done'", 120)
    await browser.js(js_click("#result-dismiss"))
    first = printer.result("GET", "/server/octoflash/builds", args={"profile": name})["builds"]
    assert len(first) == 1
    await browser.js(f"{button_of(name, 'flash')}.click()")
    steps = await browser.wait_js(
        "!document.getElementById('confirm').hidden && "
        "document.querySelectorAll('#confirm .plan-steps li').length > 0 && "
        "Array.from(document.querySelectorAll('#confirm .plan-steps li')).map(l => l.textContent)")
    assert not any(s.startswith("Build ") for s in steps), steps      # built: no build step
    assert any("-i can0 -u " + printer.board("spare").canbus_uuid in s for s in steps), steps
    since = time.time()
    await browser.js(js_click("#confirm-yes"))
    await browser.wait_js(f"document.getElementById('job-title').textContent === 'Flash {name}' && "
                          "document.getElementById('job-state').textContent === 'done'", 120)
    assert printer.written_boards(since) == ["spare"]
    assert await browser.js("document.getElementById('job-percent').textContent") == "100 %"
    await browser.js(js_click("#result-dismiss"))
    # changed and built again: two builds kept
    profile = printer.result("GET", "/server/octoflash/profile", args={"name": name})["profile"]
    body = {k: v for k, v in profile.items()
            if k not in ("status", "source", "target", "mcu", "board", "connection", "read_only")}
    body["kconfig"]["CONFIG_CANBUS_FREQUENCY"] = "250000"
    printer.result("POST", "/server/octoflash/profile", body=body)
    await browser.js("window.octoflash.reload(); true")
    await browser.wait_js(f"!!{card(name)} && !{button_of(name, 'build')}.disabled", 30,
                          what="the profile's card")
    await browser.js(f"{button_of(name, 'build')}.click()")
    await browser.wait_js(f"document.getElementById('job-title').textContent === 'Build {name}' && "
                          "document.getElementById('job-state').textContent === 'done'", 120)
    builds = printer.result("GET", "/server/octoflash/builds", args={"profile": name})["builds"]
    assert len(builds) == 2 and builds[1]["id"] == first[0]["id"]
    # the history: the build's job, its builds; the earlier one flashed again
    await browser.js("document.querySelector('#history [data-job] button').click()")
    await browser.wait_js("document.querySelectorAll('#detail-builds [data-artifact]').length === 2")
    await browser.js(f"document.querySelector('#detail-builds [data-artifact=\"{first[0]['id']}\"] "
                     "button[data-action=download]').click()")
    got = await browser.wait_js("window.octoflash.state.lastDownload")
    kept = first[0]["files"][0]
    assert got["name"] == kept["name"] and got["size"] == kept["size"]
    assert got["sha256"] == kept["sha256"]
    since = time.time()
    await browser.js(f"document.querySelector('#detail-builds [data-artifact=\"{first[0]['id']}\"] "
                     "button[data-action=rollback]').click()")
    title = await browser.wait_js("!document.getElementById('confirm').hidden && "
                                  "document.getElementById('confirm-title').textContent")
    assert title == f"Flash '{name}' with the earlier build {first[0]['id']}"
    await browser.js(js_click("#confirm-yes"))
    await browser.wait_js(f"document.getElementById('job-title').textContent === 'Flash {name}' && "
                          "document.getElementById('job-state').textContent === 'done'", 120)
    assert printer.written_boards(since) == ["spare"]
    job = printer.result("GET", "/server/octoflash/jobs")["jobs"][0]
    assert job["kind"] == "flash" and job["artifact_id"] == first[0]["id"]
    await browser.js(js_click("#result-dismiss"))


async def test_a_moonraker_conf_profile_is_read_only_and_can_be_copied(printer, browser):
    await browser.js(f"{button_of('octopus', 'edit')}.click()")
    title = await browser.wait_js("!document.getElementById('editor').hidden && "
                                  "document.getElementById('editor-title').textContent")
    assert title == "Profile octopus (moonraker.conf, read-only)"
    assert await browser.js("document.getElementById('field-canbus_uuid').disabled")
    assert not await browser.js("!!document.querySelector('#editor [data-action=save]')")
    await browser.js(js_click("#editor [data-action=copy]"))
    await browser.wait_js("document.getElementById('editor-title').textContent === "
                          "'New profile (a copy of octopus)'")
    assert await browser.js("document.getElementById('field-name').value") == "octopus-copy"
    await browser.wait_js(kc_shown("CAN bus speed"), 30, what="the configurator")
    await browser.js(js_click("#editor [data-action=save]"))
    await browser.wait_js(f"!!{card('octopus-copy')}", 20)
    # an API profile can be deleted from the page
    await browser.js(f"{button_of('octopus-copy', 'edit')}.click()")
    await browser.wait_js("document.getElementById('editor-title').textContent === "
                          "'Edit profile octopus-copy'")
    await browser.js(js_click("#editor [data-action=delete]"))
    await browser.wait_js("!document.getElementById('confirm').hidden")
    await browser.js(js_click("#confirm-yes"))
    await browser.wait_js(f"!{card('octopus-copy')}", 20)
    assert "octopus-copy" not in {p["name"] for p in
                                  printer.result("GET", "/server/octoflash/profiles")["profiles"]}


async def test_dfu_plan_shows_the_drawing_and_waits_with_a_countdown(scene, browser):
    printer = scene
    # a commit of its own in the Katapult checkout: the plan starts with the build
    printer.commit_to_katapult("the DFU plan")
    await browser.js(f"{button_of('bootloader', 'flash')}.click()")
    await browser.wait_js("!document.getElementById('confirm').hidden && "
                          "!!document.querySelector('#confirm .dfu-help svg.dfu-drawing')", 30)
    text = await browser.js("document.querySelector('#confirm .dfu-help').textContent")
    assert "BOOT0" in text and "RESET" in text and "heaters and fans may switch on" in text
    steps = await browser.js("Array.from(document.querySelectorAll('#confirm .plan-steps li'))"
                             ".map(l => l.textContent)")
    assert steps[0].startswith("Build 'bootloader'"), steps      # not built: built first
    assert any("dfu-util" in s and "0483:df11" in s for s in steps), steps
    await browser.js(js_click("#confirm-yes"))
    first = await browser.wait_js(
        "!document.getElementById('job-wait').hidden && "
        "document.querySelector('#job-wait .countdown').textContent", 120, what="the countdown")
    assert first.startswith("Waiting for the board in DFU mode: ") and first.endswith(" s left")
    assert await browser.js("!!document.querySelector('#job-wait svg.dfu-drawing')")
    left = int(first.split(": ")[1].split()[0])
    await browser.wait_js("parseInt(document.querySelector('#job-wait .countdown').textContent"
                          f".split(': ')[1]) < {left}", 10, what="the countdown going down")
    # meanwhile no other board can be flashed, and the page says why
    await browser.wait_js(f"{button_of('octopus', 'flash')}.disabled")
    assert "Another flash is running" in await browser.js(row_text("octopus", "reason"))
    assert await browser.js("document.getElementById('update-all').disabled")
    await browser.js(js_click("#job-cancel"))
    await browser.wait_js("document.getElementById('job-state').textContent === 'cancelled'", 30)
    await browser.wait_js(f"!{button_of('octopus', 'flash')}.disabled")
    assert await browser.js("document.getElementById('job-wait').hidden")
    await browser.js(js_click("#result-dismiss"))


async def test_devices_are_listed(printer, browser):
    await click_scan(browser)
    items = await browser.wait_js(
        "Array.from(document.querySelectorAll('#device-list li')).map(l => l.textContent)")
    for section, board in (("mcu", "octopus"), ("mcu Toolhead", "toolhead")):
        expected = f"Klipper [{section}]: {printer.running_version(board)} (stm32f446xx)"
        assert expected in items, items
    assert "CAN interface can0 up" in items, items


async def test_flash_while_printing_is_disabled_and_refused_with_its_reason(printer, browser):
    # The plan is on screen when the print starts: the API refuses and says why.
    await browser.js(f"{button_of('toolhead', 'flash')}.click()")
    await browser.wait_js("!document.getElementById('confirm').hidden && "
                          "document.querySelectorAll('#confirm .plan-steps li').length > 0")
    printer.set_print_state("printing", "benchy.gcode")
    since = time.time()
    try:
        await browser.js("document.getElementById('confirm-yes').click()")
        message = await browser.wait_js("!document.getElementById('action-error').hidden && "
                                        "document.getElementById('action-error').textContent")
        assert "printing" in message and "benchy.gcode" in message
        assert printer.written_boards(since) == []
        # and the buttons say so before anyone presses them
        await click_scan(browser)
        await browser.wait_js(f"{button_of('toolhead', 'flash')}.disabled", 15)
        reason = await browser.js(row_text("toolhead", "reason"))
        assert "Klipper is printing" in reason
        assert not await browser.js(f"{button_of('toolhead', 'build')}.disabled")
        assert await browser.js("document.getElementById('update-all').disabled")
    finally:
        printer.set_print_state("standby")


async def test_update_all_shows_overall_progress(scene, browser):
    printer = scene                                  # the octopus is behind
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'update available'", 30)
    await browser.wait_js("!document.getElementById('update-all').disabled", 15)
    await record_job_panel(browser, "__overall", "job-title")
    await browser.js("document.getElementById('update-all').click()")
    text = await browser.wait_js("!document.getElementById('confirm').hidden && "
                                 "document.getElementById('confirm-body').textContent")
    assert "1. octopus" in text and "auto_update" in text
    since = time.time()
    await browser.js("document.getElementById('confirm-yes').click()")
    await browser.wait_js("document.getElementById('job-title').textContent === 'Update all' && "
                          "document.getElementById('job-state').textContent === 'done'", 120,
                          what="the update to finish")
    assert printer.written_boards(since) == ["octopus"]
    seen = [s.split("|")[1] for s in await browser.js("window.__overall")
            if s.startswith("Update all|") and s.endswith(" %")]
    values = [int(v[:-2]) for v in seen]
    assert any(0 < v < 100 for v in values), seen
    assert values[-1] == 100, seen
    board = await browser.js("document.querySelector('#job-boards [data-board=octopus]')"
                             ".textContent")
    assert board.startswith("octopus: ") and "done" in board, board
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'up to date'", 30)


async def test_build_all_builds_every_profile(printer, browser):
    before = {j["job_id"] for j in printer.result("GET", "/server/octoflash/jobs")["jobs"]}
    names = sorted(p["name"] for p in printer.result("GET", "/server/octoflash/profiles")["profiles"])
    await browser.wait_js("!document.getElementById('build-all').disabled")
    await browser.js(js_click("#build-all"))

    def builds_done() -> Any:
        jobs = [j for j in printer.result("GET", "/server/octoflash/jobs")["jobs"]
                if j["job_id"] not in before]
        return len(jobs) == len(names) and all(j["state"] == "done" for j in jobs) and jobs
    jobs = await wait_until(builds_done, 120, what="a build of every profile")
    assert sorted(j["profile"] for j in jobs) == names
    assert {j["kind"] for j in jobs} == {"build"}


async def test_a_job_started_elsewhere_is_followed(scene, browser, ws_factory):
    # The update manager's Update button, pressed in Mainsail while the page is open.
    printer = scene                                  # the octopus is behind
    await browser.wait_js(f"{row_text('octopus', 'state')} === 'update available'", 30)
    await browser.js("window.__followed = false; "
                     "new MutationObserver(function () { if (document.getElementById('job-title')"
                     ".textContent === 'Flash octopus') { window.__followed = true; } })"
                     ".observe(document.getElementById('job'), {subtree: true, childList: true, "
                     "characterData: true}); true")
    client = await ws_factory(printer)
    await client.call("machine.update.upgrade", {"name": "octoflash_octopus"}, timeout=180)
    await browser.wait_js("window.__followed && "
                          "document.getElementById('job-state').textContent === 'done'", 30)
    # Output lines come at most every 0.2 s; at the end the page reads the whole
    # log from the job's record (a reply that may come after the state shows).
    await browser.wait_js("document.getElementById('job-log').textContent"
                          ".includes('Programming Complete')", 30)
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


DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


async def screenshot(browser: Browser, width: int, name: str, tmp_path: Any) -> str:
    """The whole page at ``width`` px; kept in docs/ when OCTOFLASH_SCREENSHOTS=1."""
    import base64
    height = await browser.js("document.documentElement.scrollHeight")
    shot = await browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
    folder = DOCS if os.environ.get("OCTOFLASH_SCREENSHOTS") == "1" else str(tmp_path)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    return path


async def test_the_page_fits_a_phone_and_every_control_is_labelled(printer, browser, tmp_path):
    await browser.wait_js("document.getElementById('connection').textContent === 'connected' && "
                          f"{row_text('octopus', 'state')} !== ''")
    await click_scan(browser)
    await browser.wait_js("document.querySelectorAll('#device-list li').length > 2")
    await browser.send("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                       deviceScaleFactor=1, mobile=False)
    await browser.wait_js("window.innerWidth === 1280")
    await screenshot(browser, 1280, "web-1280.png", tmp_path)
    await browser.send("Emulation.setDeviceMetricsOverride", width=390, height=844,
                       deviceScaleFactor=1, mobile=True)
    await browser.wait_js("window.innerWidth === 390")
    await screenshot(browser, 390, "web-390.png", tmp_path)
    # open what is widest: a plan with its commands, and the profile editor with its options
    await browser.js(f"{button_of('toolhead', 'flash')}.click()")
    await browser.wait_js("document.querySelectorAll('#confirm .plan-steps li').length > 0")
    await browser.js(f"{button_of('octopus', 'edit')}.click()")
    await browser.wait_js(kc_shown("CAN bus speed"), 30)
    widths = await browser.js(
        "({page: document.documentElement.scrollWidth, body: document.body.scrollWidth, "
        "viewport: window.innerWidth, wide: Array.from(document.querySelectorAll('body *'))"
        ".filter(n => n.getBoundingClientRect().right > window.innerWidth + 0.5 && "
        "n.offsetParent !== null && !n.closest('pre')).map(n => n.tagName + '#' + n.id + '.' + "
        "n.className).slice(0, 5)})")
    assert widths["page"] <= 390 and widths["body"] <= 390, widths
    assert widths["wide"] == [], widths
    # Build and Flash stay on screen on a phone
    right = await browser.js(f"{button_of('octopus', 'build')}.getBoundingClientRect().right")
    assert right <= 390
    # every control has a name a screen reader says, and is reached with the keyboard
    unnamed = await browser.js("""
        Array.from(document.querySelectorAll('button, input, select, [tabindex]'))
          .filter(n => n.offsetParent !== null)
          .filter(n => {
            if (n.getAttribute('aria-label') || n.getAttribute('aria-labelledby')) { return false; }
            if (n.tagName === 'BUTTON') { return !n.textContent.trim(); }
            if (n.tagName === 'INPUT' || n.tagName === 'SELECT') {
              return !(n.id && document.querySelector('label[for="' + n.id + '"]'));
            }
            return false;
          }).map(n => n.outerHTML.slice(0, 80))""")
    assert unnamed == [], unnamed
    assert await browser.js("Array.from(document.querySelectorAll('button'))"
                            ".every(b => b.tabIndex >= 0)")
    # nothing is loaded from the internet: scripts and styles are the component's
    outside = await browser.js("performance.getEntriesByType('resource').map(r => r.name)"
                               ".filter(u => !u.startsWith(location.origin) && "
                               "!u.startsWith('ws'))")
    assert outside == [], outside
    await browser.js("document.querySelector('#editor [data-action=close]').click(); "
                     "document.getElementById('confirm-no').click(); true")


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
