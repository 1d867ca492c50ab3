"""The origin hint in a redirect's Location: fail-open for objects gone since, never an open redirect."""

import subprocess
from urllib.parse import quote

import pytest

from cachetap.core.keys import cache_key
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer
from cachetap.core.urls import hint_signature, object_url, origin_hint

ORIGIN = "http://files.test/pub/big%20file.iso?v=2"
STRIP = {"*.cdn.test": ["token"]}
SECRET = bytes(range(32))


def test_hint_is_accepted_only_for_the_url_of_the_key():
    key = cache_key(ORIGIN, {})
    query = object_url("http://c", key, "big file.iso", origin=ORIGIN, secret=SECRET).split("?", 1)[1]
    assert origin_hint(query, key, {}, SECRET) == ORIGIN
    other = cache_key("http://files.test/other.iso", {})
    assert origin_hint(query, other, {}, SECRET) is None
    assert origin_hint(query, key, {}, bytes(32)) is None  # another cluster's secret
    assert origin_hint(query, key, {}, None) is None       # a server without a secret follows none


@pytest.mark.parametrize("hint", ["http://evil.test/", "javascript:alert(1)", "http://files.test/a/../x",
                                  "http://FILES.test/pub/big%20file.iso?v=2", "", "http://files.test/\r\nX: y"])
def test_foreign_or_non_canonical_hints_are_refused(hint):
    from urllib.parse import quote
    key = cache_key(ORIGIN, {})
    signed = f"o={quote(hint, safe='')}&s={hint_signature(SECRET, key, hint)}"
    assert origin_hint(signed, key, {}, SECRET) is None


def test_strip_rules_apply_to_hints():
    url = "http://a.cdn.test/v.mp4?token=abc&q=1"
    key = cache_key(url, STRIP)
    query = object_url("http://c", key, "v.mp4", origin=url, secret=SECRET).split("?", 1)[1]
    assert origin_hint(query, key, STRIP, SECRET) == url


@pytest.mark.parametrize("query", ["o=x&s=y&a=1&b=2&c=3", "&" * 50, "s=" + "A" * 22, "o=http%3A%2F%2Ffiles.test%2F"])
def test_unsigned_or_overlong_queries_are_no_hint(query):
    assert origin_hint(query, cache_key(ORIGIN, {}), {}, SECRET) is None


def _location(url):
    return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url],
                          capture_output=True, text=True, timeout=30).stdout


def test_server_sends_an_evicted_object_back_to_its_origin_and_refuses_foreign_hints(tmp_path):
    key = cache_key(ORIGIN, {})
    with CacheServer(DirectoryLookup(tmp_path), hint_secret=SECRET) as server:
        assert _location(object_url(server.base_url, key, "big file.iso", origin=ORIGIN, secret=SECRET)) == f"302 {ORIGIN}"
        forged = object_url(server.base_url, key, "x", origin="http://evil.test/x.iso", secret=SECRET)
        assert _location(forged).startswith("404")


def test_cache_server_is_no_open_redirector_for_urls_anyone_can_hash(tmp_path):
    """Seen failing on bb0220b: the server answered 302 to the attacker's URL, whose key anyone computes.

    A real `cachetap serve` on its catalog: the key of an attacker's URL is public (a plain hash), so
    /c/<that key>/x?o=<url> must not redirect; the hint the cluster signed (the catalog's secret,
    as the capture uses it) does, for an object evicted since (no row left)."""
    from cachetap.cli.catalog_cmds import open_catalog
    from cachetap.settings import load_settings
    from cachetap.testing.workers import settings_env
    from cachetap.core.urls import HINT_SECRET
    import os
    import socket
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(cache_dir=tmp_path / "cache", serve_host="127.0.0.1", serve_port=port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")} | settings_env(settings)
    server = subprocess.Popen([sys.executable, "-m", "cachetap", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _location(base + "/healthz").startswith("200"):
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
            time.sleep(0.2)
        evil = "http://evil.test/phish.iso"
        evil_key = cache_key(evil, {})
        assert _location(f"{base}/c/{evil_key}/x?o={quote(evil, safe='')}").startswith("404")
        secret = open_catalog(settings).shared_secret(HINT_SECRET)
        assert len(secret) == 32 and secret == open_catalog(settings).shared_secret(HINT_SECRET)
        signed = object_url(base, key := cache_key(ORIGIN, {}), "big file.iso", origin=ORIGIN, secret=secret)
        assert _location(signed) == f"302 {ORIGIN}"
        assert _location(signed.replace(key, evil_key)).startswith("404")
    finally:
        server.terminate()
        server.wait(30)
