"""HTTP semantics (RFC 9110): dates, entity tags, ranges, conditionals, header values.

Small pure functions shared by the cache server (web/), freshness and revalidation (core/freshness.py);
the server module only wires them to sockets.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable:
    """A syntactically valid single range that selects no byte of the object (-> 416)."""


UNSATISFIABLE = Unsatisfiable()
_RANGE = re.compile(r"bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*\Z", re.IGNORECASE)


_BEYOND = "1" + "0" * 18


def parse_range(value: str | None, size: int) -> ByteRange | Unsatisfiable | None:
    """The byte range to send, UNSATISFIABLE, or None to send the whole object.

    Only single ranges are honoured. A multi-range request gets the whole object with 200, which
    RFC 9110 14.2 allows ("a server MAY ignore the Range header field"); multipart/byteranges would
    need the body to be assembled instead of handed to sendfile, and no download tool needs it.
    An invalid Range header is ignored the same way.
    """
    if not value or "," in value:
        return None
    match = _RANGE.match(value.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    # Beyond any file size, and short enough for int() (which refuses more than 4,300 digits).
    first, last = (_BEYOND if len(t) > 18 else t for t in (first, last))
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid syntax per RFC 9110 14.1.1: ignore the header
    if start >= size:
        return UNSATISFIABLE
    return ByteRange(start, min(end, size - 1))


# ---- dates -----------------------------------------------------------------------------------

def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP-date (any of the three RFC 9110 forms), None when invalid."""
    if not value or not value.strip():
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None  # "-0000" or no zone: not an HTTP-date
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def format_http_date(epoch: float) -> str:
    """The IMF-fixdate form RFC 9110 5.6.7 asks senders to use."""
    return formatdate(epoch, usegmt=True)


# ---- validators ------------------------------------------------------------------------------

_ETAG_LIST_ITEM = re.compile(r'\s*((?:W/)?"[^"]*")\s*(?:,|\Z)')


def valid_etag(tag: str | None, obs_text: bool = True) -> bool:
    """RFC 9110 8.8.3 entity-tag: optional W/, then a quoted string of etagc. `obs_text=False` also
    refuses the bytes >= 0x80 the grammar tolerates (the cache server sends only ASCII heads)."""
    if not tag:
        return False
    body = tag[2:] if tag.startswith("W/") else tag
    return (len(body) >= 2 and body[0] == '"' and body[-1] == '"'
            and all(c == "!" or "#" <= c <= "~" or (obs_text and c >= "\x80") for c in body[1:-1]))


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def weak_match(a: str, b: str) -> bool:
    """Weak comparison (RFC 9110 8.8.3.2): equal opaque tags, W/ prefixes ignored."""
    return _opaque(a) == _opaque(b)


def _etag_list(value: str) -> list[str]:
    return [m.group(1) for m in _ETAG_LIST_ITEM.finditer(value)]


def none_match(if_none_match: str, etag: str | None) -> bool:
    """True when If-None-Match matches (weak comparison), i.e. the answer is 304."""
    if if_none_match.strip() == "*":
        return True
    if etag is None:
        return False
    return any(weak_match(tag, etag) for tag in _etag_list(if_none_match))


def not_modified(headers: dict[str, str], etag: str | None, last_modified: float | None) -> bool:
    """RFC 9110 13.2.2 steps 3-4 for GET/HEAD: If-None-Match wins over If-Modified-Since."""
    inm = headers.get("if-none-match")
    if inm is not None:
        return none_match(inm, etag)
    since = parse_http_date(headers.get("if-modified-since"))
    if since is None or last_modified is None:
        return False
    return int(last_modified) <= since


def range_allowed(if_range: str | None, etag: str | None, last_modified: float | None) -> bool:
    """If-Range: honour Range only if the validator still matches (strong comparison)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', 'W/"')):
        return (etag is not None and not etag.startswith("W/") and not value.startswith("W/")
                and value == etag)
    since = parse_http_date(value)
    return since is not None and last_modified is not None and int(last_modified) == since


# ---- header values built from stored metadata --------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MEDIA_TYPE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
                         r"(?:\s*;\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+=(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"[^\"\\]*\"))*\Z")
# RFC 8187 attr-char: everything else is percent-encoded in filename*.
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"


def safe_content_type(value: str | None) -> str:
    """The stored type if it is a well-formed media type, else application/octet-stream."""
    if value and _MEDIA_TYPE.match(value.strip()):
        return value.strip()
    return "application/octet-stream"


def ascii_fallback_name(name: str) -> str:
    """An ASCII file name for the plain `filename=` parameter: accents dropped, oddities -> '_'."""
    decomposed = unicodedata.normalize("NFKD", name)
    chars = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        if ord(ch) < 0x20 or ord(ch) >= 0x7f or ch in '"\\/%;':
            chars.append("_")
        else:
            chars.append(ch)
    cleaned = "".join(chars).strip(" .") or "download"
    return cleaned


def content_disposition(filename: str) -> str:
    """`inline` keeps what the browser would do with the origin's answer; the names name saves.

    RFC 6266: an ASCII `filename` for old clients plus `filename*` in UTF-8 (RFC 8187).
    """
    name = _CONTROL.sub("", filename).replace("/", "_").replace("\\", "_").strip() or "download"
    fallback = ascii_fallback_name(name)
    value = f'inline; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe=_ATTR_CHAR_SAFE)}"
    return value


def safe_location(url: str | None) -> str | None:
    """A Location value that cannot split the response: non-ASCII and controls percent-encoded."""
    if not url or not url.startswith(("http://", "https://")):
        return None
    return quote(url, safe="!#$&'()*+,/:;=?@[]~%-._")
