"""A cache server learns of a purge from the index broadcast, not from its row cache running out."""

from __future__ import annotations

import time

from cachetap.core.keys import cache_key
from cachetap.core.types import Sighting
from cachetap.settings import load_settings
from cachetap.store.blobs import BlobStore
from cachetap.tasks.app import create_app
from cachetap.tasks.index_events import IndexFollower, publish_index_event
from cachetap.testing.entries import walk
from cachetap.testing.waiting import wait_for
from cachetap.web.lookup import CatalogLookup
from cachetap.wire import INDEX_READY, INDEX_REMOVED

URL = "http://files.test/purged.iso"
KEY = cache_key(URL, {})
PROBE = cache_key("http://files.test/probe.iso", {})
DATA = b"cached bytes " * 1000


def test_a_broadcast_purge_leaves_the_cache_servers_row_cache_at_once(tmp_path, redis_broker_url):
    settings = load_settings(cache_dir=tmp_path / "cache", broker_url=redis_broker_url)
    app = create_app(settings)
    catalog, blobs = app.catalog, BlobStore(settings.cache_dir)
    catalog.record_sightings([Sighting(time.time(), "10.0.0.5", 40000, "192.0.2.1", 80, "GET", "files.test", URL,
                                       KEY, "/purged.iso")], window=3600, now=time.time())
    temp = blobs.new_temp_name(KEY)
    temp.write_bytes(DATA)
    digest = "ab" * 32
    blobs.publish(temp, digest)
    walk(catalog, KEY, "ready", blob=digest, size=len(DATA), stored_size=len(DATA), expires_at=time.time() + 3600)
    # Rows kept an hour: only the broadcast can take the purged one out within the test.
    lookup = CatalogLookup(catalog, blobs, ttl=3600)
    forgotten: list[str] = []

    def forget(key: str) -> None:
        forgotten.append(key)
        lookup.forget(key)
    follower = IndexFollower(app, forget, "cachetap.serve.test.0").start()
    try:
        # Subscribed once a probe event arrives (Redis fanout keeps nothing for a late subscriber).
        wait_for(lambda: publish_index_event(app, INDEX_READY, [PROBE], node="node-a") and PROBE in forgotten,
                 "the follower receiving events", timeout=30, step=0.5)
        assert lookup.find(KEY) is not None
        assert catalog.remove(KEY)  # the row goes; the file stays (another node would delete it)
        assert lookup.find(KEY) is not None  # served from the row cache: without the event, for an hour
        publish_index_event(app, INDEX_REMOVED, [KEY])
        wait_for(lambda: lookup.find(KEY) is None, "the purged object leaving the row cache", timeout=10)
        assert blobs.exists(digest) and forgotten.count(KEY) == 1
    finally:
        follower.stop()
        catalog.engine.dispose()
