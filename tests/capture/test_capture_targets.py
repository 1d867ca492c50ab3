"""Redirects go to the cache node holding the object, only while that node's cache server answers.

Two real cache servers on distinct loopback addresses (127.0.0.2 and 127.0.0.3), a real catalog
holding the node registry, real health gates; the capture's parts are the production ones."""

from __future__ import annotations

import contextlib
import time

import pytest

from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.capture.targets import CacheTargets, NodeURL
from cachetap.core.keys import cache_key
from cachetap.core.types import RequestHead, Segment
from cachetap.settings import load_settings
from cachetap.store.nodes import CACHE_ROLE, liveness_window
from cachetap.tasks.app import create_app
from cachetap.testing.waiting import wait_for
from cachetap.web.lookup import DirectoryLookup
from cachetap.web.server import CacheServer
from cachetap.wire import index_event
from cachetap.testing.entries import walk

URL_A = "http://cdn.example.org/a.pak"
URL_B = "http://cdn.example.org/b.pak"
KEY_A, KEY_B = cache_key(URL_A, {}), cache_key(URL_B, {})
LOCAL = "http://127.0.0.1:9"  # the configured cache server of this capture: not running


def seg():
    return Segment(0.0, "10.0.0.5", "93.184.216.34", 40000, 80, 1000, 5000, 0x18, b"GET / HTTP/1.1\r\n\r\n")


def head(path):
    return RequestHead("GET", path, "HTTP/1.1", "cdn.example.org", None)


def decide(redirector, url, key, now):
    return redirector.decide(seg(), head(url[len("http://cdn.example.org"):]), url, key, "cdn.example.org",
                             pipelined=False, now=now)


@pytest.fixture
def app(tmp_path):
    app = create_app(load_settings(cache_dir=tmp_path / "cache"))
    yield app
    app.catalog.engine.dispose()


@pytest.fixture
def servers(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    started = [CacheServer(DirectoryLookup(tmp_path / name), host).start()
               for name, host in (("a", "127.0.0.2"), ("b", "127.0.0.3"))]
    yield started
    for server in started:
        with contextlib.suppress(RuntimeError):  # a test stopped it already
            server.stop()


def reader(app):
    def read():
        return [NodeURL(n.name, n.public_url) for n in app.catalog.nodes.nodes(time.time(), liveness_window(5))
                if CACHE_ROLE in n.roles]
    return read


@pytest.fixture
def targets(app):
    local_gate = HealthGate(LOCAL, interval=0.1, timeout=0.2).start()
    targets = CacheTargets(LOCAL, local_gate, lambda url: HealthGate(url, interval=0.1, timeout=0.3).start(),
                           reader(app))
    yield targets
    targets.stop()


def test_keys_redirect_to_their_holders_and_a_dead_holder_fails_open(app, servers, targets):
    a, b = servers
    app.catalog.nodes.beat("node-a", "cache", time.time(), public_url=a.base_url)
    app.catalog.nodes.beat("node-b", "cache", time.time(), public_url=b.base_url)
    index = HotIndex()
    sync = IndexSync(app, index, node="t", node_index=targets.index_of)  # events applied directly below
    sync.apply(index_event("ready", [KEY_A], node="node-a"))
    sync.apply(index_event("ready", [KEY_B], node="node-b"))
    assert index.lookup(KEY_A) == targets.index_of("node-a") != index.lookup(KEY_B) == targets.index_of("node-b")
    redirector = Redirector(index, targets.slots[0].gate, LOCAL, RedirectScope(), targets.addresses,
                            targets=targets)
    wait_for(lambda: all(t.gate.ok for t in targets.slots[1:]), "both nodes healthy", timeout=10)
    assert decide(redirector, URL_A, KEY_A, 1.0).location.startswith(f"{a.base_url}/c/{KEY_A}/a.pak")
    assert decide(redirector, URL_B, KEY_B, 2.0).location.startswith(f"{b.base_url}/c/{KEY_B}/b.pak")
    # Requests to any node's cache server are never taken for origin requests.
    assert ("127.0.0.3", b.port) in targets.addresses and ("127.0.0.2", a.port) in targets.addresses

    b.stop()
    stopped = time.monotonic()
    wait_for(lambda: decide(redirector, URL_B, KEY_B, 3.0) is None, "node-b's keys failing open", timeout=10,
             step=0.01)
    print(f"node-b's keys failed open {time.monotonic() - stopped:.3f}s after its cache server stopped")
    assert redirector.skipped["cache_server_down"] >= 1
    assert decide(redirector, URL_A, KEY_A, 4.0) is not None  # the other node keeps serving its own


def test_a_node_the_registry_does_not_know_is_never_redirected_to(app, servers, targets):
    index = HotIndex()
    sync = IndexSync(app, index, node="t", node_index=targets.index_of)
    sync.apply(index_event("ready", [KEY_A], node="nobody"))
    node = index.lookup(KEY_A)
    assert node > 0 and targets.slots[node].base_url is None and not targets.slots[node].gate.ok
    redirector = Redirector(index, targets.slots[0].gate, LOCAL, RedirectScope(), targets.addresses,
                            targets=targets)
    assert decide(redirector, URL_A, KEY_A, 1.0) is None
    # It registers later: the refresh gives it its URL and a gate of its own.
    a, _b = servers
    app.catalog.nodes.beat("nobody", "cache", time.time(), public_url=a.base_url)
    targets.refresh(reader(app)())
    assert targets.slots[node].base_url == a.base_url
    wait_for(lambda: decide(redirector, URL_A, KEY_A, 2.0), "the registered node redirected to", timeout=10)


def test_a_removed_event_and_a_reconcile_follow_the_holder(app, servers, targets):
    a, b = servers
    app.catalog.nodes.beat("node-a", "cache", time.time(), public_url=a.base_url)
    app.catalog.nodes.beat("node-b", "cache", time.time(), public_url=b.base_url)
    catalog = app.catalog
    from cachetap.core.types import Sighting

    for url, key, holder in ((URL_A, KEY_A, "node-a"), (URL_B, KEY_B, None)):
        catalog.record_sightings([Sighting(time.time(), "10.0.0.5", 1, "127.0.0.1", 80, "GET", "cdn.example.org",
                                           url, key, "/")], window=3600, now=time.time())
        walk(catalog, key, "ready", blob="ab" * 32, stored_size=10, node=holder)
    index = HotIndex()
    sync = IndexSync(app, index, node="t", node_index=targets.index_of)
    assert sync.reconcile() == 2
    assert index.lookup(KEY_A) == targets.index_of("node-a") and index.lookup(KEY_B) == 0  # holder unknown: local
    sync.apply(index_event("removed", [KEY_A], node="node-a"))
    assert index.lookup(KEY_A) == -1
