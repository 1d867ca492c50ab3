"""URLs of cached objects: the one place that knows the `/c/<key>/<filename>` form."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, quote

from cachetap.core.keys import BadTarget, cache_key, canonical_url

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}
ORIGIN_PARAM = "o"


def object_path(key: str, filename: str) -> str:
    """`/c/<key>/<filename>`; the name is cosmetic, for clients that save under the URL's name."""
    name = filename.replace("/", "_").replace("\\", "_") or "download"
    return f"/c/{key}/{quote(name, safe='')}"


def object_url(base_url: str, key: str, filename: str, origin: str | None = None) -> str:
    """The object's URL; with `origin`, a hint the server falls back to if the object is gone."""
    url = base_url.rstrip("/") + object_path(key, filename)
    return f"{url}?{ORIGIN_PARAM}={quote(origin, safe='')}" if origin else url


def origin_hint(query: str, key: str, strip: dict[str, list[str]]) -> str | None:
    """The original URL carried by a redirect's `o=` parameter, if it truly is the URL of `key`.

    The capture puts it there so a client whose object was evicted between the 302 and its request
    still reaches the origin (fail-open). Accepted only when it is a canonical URL whose cache key is
    `key`: anything else would make the cache server an open redirector.
    """
    values = parse_qs(query, max_num_fields=4).get(ORIGIN_PARAM)
    if not values:
        return None
    hint = values[0]
    try:
        if canonical_url(hint, None, 80) != hint or cache_key(hint, strip) != key:
            return None
    except BadTarget:
        return None
    return hint


def public_base_url(public_url: str, serve_host: str, serve_port: int) -> str:
    """Base URL clients are redirected to: `public_url` if set, else derived from host and port.

    A wildcard bind address is replaced by the address of the interface holding the default
    route (a UDP connect sends no packet), falling back to 127.0.0.1 on a host with no route.
    """
    if public_url:
        return public_url.rstrip("/")
    host = serve_host
    if host in WILDCARDS:
        host = _primary_address()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}" if serve_port == 80 else f"http://{host}:{serve_port}"


def _primary_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1; connect() on UDP only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
