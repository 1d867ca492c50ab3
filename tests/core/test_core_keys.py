"""Canonical URLs, cache keys and file names, including hostile targets."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachetap.core.keys import BadTarget, cache_key, canonical_url, host_of, path_of, url_filename


def canon(target: str, host: str | None = "example.com", port: int = 80) -> str:
    return canonical_url(target, host, port)


def bad(target: str, host: str | None = "example.com", port: int = 80) -> str:
    with pytest.raises(BadTarget) as info:
        canonical_url(target, host, port)
    assert isinstance(info.value, ValueError) and str(info.value) == info.value.reason
    return info.value.reason


# ---- canonical_url: the good cases ------------------------------------------------------------------

@pytest.mark.parametrize("target, host, port, expected", [
    ("/a.iso", "example.com", 80, "http://example.com/a.iso"),
    ("/a.iso", "EXAMPLE.Com", 80, "http://example.com/a.iso"),
    ("/a.iso", "example.com.", 80, "http://example.com/a.iso"),
    ("/a.iso", "example.com:80", 8080, "http://example.com/a.iso"),      # Host's port wins over TCP's
    ("/a.iso", "example.com", 8080, "http://example.com:8080/a.iso"),   # TCP port when Host has none
    ("/a.iso", "example.com:", 8080, "http://example.com:8080/a.iso"),  # empty port: the default
    ("/a.iso", "example.com:0080", 80, "http://example.com/a.iso"),
    ("/A.ISO?b=2&a=1", "h", 80, "http://h/A.ISO?b=2&a=1"),               # path case and query order kept
    ("/a.iso#frag", "h", 80, "http://h/a.iso"),
    ("/a.iso?", "h", 80, "http://h/a.iso?"),
    ("/%7euser/%41%2d%5f%2E", "h", 80, "http://h/~user/A-_."),           # unreserved decoded
    ("/a%2fb%3a%c3%bc", "h", 80, "http://h/a%2Fb%3A%C3%BC"),            # others upper-cased, %2F kept
    ("/q?x=%2f%26&y=%7E", "h", 80, "http://h/q?x=%2F%26&y=~"),
    ("/a b".replace(" ", "%20"), "h", 80, "http://h/a%20b"),
    ("/\"'<>\\^`{|}", "h", 80, "http://h/%22'%3C%3E%5C%5E%60%7B%7C%7D"),  # unsafe characters encoded
    ("/ü.iso", "h", 80, "http://h/%C3%BC.iso"),                           # IRI path: UTF-8 escapes
    ("/", "[::1]", 80, "http://[::1]/"),
    ("/", "[0:0:0:0:0:0:0:1]:8080", 80, "http://[::1]:8080/"),
    ("/", "192.168.0.1:81", 80, "http://192.168.0.1:81/"),
    ("/", "bücher.DE", 80, "http://xn--bcher-kva.de/"),                  # IDN: lower-cased punycode
    ("/", "XN--BCHER-KVA.de", 80, "http://xn--bcher-kva.de/"),           # punycode stays punycode
    ("http://Example.COM:80/a.iso", "other.host", 8080, "http://example.com/a.iso"),  # absolute wins
    ("HTTP://example.com:8080/a.iso", None, 80, "http://example.com:8080/a.iso"),
    ("http://example.com", None, 80, "http://example.com/"),
    ("http://example.com?x=1", None, 80, "http://example.com/?x=1"),
    ("//double//slash/", "h", 80, "http://h//double//slash/"),
])
def test_canonical_url(target, host, port, expected):
    assert canonical_url(target, host, port) == expected


@pytest.mark.parametrize("target, expected_path", [
    ("/a/b/../c", "/a/c"),
    ("/a/./b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/../../../etc/passwd", "/etc/passwd"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2E/%2e/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd"),
    ("/a/..%2fb", "/a/..%2Fb"),          # an encoded slash is not a separator: one segment, kept
    ("/a/...", "/a/..."),
    ("/a/..b/c", "/a/..b/c"),
    ("/..", "/"),
    ("/a?x=/../y", "/a"),                # dots in the query are data
])
def test_dot_segments_are_resolved_including_encoded_dots(target, expected_path):
    url = canon(target)
    assert path_of(url) == expected_path
    assert ".." not in path_of(url).split("/")


def test_query_with_dots_is_kept():
    assert canon("/a?x=/../y") == "http://example.com/a?x=/../y"


# ---- canonical_url: bad targets ---------------------------------------------------------------------

@pytest.mark.parametrize("target, host, port, reason", [
    ("/a", None, 80, "no_host"),
    ("/a", "", 80, "no_host"),
    ("http:///a", None, 80, "no_host"),
    ("https://example.com/a", None, 80, "non_http_scheme"),
    ("ftp://example.com/a", "h", 80, "non_http_scheme"),
    ("javascript:alert(1)", "h", 80, "non_http_scheme"),
    ("http://user:pw@example.com/a", None, 80, "userinfo"),
    ("http://@example.com/a", None, 80, "userinfo"),
    ("/a", "user@example.com", 80, "userinfo"),
    ("/a", "example.com:99999", 80, "bad_port"),
    ("/a", "example.com:0", 80, "bad_port"),
    ("/a", "example.com:8o", 80, "bad_port"),
    ("/a", "example.com:-1", 80, "bad_port"),
    ("/a", "example.com:٨٠", 80, "bad_port"),             # non-ASCII digits
    ("/a", "example.com", 0, "bad_port"),
    ("/a", "example.com", 70000, "bad_port"),
    ("/a\x00b", "h", 80, "control_char"),
    ("/a\nb", "h", 80, "control_char"),
    ("/a b", "h", 80, "control_char"),
    ("/a\x7f", "h", 80, "control_char"),
    ("/a", "exa\x00mple.com", 80, "control_char"),
    ("/a", "example.com\r\nX: y", 80, "control_char"),
    ("/" + "a" * 8192, "h", 80, "target_too_long"),
    ("/" + "a" * 60_000, "h", 80, "target_too_long"),
    ("/a%zz", "h", 80, "bad_percent_encoding"),
    ("/a%2", "h", 80, "bad_percent_encoding"),
    ("/a?x=%", "h", 80, "bad_percent_encoding"),
    ("/a%%41", "h", 80, "bad_percent_encoding"),
    ("*", "h", 80, "asterisk_form"),
    ("example.com:443", "h", 80, "authority_form"),
    ("a.iso", "h", 80, "bad_target_form"),
    ("?x", "h", 80, "bad_target_form"),
    ("http:example.com/a", None, 80, "bad_target_form"),
    ("", "h", 80, "empty_target"),
    ("/a", "exa_mple..com", 80, "bad_host"),
    ("/a", "exa\"mple.com", 80, "bad_host"),
    ("/a", "exa%41mple.com", 80, "bad_host"),
    ("/a", "example.com/x", 80, "bad_host"),
    ("/a", "[::1", 80, "bad_host"),
    ("/a", "[::1]x", 80, "bad_host"),
    ("/a", "[fe80::1%25eth0]", 80, "bad_host"),
    ("/a", "[not-an-ip]", 80, "bad_host"),
    ("/a", "a" * 300, 80, "bad_host"),
    ("/a", "xn--" + "a" * 70 + "ü", 80, "bad_host"),     # an IDN label IDNA cannot encode
])
def test_bad_targets_raise_with_reason(target, host, port, reason):
    assert bad(target, host, port) == reason


def test_target_of_exactly_8k_is_accepted():
    target = "/" + "a" * (8192 - 1)
    assert canon(target) == "http://example.com" + target


# ---- cache_key -----------------------------------------------------------------------------------------

def test_cache_key_is_32_lower_hex_and_stable():
    key = cache_key("http://example.com/a.iso", {})
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == cache_key("http://example.com/a.iso", {}) != cache_key("http://example.com/b.iso", {})


def test_equivalent_targets_share_a_key():
    urls = {canon("/dir/../A.iso", "EXAMPLE.com:80"), canon("/%41.iso"), canon("http://example.com/./A.iso", None)}
    assert len(urls) == 1
    assert len({cache_key(u, {}) for u in urls}) == 1


def test_encoded_slash_is_a_different_key():
    assert cache_key(canon("/a%2Fb"), {}) != cache_key(canon("/a/b"), {})


def test_strip_drops_named_params_for_matching_hosts_only():
    strip = {"*.cdn.example": ["token", "expires"], "other.host": ["x"]}
    signed = "http://eu.cdn.example/f.iso?token=abc&v=2&expires=99"
    assert cache_key(signed, strip) == cache_key("http://eu.cdn.example/f.iso?v=2", {})
    assert cache_key(signed, strip) != cache_key(signed, {})
    # Same parameters on a host no glob matches are part of the key.
    assert cache_key("http://elsewhere/f.iso?token=abc", strip) == cache_key("http://elsewhere/f.iso?token=abc", {})


def test_strip_of_every_param_drops_the_question_mark():
    strip = {"h": ["sig"]}
    assert cache_key("http://h/f.iso?sig=1&sig=2", strip) == cache_key("http://h/f.iso", {})


def test_strip_glob_is_case_insensitive_and_ports_ignored():
    strip = {"*.CDN.example": ["t"]}
    assert cache_key("http://a.cdn.example:8080/f?t=1", strip) == cache_key("http://a.cdn.example:8080/f", {})


def test_strip_does_not_touch_similar_names():
    strip = {"h": ["t"]}
    assert cache_key("http://h/f?tt=1&t", strip) == cache_key("http://h/f?tt=1", {})


# ---- host_of, url_filename -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, host", [
    ("http://example.com/a", "example.com"),
    ("http://example.com:8080/a?b", "example.com"),
    ("http://[::1]:8080/", "::1"),
    ("http://example.com", "example.com"),
])
def test_host_of(url, host):
    assert host_of(url) == host


@pytest.mark.parametrize("url, name", [
    ("http://h/pub/debian-12.5.0-amd64-netinst.iso", "debian-12.5.0-amd64-netinst.iso"),
    ("http://h/a/My%20File%20(1).zip?x=1", "My_File_(1).zip"),
    ("http://h/a/..%2F..%2Fetc%2Fpasswd", "_.._etc_passwd"),
    ("http://h/a/%2e%2e", "download"),
    ("http://h/.hidden", "hidden"),
    ("http://h/-rf", "rf"),
    ("http://h/dir/", "download"),
    ("http://h/", "download"),
    ("http://h/a%00b%0a.exe", "a_b_.exe"),
    ("http://h/%22q%22%3Cx%3E.bin", "_q_x_.bin"),
    ("http://h/%C3%BCber.iso", "_ber.iso"),
    ("http://h/C:%5Cwindows%5Cx.exe", "C_windows_x.exe"),
    ("http://h/bad%ZZ.iso", "bad_ZZ.iso"),
])
def test_url_filename_is_safe(url, name):
    assert url_filename(url) == name


def test_url_filename_keeps_extension_when_truncated():
    name = url_filename("http://h/" + "a" * 500 + ".iso")
    assert len(name) == 200 and name.endswith(".iso")
    assert len(url_filename("http://h/" + "b" * 500)) == 200


# ---- properties -----------------------------------------------------------------------------------------

SAFE_NAME = re.compile(r"[A-Za-z0-9._\-+~()@,=]{1,200}")
PIECES = ["/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%", "%41", "%zz", "a", "B", "~", "?", "#", "&", "=",
          "\\", "\"", "'", " ", "\x00", "ü", "東", "%C3%BC", ";", ":", "@", "[", "]"]
hostile_paths = st.lists(st.sampled_from(PIECES), max_size=30).map(lambda p: "/" + "".join(p))
hosts = st.sampled_from(["example.com", "EXAMPLE.com:8080", "[::1]", "127.0.0.1:80", "bücher.de", "h:"])
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(hostile_paths | st.text(max_size=80).map(lambda t: "/" + t), hosts, st.integers(1, 65535))
def test_canonical_is_idempotent_and_has_no_dot_segments(target, host, port):
    try:
        url = canonical_url(target, host, port)
    except BadTarget:
        return
    assert canonical_url(url, None, 80) == url
    assert canonical_url(url, "ignored.host", 8080) == url
    path = path_of(url)
    assert path.startswith("/")
    assert not {".", ".."} & set(path.split("/"))
    assert url.isascii() and not re.search(r"[\x00-\x20\x7f#]", url)
    assert SAFE_NAME.fullmatch(url_filename(url))
    assert re.fullmatch(r"[0-9a-f]{32}", cache_key(url, {"*": ["a"]}))


@FAST
@given(st.text(max_size=200))
def test_canonical_url_only_raises_bad_target(text):
    for target in (text, "/" + text, "http://" + text):
        try:
            canonical_url(target, text, 80)
        except BadTarget:
            pass


@FAST
@given(st.text(string.printable + "ü東\x00", max_size=300))
def test_url_filename_is_always_safe(segment):
    name = url_filename("http://h/" + segment)
    assert SAFE_NAME.fullmatch(name) and not name.startswith(".")


@pytest.mark.parametrize(("target", "host", "dport"), [
    ("/a.iso", "example.org", 80), ("/a.iso", "example.org:8080", 80), ("/a.iso", "example.org", 8080),
    ("/a.iso", "[2001:db8::1]:81", 80), ("/a.iso", "[2001:db8::1]", 80), ("/a.iso", "example.org:80", 8080),
    ("http://example.org:99/a.iso", "ignored.example", 80), ("/a?x=1:2", "10.0.0.1", 80),
    ("/a.iso", "example.org:", 80),
])
def test_port_of_agrees_with_the_egress_check(target, host, dport):
    """The redirect path's cheap port reading says what urllib's parse says for every canonical URL."""
    from cachetap.core import egress
    from cachetap.core.keys import port_of

    url = canonical_url(target, host, dport)
    for port in (80, 81, 99, 8080):
        assert (port_of(url) == port) is egress.port_matches(url, port), (url, port)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.:[]/%?=&", max_size=40),
       st.integers(min_value=1, max_value=65535))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_port_of_agrees_with_urllib_on_any_host_header(host, dport):
    from cachetap.core import egress
    from cachetap.core.keys import port_of

    try:
        url = canonical_url("/f.iso", host, dport)
    except BadTarget:
        return
    assert (port_of(url) == dport) is egress.port_matches(url, dport), url
