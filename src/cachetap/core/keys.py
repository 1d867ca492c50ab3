"""Canonical URLs, cache keys and safe file names (RFC 3986 normalisation, http only).

Two requests for the same resource must give the same key, and no request may give a URL that
climbs out of its path: dot-segments are resolved after percent-decoding unreserved characters,
so "/a/%2e%2e/b" is "/b". Encoded slashes (%2F) stay encoded: they name a different resource.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from fnmatch import fnmatchcase
from urllib.parse import unquote

MAX_TARGET = 8 * 1024
MAX_FILENAME = 200
DEFAULT_PORT = 80
# What cache_key returns, and so the only form a key from the wire, a URL or a file name may take.
KEY_REGEX = r"[0-9a-f]{32}"
KEY_PATTERN = re.compile(KEY_REGEX)

_CONTROL = re.compile(r"[\x00-\x20\x7f]")  # also SP: a target or a host never contains one
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters allowed unencoded in a path or query (RFC 3986 pchar, "/" and "?"); others get encoded.
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_FILENAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-+~()@,=")


class BadTarget(ValueError):
    """A request target that cannot name a cacheable http resource; `reason` is a short code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonical_url(target: str, host: str | None, port: int) -> str:
    """The canonical http URL for a request target, its Host header and the TCP destination port.

    Absolute-form targets carry their own authority and win over `host`; `port` is used only when
    an origin-form request's Host has no port. Raises BadTarget.
    """
    if len(target) > MAX_TARGET:
        raise BadTarget("target_too_long")
    if not target:
        raise BadTarget("empty_target")
    _reject_controls(target)
    if target[0] == "/":
        if not host:
            raise BadTarget("no_host")
        _reject_controls(host)
        authority, rest = host, target
        default_port = port
    elif target == "*":
        raise BadTarget("asterisk_form")  # OPTIONS *: names no resource
    else:
        authority, rest = _split_absolute(target)
        default_port = DEFAULT_PORT
    if not 0 < default_port < 65536:
        raise BadTarget("bad_port")
    hostname, port_number = _parse_authority(authority, default_port)

    rest = rest.split("#", 1)[0]
    path, qmark, query = rest.partition("?")
    path = _remove_dot_segments(_normalise_encoding(path or "/", _PATH_SAFE))
    url = f"http://{hostname}" if port_number == DEFAULT_PORT else f"http://{hostname}:{port_number}"
    url += path
    if qmark:
        url += "?" + _normalise_encoding(query, _QUERY_SAFE)
    return url


def _reject_controls(text: str) -> None:
    if _CONTROL.search(text):
        raise BadTarget("control_char")


def _split_absolute(target: str) -> tuple[str, str]:
    match = _SCHEME.match(target)
    if match is None:
        raise BadTarget("bad_target_form")
    scheme = match.group(1).lower()
    after = target[match.end():]
    if scheme != "http":
        # "example.com:443" (CONNECT's authority-form) looks like a scheme followed by digits.
        raise BadTarget("authority_form" if after.isdigit() or not after else "non_http_scheme")
    if not after.startswith("//"):
        raise BadTarget("bad_target_form")
    after = after[2:]
    cut = len(after)
    for sep in "/?#":
        i = after.find(sep)
        if 0 <= i < cut:
            cut = i
    return after[:cut], after[cut:]


def _parse_authority(authority: str, default_port: int) -> tuple[str, int]:
    """(canonical host, port) of "host[:port]"; IPv6 literals in brackets."""
    if not authority:
        raise BadTarget("no_host")
    if "@" in authority:
        raise BadTarget("userinfo")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0 or "%" in authority[:close]:  # no zone ids: they name a local interface
            raise BadTarget("bad_host")
        try:
            address = ipaddress.IPv6Address(authority[1:close])
        except ValueError:
            raise BadTarget("bad_host") from None
        hostname = f"[{address.compressed}]"
        port_text = authority[close + 1:]
        if port_text and not port_text.startswith(":"):
            raise BadTarget("bad_host")
        port_text = port_text[1:]
    else:
        name, _, port_text = authority.partition(":")
        hostname = _canonical_hostname(name)
    if not port_text:  # "host:" means the default port (RFC 3986 6.2.3)
        return hostname, default_port
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise BadTarget("bad_port")
    return hostname, int(port_text)


def _canonical_hostname(name: str) -> str:
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]  # the root label: same host
    if not name.isascii():
        try:  # an IDN written in Unicode: the ASCII (punycode) form is what DNS and the origin see
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadTarget("bad_host") from None
    if not name or len(name) > 253 or not _HOST_CHARS.issuperset(name) or "" in name.split("."):
        raise BadTarget("bad_host")
    return name


def _normalise_encoding(text: str, safe: frozenset[str]) -> str:
    """Decode %XX of unreserved characters, upper-case the other escapes, encode unsafe characters."""
    if "%" not in text and safe.issuperset(text):
        return text  # the common case, checked in C
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or not _HEX.issuperset(pair):
                raise BadTarget("bad_percent_encoding")
            decoded = chr(int(pair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        if ch in safe:
            out.append(ch)
        else:  # quotes, brackets, backslash, non-ASCII (as UTF-8): encoded as a browser would
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path: "." and ".." segments never survive."""
    if "." not in path:
        return path
    segments = path[1:].split("/")
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/", a directory
    return "/" + "/".join(out)


def _split_url(url: str) -> tuple[str, str, str, bool]:
    """(authority, path, query, has_query) of a canonical http URL."""
    rest = url[len("http://"):] if url.startswith("http://") else url.split("://", 1)[-1]
    slash = rest.find("/")
    authority, tail = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    path, qmark, query = tail.partition("?")
    return authority, path, query, bool(qmark)


def host_of(url: str) -> str:
    """Host of a canonical URL, lower-case, without port or IPv6 brackets."""
    authority = _split_url(url)[0]
    if authority.startswith("["):
        return authority[1:authority.find("]")].lower()
    return authority.partition(":")[0].lower()


def port_of(url: str) -> int:
    """TCP port of a canonical URL (`canonical_url` leaves out the default 80, and only it).

    Per packet on the redirect path: string slicing instead of `urllib.parse.urlsplit`, which costs
    several times more and validates what `canonical_url` already did."""
    authority = _split_url(url)[0]
    port_text = authority[authority.find("]") + 1:] if authority.startswith("[") else authority
    port_text = port_text.rpartition(":")[2] if ":" in port_text else ""
    return int(port_text) if port_text.isdigit() else DEFAULT_PORT


def path_of(url: str) -> str:
    """Path of a canonical URL, without the query."""
    return _split_url(url)[1]


def cache_key(url: str, strip: dict[str, list[str]]) -> str:
    """32 hex chars naming a canonical URL, after dropping the query parameters `strip` names for its
    host (a host glob -> parameter names, like Squid's Store-ID for signed-URL tokens)."""
    authority, path, query, has_query = _split_url(url)
    if has_query and strip:
        host = host_of(url)
        names = {name for glob, params in strip.items() if fnmatchcase(host, glob.lower()) for name in params}
        if names:
            kept = [p for p in query.split("&") if p.partition("=")[0] not in names]
            url = f"http://{authority}{path}" + ("?" + "&".join(kept) if kept else "")
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def url_filename(url: str) -> str:
    """A safe file name for display and Content-Disposition from the URL's last path segment."""
    segment = path_of(url).rsplit("/", 1)[-1]
    name = unquote(segment, errors="replace")
    name = "".join(ch if ch in _FILENAME_CHARS else "_" for ch in name)
    name = re.sub(r"_{2,}", "_", name).lstrip(".-")  # no hidden files, no option-like names
    if len(name) > MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:  # keep the extension: it tells the client what the file is
            name = stem[:MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME]
    return name or "download"
