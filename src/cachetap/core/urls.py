"""The URL contract of cached objects: `/c/<key>/<filename>[?o=<origin URL>&s=<signature>]`, built and
read here only. The origin hint is signed (HMAC-SHA256 with the cluster's secret): anyone can compute a
URL's key, so without the signature the cache server would redirect to any URL an attacker hashes.

The capture builds these URLs for its 302s and the cache server parses them; both import this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import parse_qs, quote

from cachetap.core.keys import KEY_REGEX, BadTarget, cache_key, canonical_url

ORIGIN_PARAM = "o"
SIGNATURE_PARAM = "s"
HINT_SECRET = "origin_hint"   # name of the catalog secret that signs hints (Catalog.shared_secret)
_OBJECT_PATH = re.compile(rf"/c/({KEY_REGEX})(?:/[^?]*)?\Z")


def object_path(key: str, filename: str) -> str:
    """`/c/<key>/<filename>`; the name is cosmetic, for clients that save under the URL's name."""
    name = filename.replace("/", "_").replace("\\", "_") or "download"
    return f"/c/{key}/{quote(name, safe='')}"


def object_url(base_url: str, key: str, filename: str, origin: str | None = None,
               secret: bytes | None = None) -> str:
    """The object's URL; with `origin` and `secret`, a signed hint the server falls back to if the
    object is gone (an unsigned hint would be ignored, so none is added without a secret)."""
    url = base_url.rstrip("/") + object_path(key, filename)
    if not origin or not secret:
        return url
    return f"{url}?{ORIGIN_PARAM}={quote(origin, safe='')}&{SIGNATURE_PARAM}={hint_signature(secret, key, origin)}"


def hint_signature(secret: bytes, key: str, origin: str) -> str:
    """HMAC-SHA256 of key and origin URL, first 128 bits, base64url (22 characters)."""
    mac = hmac.new(secret, f"{key}\n{origin}".encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def object_key(path: str) -> str | None:
    """The cache key of `/c/<key>/<name>`, or None for any other path (the name is never used)."""
    match = _OBJECT_PATH.match(path)
    return match.group(1) if match else None


def origin_hint(query: str, key: str, strip: dict[str, list[str]], secret: bytes | None) -> str | None:
    """The original URL carried by a redirect's `o=` parameter, if the cache signed it for `key`.

    The capture puts it there so a client whose object was evicted between the 302 and its request
    still reaches the origin (fail-open). Anyone can compute a URL's key, so matching the key is not
    enough: only a hint signed with the cluster's secret is followed, anything else would make the
    cache server an open redirector. It must also be a canonical URL whose key is `key`.
    """
    if secret is None:
        return None
    try:
        fields = parse_qs(query, max_num_fields=4)
    except ValueError:  # more fields than any URL we make
        return None
    values, signatures = fields.get(ORIGIN_PARAM), fields.get(SIGNATURE_PARAM)
    if not values or not signatures:
        return None
    hint = values[0]
    if not hmac.compare_digest(signatures[0].encode(), hint_signature(secret, key, hint).encode()):
        return None
    try:
        if canonical_url(hint, None, 80) != hint or cache_key(hint, strip) != key:
            return None
    except BadTarget:
        return None
    return hint
