"""The one place that knows how Moonraker 0.11 routes HTTP requests to an endpoint.

A component's callback gets a ``WebRequest`` without the HTTP headers, and
the HTTP answer's headers are Moonraker's.  To look at a request's headers
(``request_guard``) or add response headers (``web``), the tornado handler
class of an endpoint's route, already registered, is replaced with a
subclass of it: ``wrap_route(server, path, make_subclass)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

if TYPE_CHECKING:
    from moonraker.server import Server

_subclasses: Dict[Tuple[Any, type], type] = {}


def http_router(server: Server) -> Optional[Tuple[Any, str]]:
    """(router, route prefix) of Moonraker's HTTP server, or None when it is not 0.11's."""
    app = server.lookup_component("application", None)
    router = getattr(app, "mutable_router", None)
    prefix = getattr(app, "route_prefix", None)
    if not isinstance(getattr(router, "pattern_to_rule", None), dict) or \
            not callable(getattr(router, "add_handler", None)) or not isinstance(prefix, str):
        return None
    return router, prefix


def wrap_route(server: Server, path: str, make_subclass: Callable[[type], type]) -> None:
    """Serve the registered endpoint ``path`` over HTTP with ``make_subclass(its handler class)``.

    Raises LookupError when Moonraker's router is not the one known here or
    ``path`` has no HTTP route.
    """
    found = http_router(server)
    if found is None:
        raise LookupError("this Moonraker's HTTP router is not Moonraker 0.11's")
    router, prefix = found
    pattern = prefix + path
    rule = router.pattern_to_rule.get(pattern)
    if rule is None:
        raise LookupError(f"no HTTP route for {path}")
    if getattr(rule.target, "_octoflash_wrapped_by", None) is make_subclass:
        return            # already served through this subclass
    key = (make_subclass, rule.target)
    if key not in _subclasses:
        subclass = make_subclass(rule.target)
        subclass._octoflash_wrapped_by = make_subclass  # type: ignore[attr-defined]
        _subclasses[key] = subclass
    router.add_handler(pattern, _subclasses[key], rule.target_kwargs)
