"""octoflash's web page, served by Moonraker, and its link in Mainsail's sidebar.

The page is plain files in ``moonraker_octoflash/web/`` (no build
step): ``index.html``, ``style.css`` and ES modules, one per view.
Moonraker serves only registered endpoints under ``/server``,
``/machine``, ``/printer``, ``/access`` and ``/api``, and its static file
handler sends files as downloads (``Content-Disposition: attachment``), so
each file is an HTTP-only endpoint with its own content type:

    /server/octoflash/web          index.html
    /server/octoflash/web/script   app.js
    /server/octoflash/web/style    style.css
    /server/octoflash/web/NAME.js  the other modules (rpc.js, boards.js, ...)

They need no login: the files hold no data.  They are sent with
``X-Frame-Options: SAMEORIGIN`` and ``Content-Security-Policy:
frame-ancestors 'self'``, so no other site can show the page in a frame.
Everything the page shows comes over Moonraker's websocket, with
Moonraker's usual authorization (a trusted client, or an API key the page
asks for).  Mainsail's and Fluidd's
web servers pass ``/server/...`` to Moonraker, so the page opens on the
printer's usual address: ``http://printer.local/server/octoflash/web``.
"""
from __future__ import annotations

import asyncio
import json
import os
import weakref
from typing import Any, Dict, List, Optional, Tuple

from .http_routes import http_router, wrap_route

WEB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web")
PAGE_PATH = "/server/octoflash/web"
JS_TYPE = "application/javascript; charset=utf-8"
FILES: Dict[str, Tuple[str, str]] = {
    PAGE_PATH: ("index.html", "text/html; charset=utf-8"),
    PAGE_PATH + "/script": ("app.js", JS_TYPE),
    PAGE_PATH + "/style": ("style.css", "text/css; charset=utf-8"),
}
# The page's other ES modules, one per view, each at /server/octoflash/web/NAME.js
# (app.js imports them as "./NAME.js").
MODULES = sorted(name for name in os.listdir(WEB_DIR)
                 if name.endswith(".js") and name != "app.js")
for _module in MODULES:
    FILES[f"{PAGE_PATH}/{_module}"] = (_module, JS_TYPE)
# A page of another site must not show this one in a frame (and trick a
# click on Flash): browsers old and new.
FRAME_HEADERS = {"X-Frame-Options": "SAMEORIGIN",
                 "Content-Security-Policy": "frame-ancestors 'self'"}
NAVI_TITLE = "Firmware"
# Material Design Icons "chip" (mdiChip), the form Mainsail's navi.json expects.
NAVI_ICON = ("M6,4H18V5H21V7H18V9H21V11H18V13H21V15H18V17H21V19H18V20H6V19H3V17H6V15H3V13H6V11"
             "H3V9H6V7H3V5H6V4M11,15V18H12V15H11M13,15V18H14V15H13M15,15V18H16V15H15Z")

_registered: weakref.WeakSet[Any] = weakref.WeakSet()


def register(component: Any) -> None:
    """Register the page's endpoints (once per Moonraker server)."""
    from moonraker.common import RequestType, TransportType
    server = component.server
    if server in _registered:
        return
    if http_router(server) is None:
        raise RuntimeError("this Moonraker's HTTP routes are not the ones octoflash knows, "
                           "so the page could not be kept out of other sites' frames")
    _registered.add(server)
    cache: Dict[str, bytes] = {}

    def handler_for(path: str, filename: str) -> Any:
        async def handler(web_request: Any) -> bytes:
            if path not in cache:
                cache[path] = await asyncio.to_thread(_read, filename)
            return cache[path]
        handler.__name__ = f"_handle_web_{filename.replace('.', '_')}"
        return handler

    for path, (filename, content_type) in FILES.items():
        server.register_endpoint(path, RequestType.GET, handler_for(path, filename),
                                 transports=TransportType.HTTP, wrap_result=False,
                                 content_type=content_type, auth_required=False)
        wrap_route(server, path, _with_frame_headers)


def _with_frame_headers(base: type) -> type:
    """``base`` answering with FRAME_HEADERS: no other site may show the page in a frame."""
    class PageHandler(base):
        def set_default_headers(self) -> None:
            super().set_default_headers()
            for name, value in FRAME_HEADERS.items():
                self.set_header(name, value)

    PageHandler.__name__ = PageHandler.__qualname__ = f"OctoflashPage{base.__name__}"
    return PageHandler


def _read(filename: str) -> bytes:
    with open(os.path.join(WEB_DIR, filename), "rb") as f:
        return f.read()


# --- Mainsail's sidebar --------------------------------------------------------

def navi_entry(href: str = PAGE_PATH, position: int = 85) -> Dict[str, Any]:
    """One entry of Mainsail's ``.theme/navi.json``: the page in a new tab."""
    return {"title": NAVI_TITLE, "href": href, "target": "_blank", "icon": NAVI_ICON,
            "position": position}


def add_navi_link(config_dir: str, href: str = PAGE_PATH) -> str:
    """Add (or update) the page's link in ``<config>/.theme/navi.json``; return its path.

    Other links in the file are kept; running it again changes nothing.  A
    file that is not a JSON list is left alone (ValueError says so).
    """
    theme = os.path.join(os.path.expanduser(config_dir), ".theme")
    path = os.path.join(theme, "navi.json")
    entries: List[Dict[str, Any]] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                loaded: Optional[Any] = json.load(f)
            except ValueError:
                loaded = None
        if not isinstance(loaded, list):
            raise ValueError(f"{path} is not a JSON list of links; add the entry by hand "
                             f"(see docs/web.md)")
        entries = loaded
    mine = navi_entry(href)
    kept = [e for e in entries if not (isinstance(e, dict) and e.get("href") == href)]
    updated = kept + [mine]
    if updated == entries:
        return path
    os.makedirs(theme, exist_ok=True)
    tmp = path + ".octoflash-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(updated, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def remove_navi_link(config_dir: str, href: str = PAGE_PATH) -> bool:
    """Take the page's link out of ``<config>/.theme/navi.json``; True when it was there.

    Other links stay; a file left empty of links is removed.  A file that is
    not a JSON list is left alone (ValueError says so).
    """
    path = os.path.join(os.path.expanduser(config_dir), ".theme", "navi.json")
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        try:
            loaded: Optional[Any] = json.load(f)
        except ValueError:
            loaded = None
    if not isinstance(loaded, list):
        raise ValueError(f"{path} is not a JSON list of links; remove the entry by hand")
    kept = [e for e in loaded if not (isinstance(e, dict) and e.get("href") == href)]
    if len(kept) == len(loaded):
        return False
    if not kept:
        os.unlink(path)
        return True
    tmp = path + ".octoflash-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(kept, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return True
