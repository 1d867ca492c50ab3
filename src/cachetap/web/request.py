"""Server-side HTTP/1.1 request heads: parse one head, decide keep-alive, find the cache key.

Pure functions on bytes and strings, no I/O. The capture side has its own parser (core/http.py)
tuned for sniffed traffic; this one is strict in the way RFC 9112 asks a server to be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 16 * 1024  # a GET for a file needs far less; bigger heads are refused with 431

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Visible ASCII only: no NUL, CR, LF, spaces or bytes >= 0x80 in a request-target.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_FIELD_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# /c/<key>/<cosmetic file name>; only the key is ever used, so no path reaches the disk.


class BadRequest(Exception):
    """The bytes cannot be a valid request head; the reason is short and machine-readable."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str                    # "HTTP/1.0" or "HTTP/1.1"
    headers: dict[str, str]         # lower-case names; repeated fields joined with ", "

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def path(self) -> str:
        """The path of the target without the query (absolute-form reduced to its path)."""
        target = self.target
        if target.startswith(("http://", "https://")):
            slash = target.find("/", target.index("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        return target.split("?", 1)[0]

    @property
    def query(self) -> str:
        """The query of the target (after the first '?'), '' when there is none."""
        return self.target.partition("?")[2]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.1":
            return "close" not in tokens
        return "keep-alive" in tokens

    @property
    def has_body(self) -> bool:
        """A body we will not read follows; the connection must close after the answer."""
        if "transfer-encoding" in self.headers:
            return True
        return self.headers.get("content-length", "0").strip() not in ("0", "")


# Fields that must not repeat: two different values are a smuggling or confusion attempt.
_SINGLETON = frozenset({"host", "content-length", "range", "if-range", "if-modified-since"})


def parse_request_head(head: bytes) -> Request:
    """Parse one request head (request line + fields, terminated by CRLF CRLF or LF LF).

    Raises BadRequest for anything RFC 9112 tells a server to reject.
    """
    if len(head) > MAX_HEAD_BYTES:
        raise BadRequest("head_too_large", 431)
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while lines and lines[-1] == b"":
        lines.pop()
    # A server SHOULD ignore at least one empty line before the request line (RFC 9112 2.2).
    while lines and lines[0] == b"":
        lines.pop(0)
    if not lines:
        raise BadRequest("empty")
    if b"\r" in head.replace(b"\r\n", b""):
        raise BadRequest("bare_cr")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("bad_request_line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest("bad_method")
    if not _TARGET.match(target) or not (target.startswith(b"/") or target.startswith(b"http://")
                                         or target == b"*"):
        raise BadRequest("bad_target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        if version.startswith(b"HTTP/") and len(version) == 8 and version[5:6].isdigit():
            raise BadRequest("bad_version", 505)
        raise BadRequest("bad_version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obsolete_line_folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest("bad_header")
        value = value.strip(b" \t")
        if _FIELD_VALUE_BAD.search(value):
            raise BadRequest("bad_header_value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key in headers:
            if key in _SINGLETON:
                raise BadRequest(f"repeated_{key}")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    if version == b"HTTP/1.1" and "host" not in headers:
        raise BadRequest("missing_host")
    if "content-length" in headers and not headers["content-length"].strip().isdigit():
        raise BadRequest("bad_content_length")
    return Request(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), headers)

