"""Property tests: parse_heads never raises and its result is always self-consistent."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachetap.core.http import parse_heads

FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that make random soups land near the interesting edges of the grammar.
FRAGMENTS = [b"GET", b"POST", b"get", b" ", b"  ", b"/", b"/a.iso", b"http://h/x", b"*", b"?q=1",
             b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b":", b": ",
             b"Host", b"host", b"Range", b"Content-Length", b"Transfer-Encoding", b"Authorization",
             b"Cookie", b"User-Agent", b"0", b"5", b"-1", b"1, 2", b"chunked", b"\x00", b"\t", b"\x16\x03",
             b"\xff", b"\x7f", b"a", b"xyz", b"%2e%2e"]
soups = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join)

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
tokens = st.text(TCHAR, min_size=1, max_size=12)
visible = st.text("".join(chr(c) for c in range(0x21, 0x7f)), min_size=1, max_size=40)
targets = st.builds(lambda path: "/" + path, st.text(string.ascii_letters + string.digits + "/._-~%?=&", max_size=60))
field_values = st.builds(lambda a, b: (a + " " + b).strip(), visible, st.text(" ", max_size=2) | visible)
# Names the parser treats specially are left out: their rules (duplicates, lengths) are unit-tested.
SPECIAL = {"host", "range", "user-agent", "authorization", "cookie", "content-length", "transfer-encoding"}
other_headers = st.lists(st.tuples(tokens.filter(lambda n: n.lower() not in SPECIAL), field_values), max_size=8)


def check_consistent(buf: bytes) -> None:
    result = parse_heads(buf)
    assert result.error != "internal_error", buf
    assert 0 <= result.consumed <= len(buf)
    outcomes = [result.error is not None, result.incomplete, result.consumed == len(buf)]
    assert outcomes.count(True) == 1, (buf, result)
    if result.error is not None or result.incomplete:
        # The unparsed rest gives the same verdict when parsed on its own.
        rest = parse_heads(buf[result.consumed:])
        assert (rest.requests, rest.consumed, rest.incomplete, rest.error) == ([], 0, result.incomplete, result.error)
    # The parsed part alone gives exactly the same requests and nothing else.
    done = parse_heads(buf[:result.consumed])
    assert done.requests == result.requests and done.consumed == result.consumed
    assert done.error is None and not done.incomplete
    for head in result.requests:
        assert head.target and head.target.isascii()
        assert head.version in ("HTTP/1.0", "HTTP/1.1")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise_and_are_consistent(buf):
    check_consistent(buf)


@FAST
@given(soups)
def test_http_like_soups_are_consistent(buf):
    check_consistent(buf)


@FAST
@given(soups)
def test_an_error_in_a_prefix_is_final(buf):
    # A reassembler drops a flow as soon as its bytes are rejected: more bytes must not change that.
    final = parse_heads(buf)
    for cut in range(len(buf) + 1):
        early = parse_heads(buf[:cut])
        if early.error is not None:
            assert (final.error, final.consumed) == (early.error, early.consumed), (buf, cut)
            assert final.requests == early.requests


@FAST
@given(st.lists(st.tuples(tokens, st.binary(max_size=30)), max_size=10), st.sampled_from([b"\r\n", b"\n"]))
def test_random_header_soups_are_consistent(headers, eol):
    buf = b"GET /a.iso HTTP/1.1" + eol + b"".join(n.encode() + b":" + v + eol for n, v in headers) + eol
    check_consistent(buf)


@st.composite
def valid_requests(draw):
    method = draw(tokens)
    target = draw(targets)
    version = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    host = draw(st.none() | st.text(string.ascii_lowercase + string.digits + ".-:", max_size=30))
    rng = draw(st.none() | st.sampled_from(["bytes=0-", "bytes=100-199"]))
    auth = draw(st.booleans())
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    lines = [f"{method} {target} {version}"]
    headers = draw(other_headers)
    if host is not None:
        headers.insert(draw(st.integers(0, len(headers))), ("Host", host))
    if rng is not None:
        headers.append(("range", rng))
    if auth:
        headers.append(("Authorization", "Bearer x"))
    lines += [f"{n}: {v}" for n, v in headers]
    raw = (eol.join(lines) + eol + eol).encode("ascii")
    return raw, (method, target, version, host, rng, auth)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_requests(), min_size=1, max_size=3))
def test_valid_requests_round_trip_and_split_anywhere(requests):
    buf = b"".join(raw for raw, _ in requests)
    result = parse_heads(buf)
    assert result.error is None and not result.incomplete and result.consumed == len(buf)
    got = [(h.method, h.target, h.version, h.host, h.range, h.authorization) for h in result.requests]
    assert got == [expected for _, expected in requests]
    # A prefix (as a reassembler sees it) is never an error: whole heads, then an unfinished one.
    for cut in range(0, len(buf), max(1, len(buf) // 25)):
        part = parse_heads(buf[:cut])
        assert part.error is None
        assert part.requests == result.requests[:len(part.requests)]
        assert part.incomplete or part.consumed == cut
