"""Refuse HTTP requests that change something when a page on another site could have sent them.

Moonraker trusts a client by its IP address and does not ask which page a
browser request comes from.  A browser sends some cross-site requests
without asking the server first (no CORS preflight): a POST whose body is a
form (``application/x-www-form-urlencoded``, ``multipart/form-data``) or
``text/plain``.  A page on any site, open in a browser on the printer's
network, could build and flash that way.  So a POST that changes something
must carry a JSON body (``Content-Type: application/json``, which a browser
sends across sites only after a preflight that Moonraker answers for its
``cors_domains`` alone), and any changing request with an ``Origin`` header
must come from this server itself or from an origin Moonraker's
authorization component accepts (``[authorization] cors_domains``, matched
by Moonraker itself, wildcards included).  DELETE needs no JSON body: a
browser always preflights it.

Only the HTTP routes are guarded here.  The websocket's ``Origin`` is
checked by Moonraker when it opens (see docs/api.md); Klipper macros and
other components do not come through a browser.

The check runs inside Moonraker's HTTP handler, because the request a
component's callback gets (``WebRequest``) carries no headers:
``guard_route(server, path)`` serves an endpoint already registered through
a subclass of its handler (``http_routes``).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

from .http_routes import http_router, wrap_route

if TYPE_CHECKING:
    from moonraker.server import Server

JSON_TYPE = "application/json"
GUARDED_METHODS = ("POST", "DELETE")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_SHOWN = 100        # characters of a client's Origin repeated in a message


class Refusal(Exception):
    """A request refused before anything changed; ``status`` is its HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- the checks (plain functions) ----------------------------------------------

def check_body(method: str, path: str, content_type: Optional[str], body: bytes) -> None:
    """A POST must carry its arguments as a JSON object; raise Refusal otherwise."""
    if method != "POST":
        return
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_TYPE:
        sent = f"'{_shown(media_type)}'" if media_type else "no Content-Type"
        raise Refusal(415, (
            f"Refused, nothing was changed: {path} takes a JSON body and this request sent "
            f"{sent}. Send the arguments as a JSON object with the header "
            "'Content-Type: application/json' (curl -H 'Content-Type: application/json' "
            "-d '{...}', see docs/api.md), or use the websocket. Form posts are refused "
            "because a page on any web site can send them."))
    if body.strip():
        try:
            args = json.loads(body)
        except ValueError as exc:
            raise Refusal(400, f"Refused, nothing was changed: the body is not valid JSON "
                               f"({_shown(str(exc))}). Send the arguments as one JSON object, "
                               "e.g. {\"profile\": \"octopus\"}.") from None
        if not isinstance(args, dict):
            raise Refusal(400, "Refused, nothing was changed: the body must be a JSON object "
                               "of arguments, e.g. {\"profile\": \"octopus\"}.")


def same_origin(origin: str, host: Optional[str]) -> bool:
    """Is ``origin`` (``scheme://host[:port]``) the server the request was sent to (its Host)?

    A Host without a port means the default port of the scheme the page used,
    as the browser leaves it out exactly then.
    """
    if not host:
        return False
    try:
        parts = urlsplit(origin)
        scheme = parts.scheme.lower()
        origin_host = (parts.hostname or "").lower()
        origin_port = parts.port or DEFAULT_PORTS.get(scheme)
        target = urlsplit("//" + host.strip())
        target_host = (target.hostname or "").lower()
        target_port = target.port or DEFAULT_PORTS.get(scheme)
    except ValueError:          # a port that is not a number
        return False
    if scheme not in DEFAULT_PORTS or not origin_host or parts.path not in ("", "/"):
        return False
    return origin_host == target_host and origin_port == target_port


async def check_origin(origin: Optional[str], host: Optional[str],
                       cors_allowed: Callable[[str], Awaitable[bool]]) -> None:
    """Raise Refusal for an Origin that is neither this server nor allowed by ``cors_allowed``."""
    if origin is None:     # browsers send one with every cross-site POST; scripts do not
        return
    if same_origin(origin, host) or await cors_allowed(origin):
        return
    raise Refusal(403, (
        f"Refused, nothing was changed: this request comes from the page at "
        f"'{_shown(origin)}', which is neither this Moonraker ('{_shown(host or '')}') nor "
        "allowed by [authorization] cors_domains in moonraker.conf. Use the octoflash page, "
        "Mainsail or Fluidd on the printer's own address, or add that origin to "
        "cors_domains if you trust the site."))


def _shown(text: str) -> str:
    """Client text fit for a one-line HTTP reason phrase."""
    text = "".join(ch if 32 <= ord(ch) < 127 and ch not in "<>" else "?" for ch in text)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


# --- in front of Moonraker's HTTP routes ---------------------------------------

def can_guard(server: Server) -> bool:
    """Can ``guard_route`` work on this Moonraker?  If not, leave changes off HTTP."""
    return http_router(server) is not None


def guard_route(server: Server, path: str) -> None:
    """Check the POST and DELETE requests of the registered endpoint ``path`` over HTTP."""
    wrap_route(server, path, _guarded_handler)


async def check_request(server: Server, method: str, path: str, headers: Any,
                        body: bytes) -> None:
    """Raise Refusal for a changing request that a page on another site could have sent."""
    if method not in GUARDED_METHODS:
        return
    auth = server.lookup_component("authorization", None)

    async def cors_allowed(origin: str) -> bool:
        # Moonraker's own answer, as for its CORS headers and its websocket
        return auth is not None and bool(await auth.check_cors(origin))
    await check_origin(headers.get("Origin"), headers.get("Host"), cors_allowed)
    check_body(method, path, headers.get("Content-Type"), body)


# Moonraker's own endpoints that can reach octoflash: a macro run through
# the gcode endpoint, and the update manager's entries (each firmware entry
# builds and flashes).  These keep taking what Moonraker takes (forms, query
# strings), but a request that names octoflash and comes from a page on
# another site is refused, as octoflash's own endpoints refuse it.
FOREIGN_ROUTES = {
    "/printer/gcode/script": "OCTOFLASH",
    "/machine/update/upgrade": "OCTOFLASH_",
    "/machine/update/full": "",
}


def concerns_octoflash(path: str, uri: str, body: bytes) -> bool:
    """Does a request to one of Moonraker's ``FOREIGN_ROUTES`` reach octoflash?"""
    from urllib.parse import unquote_plus
    marker = FOREIGN_ROUTES.get(path)
    if marker is None:
        return False
    if not marker:
        return True
    text = unquote_plus(uri) + "\n" + body.decode("utf-8", "replace")
    return marker in text.upper()


def guard_moonraker_routes(server: Server) -> list:
    """Refuse foreign-origin requests to Moonraker's routes that reach octoflash.

    Returns the paths guarded (a route Moonraker did not register is left out).
    """
    guarded = []
    for path in FOREIGN_ROUTES:
        try:
            wrap_route(server, path, _origin_guarded_handler)
        except LookupError:
            continue
        guarded.append(path)
    return guarded


def _origin_guarded_handler(base: type) -> type:
    from tornado.web import HTTPError

    class OriginGuardedHandler(base):
        async def prepare(self) -> None:
            await super().prepare()
            request = self.request
            if (request.method or "") not in GUARDED_METHODS or \
                    not concerns_octoflash(request.path, request.uri or "", request.body or b""):
                return
            auth = self.settings["server"].lookup_component("authorization", None)

            async def cors_allowed(origin: str) -> bool:
                return auth is not None and bool(await auth.check_cors(origin))
            try:
                await check_origin(request.headers.get("Origin"), request.headers.get("Host"),
                                   cors_allowed)
            except Refusal as refusal:
                raise HTTPError(refusal.status, reason=str(refusal)) from None

    OriginGuardedHandler.__name__ = OriginGuardedHandler.__qualname__ = \
        f"OctoflashOriginGuarded{base.__name__}"
    return OriginGuardedHandler


def _guarded_handler(base: type) -> type:
    from tornado.web import HTTPError

    class GuardedHandler(base):
        async def prepare(self) -> None:
            await super().prepare()       # Moonraker's authorization and CORS headers first
            request = self.request
            try:
                await check_request(self.settings["server"], request.method or "",
                                    request.path, request.headers, request.body or b"")
            except Refusal as refusal:
                raise HTTPError(refusal.status, reason=str(refusal)) from None

    GuardedHandler.__name__ = GuardedHandler.__qualname__ = f"OctoflashGuarded{base.__name__}"
    return GuardedHandler
