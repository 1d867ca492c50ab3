"""Pure HTTP decisions of the cache server: ranges, validators, header values, request heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachetap.core.semantics import (UNSATISFIABLE, ByteRange, content_disposition, none_match, not_modified,
                                    parse_range, range_allowed, safe_content_type, safe_location)
from cachetap.core.urls import object_key, object_path
from cachetap.web.request import BadRequest, parse_request_head
from cachetap.web.urls import public_base_url

LM = 1_700_000_000.0
LM_TEXT = "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize("value, size, expected", [
    ("bytes=0-99", 1000, ByteRange(0, 99)),
    ("bytes=900-", 1000, ByteRange(900, 999)),
    ("bytes=-100", 1000, ByteRange(900, 999)),
    ("bytes=-5000", 1000, ByteRange(0, 999)),
    ("bytes=990-5000", 1000, ByteRange(990, 999)),
    ("BYTES = 1 - 2", 1000, ByteRange(1, 2)),
    ("bytes=1000-", 1000, UNSATISFIABLE),
    ("bytes=-0", 1000, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=0-1,5-6", 1000, None),       # multi-range: whole object
    ("bytes=5-1", 1000, None),           # invalid: ignored
    ("bytes=-", 1000, None),
    ("items=0-1", 1000, None),
    ("bytes=a-b", 1000, None),
    ("", 1000, None),
    (None, 1000, None),
])
def test_parse_range(value, size, expected):
    assert parse_range(value, size) == expected


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(1, 10**12))
def test_parse_range_stays_inside_the_object(first, last, size):
    chosen = parse_range(f"bytes={first}-{last}", size)
    if isinstance(chosen, ByteRange):
        assert 0 <= chosen.start <= chosen.end < size
    elif chosen is UNSATISFIABLE:
        assert first >= size
    else:
        assert last < first


def test_if_none_match_is_weak_and_takes_lists_and_star():
    assert none_match('"a"', '"a"')
    assert none_match('W/"a"', '"a"')
    assert none_match('"x", W/"a" , "y"', 'W/"a"')
    assert none_match("*", '"a"')
    assert not none_match('"b"', '"a"')
    assert not none_match('garbage', '"a"')


def test_if_none_match_wins_over_if_modified_since():
    assert not_modified({"if-modified-since": LM_TEXT}, '"a"', LM)
    assert not not_modified({"if-none-match": '"b"', "if-modified-since": LM_TEXT}, '"a"', LM)
    assert not not_modified({"if-modified-since": "Tue, 14 Nov 2023 22:13:19 GMT"}, '"a"', LM)
    assert not not_modified({"if-modified-since": "not a date"}, '"a"', LM)
    assert not not_modified({}, '"a"', LM)


def test_if_range_needs_a_strong_exact_validator():
    assert range_allowed(None, '"a"', LM)
    assert range_allowed('"a"', '"a"', LM)
    assert not range_allowed('W/"a"', '"a"', LM)
    assert not range_allowed('"a"', 'W/"a"', LM)
    assert not range_allowed('"b"', '"a"', LM)
    assert range_allowed(LM_TEXT, '"a"', LM)
    assert not range_allowed("Tue, 14 Nov 2023 22:13:21 GMT", '"a"', LM)
    assert not range_allowed("yesterday", '"a"', LM)


def test_content_disposition_has_ascii_fallback_and_utf8_name():
    assert content_disposition("debian.iso") == 'inline; filename="debian.iso"'
    value = content_disposition("café ü.bin")
    assert value == """inline; filename="cafe u.bin"; filename*=UTF-8''caf%C3%A9%20%C3%BC.bin"""
    hostile = content_disposition('a"b\\c/d\r\nSet-Cookie: x=1.iso')
    assert "\r" not in hostile and "\n" not in hostile
    assert 'filename="a_b_c_dSet-Cookie: x=1.iso"' in hostile
    assert content_disposition("") == 'inline; filename="download"'


def test_header_values_from_storage_cannot_split_a_response():
    assert safe_content_type("video/mp4") == "video/mp4"
    assert safe_content_type('text/plain; charset="utf-8"') == 'text/plain; charset="utf-8"'
    assert safe_content_type("video/mp4\r\nX-Evil: 1") == "application/octet-stream"
    assert safe_content_type(None) == "application/octet-stream"
    assert safe_location("http://h/a b\r\nX: y") == "http://h/a%20b%0D%0AX:%20y"
    assert safe_location("http://h/ü") == "http://h/%C3%BC"
    assert safe_location("javascript:alert(1)") is None
    assert safe_location(None) is None


def test_object_key_accepts_only_the_object_form():
    key = "0123456789abcdef0123456789abcdef"
    assert object_key(f"/c/{key}/name.iso") == key
    assert object_key(f"/c/{key}") == key
    assert object_key(f"/c/{key}/../../etc/passwd") == key  # the name part never reaches the disk
    for path in [f"/c/{key.upper()}/x", f"/c/{key}0/x", "/c/../etc/passwd", "/c/%2e%2e/x", "/", f"/x/{key}/y"]:
        assert object_key(path) is None


def test_request_head_parsing():
    req = parse_request_head(b"GET /a?q HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nX: 1\r\nx: 2\r\n\r\n")
    assert (req.method, req.path, req.headers["range"], req.headers["x"]) == ("GET", "/a", "bytes=0-1", "1, 2")
    assert req.keep_alive and not req.has_body
    assert not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_request_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n").has_body
    assert parse_request_head(b"GET http://h:1/c/x?y HTTP/1.1\r\nHost: h\r\n\r\n").path == "/c/x"


@pytest.mark.parametrize("head, reason, status", [
    (b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n", "bad_target", 400),
    (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", "bad_request_line", 400),
    (b"GET / HTTP/1.1\r\n\r\n", "missing_host", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", "bad_version", 505),
    (b"GET / FOO\r\nHost: h\r\n\r\n", "bad_version", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", "bad_header", 400),
    (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", "bad_header", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "obsolete_line_folding", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", "repeated_host", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "repeated_content-length", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", "bad_content_length", 400),
    (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", "bare_cr", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", "bad_header_value", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "bad_request_line", 400),
    (b"G\xc3\xa9T / HTTP/1.1\r\nHost: h\r\n\r\n", "bad_method", 400),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", "head_too_large", 431),
    (b"\r\n\r\n", "empty", 400),
])
def test_bad_request_heads_are_refused(head, reason, status):
    with pytest.raises(BadRequest) as caught:
        parse_request_head(head)
    assert (caught.value.reason, caught.value.status) == (reason, status)


def test_object_urls():
    key = "0123456789abcdef0123456789abcdef"
    assert object_path(key, "café ü.bin") == f"/c/{key}/caf%C3%A9%20%C3%BC.bin"
    assert object_path(key, "a/b") == f"/c/{key}/a_b"
    assert public_base_url("http://10.0.0.5:8642/", "0.0.0.0", 1) == "http://10.0.0.5:8642"
    assert public_base_url("", "127.0.0.1", 8642) == "http://127.0.0.1:8642"
    assert public_base_url("", "::1", 80) == "http://[::1]"
    derived = public_base_url("", "0.0.0.0", 8642)
    assert derived.startswith("http://") and derived.endswith(":8642") and "0.0.0.0" not in derived


def test_one_entity_tag_grammar_for_serving_and_revalidating():
    from cachetap.core.semantics import valid_etag, weak_match

    for tag in ('"abc"', 'W/"abc"', '""', '"a!#~"'):
        assert valid_etag(tag) and valid_etag(tag, obs_text=False), tag
    for tag in (None, "", "abc", '"a"b"', 'w/"abc"', '"a b"', '"abc', 'W/abc'):
        assert not valid_etag(tag), tag
    # obs-text is valid on the wire (revalidation compares it) but never sent in our own heads.
    assert valid_etag('"caf\xe9"') and not valid_etag('"caf\xe9"', obs_text=False)
    assert weak_match('W/"x"', ' "x" ') and not weak_match('"x"', '"y"')
