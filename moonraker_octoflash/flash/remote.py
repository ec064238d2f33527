"""``octoflash flash`` through a running Moonraker: one job runner, one history.

When the Moonraker of this config (same build folder) answers with the
component loaded, the command line asks it to flash: the job shows in the
web page and the history, and Moonraker's own checks (printing, another
flash) apply.  Otherwise — Moonraker not running, another installation, no
authorization — the command line flashes by itself, kept apart from any
other writer by the writer lock.  ``--local`` forces the latter.

The command line is synchronous, so plain blocking HTTP is fine here.
"""
from __future__ import annotations

import configparser
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, TextIO, Tuple

FOLLOW_INTERVAL = 0.3


class MoonrakerLink:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout = timeout

    def request(self, method: str, path: str, args: Optional[Dict[str, Any]] = None,
                body: Optional[Dict[str, Any]] = None,
                timeout: Optional[float] = None) -> Tuple[int, Dict[str, Any]]:
        url = self.base_url + path
        if args:
            url += "?" + urllib.parse.urlencode({k: v for k, v in args.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}

    @staticmethod
    def error_of(payload: Dict[str, Any]) -> str:
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error or payload)


def moonraker_url(config_path: str) -> str:
    """Where the Moonraker of this config listens ([server] host and port)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    try:
        parser.read(config_path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        pass
    host = parser.get("server", "host", fallback="").strip() if parser.has_section("server") else ""
    port = parser.get("server", "port", fallback="7125").strip() if parser.has_section("server") \
        else "7125"
    if host in ("", "0.0.0.0", "::", "all"):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def find_moonraker(config_path: str, build_path: str, timeout: float = 2.0
                   ) -> Tuple[Optional[MoonrakerLink], Optional[str]]:
    """(link, None) when this config's Moonraker runs the component; else (None, why not)."""
    link = MoonrakerLink(moonraker_url(config_path))
    try:
        status, payload = link.request("GET", "/server/octoflash/status", timeout=timeout)
    except (OSError, ValueError):
        return None, None                     # not running: nothing to say
    if status in (401, 403):
        return None, (f"Moonraker at {link.base_url} needs authorization, so this flash runs "
                      "here (the writer lock keeps it apart from Moonraker's flashes)")
    if status != 200:
        return None, None                     # no octoflash component there
    paths = (payload.get("result") or {}).get("paths") or {}
    if paths.get("build_path") != build_path:
        return None, None                     # another installation's Moonraker
    return link, None


def flash_through_moonraker(link: MoonrakerLink, profiles: List[Any], args: Any,
                            out: TextIO, err: TextIO, confirm: Any) -> int:
    """Plan, ask, then one Moonraker flash job per profile, followed to its end."""
    json_out = bool(args.json)
    log = err if json_out else out
    log.write(f"Moonraker runs at {link.base_url}: the flash runs there (one job history, "
              "progress on the web page too). --local flashes from here instead.\n")
    texts = []
    for profile in profiles:
        status, payload = link.request("GET", "/server/octoflash/plan", args={
            "profile": profile.name, "method": args.method, "artifact_id": args.artifact})
        if status != 200:
            err.write(f"octoflash flash: {profile.name}: {link.error_of(payload)}\n")
            return 1
        result = payload["result"]
        if result.get("needs_build"):
            err.write(f"octoflash flash: No build of '{profile.name}'. Build it first: "
                      f"octoflash build {profile.name}\n")
            return 1
        texts.append(result.get("text") or "")
    for text in texts:
        log.write(text + "\n")
    if not args.yes:
        ok, why = confirm(len(profiles))
        if not ok:
            err.write(f"octoflash flash: {why}\n")
            return 1
    jobs: List[Dict[str, Any]] = []
    for profile in profiles:
        body: Dict[str, Any] = {"profile": profile.name, "build": False}
        if args.method:
            body["method"] = args.method
        if args.artifact:
            body["artifact_id"] = args.artifact
        status, payload = link.request("POST", "/server/octoflash/flash", body=body)
        if status != 200:
            err.write(f"octoflash flash: {profile.name}: {link.error_of(payload)}\n")
            break
        job = payload["result"]["job"]
        log.write(f"[job] {profile.name}: job {job['job_id']} in Moonraker\n")
        try:
            job = _follow(link, job["job_id"], log)
        except KeyboardInterrupt:
            status, payload = link.request("POST", "/server/octoflash/job/cancel",
                                           body={"job_id": job["job_id"]})
            err.write("octoflash flash: " + ("cancelled" if status == 200 else
                                            link.error_of(payload)) + "\n")
            return 130
        jobs.append(job)
        if job["state"] != "done":
            break
    if json_out:
        json.dump({"moonraker": link.base_url, "jobs": jobs}, out, indent=2)
        out.write("\n")
    else:
        for job in jobs:
            out.write(_summary(job) + "\n")
    return 0 if jobs and len(jobs) == len(profiles) and all(
        j["state"] == "done" for j in jobs) else 1


def _follow(link: MoonrakerLink, job_id: str, log: TextIO) -> Dict[str, Any]:
    """Print the job's log lines as they come; return the job once it has ended."""
    printed = 0
    while True:
        status, payload = link.request("GET", "/server/octoflash/job", args={"job_id": job_id})
        if status != 200:
            raise OSError(f"Moonraker stopped answering about job {job_id}: "
                          f"{link.error_of(payload)}")
        job = payload["result"]["job"]
        first = job.get("log_dropped") or 0
        lines = job.get("log") or []
        start = max(0, printed - first)
        for line in lines[start:]:
            log.write(("" if line.startswith("[") else "    ") + line + "\n")
        printed = first + len(lines)
        log.flush()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(FOLLOW_INTERVAL)


def _summary(job: Dict[str, Any]) -> str:
    text = f"{job['profile']}: {job['state']}: {job.get('message') or ''}"
    if job.get("recovery"):
        text += f"\n  To recover: {job['recovery']}"
    for warning in (job.get("result") or {}).get("warnings") or []:
        text += f"\n  warning: {warning}"
    return text
