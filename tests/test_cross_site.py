"""Cross-site requests: what a page on another web site can and cannot make octoflash do.

A real Moonraker 0.11 (``cors_domains: http://*.example.lan``, this
computer trusted by address) with the real component on the simulated
machine.  A browser sends a form to any site without asking first; the
tests send exactly those requests (form-encoded, multipart, text/plain,
query string, Moonraker's ``name:json=`` hint) and check what a user would
see afterwards: the answer, the profile list and the job history unchanged.
The websocket's handshake is tried with the ``Origin`` headers a browser
would send.  The module shares one Moonraker; the curl lines of
docs/api.md run last (they build and flash).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from fixtures_moonraker import SimulatedPrinter, octopus_printer
from moonraker_octoflash.moonraker.http_routes import wrap_route
from moonraker_octoflash.moonraker.request_guard import (Refusal, can_guard, check_body,
                                                         same_origin)

pytestmark = pytest.mark.moonraker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORS = "http://*.example.lan"
PRESET = "btt-octopus-f446-katapult"
FOREIGN = "http://evil.example"


class CorsPrinter(SimulatedPrinter):
    """The simulated printer with ``cors_domains`` in ``[authorization]``."""

    def write_config(self) -> str:
        path = super().write_config()
        with open(path, encoding="utf-8") as f:
            text = f.read()
        text = text.replace("[authorization]\n", f"[authorization]\ncors_domains:\n  {CORS}\n", 1)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


@pytest.fixture(scope="module")
def printer(tmp_path_factory: Any, linked_component: str) -> Any:
    root = str(tmp_path_factory.mktemp("cross-site"))
    p = octopus_printer(root, None)
    p.__class__ = CorsPrinter        # the same machine, with cors_domains
    p.update_manager = False
    p.start()
    p.wait_klippy_ready()
    yield p
    p.close()


def send(printer: SimulatedPrinter, method: str, path: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
    """One raw HTTP request: (status, JSON answer, response headers)."""
    req = urllib.request.Request(printer.base_url + path, data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


def as_json(data: Dict[str, Any], origin: Optional[str] = None) -> Dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if origin is not None:
        headers["Origin"] = origin
    return {"body": json.dumps(data).encode(), "headers": headers}


def message(answer: Dict[str, Any]) -> str:
    return answer.get("error", {}).get("message", "")


def seen(printer: SimulatedPrinter) -> Tuple[List[Any], List[str]]:
    """What a user sees: the profiles (name, preset, options) and the job ids."""
    profiles = printer.result("GET", "/server/octoflash/profiles")["profiles"]
    jobs = printer.result("GET", "/server/octoflash/jobs")["jobs"]
    return ([(p["name"], p["preset"], p.get("canbus_uuid"), p.get("kconfig")) for p in profiles],
            [j["job_id"] for j in jobs])


# --- what a page on another site can send without asking first -----------------

EVIL_PROFILE = {"name": "evil", "preset": PRESET,
                "kconfig": {"CONFIG_FLASH_APPLICATION_ADDRESS": "0x8000000"}}


def form(fields: Dict[str, str]) -> Dict[str, Any]:
    return {"body": urllib.parse.urlencode(fields).encode(),
            "headers": {"Content-Type": "application/x-www-form-urlencoded", "Origin": FOREIGN}}


def multipart(fields: Dict[str, str]) -> Dict[str, Any]:
    boundary = "----octoflashtest"
    parts = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                    for k, v in fields.items())
    return {"body": (parts + f"--{boundary}--\r\n").encode(),
            "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Origin": FOREIGN}}


def text_plain(data: Dict[str, Any]) -> Dict[str, Any]:
    # <form enctype="text/plain"> or fetch(..., {mode: "no-cors"}) with a JSON-looking body
    return {"body": json.dumps(data).encode(), "headers": {"Content-Type": "text/plain",
                                                           "Origin": FOREIGN}}


CROSS_SITE_POSTS = [
    ("profile, form", "/server/octoflash/profile", form({"name": "evil", "preset": PRESET})),
    ("profile, name:json= hint", "/server/octoflash/profile",
     form({"profile:json": json.dumps(EVIL_PROFILE)})),
    ("profile, multipart", "/server/octoflash/profile", multipart({"name": "evil",
                                                                   "preset": PRESET})),
    ("profile, text/plain JSON", "/server/octoflash/profile", text_plain(EVIL_PROFILE)),
    ("profile, query string", "/server/octoflash/profile?name=evil&preset=" + PRESET,
     {"body": b"", "headers": {}}),
    ("build, form", "/server/octoflash/build", form({"profile": "octopus", "force": "true"})),
    ("build, query string", "/server/octoflash/build?profile=octopus", {"body": b"",
                                                                         "headers": {}}),
    ("flash, form", "/server/octoflash/flash", form({"profile": "octopus"})),
    ("flash, text/plain JSON", "/server/octoflash/flash", text_plain({"profile": "octopus"})),
    ("update all, form", "/server/octoflash/update_all", form({"all": "true"})),
    ("update all, query string", "/server/octoflash/update_all?all:bool=true",
     {"body": b"", "headers": {}}),
    ("cancel, form", "/server/octoflash/job/cancel", form({"job_id": "whatever"})),
]


@pytest.mark.parametrize("case,path,request_", CROSS_SITE_POSTS,
                         ids=[c[0] for c in CROSS_SITE_POSTS])
def test_a_post_without_json_body_is_refused_and_changes_nothing(printer, case, path, request_):
    before = seen(printer)
    headers = {k: v for k, v in request_["headers"].items() if k != "Origin"}
    # without Origin (an old browser, a script): the body alone decides
    status, answer, _ = send(printer, "POST", path, request_["body"] or None, headers)
    assert status == 415, (status, answer)
    assert "takes a JSON body" in message(answer)
    assert "Content-Type: application/json" in message(answer)
    assert message(answer).startswith("Refused, nothing was changed")
    # as a browser sends it from another site: the Origin is refused first
    if "Origin" in request_["headers"]:
        status, answer, _ = send(printer, "POST", path, request_["body"], request_["headers"])
        assert status == 403, (status, answer)
        assert FOREIGN in message(answer) and "cors_domains" in message(answer)
    assert seen(printer) == before


def test_a_json_post_from_a_foreign_origin_is_refused(printer):
    before = seen(printer)
    for origin in (FOREIGN, "null", "http://127.0.0.1.evil.example",
                   "http://mainsail.example.lan.evil.example", f"http://localhost:{printer.port}"):
        for path, data in (("/server/octoflash/profile", EVIL_PROFILE),
                           ("/server/octoflash/build", {"profile": "octopus"}),
                           ("/server/octoflash/flash", {"profile": "octopus"}),
                           ("/server/octoflash/update_all", {"all": True})):
            status, answer, headers = send(printer, "POST", path, **as_json(data, origin))
            assert status == 403, (origin, path, status, answer)
            assert "Access-Control-Allow-Origin" not in headers
            assert "neither this Moonraker" in message(answer)
    status, answer, _ = send(printer, "DELETE", "/server/octoflash/profile?name=evil",
                             headers={"Origin": FOREIGN})
    assert status == 403, answer
    assert seen(printer) == before


def test_a_body_that_is_not_a_json_object_is_refused(printer):
    before = seen(printer)
    for body in (b"name=evil&preset=" + PRESET.encode(), b"[1, 2]", b"\"octopus\""):
        status, answer, _ = send(printer, "POST", "/server/octoflash/profile", body,
                                 {"Content-Type": "application/json"})
        assert status == 400, (body, answer)
        assert message(answer).startswith("Refused, nothing was changed")
    assert seen(printer) == before


def test_same_origin_cors_domains_and_clients_without_origin_are_accepted(printer):
    for i, origin in enumerate((printer.base_url, "http://mainsail.example.lan",
                                "http://fluidd.example.lan", None)):
        name = f"ok{i}"
        status, answer, headers = send(printer, "POST", "/server/octoflash/profile",
                                       **as_json({"name": name, "preset": PRESET}, origin))
        assert status == 200, (origin, answer)
        assert answer["result"]["action"] == "created"
        if origin and origin != printer.base_url:
            assert headers.get("Access-Control-Allow-Origin") == origin   # Moonraker's CORS
        query = f"/server/octoflash/profile?name={name}"
        status, answer, _ = send(printer, "DELETE", query,
                                 headers={"Origin": origin} if origin else {})
        assert status == 200 and answer["result"]["action"] == "deleted", answer
    names = [p[0] for p in seen(printer)[0]]
    assert not any(n.startswith("ok") for n in names)


def test_reading_is_not_affected(printer):
    status, answer, _ = send(printer, "GET", "/server/octoflash/profile?name=octopus",
                             headers={"Origin": FOREIGN})
    assert status == 200 and answer["result"]["profile"]["name"] == "octopus"


async def test_a_cancel_that_is_refused_leaves_the_job_running(printer, ws_factory):
    ws = await ws_factory(printer)
    job = (await ws.call("server.octoflash.build", {"profile": "toolhead", "force": True}))["job"]
    for request_ in (form({"job_id": job["job_id"]}),
                     as_json({"job_id": job["job_id"]}, FOREIGN)):
        status, answer, _ = await asyncio.to_thread(
            send, printer, "POST", "/server/octoflash/job/cancel", **request_)
        assert status in (403, 415), answer
    final = await ws.wait_notification("notify_octoflash_job_update",
                                       lambda u: u["job_id"] == job["job_id"] and u["final"], 120)
    assert final["state"] == "done", final


# --- the websocket and JSON-RPC ---------------------------------------------------

async def open_socket(printer: SimulatedPrinter, origin: Optional[str]) -> Any:
    headers = {"Origin": origin} if origin else {}
    return await websocket_connect(HTTPRequest(printer.ws_url, headers=headers))


async def rpc(conn: Any, method: str, params: Dict[str, Any]) -> Dict[str, Any]:
    await conn.write_message(json.dumps({"jsonrpc": "2.0", "method": method,
                                         "params": params, "id": 1}))
    while True:
        reply = json.loads(await conn.read_message())
        if reply.get("id") == 1:
            return reply


async def test_moonraker_refuses_a_websocket_from_a_foreign_origin(printer):
    for origin in (FOREIGN, "null", f"http://localhost:{printer.port}",
                   "http://mainsail.example.lan.evil.example"):
        with pytest.raises(HTTPClientError) as refused:
            await open_socket(printer, origin)
        assert refused.value.code == 403, origin
        assert b"Cross origin websockets not allowed" in refused.value.response.body
    assert "evil" not in [p[0] for p in seen(printer)[0]]


async def test_json_rpc_changes_work_from_the_server_its_cors_domains_and_scripts(printer):
    # Moonraker also lets in an origin whose host is a trusted IP address
    # (127.0.0.0/8 here), on any port, once cors_domains is set.
    for i, origin in enumerate((printer.base_url, "http://mainsail.example.lan", None,
                                "http://127.0.0.2:8080")):
        conn = await open_socket(printer, origin)
        try:
            name = f"rpc{i}"
            reply = await rpc(conn, "server.octoflash.post_profile",
                              {"name": name, "preset": PRESET})
            assert reply["result"]["action"] == "created", (origin, reply)
            reply = await rpc(conn, "server.octoflash.delete_profile", {"name": name})
            assert reply["result"]["action"] == "deleted", (origin, reply)
        finally:
            conn.close()


def test_http_json_rpc_needs_a_json_content_type(printer):
    call = {"jsonrpc": "2.0", "method": "server.octoflash.post_profile",
            "params": EVIL_PROFILE, "id": 1}
    before = seen(printer)
    status, answer, _ = send(printer, "POST", "/server/jsonrpc", json.dumps(call).encode(),
                             {"Content-Type": "text/plain", "Origin": FOREIGN})
    # Moonraker's answer: 400 "Bad Request" (its reason is only in the traceback)
    assert status == 400 and "application/json required" in answer["error"].get("traceback", "")
    assert seen(printer) == before


async def test_a_macro_still_starts_a_job(printer, ws_factory):
    ws = await ws_factory(printer)
    start = len(ws.notifications)
    printer.result("POST", "/printer/gcode/script",
                   body={"script": "OCTOFLASH_BUILD PROFILE=toolhead"})
    update = await ws.wait_notification("notify_octoflash_job_update",
                                        lambda u: u["final"] and u["profile"] == "toolhead",
                                        120, start=start)
    assert update["state"] == "done"
    jobs = printer.result("GET", "/server/octoflash/jobs")["jobs"]
    assert jobs[0]["origin"] == "macro"


# --- the checks themselves ------------------------------------------------------------

@pytest.mark.parametrize("origin,host,same", [
    ("http://printer.local", "printer.local", True),
    ("http://printer.local:80", "printer.local", True),
    ("https://printer.local", "printer.local", True),
    ("http://Printer.Local:7125", "printer.local:7125", True),
    ("http://[::1]:7125", "[::1]:7125", True),
    ("http://printer.local:7125", "printer.local", False),
    ("http://printer.local", "printer.local:7125", False),
    ("http://printer.local.evil.example", "printer.local", False),
    ("http://printer.local:99999", "printer.local", False),
    ("null", "printer.local", False),
    ("file://", "printer.local", False),
    ("http://printer.local", None, False),
])
def test_same_origin(origin, host, same):
    assert same_origin(origin, host) is same


def test_check_body():
    check_body("POST", "/p", "application/json; charset=utf-8", b'{"profile": "x"}')
    check_body("POST", "/p", "application/json", b"")
    check_body("DELETE", "/p", None, b"")
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "application/jsonp"):
        with pytest.raises(Refusal) as refused:
            check_body("POST", "/p", content_type, b'{"profile": "x"}')
        assert refused.value.status == 415
    with pytest.raises(Refusal) as refused:
        check_body("POST", "/p", "application/json", b"{")
    assert refused.value.status == 400


def test_a_moonraker_whose_router_is_unknown_is_not_guarded_by_guesswork():
    class Server:
        def lookup_component(self, name: str, default: Any = None) -> Any:
            return object() if name == "application" else default
    assert can_guard(Server()) is False     # the component then keeps changes off HTTP
    with pytest.raises(LookupError):
        wrap_route(Server(), "/server/octoflash/build", lambda base: base)


# --- docs/api.md: every curl line gets past the guard ---------------------------------

def curl_lines() -> List[str]:
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


def test_every_curl_line_of_the_api_docs_is_accepted(printer):
    lines = curl_lines()
    assert len(lines) >= 6 and any("/server/octoflash/flash" in line for line in lines)
    answers = {}
    for line in lines:
        # one job per profile: each line is tried once the jobs before it ended
        for job in printer.result("GET", "/server/octoflash/jobs")["jobs"]:
            printer.wait_job(job["job_id"], timeout=180)
        argv = shlex.split(line.replace("$B", printer.base_url))
        out = subprocess.run(argv + ["-s", "-w", "\n%{http_code}"], stdout=subprocess.PIPE,
                             timeout=60, check=True).stdout.decode()
        body, code = out.rsplit("\n", 1)
        answer = json.loads(body or "{}")
        assert int(code) not in (403, 415), (line, answer)
        assert not message(answer).startswith("Refused"), (line, answer)
        answers[line.split("/server/octoflash/")[1].split()[0].strip('"')] = (int(code), answer)
    for what in ("profiles", "profile", "build", "flash", "update_all"):
        assert answers[what][0] == 200, (what, answers[what])
    deleted = next(v for k, v in answers.items() if k.startswith("profile?name="))
    assert deleted[0] == 200 and deleted[1]["result"]["action"] == "deleted", deleted
    for job in printer.result("GET", "/server/octoflash/jobs")["jobs"]:
        printer.wait_job(job["job_id"], timeout=180)


def test_moonrakers_own_routes_refuse_a_foreign_page_that_reaches_octoflash(printer):
    """A macro through /printer/gcode/script: Moonraker takes forms there, so the origin decides."""
    before = seen(printer)
    script = urllib.parse.urlencode({"script": "OCTOFLASH_BUILD PROFILE=octopus"})
    for extra in ({"Content-Type": "application/x-www-form-urlencoded", "Origin": FOREIGN},
                  {"Content-Type": "text/plain", "Origin": "null"}):
        status, answer, _ = send(printer, "POST", "/printer/gcode/script", script.encode(),
                                 extra)
        assert status == 403, answer
        assert "neither this Moonraker" in message(answer)
        status, answer, _ = send(printer, "POST", f"/printer/gcode/script?{script}", b"", extra)
        assert status == 403, answer
    assert seen(printer) == before
    # Other G-code from that page is Moonraker's business, not octoflash's.
    status, answer, _ = send(printer, "POST", "/printer/gcode/script?script=M115", b"",
                             {"Origin": FOREIGN})
    assert status != 403, answer
    # The printer's own page, and scripts without an Origin, still run the macro.
    status, answer, _ = send(printer, "POST", f"/printer/gcode/script?{script}", b"",
                             {"Origin": printer.base_url})
    assert status == 200, answer
    job = printer.wait_for(lambda: [j for j in printer.result(
        "GET", "/server/octoflash/jobs")["jobs"] if j["origin"] == "macro"], 20, "the macro's job")
    printer.wait_job(job[0]["job_id"], 120)


def test_the_guarded_moonraker_routes_are_told_apart():
    from moonraker_octoflash.moonraker.request_guard import concerns_octoflash
    script = "/printer/gcode/script"
    assert concerns_octoflash(script, f"{script}?script=octoflash_flash%20PROFILE%3Dx", b"")
    assert concerns_octoflash("/printer/gcode/script", "/printer/gcode/script", b"script=OCTOFLASH_UPDATE_ALL")
    assert not concerns_octoflash("/printer/gcode/script", "/printer/gcode/script?script=G28", b"")
    assert concerns_octoflash("/machine/update/upgrade", "/machine/update/upgrade?name=octoflash_octopus", b"")
    assert not concerns_octoflash("/machine/update/upgrade", "/machine/update/upgrade?name=klipper", b"")
    assert concerns_octoflash("/machine/update/full", "/machine/update/full", b"")
    assert not concerns_octoflash("/server/info", "/server/info", b"")
