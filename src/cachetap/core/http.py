"""HTTP/1.x request-head parsing on raw bytes: the capture hot path.

Hand-written on `bytes` methods and one regex (all running in C) instead of a general HTTP library:
a GET head must parse in a few microseconds, and we only need a handful of fields. It never raises;
every input maps to `HeadParse` whose `error` names why the bytes cannot be a request.

Choices made once and applied everywhere:
- A bare LF ends a line like CRLF does (RFC 9112 2.2 allows it; servers such as nginx accept it).
  A CR anywhere else is rejected.
- obs-fold (a header line starting with SP/HTAB) is rejected ("obs_fold"), as RFC 9112 5.2 lets a
  server do; folding is a request-smuggling vector and no current client sends it.
- Empty lines before a request line are skipped (RFC 9112 2.2).
- Raw non-ASCII bytes in the target are percent-encoded (the IRI-to-URI mapping), so `target` is
  always ASCII; control characters, NUL and DEL are rejected ("bad_target").
- Header values are decoded as Latin-1 (lossless), control characters other than HTAB are rejected.
- A request whose body cannot be skipped (Transfer-Encoding, or a Content-Length body not fully in
  `buf`) ends the parse: the rest of `buf` is body, counted in `consumed` and not parsed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from cachetap.core.types import RequestHead

MAX_HEAD = 64 * 1024
MAX_METHOD = 32  # longer "methods" are garbage, and waiting for their end would hold junk

# RFC 9110 tchar: the characters of a method or a header name.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Control characters (CTL) forbidden in a target; header values allow HTAB.
_CTL = bytes(range(0x20)) + b"\x7f"
_CTL_BUT_TAB = _CTL.replace(b"\t", b"")
_TCHAR_SET = frozenset(_TCHAR)
_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}
_OWS = b" \t"

_OWS_CR = b" \t\r"
_CL_MARKER = b"\ncontent-length:"
# The header lines of a head and its empty line: token, colon, a value of visible characters,
# SP, HTAB or obs-text (no CTL, DEL or bare CR), CRLF or LF. Linear: the classes do not overlap.
_HEADER_BLOCK = re.compile(rb"(?:[" + re.escape(_TCHAR) + rb"]+:[\t\x20-\x7e\x80-\xff]*\r?\n)*\r?\n")


class HeadParse(NamedTuple):  # a NamedTuple: built per packet, 3x cheaper than a frozen dataclass
    requests: list[RequestHead]
    consumed: int        # bytes of complete heads (plus their bodies) from the start of buf
    incomplete: bool     # buf[consumed:] is the unfinished start of a head
    error: str | None    # why buf[consumed:] cannot be a request


class _Reject(Exception):
    """Internal: carries a reject reason out of the nested checks (never escapes this module)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def parse_heads(buf: bytes) -> HeadParse:
    """Parse the pipelined HTTP/1.x request heads at the start of `buf`. Never raises."""
    try:
        return _parse_heads(buf if type(buf) is bytes else bytes(memoryview(buf)))
    except Exception:  # a bug must not stop the capture loop; report it as a reason instead
        return HeadParse([], 0, False, "internal_error")


def _parse_heads(buf: bytes) -> HeadParse:
    requests: list[RequestHead] = []
    n = len(buf)
    pos = 0
    while pos < n:
        # Skip empty lines before a request line; a lone trailing CR may be the start of one.
        c = buf[pos]
        if c == 0x0A:
            pos += 1
            continue
        if c == 0x0D:
            if pos + 1 == n:
                return HeadParse(requests, pos, True, None)
            if buf[pos + 1] == 0x0A:
                pos += 2
                continue
            return HeadParse(requests, pos, False, "bad_request_line")

        limit = pos + MAX_HEAD
        end = _head_end(buf, pos, limit)
        if end < 0:
            reason = _check_unfinished(buf, pos, min(n, limit))
            if reason is None and n >= limit:
                reason = "head_too_large"
            if reason is not None:
                return HeadParse(requests, pos, False, reason)
            return HeadParse(requests, pos, True, None)

        try:
            head, body_length, chunked = _parse_one(buf[pos:end])
        except _Reject as rej:
            return HeadParse(requests, pos, False, rej.reason)
        requests.append(head)
        if chunked or end + body_length > n:
            return HeadParse(requests, n, False, None)  # the rest is a body we cannot skip
        pos = end + body_length
    return HeadParse(requests, n, False, None)


def _head_end(buf: bytes, pos: int, limit: int) -> int:
    """Index just past the empty line ending the head at `pos`, or -1 if not within `limit`."""
    # The head ends at the first LF followed by an empty line (LF or CRLF).
    a = buf.find(b"\n\r\n", pos, limit)
    b = buf.find(b"\n\n", pos, limit)
    if a < 0:
        return b + 2 if b >= 0 else -1
    if b < 0 or a < b:
        return a + 3
    return b + 2


def _parse_one(head: bytes) -> tuple[RequestHead, int, bool]:
    """Parse one complete head (ending with its empty line)."""
    lf = head.find(b"\n")
    method, target, version = _request_line(_strip_cr(head[:lf]))
    block = head[lf + 1:]
    # One C-level regex checks the syntax of every header line; only when it fails do we walk the
    # lines in Python to name the reason (the same walk that judges a head arriving in pieces).
    if _HEADER_BLOCK.fullmatch(block) is None:
        for raw in block.split(b"\n")[:-2]:
            _header(_strip_cr(raw))
        raise _Reject("bad_header")  # not reached: a line above must have failed
    # The syntax is valid, so the fields we want are found with C-level searches of the
    # lower-cased block instead of splitting every line.
    low = b"\n" + block.lower()  # offsets in `low` are one more than in `block`
    host, duplicate_host = _field(block, low, b"\nhost:")
    rng, duplicate_range = _field(block, low, b"\nrange:")
    ua = _field(block, low, b"\nuser-agent:")[0]
    auth = b"\nauthorization:" in low
    chunked = b"\ntransfer-encoding:" in low
    length, length_ok = _declared_length(block, low)
    # Meaning problems come after syntax (a head in pieces is judged on syntax only), in this order.
    if duplicate_host:
        raise _Reject("duplicate_host")
    if duplicate_range:
        raise _Reject("duplicate_range")
    if not length_ok:
        raise _Reject("bad_content_length")
    if chunked and length is not None:
        raise _Reject("length_conflict")  # RFC 9112 6.3: a smuggling signature, refuse it
    # Positional: keyword arguments cost a microsecond per head on the hot path.
    head_value = RequestHead(method, target, version,
                             None if host is None else host.decode("latin-1"),
                             None if rng is None else rng.decode("latin-1"),
                             None if ua is None else ua.decode("latin-1"), auth)
    return head_value, length or 0, chunked


def _field(block: bytes, low: bytes, marker: bytes) -> tuple[bytes | None, bool]:
    """(value of the first header named by `marker` or None, whether it appears again)."""
    i = low.find(marker)
    if i < 0:
        return None, False
    start = i + len(marker) - 1
    value = block[start:block.find(b"\n", start)].strip(_OWS_CR)
    return value, low.find(marker, i + 1) >= 0


def _declared_length(block: bytes, low: bytes) -> tuple[int | None, bool]:
    """(Content-Length, valid): every Content-Length header must state the same valid number."""
    length: int | None = None
    i = low.find(_CL_MARKER)
    while i >= 0:
        start = i + len(_CL_MARKER) - 1
        declared = _content_length(block[start:block.find(b"\n", start)].strip(_OWS_CR))
        if declared is None or (length is not None and declared != length):
            return None, False
        length = declared
        i = low.find(_CL_MARKER, i + 1)
    return length, True


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line[-1:] == b"\r" else line


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) == 3:  # the fast path: a valid line passes these C-level checks only
        method, target, raw_version = parts
        version = _VERSIONS.get(raw_version)
        if (version is not None and target and 0 < len(method) <= MAX_METHOD
                and not method.translate(None, _TCHAR)):
            return method.decode("ascii"), _decode_target(target), version
    raise _Reject(_request_line_problem(line, complete=True) or "bad_request_line")


def _request_line_problem(line: bytes, complete: bool) -> str | None:
    """Why a request line (or, with complete=False, the start of one) cannot be valid.

    One function for whole and partial lines, judging the pieces left to right, so a line gets the
    same reason however it was split into segments.
    """
    pieces = line.split(b" ")
    method = pieces[0]
    if len(pieces) == 1 and not complete:  # still inside the method
        if len(method) > MAX_METHOD or method.translate(None, _TCHAR):
            return _garbage_reason(method)
        return None
    if not method or len(method) > MAX_METHOD or method.translate(None, _TCHAR):
        return _garbage_reason(method)
    if len(pieces) == 1:
        return "not_http"  # a line without a space: an SSH banner, a bare word
    target = pieces[1]
    if target.translate(None, _CTL) != target:
        return "bad_target"
    if len(pieces) >= 3:
        if not target:
            return "bad_request_line"  # a doubled SP
        version = pieces[2]
        version_done = complete or len(pieces) > 3
        looks_like = version.upper()
        if not (looks_like.startswith(b"HTTP/") or b"HTTP/".startswith(looks_like)):
            return "bad_request_line"  # not a version: a space inside the target, say
        if version_done and version not in _VERSIONS:
            return "bad_version"
        if not version_done and not any(v.startswith(version) for v in _VERSIONS):
            return "bad_version"
        if len(pieces) > 3:
            return "bad_request_line"
    elif complete:
        return "bad_request_line"  # HTTP/0.9 "GET /" or a missing version
    return None


def _garbage_reason(start: bytes) -> str:
    """Name what non-HTTP bytes look like, for the counters.

    Decided by the first byte that cannot be in a method, within the longest method, so that the
    reason does not change as more bytes of the same stream arrive.
    """
    if start[:1] == b"\x16":
        return "tls"  # a TLS record (ClientHello) on a plain-HTTP port
    for byte in start[:MAX_METHOD + 1]:
        if byte not in _TCHAR_SET:
            return "binary" if byte < 0x20 or byte >= 0x7F else "not_http"
    return "not_http"


def _decode_target(target: bytes) -> str:
    if target.translate(None, _CTL) != target:
        raise _Reject("bad_target")
    if target.isascii():
        return target.decode("ascii")
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in target)


def _header(line: bytes) -> tuple[bytes, bytes]:
    """(lower-case name, value without surrounding whitespace) of one header line."""
    if line[:1] in (b" ", b"\t"):
        raise _Reject("obs_fold")
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR):
        raise _Reject("bad_header")  # includes whitespace before the colon (RFC 9112 5.1)
    value = value.strip(_OWS)
    if value.translate(None, _CTL_BUT_TAB) != value:
        raise _Reject("bad_header")  # NUL, bare CR, other controls
    return name.lower(), value


def _content_length(value: bytes) -> int | None:
    """The declared length, or None when invalid. A list of identical values is allowed (RFC 9110 8.6)."""
    values = {v.strip(_OWS) for v in value.split(b",")}
    if len(values) != 1:
        return None
    (digits,) = values
    if not digits.isdigit() or len(digits) > 18:  # bytes.isdigit is ASCII-only
        return None
    return int(digits)


def _check_unfinished(buf: bytes, pos: int, stop: int) -> str | None:
    """Reject a head without its end yet as soon as its complete parts cannot be a request."""
    lines = buf[pos:stop].split(b"\n")
    first = lines[0]
    if len(lines) == 1:  # the request line itself is unfinished
        return _request_line_problem(first[:-1] if first.endswith(b"\r") else first, complete=False)
    try:
        _request_line(_strip_cr(first))
        for raw in lines[1:-1]:
            _header(_strip_cr(raw))
        _partial_header(_strip_cr(lines[-1]))  # the last line may still grow
    except _Reject as rej:
        return rej.reason
    return None


def _partial_header(line: bytes) -> None:
    """Reject the start of a header line that no continuation could make valid."""
    if b":" in line:
        _header(line)
    elif line[:1] in (b" ", b"\t"):
        raise _Reject("obs_fold")
    elif line.translate(None, _TCHAR):
        raise _Reject("bad_header")
