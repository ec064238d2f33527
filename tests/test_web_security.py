"""The page where Moonraker does not trust the browser, and in other sites' frames.

A real Moonraker 0.11 trusts only 127.0.0.2: the tests' own calls come
from there, headless Chromium from 127.0.0.1, so the page is not a trusted
client and must ask for the API key.  The component has one config profile
(``octopus``), enough to see that the page shows the data once connected.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import threading
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from fixtures_browser import CHROMIUM, Browser
from fixtures_moonraker import MoonrakerProcess, wait_until
from moonraker_octoflash.moonraker.web import FRAME_HEADERS, PAGE_PATH

pytestmark = [pytest.mark.browser, pytest.mark.moonraker,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed")]

TRUSTED = "127.0.0.2"
CONFIG = """
[octoflash]
klipper_path: {data}/klipper-src

[octoflash octopus]
preset: btt-octopus-f446-canbridge
canbus_uuid: 0123456789ab
"""


class UntrustedBrowserMoonraker(MoonrakerProcess):
    """Trusts 127.0.0.2 alone; this process's own requests come from there."""

    def write_config(self) -> str:
        path = super().write_config()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            # and lets a page on another port of this computer use it (?moonraker=)
            f.write(text.replace("127.0.0.0/8", f"{TRUSTED}/32\ncors_domains:\n  "
                                 "http://127.0.0.1:*"))
        return path

    def request(self, method: str, path: str, args: Optional[Dict[str, Any]] = None,
                body: Optional[Any] = None, timeout: float = 10.0) -> Tuple[int, Dict[str, Any]]:
        if args:
            path += "?" + urllib.parse.urlencode(args)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout,
                                          source_address=(TRUSTED, 0))
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def moonraker(tmp_path_factory: Any, linked_component: str) -> Any:
    data = str(tmp_path_factory.mktemp("web-security"))
    mr = UntrustedBrowserMoonraker(data, CONFIG.format(data=data))
    mr.start()
    yield mr
    mr.stop()


@pytest.fixture
async def browser(moonraker: MoonrakerProcess) -> Any:
    b = await Browser().start()
    yield b
    errors = b.exceptions + b.console_errors
    await b.close()
    assert errors == [], errors


def get_page(moonraker: MoonrakerProcess, suffix: str = "") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", moonraker.port, timeout=10)
    conn.request("GET", PAGE_PATH + suffix)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_the_page_is_served_without_login_and_with_frame_headers(moonraker):
    for suffix in ("", "/script", "/style"):
        resp = get_page(moonraker, suffix)       # from 127.0.0.1: not trusted
        assert resp.status == 200
        assert resp.getheader("X-Frame-Options") == "SAMEORIGIN"
        assert resp.getheader("Content-Security-Policy") == "frame-ancestors 'self'"
    assert FRAME_HEADERS == {"X-Frame-Options": "SAMEORIGIN",
                             "Content-Security-Policy": "frame-ancestors 'self'"}


LOGIN_SHOWN = ("!!document.getElementById('login') && !document.getElementById('login').hidden && "
               "document.getElementById('connection').textContent === 'not authorized'")


async def test_an_untrusted_page_asks_for_the_api_key_and_then_connects(moonraker, browser):
    await browser.open(moonraker.base_url + PAGE_PATH)
    await browser.wait_js(LOGIN_SHOWN, what="the API key form")
    assert await browser.js("document.getElementById('login-refused').hidden") is True
    assert await browser.js("document.querySelectorAll('#boards [data-profile]').length") == 0

    # a wrong key: said so, the form stays
    await browser.js("document.getElementById('api-key').value = 'not-the-key';"
                     "document.getElementById('login-form').requestSubmit(); true")
    refused = await browser.wait_js(
        "!document.getElementById('login-refused').hidden && "
        "document.getElementById('login-refused').textContent", what="the refused key")
    assert "did not accept that API key" in refused and "Invalid API Key" in refused
    await browser.wait_js(LOGIN_SHOWN)

    # the right key, as Mainsail shows it (read here from a trusted address)
    key = moonraker.result("GET", "/access/api_key")
    await browser.js(f"document.getElementById('api-key').value = {json.dumps(key)};"
                     "document.getElementById('login-form').requestSubmit(); true")
    await browser.wait_js("document.getElementById('connection').textContent === 'connected'",
                          what="the page connected with the key")
    assert await browser.js("document.getElementById('login').hidden") is True
    await browser.wait_js("document.querySelectorAll('#boards [data-profile]').length === 1 && "
                          "document.querySelector('#boards [data-profile=\"octopus\"]') !== null",
                          what="the boards")

    # kept for the tab: a reload connects at once
    await browser.send("Page.reload")
    await browser.wait_js("!!document.getElementById('connection') && "
                          "document.getElementById('connection').textContent === 'connected'")
    assert await browser.js("document.getElementById('login').hidden") is True


async def test_a_oneshot_token_lets_an_untrusted_page_in_once(moonraker, browser):
    # What a logged-in client on the same computer (Mainsail with the key)
    # hands the page: a oneshot token, bound to that address, good once.
    key = moonraker.result("GET", "/access/api_key")
    conn = http.client.HTTPConnection("127.0.0.1", moonraker.port, timeout=10)
    conn.request("GET", "/access/oneshot_token", headers={"X-Api-Key": key})
    token = json.loads(conn.getresponse().read())["result"]
    conn.close()
    # after "#": the page load itself must not spend it (Moonraker takes ?token= anywhere)
    await browser.open(moonraker.base_url + PAGE_PATH + "#token=" + token)
    await browser.wait_js("!!document.getElementById('connection') && "
                          "document.getElementById('connection').textContent === 'connected'",
                          what="the page connected with the token")
    assert await browser.js("document.getElementById('login').hidden") is True
    await browser.wait_js("document.querySelector('#boards [data-profile=\"octopus\"]') !== null")
    # spent: it leaves the address, so a reload asks for the key instead of failing
    assert "token=" not in await browser.js("location.href")
    await browser.send("Page.reload")
    await browser.wait_js(LOGIN_SHOWN, what="the API key form after the reload")


@contextlib.contextmanager
def web_site(answer: Callable[[str], Tuple[int, str, bytes]]) -> Iterator[str]:
    """A web server on a port of its own (another origin); ``answer(path)`` gives
    (status, content type, body).  Yields its base address."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = answer(self.path.split("?")[0])
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def other_site(moonraker: MoonrakerProcess) -> Any:
    """A web site on another port (another origin) whose page frames octoflash's page."""
    page = (f'<html><body><iframe id="octoflash" src="http://127.0.0.1:{moonraker.port}'
            f'{PAGE_PATH}"></iframe></body></html>').encode()
    with web_site(lambda _path: (200, "text/html", page)) as address:
        yield address + "/"


@pytest.fixture
def page_elsewhere(moonraker: MoonrakerProcess) -> Any:
    """The page's files served from another port (as a second Moonraker would)."""
    def relay(path: str) -> Tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", moonraker.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.headers.get("Content-Type", "text/plain"), resp.read()
        finally:
            conn.close()

    with web_site(relay) as address:
        yield address


async def test_the_page_reaches_a_moonraker_on_another_port(moonraker, browser, page_elsewhere):
    await browser.open(f"{page_elsewhere}{PAGE_PATH}?moonraker=127.0.0.1:{moonraker.port}")
    # that Moonraker answers (it asks this untrusted browser for its key) ...
    await browser.wait_js(LOGIN_SHOWN, what="the API key form of the other Moonraker")
    key = moonraker.result("GET", "/access/api_key")
    await browser.js(f"document.getElementById('api-key').value = {json.dumps(key)};"
                     "document.getElementById('login-form').requestSubmit(); true")
    # ... and its boards are shown
    await browser.wait_js("document.getElementById('connection').textContent === 'connected' && "
                          "document.querySelector('#boards [data-profile=\"octopus\"]') !== null",
                          what="the other Moonraker's boards")
    assert await browser.js("location.port") != str(moonraker.port)


async def child_frames(browser: Browser) -> List[Dict[str, Any]]:
    tree = await browser.send("Page.getFrameTree")
    return [c["frame"] for c in tree["frameTree"].get("childFrames", [])]


async def test_another_site_cannot_show_the_page_in_a_frame(moonraker, browser, other_site):
    await browser.open(other_site)

    async def settled() -> Any:
        frames = await child_frames(browser)
        return frames if frames and frames[0].get("url") not in (None, "", "about:blank") \
            else None
    frames = await wait_until(settled, 20, what="the frame of the other site")
    # Chromium shows its error page in place of the refused page
    assert frames[0]["url"].startswith("chrome-error://"), frames
    assert frames[0].get("unreachableUrl", "").endswith(PAGE_PATH), frames


async def test_the_page_itself_may_frame_it(moonraker, browser):
    await browser.open(moonraker.base_url + PAGE_PATH)
    await browser.wait_js("document.readyState === 'complete'")
    await browser.js(f"var f = document.createElement('iframe'); f.id = 'self-frame';"
                     f"f.src = {json.dumps(PAGE_PATH)}; document.body.appendChild(f); true")
    await browser.wait_js("!!document.getElementById('self-frame').contentDocument && "
                          "!!document.getElementById('self-frame').contentDocument"
                          ".getElementById('login-form')", what="the page in its own frame")
