"""Housekeeping passes on a real catalog and blob store; revalidation against the real test origin;
the beat tasks executed by a real Celery worker on the schedule queue."""

from __future__ import annotations

import time
from pathlib import Path

import blake3
import httpx
import pytest

from cachetap.core.keys import cache_key, canonical_url
from cachetap.core.policy import make_policy
from cachetap.core.types import Sighting
from cachetap.fetch.probe import probe
from cachetap.fetch.resolver import Resolver
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import Catalog, open_catalog
from cachetap.store.policy_store import CatalogPolicyStore
from cachetap.tasks.app import beat_schedule, create_app
from cachetap.tasks.housekeeping import run_all, run_cleanup, run_quota, run_revalidate
from cachetap.testing.origin import BASE_MTIME, Resource
from cachetap.testing.workers import CeleryWorker
from cachetap.web.lookup import CatalogLookup
from cachetap.wire import ROUTES, SCHEDULE_CLEANUP, SCHEDULE_QUOTA, SCHEDULE_RECONCILE, SCHEDULE_REVALIDATE
from cachetap.testing.entries import walk

DAY = 86_400.0
KiB = 1 << 10
WAIT = 180


def add_entry(catalog: Catalog, url: str, hits: int = 1, ts: float | None = None) -> str:
    url = canonical_url(url, None, 80)
    key = cache_key(url, {})
    ts = time.time() if ts is None else ts
    s = Sighting(ts=ts, client="10.0.0.5", client_port=4000, server="127.0.0.1", server_port=80, method="GET",
                 host="files.test", url=url, key=key, target="/")
    catalog.record_sightings([s] * hits, window=DAY, now=ts)
    return key


def make_ready(catalog: Catalog, blobs: BlobStore, url: str, content: bytes, hits: int = 1,
               last_hit: float | None = None, expires_at: float | None = None, **fields) -> tuple[str, str]:
    key = add_entry(catalog, url, hits=hits, ts=last_hit)
    digest = blake3.blake3(content).hexdigest()
    temp = blobs.new_temp_name(key)
    temp.write_bytes(content)
    blobs.publish(temp, digest)
    now = time.time()
    walk(catalog, key, "ready", blob=digest, size=len(content), stored_size=len(content), published_at=now,
         expires_at=now + DAY if expires_at is None else expires_at, **fields)
    return key, digest


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store")


def test_housekeeping_tasks_are_routed_and_scheduled(make_settings):
    settings = make_settings(housekeeping_interval=120, revalidate_interval=60)
    schedule = {entry["task"]: entry["schedule"] for entry in beat_schedule(settings).values()}
    for name in (SCHEDULE_CLEANUP, SCHEDULE_QUOTA, SCHEDULE_RECONCILE, SCHEDULE_REVALIDATE):
        assert ROUTES[name] == {"queue": "schedule"}
        assert name in create_app(settings).tasks
    assert schedule[SCHEDULE_CLEANUP] == schedule[SCHEDULE_QUOTA] == schedule[SCHEDULE_RECONCILE] == 120
    assert schedule[SCHEDULE_REVALIDATE] == 60


# ---- cleanup and quota on SQLite, PostgreSQL, MariaDB --------------------------------------------

def test_cleanup_pass(catalog, blobs, make_settings):
    settings = make_settings(cleanup_min_hits=3, cleanup_idle=int(7 * DAY))
    now = time.time()
    cold, cold_sha = make_ready(catalog, blobs, "http://files.test/cold.iso", b"c" * 100, hits=1,
                                last_hit=now - 8 * DAY)
    warm, warm_sha = make_ready(catalog, blobs, "http://files.test/warm.iso", b"w" * 100, hits=5,
                                last_hit=now - 8 * DAY)
    recent, _ = make_ready(catalog, blobs, "http://files.test/recent.iso", b"r" * 100, hits=1, last_hit=now)
    counter = add_entry(catalog, "http://files.test/once.iso", hits=1, ts=now - 30 * DAY)
    downloading = add_entry(catalog, "http://files.test/busy.iso", hits=1, ts=now - 30 * DAY)
    walk(catalog, downloading, "downloading")

    assert run_cleanup(catalog, blobs, settings, now) == {"candidates": 2, "evicted": 2}
    assert catalog.get(cold) is None and not blobs.exists(cold_sha)
    assert catalog.get(counter) is None
    assert {k: catalog.get(k).state for k in (warm, recent, downloading)} == {
        warm: "ready", recent: "ready", downloading: "downloading"}
    assert blobs.exists(warm_sha)
    assert run_cleanup(catalog, blobs, make_settings(cleanup_min_hits=0), now + 100 * DAY)["evicted"] == 0


def test_quota_pass_evicts_least_recently_hit_until_it_fits(catalog, blobs, make_settings):
    now = time.time()
    keys = {}
    for i, name in enumerate(("oldest", "older", "newer", "newest")):
        keys[name], _ = make_ready(catalog, blobs, f"http://files.test/{name}.iso", name.encode() * 100,
                                   hits=2, last_hit=now - 1000 + i * 100)
    sizes = {name: catalog.get(k).stored_size for name, k in keys.items()}
    used = sum(sizes.values())
    plenty = 1 << 40

    no_quota = make_settings(disk_quota=0, min_free_bytes=0)
    assert run_quota(catalog, blobs, no_quota, free_bytes=plenty)["evicted"] == 0

    quota = used - sizes["oldest"] - 1  # one byte too many without "oldest": "older" goes too
    summary = run_quota(catalog, blobs, make_settings(disk_quota=quota, min_free_bytes=0), free_bytes=plenty)
    assert summary["evicted"] == 2 and summary["used"] == used and summary["freed"] == sizes["oldest"] + sizes["older"]
    assert [n for n, k in keys.items() if catalog.get(k) is None] == ["oldest", "older"]

    # The free-space rule: 1 byte short of min_free_bytes costs the least recently hit entry left.
    summary = run_quota(catalog, blobs, make_settings(disk_quota=0, min_free_bytes=1000), free_bytes=999)
    assert summary["evicted"] == 1 and catalog.get(keys["newer"]) is None and catalog.get(keys["newest"])


def test_quota_pass_follows_the_policy_order_then_untracked_entries(catalog, blobs, make_settings):
    now = time.time()
    keys = {}
    for i, name in enumerate(("a", "b", "c", "u")):   # "u": no policy record
        keys[name], _ = make_ready(catalog, blobs, f"http://files.test/{name}.iso", name.encode() * 100,
                                   hits=2, last_hit=now - 1000 + i * 100)
    size = catalog.get(keys["a"]).stored_size
    # The policy (LRU over its own records) saw "c" requested first and "a" last: the opposite of
    # the catalog's last_hit order, which the old pass used.
    policy = make_policy("lru", CatalogPolicyStore(catalog.engine), 1 << 40)
    for i, name in enumerate(("c", "b", "a")):
        with policy.store.transaction():
            policy.insert(keys[name], size, now - 500 + i)
    summary = run_quota(catalog, blobs, make_settings(eviction_policy="lru", min_free_bytes=0, disk_quota=4 * size - 1),
                        free_bytes=1 << 40, now=now)
    assert summary["evicted"] == 1 and catalog.get(keys["c"]) is None
    assert not policy.resident(keys["c"]) and policy.resident(keys["b"])
    # Past every policy victim, the entries it does not track go, least recently requested first.
    summary = run_quota(catalog, blobs, make_settings(eviction_policy="lru", min_free_bytes=0, disk_quota=1), free_bytes=1 << 40, now=now)
    assert summary["evicted"] == 3 and all(catalog.get(k) is None for k in keys.values())


def test_quota_measures_the_real_disk(blobs, make_settings, tmp_path):
    catalog = _sqlite_catalog(tmp_path)
    make_ready(catalog, blobs, "http://files.test/a.iso", b"a" * 100)
    summary = run_quota(catalog, blobs, make_settings(disk_quota=0, min_free_bytes=0))
    assert summary["free"] > 0 and summary["evicted"] == 0


# ---- revalidation against the real test origin ---------------------------------------------------

def _sqlite_catalog(tmp_path: Path) -> Catalog:
    return open_catalog(f"sqlite:///{tmp_path / 'reval.sqlite'}")


def _cache_from_origin(catalog: Catalog, blobs: BlobStore, resolver: Resolver, url: str, expired: bool = True):
    """Store what the origin serves now, with the validators a real probe reports."""
    with httpx.Client(trust_env=False) as client:
        answer = client.get(url.replace("files.test", "127.0.0.1"), headers={"Host": url.split("/")[2]})
    assert answer.status_code == 200
    seen = probe(url, resolver, timeout=30)
    key, digest = make_ready(catalog, blobs, url, answer.content, hits=2,
                          expires_at=time.time() - 1 if expired else time.time() + DAY,
                          etag=seen.etag, last_modified=seen.last_modified, cache_control=seen.cache_control)
    return key, digest


@pytest.fixture
def reval(tmp_path, blobs, make_settings, origin):
    settings = make_settings(default_ttl=int(DAY), max_ttl=int(30 * DAY))
    return _sqlite_catalog(tmp_path), blobs, Resolver.from_settings(settings), settings, origin


def test_revalidation_304_extends_freshness(reval):
    catalog, blobs, resolver, settings, origin = reval
    origin.add("/same.iso", Resource(size=64 * KiB))
    origin.add("/max-age.iso", Resource(size=64 * KiB, cache_control="max-age=5000"))
    same, digest = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/same.iso")
    max_age, _ = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/max-age.iso")
    not_due, _ = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/max-age.iso".replace(
        "max-age.iso", "max-age.iso?v=2"), expired=False)
    lookup = CatalogLookup(catalog, blobs, ttl=0)
    assert lookup.find(same) is None  # expired: not handed out until revalidated

    before = time.time()
    assert run_revalidate(catalog, blobs, resolver, settings, time.time()) == {
        "checked": 2, "fresh": 2, "changed": 0, "gone": 0, "error": 0, "busy": 0}
    assert origin.stats("/same.iso").statuses[304] == 1
    assert origin.stats("/max-age.iso").statuses[304] == 1
    entry = catalog.get(same)
    # No explicit lifetime: 10% of the time since Last-Modified, capped by max_ttl.
    heuristic = min(0.1 * (before - BASE_MTIME), 30 * DAY)
    assert before + heuristic - 1 <= entry.expires_at <= time.time() + heuristic
    assert before + 5000 - 5 <= catalog.get(max_age).expires_at <= time.time() + 5000
    assert entry.blob == digest and lookup.find(same) is not None
    assert catalog.get(not_due).state == "ready"
    assert run_revalidate(catalog, blobs, resolver, settings, time.time())["checked"] == 0


def test_revalidation_of_a_changed_object_evicts_it(reval):
    catalog, blobs, resolver, settings, origin = reval
    origin.add("/moving.iso", Resource(size=64 * KiB))
    key, digest = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/moving.iso")
    origin.change("/moving.iso")
    assert run_revalidate(catalog, blobs, resolver, settings, time.time())["changed"] == 1
    assert catalog.get(key) is None and not blobs.exists(digest)


def test_revalidation_of_a_vanished_object_evicts_it(reval):
    catalog, blobs, resolver, settings, origin = reval
    origin.add("/gone.iso", Resource(size=64 * KiB))
    key, digest = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/gone.iso")
    origin.add("/gone.iso", Resource(size=64 * KiB, status=410))
    origin.add("/missing.iso", Resource(size=64 * KiB))
    missing, _ = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/missing.iso")
    origin.add("/missing.iso", Resource(size=64 * KiB, status=404))
    assert run_revalidate(catalog, blobs, resolver, settings, time.time())["gone"] == 2
    assert catalog.get(key) is None and catalog.get(missing) is None and not blobs.exists(digest)


def test_revalidation_with_the_origin_down_keeps_the_entry_unserved(reval):
    catalog, blobs, resolver, settings, origin = reval
    origin.add("/down.iso", Resource(size=64 * KiB))
    origin.add("/broken.iso", Resource(size=64 * KiB))
    key, digest = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/down.iso")
    broken, _ = _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/broken.iso")
    origin.add("/broken.iso", Resource(size=64 * KiB, status=503))
    expired_at = catalog.get(key).expires_at
    assert run_revalidate(catalog, blobs, resolver, settings, time.time())["error"] == 1  # the 503
    assert catalog.get(key).expires_at > time.time()  # down.iso was fine then
    catalog.set_fields(key, ["ready"], expires_at=expired_at)
    origin.stop()

    assert run_revalidate(catalog, blobs, resolver, settings, time.time()) == {
        "checked": 2, "fresh": 0, "changed": 0, "gone": 0, "error": 2, "busy": 0}
    entry = catalog.get(key)
    assert (entry.state, entry.expires_at, entry.blob) == ("ready", expired_at, digest) and blobs.exists(digest)
    lookup = CatalogLookup(catalog, blobs, ttl=0)
    assert lookup.find(key) is None and lookup.find(broken) is None


def test_run_all_once(reval):
    catalog, blobs, resolver, settings, origin = reval
    origin.add("/a.iso", Resource(size=16 * KiB))
    _cache_from_origin(catalog, blobs, resolver, f"http://files.test:{origin.port}/a.iso")
    summary = run_all(catalog, blobs, resolver, settings.model_copy(update={"min_free_bytes": 0}))
    assert set(summary) == {"revalidate", "cleanup", "reconcile", "quota"}
    assert summary["revalidate"]["fresh"] == 1 and summary["quota"]["evicted"] == 0


# ---- a real worker on the schedule queue ---------------------------------------------------------

def test_beat_tasks_run_in_a_real_worker(make_settings):
    settings = make_settings(cleanup_min_hits=3, cleanup_idle=3600, reconcile_grace=0, min_free_bytes=0,
                             disk_quota=150)
    app = create_app(settings)
    catalog, blobs = app.catalog, BlobStore(settings.cache_dir)
    now = time.time()
    cold, cold_sha = make_ready(catalog, blobs, "http://files.test/cold.iso", b"c" * 100, hits=1,
                                last_hit=now - 2 * DAY)
    old, old_sha = make_ready(catalog, blobs, "http://files.test/old.iso", b"o" * 100, hits=9, last_hit=now - 100)
    new, new_sha = make_ready(catalog, blobs, "http://files.test/new.iso", b"n" * 100, hits=9, last_hit=now)
    (blobs.temp_dir / "leftover.part").write_bytes(b"x")

    def run(name: str) -> dict:
        return app.send_task(name, queue="schedule").get(timeout=WAIT)

    with CeleryWorker(settings, ["schedule"]) as worker:
        assert run(SCHEDULE_CLEANUP) == {"candidates": 1, "evicted": 1}, worker.log_text()[-3000:]
        assert run(SCHEDULE_RECONCILE)["temp_files"] == 1
        quota = run(SCHEDULE_QUOTA)
        assert (quota["used"], quota["evicted"], quota["freed"]) == (200, 1, 100)
        assert run(SCHEDULE_REVALIDATE)["checked"] == 0
    assert catalog.get(cold) is None and not blobs.exists(cold_sha)
    assert catalog.get(old) is None and not blobs.exists(old_sha)
    assert catalog.get(new).state == "ready" and blobs.exists(new_sha)
    assert not (blobs.temp_dir / "leftover.part").exists()
    assert "cleanup: 1 of 1 entries" in worker.log_text()
