"""The URL contract of cached objects: `/c/<key>/<filename>[?o=<origin URL>]`, built and read here only.

The capture builds these URLs for its 302s and the cache server parses them; both import this module.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, quote

from cachetap.core.keys import KEY_REGEX, BadTarget, cache_key, canonical_url

ORIGIN_PARAM = "o"
_OBJECT_PATH = re.compile(rf"/c/({KEY_REGEX})(?:/[^?]*)?\Z")


def object_path(key: str, filename: str) -> str:
    """`/c/<key>/<filename>`; the name is cosmetic, for clients that save under the URL's name."""
    name = filename.replace("/", "_").replace("\\", "_") or "download"
    return f"/c/{key}/{quote(name, safe='')}"


def object_url(base_url: str, key: str, filename: str, origin: str | None = None) -> str:
    """The object's URL; with `origin`, a hint the server falls back to if the object is gone."""
    url = base_url.rstrip("/") + object_path(key, filename)
    return f"{url}?{ORIGIN_PARAM}={quote(origin, safe='')}" if origin else url


def object_key(path: str) -> str | None:
    """The cache key of `/c/<key>/<name>`, or None for any other path (the name is never used)."""
    match = _OBJECT_PATH.match(path)
    return match.group(1) if match else None


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
