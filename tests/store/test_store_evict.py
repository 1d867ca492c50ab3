"""store.evict: evict and reconcile on real files and a real catalog (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest

from cachetap.core.keys import cache_key
from cachetap.core.types import Sighting
from cachetap.store.blobs import BlobStore
from cachetap.store.evict import evict, reconcile
from cachetap.web.lookup import CatalogLookup
from cachetap.testing.entries import walk

HOUR = 3600.0


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "cache")


def add_entry(catalog, name: str, state: str = "counting", hits: int = 1, ts: float | None = None) -> str:
    url = f"http://files.test/{name}"
    key = cache_key(url, {})
    ts = time.time() if ts is None else ts
    sightings = [Sighting(ts=ts, client="10.0.0.5", client_port=4000, server="127.0.0.1", server_port=80,
                          method="GET", host="files.test", url=url, key=key, target=f"/{name}")] * hits
    catalog.record_sightings(sightings, window=86_400, now=ts)
    walk(catalog, key, state)
    return key


def store_blob(blobs: BlobStore, content: bytes) -> str:
    digest = blake3.blake3(content).hexdigest()
    temp = blobs.temp_dir / f"upload-{digest[:8]}"
    temp.write_bytes(content)
    blobs.publish(temp, digest)
    return digest


def add_ready(catalog, blobs: BlobStore, name: str, content: bytes, **fields) -> tuple[str, str]:
    key = add_entry(catalog, name)
    digest = store_blob(blobs, content)
    now = time.time()
    walk(catalog, key, "ready", blob=digest, size=len(content), stored_size=len(content), published_at=now,
         expires_at=now + HOUR, **fields)
    return key, digest


# ---- evict ---------------------------------------------------------------------------------------

def test_evict_removes_row_and_file(catalog, blobs):
    key, digest = add_ready(catalog, blobs, "a.iso", b"a" * 1000)
    assert evict(catalog, blobs, key, "test") is True
    assert catalog.get(key) is None
    assert not blobs.exists(digest)
    assert evict(catalog, blobs, key, "test") is False  # unknown now


def test_evict_keeps_a_blob_another_row_names(catalog, blobs):
    key1, digest = add_ready(catalog, blobs, "one.iso", b"same bytes")
    key2, digest2 = add_ready(catalog, blobs, "two.iso", b"same bytes")
    assert digest == digest2 and key1 != key2
    assert evict(catalog, blobs, key1, "test")
    assert blobs.exists(digest) and catalog.get(key2).state == "ready"
    assert evict(catalog, blobs, key2, "test")
    assert not blobs.exists(digest)


def test_evict_with_expect_state_leaves_an_entry_that_moved_on(catalog, blobs):
    key = add_entry(catalog, "moving.iso")
    walk(catalog, key, "probing")
    assert evict(catalog, blobs, key, "cold", expect_state="counting") is False
    assert catalog.get(key).state == "probing"
    assert evict(catalog, blobs, key, "cold", expect_state="probing") is True


def test_evict_removes_the_hits_too(catalog, blobs):
    key = add_entry(catalog, "hits.iso", hits=3)
    assert evict(catalog, blobs, key, "test")
    # Counting starts again from zero when the object is requested anew.
    again = add_entry(catalog, "hits.iso")
    assert again == key and catalog.get(key).hits == 1


# ---- reconcile: crash between the two steps, and files deleted behind our back -------------------

def test_crash_after_row_removed_leaves_a_file_reconcile_deletes(catalog, blobs):
    key, digest = add_ready(catalog, blobs, "crash.iso", b"x" * 4096)
    entry = catalog.get(key)
    assert catalog.remove_if(key, "ready", entry.blob)  # step 1 done, then the process died
    assert blobs.exists(digest)

    young = reconcile(catalog, blobs, now=time.time(), grace=HOUR)
    assert young.orphan_blobs == [] and young.kept_young == 1 and blobs.exists(digest)

    report = reconcile(catalog, blobs, now=time.time() + 2 * HOUR, grace=HOUR)
    assert report.orphan_blobs == [digest]
    assert not blobs.exists(digest)
    assert report.rows_missing_blob == []


def test_file_deleted_behind_our_back_removes_the_row(catalog, blobs):
    key, digest = add_ready(catalog, blobs, "gone.iso", b"y" * 2048)
    other, other_digest = add_ready(catalog, blobs, "fine.iso", b"z" * 2048)
    lookup = CatalogLookup(catalog, blobs, ttl=0)
    assert lookup.find(key) is not None
    blobs.path(digest).unlink()
    assert lookup.find(key) is None  # not served meanwhile: the server checks the file

    report = reconcile(catalog, blobs, now=time.time(), grace=HOUR)
    assert report.rows_missing_blob == [key]
    assert catalog.get(key) is None
    assert catalog.get(other).state == "ready" and blobs.exists(other_digest)
    assert lookup.find(other) is not None


def test_ready_row_without_blob_is_removed(catalog, blobs):
    key = add_entry(catalog, "noblob.iso")
    walk(catalog, key, "ready")
    assert reconcile(catalog, blobs, now=time.time(), grace=0).rows_missing_blob == [key]


def test_reconcile_keeps_blobs_named_by_any_row(catalog, blobs):
    key, digest = add_ready(catalog, blobs, "kept.iso", b"k" * 100)
    walk(catalog, key, "downloading")  # e.g. re-fetching: its row still names the blob
    report = reconcile(catalog, blobs, now=time.time() + 10 * HOUR, grace=HOUR)
    assert report.orphan_blobs == [] and blobs.exists(digest)


def test_temp_files_of_live_downloads_are_kept_others_age_out(catalog, blobs):
    live = add_entry(catalog, "live.iso", state="downloading")
    queued = add_entry(catalog, "queued.iso", state="queued")
    dead = add_entry(catalog, "dead.iso", state="failed")
    unknown = "f" * 32
    names = [f"{live}.part", f"{live}.part.aria2", f"{queued}.part", f"{dead}.part", f"{dead}.part.aria2",
             f"{unknown}.part", "stray-file"]
    for name in names:
        (blobs.temp_dir / name).write_bytes(b"partial")
    later = time.time() + 2 * HOUR

    assert reconcile(catalog, blobs, now=time.time(), grace=HOUR).temp_files == []
    report = reconcile(catalog, blobs, now=later, grace=HOUR)
    assert sorted(report.temp_files) == sorted([f"{dead}.part", f"{dead}.part.aria2", f"{unknown}.part",
                                                "stray-file"])
    assert sorted(p.name for p in blobs.temp_dir.iterdir()) == sorted([f"{live}.part", f"{live}.part.aria2",
                                                                       f"{queued}.part"])


def test_reconcile_never_touches_anything_outside_the_cache_dir(catalog, blobs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.iso"
    precious.write_bytes(b"keep me")
    digest = blake3.blake3(b"keep me").hexdigest()
    # A symlink in tmp/ and one with a blob's name, both pointing out of the cache, and a directory.
    (blobs.temp_dir / "link.part").symlink_to(precious)
    link_blob = blobs.path(digest)
    link_blob.parent.mkdir(parents=True, exist_ok=True)
    link_blob.symlink_to(precious)
    (blobs.temp_dir / "somedir").mkdir()
    os.utime(outside, (0, 0))

    report = reconcile(catalog, blobs, now=time.time() + 10 * HOUR, grace=HOUR)
    assert "link.part" in report.temp_files
    assert precious.read_bytes() == b"keep me"
    assert not (blobs.temp_dir / "link.part").is_symlink()
    assert (blobs.temp_dir / "somedir").is_dir()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.iso"]


def test_reconcile_on_an_empty_store(catalog, blobs):
    report = reconcile(catalog, blobs, now=time.time(), grace=0)
    assert report.summary() == {"rows_missing_blob": 0, "orphan_blobs": 0, "temp_files": 0, "kept_young": 0}


# ---- catalog queries used by housekeeping --------------------------------------------------------

def test_entry_stats_and_expired_queries(catalog, blobs):
    now = time.time()
    cold = add_entry(catalog, "cold.iso", hits=1, ts=now - 10 * 86_400)
    warm = add_entry(catalog, "warm.iso", hits=5, ts=now - 10 * 86_400)
    key, digest = add_ready(catalog, blobs, "ready.iso", b"r" * 10)
    stats = catalog.entry_stats(["counting"], fewer_hits_than=3, last_hit_before=now - 86_400)
    assert [s.key for s in stats] == [cold]
    assert {s.key for s in catalog.entry_stats(["counting", "ready"])} == {cold, warm, key}
    ready = catalog.entry_stats(["ready"])[0]
    assert (ready.blob, ready.stored_size, ready.state) == (digest, 10, "ready")

    assert catalog.expired(now, 10) == []
    assert [e.key for e in catalog.expired(now + 2 * HOUR, 10)] == [key]
    assert catalog.refresh(key, digest, now + 5 * HOUR, cache_control="max-age=60")
    assert catalog.expired(now + 2 * HOUR, 10) == []
    assert catalog.get(key).cache_control == "max-age=60"
    assert not catalog.refresh(key, "0" * 64, now)  # other blob: not ours to extend
    assert not catalog.refresh(cold, digest, now)      # not ready
    assert catalog.blob_references() == {digest} and catalog.blob_referenced(digest)


def test_evicting_a_key_keeps_a_shared_blob_another_key_is_being_published_with(catalog, blobs):
    """Seen failing on 34b94e0 (the same steps with publish()): between key B's publish (the blob
    existed, B's copy was dropped) and B's row naming the blob, evicting key A (the only row naming
    it) deleted the file B then pointed at."""
    content = b"shared" * 1000
    key_a, digest = add_ready(catalog, blobs, "a.iso", content)
    key_b = add_entry(catalog, "b.iso")
    temp = blobs.temp_dir / "b.part"
    temp.write_bytes(content)
    path, hold = blobs.publish_held(temp, digest)   # B's download is published...
    assert evict(catalog, blobs, key_a, "test") is True  # ...A goes before B's row names the blob
    walk(catalog, key_b, "ready", blob=digest, size=len(content), stored_size=len(content))
    hold.release()
    assert path.read_bytes() == content
    assert evict(catalog, blobs, key_b, "test") is True and not path.exists()  # the last one frees it


def test_a_publish_waits_out_a_running_removal_and_puts_its_own_copy(blobs):
    import fcntl
    import threading

    content = b"again" * 1000
    digest = store_blob(blobs, content)
    fd = os.open(blobs.path(digest), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)        # a removal holds the blob
    temp = blobs.temp_dir / "c.part"
    temp.write_bytes(content)
    result = {}
    publisher = threading.Thread(target=lambda: result.update(out=blobs.publish_held(temp, digest)))
    publisher.start()
    publisher.join(0.3)
    assert publisher.is_alive()          # waiting for the removal to finish
    blobs.path(digest).unlink()          # which deletes it
    os.close(fd)
    publisher.join(10)
    path, hold = result["out"]
    hold.release()
    assert path.read_bytes() == content and not temp.exists()
