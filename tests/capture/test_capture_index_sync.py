"""The capture's ready-key index follows the catalog: broadcast events over real brokers, and reconcile."""

import time

import pytest

from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.core.keys import cache_key
from cachetap.core.types import Sighting
from cachetap.settings import load_settings
from cachetap.tasks.app import create_app
from cachetap.tasks.index_events import publish_index_event
from cachetap.testing.waiting import WaitTimeout, wait_for
from cachetap.testing.entries import walk


def key_for(name):
    return cache_key(f"http://files.test/{name}.iso", {})


def make_ready(catalog, name, expires_at):
    url = f"http://files.test/{name}.iso"
    key = cache_key(url, {})
    catalog.record_sightings([Sighting(time.time(), "10.0.0.5", 40000, "127.0.0.1", 80, "GET", "files.test", url,
                                       key, f"/{name}.iso")], window=3600, now=time.time())
    walk(catalog, key, "ready", blob="ab" * 32, stored_size=10, expires_at=expires_at)
    return key


def wait_until(predicate, timeout=20.0) -> bool:
    """Whether `predicate` came true within `timeout` (False instead of raising: callers retry)."""
    try:
        return bool(wait_for(predicate, timeout=timeout))
    except WaitTimeout:
        return False


@pytest.fixture
def app(tmp_path, broker_url):
    return create_app(load_settings(cache_dir=tmp_path / "cache", broker_url=broker_url))


@pytest.fixture
def sync(app):
    index = HotIndex()
    sync = IndexSync(app, index, node="test", reconcile_every=3600).start()
    yield sync
    sync.stop()


def test_start_loads_ready_fresh_keys_only(app):
    now = time.time()
    fresh = make_ready(app.catalog, "fresh", now + 3600)
    forever = make_ready(app.catalog, "forever", None)
    stale = make_ready(app.catalog, "stale", now - 1)
    counting = key_for("counting")
    app.catalog.record_sightings([Sighting(now, "10.0.0.5", 1, "127.0.0.1", 80, "GET", "files.test",
                                           "http://files.test/counting.iso", counting, "/counting.iso")],
                                 window=3600, now=now)
    index = HotIndex()
    sync = IndexSync(app, index, node="t", reconcile_every=3600).start()
    try:
        assert sync.ready.wait(30)
        assert fresh in index and forever in index
        assert stale not in index and counting not in index
    finally:
        sync.stop()


def test_broadcast_events_reach_the_index_quickly(app, sync):
    assert sync.ready.wait(30)
    key = key_for("new")
    # The consumer may still be binding its queue: publish until it arrives (each event is idempotent).
    assert wait_until(lambda: publish_index_event(app, "ready", [key]) and wait_until(lambda: key in sync.index, 1))
    publish_index_event(app, "removed", [key])
    assert wait_until(lambda: key not in sync.index, 5)


def test_a_missed_event_is_repaired_by_reconcile(app, sync):
    assert sync.ready.wait(30)
    key = make_ready(app.catalog, "quiet", time.time() + 3600)  # no event sent
    assert key not in sync.index
    sync.reconcile()
    assert key in sync.index
    app.catalog.remove(key)
    sync.reconcile()
    assert key not in sync.index


@pytest.mark.parametrize("body", [{"op": "explode", "keys": []}, {"op": "ready", "keys": "abc"},
                                  {"op": "ready", "keys": ["../../etc/passwd", None, 5]}, {}])
def test_malformed_events_are_ignored(app, body):
    index = HotIndex()
    sync = IndexSync(app, index, node="m")
    sync.apply(body)
    assert len(index) == 0


def test_unknown_op_cannot_be_published(app):
    with pytest.raises(ValueError):
        publish_index_event(app, "explode", ["0" * 32])


def test_publishing_with_the_broker_down_returns_false(tmp_path):
    app = create_app(load_settings(cache_dir=tmp_path, broker_url="redis://127.0.0.1:1/0"))
    assert publish_index_event(app, "ready", ["0" * 32]) is False


def test_eviction_tells_capture_nodes(app, sync, tmp_path):
    from cachetap.store.blobs import BlobStore
    from cachetap.store.evict import evict
    from cachetap.tasks.index_events import IndexNotifier

    assert sync.ready.wait(30)
    key = make_ready(app.catalog, "evicted", time.time() + 3600)
    sync.reconcile()
    assert key in sync.index
    # Events published before the node's queue is bound are lost by design (reconcile covers them):
    # make sure it is bound by seeing one event through first.
    probe = key_for("probe")
    assert wait_until(lambda: publish_index_event(app, "ready", [probe]) and wait_until(lambda: probe in sync.index, 1))
    assert evict(app.catalog, BlobStore(tmp_path / "cache"), key, "test", on_removed=IndexNotifier(app).removed)
    assert wait_until(lambda: key not in sync.index, 5)
