"""Redirect decisions: ready keys, scope, health gate, cache-server traffic, pipelining and bounces."""

import ipaddress

import pytest

from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.core.keys import cache_key
from cachetap.core.types import RequestHead, Segment
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import hint_signature

URL = "http://cdn.example.org/games/patch%201.pak"
KEY = cache_key(URL, {})
T = 1000.0  # the caller's monotonic clock
SECRET = b"k" * 32


@pytest.fixture
def server(tmp_path):
    with CacheServer(DirectoryLookup(tmp_path)) as srv:
        yield srv


@pytest.fixture
def gate(server):
    gate = HealthGate(server.base_url)
    assert gate.check_once()
    return gate


def seg(client="10.0.0.5", dst="93.184.216.34", dport=80):
    return Segment(0.0, client, dst, 40000, dport, 1000, 5000, 0x18, b"GET / HTTP/1.1\r\n\r\n")


def head(range_=None):
    return RequestHead("GET", "/games/patch%201.pak", "HTTP/1.1", "cdn.example.org", range_)


def redirector(gate, scope=RedirectScope(), servers=frozenset({("10.0.0.1", 8642)})):
    return Redirector(HotIndex([KEY]), gate, "http://10.0.0.1:8642", scope, servers, hint_secret=SECRET)


def test_ready_key_redirects_to_the_cache_url_keeping_the_file_name(gate):
    r = redirector(gate)
    decision = r.decide(seg(), head("bytes=100-"), URL, KEY, "cdn.example.org", pipelined=False, now=T)
    assert decision.location == (f"http://10.0.0.1:8642/c/{KEY}/patch%201.pak"
                                 "?o=http%3A%2F%2Fcdn.example.org%2Fgames%2Fpatch%25201.pak"
                                 f"&s={hint_signature(SECRET, KEY, URL)}")
    assert decision.key == KEY


def test_unknown_key_is_left_alone(gate):
    other = cache_key("http://cdn.example.org/other.pak", {})
    assert redirector(gate).decide(seg(), head(), URL, other, "cdn.example.org", False, T) is None


def test_health_gate_closes_and_reopens_with_the_server(tmp_path):
    server = CacheServer(DirectoryLookup(tmp_path)).start()
    gate = HealthGate(server.base_url, timeout=0.5)
    r = redirector(gate)
    assert gate.check_once() and r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T)
    port = server.port
    server.stop()
    assert not gate.check_once()
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T) is None
    assert r.skipped["cache_server_down"] == 1
    again = CacheServer(DirectoryLookup(tmp_path), port=port).start()
    try:
        assert gate.check_once()
        assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T) is not None
    finally:
        again.stop()


def test_gate_starts_closed_and_rejects_bad_urls():
    assert HealthGate("http://127.0.0.1:9").ok is False
    with pytest.raises(ValueError):
        HealthGate("ftp://x/")


def test_scope_limits_clients_and_hosts(gate):
    scope = RedirectScope((ipaddress.ip_network("10.0.0.0/24"),), ("*.example.org",))
    r = redirector(gate, scope)
    assert r.decide(seg("10.0.0.5"), head(), URL, KEY, "cdn.example.org", False, T)
    assert r.decide(seg("10.0.1.5"), head(), URL, KEY, "cdn.example.org", False, T) is None
    assert r.decide(seg("10.0.0.6"), head(), URL, KEY, "cdn.example.net", False, T) is None
    assert r.skipped["out_of_redirect_scope"] == 2


def test_requests_to_the_cache_server_and_pipelined_ones_are_never_redirected(gate):
    r = redirector(gate)
    assert r.decide(seg(dst="10.0.0.1", dport=8642), head(), URL, KEY, "cdn.example.org", False, T) is None
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", pipelined=True, now=T) is None
    assert r.skipped == {"to_cache_server": 1, "pipelined": 1}


def test_a_bounce_loop_stops_redirecting_that_pair_but_seeks_and_others_continue(gate):
    r = redirector(gate)
    for _ in range(2):  # the first redirect and one bounce are allowed
        assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T)
        r.sent(seg(), head(), KEY, T)
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T) is None
    assert r.skipped["loop"] == 1
    # Still suppressed for that pair, even for a moment later.
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T) is None
    # Another client is not part of the loop.
    assert r.decide(seg("10.0.0.9"), head(), URL, KEY, "cdn.example.org", False, T)
    # The pair is suppressed for suppress_for seconds of the caller's clock, then redirected again.
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T + r.suppress_for - 0.1) is None
    assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, T + r.suppress_for + 0.1)


def test_redirects_further_apart_than_the_loop_window_are_no_loop(gate):
    r = redirector(gate)
    for i in range(5):
        now = T + i * (r.loop_window + 0.01)
        assert r.decide(seg(), head(), URL, KEY, "cdn.example.org", False, now), i
        r.sent(seg(), head(), KEY, now)


def test_seeking_media_player_keeps_being_redirected(gate):
    r = redirector(gate)
    for offset in range(0, 10_000_000, 1_000_000):
        rng = f"bytes={offset}-"
        assert r.decide(seg(), head(rng), URL, KEY, "cdn.example.org", False, T), rng
        r.sent(seg(), head(rng), KEY, T)


def test_location_name_keeps_the_request_name():
    from cachetap.capture.redirector import location_name
    assert location_name("http://h/a/b%20c.iso?x=1") == "b c.iso"
    assert location_name("http://h/dir/") == "download"
    assert location_name("http://h/%FF%FE.bin").endswith(".bin")


def test_a_url_too_long_for_one_segment_drops_the_origin_hint(gate):
    from cachetap.capture.inject import MAX_LOCATION
    long_url = "http://cdn.example.org/" + "d/" * 400 + "f.iso"
    key = cache_key(long_url, {})
    r = Redirector(HotIndex([key]), gate, "http://10.0.0.1:8642", RedirectScope(), frozenset())
    location = r.decide(seg(), head(), long_url, key, "cdn.example.org", False, T).location
    assert location == f"http://10.0.0.1:8642/c/{key}/f.iso" and len(location) <= MAX_LOCATION
