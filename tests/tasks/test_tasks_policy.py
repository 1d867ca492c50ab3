"""The cache policy over a real catalog and blob store: space reserved at admission evicts at once."""

from __future__ import annotations

import time

from cachetap.store.blobs import BlobStore
from cachetap.tasks.app import create_app
from cachetap.tasks.policy import forget, note_requests, policy_for, reserve
from tests.tasks.test_tasks_housekeeping import add_entry, make_ready


def test_reserving_space_evicts_the_policy_victims_now(make_settings):
    app = create_app(make_settings(disk_quota=3000, eviction_policy="lru"))
    catalog, blobs = app.catalog, BlobStore(app.settings.cache_dir)
    t = time.time()
    stored = []
    for i in range(3):
        key, digest = make_ready(catalog, blobs, f"http://files.test/f{i}.bin", bytes([i]) * 1000)
        assert reserve(app, key, 1000, t + i)
        stored.append((key, digest))
    note_requests(app, [stored[0][0]], t + 3)       # f0 asked again: f1 is now the least recent
    new = add_entry(catalog, "http://files.test/new.bin")
    assert reserve(app, new, 1000, t + 4)
    assert catalog.get(stored[1][0]) is None and not blobs.exists(stored[1][1])
    assert all(catalog.get(k) is not None and blobs.exists(d) for k, d in (stored[0], stored[2]))
    policy = policy_for(app)
    assert policy.used == 3000
    forget(app, new)                                  # its download failed for good
    assert policy.used == 2000 and not policy.resident(new)


def test_a_policy_may_refuse_and_a_prefetch_is_never_refused(make_settings):
    app = create_app(make_settings(disk_quota=1000, eviction_policy="lru"))
    key = add_entry(app.catalog, "http://files.test/huge.bin")
    assert reserve(app, key, 5000, time.time()) is False      # larger than the whole quota
    assert reserve(app, key, 500, time.time(), forced=True) is True


def test_housekeeping_removals_release_the_space_in_the_policy(make_settings):
    from cachetap.tasks.housekeeping import run_reconcile

    app = create_app(make_settings(disk_quota=3000, eviction_policy="lrfu", reconcile_grace=0))
    catalog, blobs = app.catalog, BlobStore(app.settings.cache_dir)
    key, digest = make_ready(catalog, blobs, "http://files.test/gone.bin", b"x" * 1000)
    assert reserve(app, key, 1000, time.time())
    policy = policy_for(app)
    assert policy.used == 1000
    blobs.remove(digest)                      # the file vanished: reconcile drops the row
    report = run_reconcile(catalog, blobs, app.settings, time.time())
    assert report["rows_missing_blob"] == 1
    assert policy.used == 0 and not policy.resident(key)
