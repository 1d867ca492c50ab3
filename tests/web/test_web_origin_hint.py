"""The origin hint in a redirect's Location: fail-open for objects gone since, never an open redirect."""

import subprocess

import pytest

from cachetap.core.keys import cache_key
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import object_url, origin_hint

ORIGIN = "http://files.test/pub/big%20file.iso?v=2"
STRIP = {"*.cdn.test": ["token"]}


def test_hint_is_accepted_only_for_the_url_of_the_key():
    key = cache_key(ORIGIN, {})
    query = object_url("http://c", key, "big file.iso", origin=ORIGIN).split("?", 1)[1]
    assert origin_hint(query, key, {}) == ORIGIN
    other = cache_key("http://files.test/other.iso", {})
    assert origin_hint(query, other, {}) is None


@pytest.mark.parametrize("hint", ["http://evil.test/", "javascript:alert(1)", "http://files.test/a/../x",
                                  "http://FILES.test/pub/big%20file.iso?v=2", "", "http://files.test/\r\nX: y"])
def test_foreign_or_non_canonical_hints_are_refused(hint):
    from urllib.parse import quote
    key = cache_key(ORIGIN, {})
    assert origin_hint(f"o={quote(hint, safe='')}", key, {}) is None


def test_strip_rules_apply_to_hints():
    url = "http://a.cdn.test/v.mp4?token=abc&q=1"
    key = cache_key(url, STRIP)
    assert origin_hint(object_url("http://c", key, "v.mp4", origin=url).split("?", 1)[1], key, STRIP) == url


def test_server_sends_an_evicted_object_back_to_its_origin_and_refuses_foreign_hints(tmp_path):
    key = cache_key(ORIGIN, {})
    with CacheServer(DirectoryLookup(tmp_path)) as server:
        def location(url):
            out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url],
                                 capture_output=True, text=True, timeout=30).stdout
            return out
        assert location(object_url(server.base_url, key, "big file.iso", origin=ORIGIN)) == f"302 {ORIGIN}"
        forged = object_url(server.base_url, key, "x", origin="http://evil.test/x.iso")
        assert location(forged).startswith("404")
