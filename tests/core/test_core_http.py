"""Unit tests for the request-head parser: well-formed heads, pipelining, and every kind of bad input."""

from __future__ import annotations

import pytest

from cachetap.core.http import MAX_HEAD, HeadParse, parse_heads
from cachetap.core.types import RequestHead

CHROME = (b"GET /pub/debian-cd/12.5.0/amd64/iso-cd/debian-12.5.0-amd64-netinst.iso HTTP/1.1\r\n"
          b"Host: cdimage.debian.org\r\n"
          b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0\r\n"
          b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
          b"Range: bytes=0-\r\n\r\n")


def one(buf: bytes) -> RequestHead:
    result = parse_heads(buf)
    assert result.error is None and not result.incomplete, result
    assert result.consumed == len(buf)
    assert len(result.requests) == 1
    return result.requests[0]


def rejected(buf: bytes) -> str:
    result = parse_heads(buf)
    assert result.error is not None, result
    assert not result.incomplete
    assert result.requests == [] and result.consumed == 0
    return result.error


def test_browser_get_head_gives_every_field():
    head = one(CHROME)
    assert head == RequestHead(
        method="GET", target="/pub/debian-cd/12.5.0/amd64/iso-cd/debian-12.5.0-amd64-netinst.iso",
        version="HTTP/1.1", host="cdimage.debian.org", range="bytes=0-",
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0", authorization=False)


def test_http10_without_host_has_host_none():
    head = one(b"GET /a.iso HTTP/1.0\r\n\r\n")
    assert head.version == "HTTP/1.0" and head.host is None and head.range is None


def test_header_names_are_case_insensitive_and_values_trimmed():
    head = one(b"GET / HTTP/1.1\r\nhOsT:   Example.com:8080 \t\r\nRANGE: bytes=5-9\r\n"
               b"user-agent:\twget\r\nAUTHORIZATION: Basic eA==\r\ncookie: a=b\r\n\r\n")
    assert head.host == "Example.com:8080"
    assert head.range == "bytes=5-9"
    assert head.user_agent == "wget"
    assert head.authorization  # a Cookie header changes nothing: the object is still public


def test_empty_host_is_empty_string_not_none():
    assert one(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").host == ""


def test_absolute_form_target_is_kept_as_sent():
    head = one(b"GET http://Example.com/a.iso?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert head.target == "http://Example.com/a.iso?x=1" and head.host == "other"


@pytest.mark.parametrize("line", [b"OPTIONS * HTTP/1.1", b"CONNECT example.com:443 HTTP/1.1"])
def test_asterisk_and_authority_forms_parse(line):
    head = one(line + b"\r\nHost: example.com\r\n\r\n")
    assert head.target in ("*", "example.com:443")


def test_method_is_case_sensitive_token_kept_as_sent():
    assert one(b"get / HTTP/1.1\r\n\r\n").method == "get"
    assert one(b"HEAD / HTTP/1.1\r\n\r\n").method == "HEAD"


def test_bare_lf_line_endings_are_accepted():
    head = one(b"GET /x HTTP/1.1\nHost: h\nRange: bytes=1-\n\n")
    assert head.host == "h" and head.range == "bytes=1-"


def test_mixed_line_endings_are_accepted():
    assert one(b"GET /x HTTP/1.1\r\nHost: h\n\r\n").host == "h"


def test_leading_empty_lines_are_skipped():
    result = parse_heads(b"\r\n\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert [r.target for r in result.requests] == ["/"] and result.consumed == 23


def test_only_empty_lines_are_consumed_and_lone_cr_waits():
    assert parse_heads(b"\r\n\r\n") == HeadParse([], 4, False, None)
    assert parse_heads(b"\r\n\r") == HeadParse([], 2, True, None)


def test_empty_buffer():
    assert parse_heads(b"") == HeadParse([], 0, False, None)


def test_bytearray_and_memoryview_accepted():
    assert parse_heads(bytearray(CHROME)).requests == parse_heads(memoryview(CHROME)).requests != []


# ---- pipelining --------------------------------------------------------------------------------

def test_pipelined_heads_in_one_buffer():
    buf = b"GET /1.iso HTTP/1.1\r\nHost: a\r\n\r\nGET /2.iso HTTP/1.1\r\nHost: b\r\n\r\n"
    result = parse_heads(buf)
    assert [(r.target, r.host) for r in result.requests] == [("/1.iso", "a"), ("/2.iso", "b")]
    assert result.consumed == len(buf) and not result.incomplete and result.error is None


def test_pipelined_with_unfinished_second_head():
    first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    result = parse_heads(first + b"GET /2 HTTP/1.1\r\nHo")
    assert [r.target for r in result.requests] == ["/1"]
    assert result.consumed == len(first) and result.incomplete and result.error is None


def test_pipelined_then_garbage_stops_at_garbage():
    first = b"GET /1 HTTP/1.1\r\n\r\n"
    result = parse_heads(first + b"\x00\x01\x02\x03 junk\r\n\r\n")
    assert len(result.requests) == 1 and result.consumed == len(first) and result.error == "binary"


def test_declared_body_fully_present_is_skipped():
    buf = b"POST /f HTTP/1.1\r\nContent-Length: 17\r\n\r\nGET /x HTTP/1.0\n\nGET /2 HTTP/1.1\r\n\r\n"
    result = parse_heads(buf)
    # The 17 body bytes look like a request; they must be skipped, not parsed.
    assert [r.target for r in result.requests] == ["/f", "/2"]
    assert result.error is None and result.consumed == len(buf)


def test_declared_body_not_fully_present_ends_the_parse():
    buf = b"POST /f HTTP/1.1\r\nContent-Length: 100\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    result = parse_heads(buf)
    assert [r.target for r in result.requests] == ["/f"]
    assert result.consumed == len(buf) and not result.incomplete and result.error is None


def test_chunked_body_ends_the_parse():
    buf = b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGET /\r\n0\r\n\r\n"
    result = parse_heads(buf)
    assert [r.target for r in result.requests] == ["/f"] and result.consumed == len(buf)


def test_repeated_identical_content_length_is_one_value():
    buf = b"POST /f HTTP/1.1\r\nContent-Length: 2, 2\r\ncontent-length: 2\r\n\r\nxxGET /g HTTP/1.1\r\n\r\n"
    assert [r.target for r in parse_heads(buf).requests] == ["/f", "/g"]


# ---- unfinished heads ----------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [1, 3, 4, 10, 19, 20, 30, 45, len(CHROME) - 2, len(CHROME) - 1])
def test_every_prefix_of_a_head_is_incomplete(cut):
    assert parse_heads(CHROME[:cut]) == HeadParse([], 0, True, None)


def test_head_of_exactly_max_size_parses_and_one_more_byte_is_too_large():
    def head_of(size: int) -> bytes:
        start, end = b"GET / HTTP/1.1\r\nX-Pad: ", b"\r\n\r\n"
        return start + b"a" * (size - len(start) - len(end)) + end
    assert len(one(head_of(MAX_HEAD)).target) == 1
    assert rejected(head_of(MAX_HEAD + 1)) == "head_too_large"


def test_unfinished_head_over_max_is_too_large():
    assert rejected(b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD) == "head_too_large"


def test_60k_target_parses():
    target = b"/" + b"a" * 60_000
    assert one(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").target == target.decode()


def test_unfinished_request_line_over_max_is_too_large():
    assert rejected(b"GET /" + b"a" * MAX_HEAD) == "head_too_large"


# ---- bad input ----------------------------------------------------------------------------------

def test_tls_client_hello_is_named():
    hello = bytes.fromhex("16030100f5010000f10303") + bytes(range(32))
    assert rejected(hello) == "tls"


@pytest.mark.parametrize("buf, reason", [
    (b"\x00\x00\x00\x00", "binary"),
    (bytes(range(256)), "binary"),
    (b"\xff\xfe GET / HTTP/1.1\r\n\r\n", "binary"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not_http"),
    (b"{\"json\": true}\r\n\r\n", "not_http"),
    (b"A" * 40, "not_http"),                                       # a "method" longer than any real one
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad_version"),           # the HTTP/2 preface
    (b"GET / HTTP/1.2\r\n\r\n", "bad_version"),
    (b"GET / http/1.1\r\n\r\n", "bad_version"),
    (b"GET / HTTP/1.1x", "bad_version"),
    (b"GET /\r\n\r\n", "bad_request_line"),                         # HTTP/0.9
    (b"GET  / HTTP/1.1\r\n\r\n", "bad_request_line"),
    (b"GET / HTTP/1.1 extra\r\n\r\n", "bad_request_line"),
    (b"GET /a b HTTP/1.1\r\n\r\n", "bad_request_line"),
    (b"GET /a\x00b HTTP/1.1\r\n\r\n", "bad_target"),
    (b"GET /a\x7fb HTTP/1.1\r\n\r\n", "bad_target"),
    (b"GET /a\tb HTTP/1.1\r\n\r\n", "bad_target"),
    (b"GET /a\rb HTTP/1.1\r\n\r\n", "bad_target"),
    (b"\rGET / HTTP/1.1\r\n\r\n", "bad_request_line"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", "obs_fold"),
    (b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", "obs_fold"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nX\"y: 1\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nHost: a\rX-Y: b\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nUser-Agent: a\x1bb\r\n\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "duplicate_host"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "duplicate_host"),
    (b"GET / HTTP/1.1\r\nRange: bytes=0-\r\nRange: bytes=5-\r\n\r\n", "duplicate_range"),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nContent-Length: \xd9\xa3\r\n\r\n", "bad_content_length"),  # Arabic-Indic 3
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "bad_content_length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "length_conflict"),
])
def test_bad_input_is_rejected_with_a_reason(buf, reason):
    assert rejected(buf) == reason


@pytest.mark.parametrize("buf, reason", [
    (b"\x16\x03", "tls"),
    (b"\x00", "binary"),
    (b"GET /a\x00", "bad_target"),
    (b"GET / HTTP/2", "bad_version"),
    (b"GET / HTTP/1.1 x", "bad_request_line"),
    (b"GET / HTTP/1.1\r\nHost : a\r\nX", "bad_header"),
    (b"GET / HTTP/1.1\r\nA: b\r\n c", "obs_fold"),
    (b"GET / HTTP/1.1\r\nA: b\x00\r\n", "bad_header"),
    (b"GET / HTTP/1.1\r\nA: b\x00", "bad_header"),
    (b"GET / HTTP/1.1\r\nBad Na", "bad_header"),
    (b"GET / HTTP/1.1\r\nHost : a", "bad_header"),
])
def test_unfinished_garbage_is_rejected_without_waiting(buf, reason):
    assert rejected(buf) == reason


def test_a_bad_head_arriving_in_pieces_gets_the_same_reason_as_whole():
    bad = b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\nUser-Agent: \x00\r\n\r\n"
    whole = parse_heads(bad).error
    assert whole == "bad_header"
    for cut in range(len(bad)):
        part = parse_heads(bad[:cut])
        assert part.error in (None, whole) and (part.error is not None or part.incomplete or cut == 0)


def test_non_ascii_target_bytes_are_percent_encoded():
    head = one("GET /ünï/ß.iso HTTP/1.1\r\nHost: h\r\n\r\n".encode("utf-8"))
    assert head.target == "/%C3%BCn%C3%AF/%C3%9F.iso"
    assert head.target.isascii()


def test_quotes_and_traversal_in_target_are_kept_as_sent():
    target = "/a/../../etc/passwd?q=\"'<>`{}"
    assert one(f"GET {target} HTTP/1.1\r\n\r\n".encode()).target == target


def test_latin1_header_values_decode_losslessly():
    assert one(b"GET / HTTP/1.1\r\nUser-Agent: caf\xe9\r\n\r\n").user_agent == "caf\xe9"


def test_first_user_agent_wins():
    assert one(b"GET / HTTP/1.1\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n").user_agent == "a"
