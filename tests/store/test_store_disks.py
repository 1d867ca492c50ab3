"""Several disks per cache node: placement by key over real directories, free space per disk, and a
failed or removed disk taking only its own objects out of service."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from cachetap.core.keys import cache_key
from cachetap.core.types import Sighting
from cachetap.settings import ConfigError, load_settings
from cachetap.store.disks import MARKER, Disk, Disks, NoDisk
from cachetap.store.evict import reconcile
from cachetap.web.lookup import CatalogLookup
from cachetap.testing.entries import walk

KEYS = [cache_key(f"http://files.test/{n}.iso", {}) for n in range(3000)]


def dirs(tmp_path: Path, *names: str) -> list[Path]:
    made = [tmp_path / n for n in names]
    for d in made:
        d.mkdir()
    return made


def test_settings_default_to_cache_dir_and_take_paths_or_tables(tmp_path):
    assert [d.path for d in load_settings(cache_dir=tmp_path).disks] == [tmp_path]
    settings = load_settings(cache_dir=tmp_path, cache_dirs=["/srv/a", {"path": "/srv/b", "weight": 3,
                                                                         "min_free_bytes": "2G"}])
    assert [(str(d.path), d.weight, d.min_free_bytes) for d in settings.disks] == [("/srv/a", 1.0, None),
                                                                                   ("/srv/b", 3.0, 2 << 30)]


@pytest.mark.parametrize("dirs_value, fix", [
    (["srv/a"], "write it from / on"),
    (["/srv/a", "/srv/a/"], "list each disk once"),
    (["/srv/a", "/srv/a/b"], "give each disk a directory of its own"),
    ([{"path": "/srv/a", "weight": 0}], "greater than 0"),
    ([{"path": "/srv/a", "size": 3}], "size"),
])
def test_bad_cache_dirs_name_the_fix(tmp_path, dirs_value, fix):
    with pytest.raises(ConfigError) as err:
        load_settings(cache_dir=tmp_path, cache_dirs=dirs_value)
    assert "cache_dirs" in str(err.value) and fix in str(err.value)


def test_cache_dirs_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHETAP_CACHE_DIRS", '["/srv/a", {"path": "/srv/b", "weight": 2}]')
    assert [d.weight for d in load_settings(cache_dir=tmp_path).disks] == [1.0, 2.0]


def test_objects_spread_over_disks_by_weight_and_stay_put(tmp_path):
    a, b, c = dirs(tmp_path, "a", "b", "c")
    disks = Disks([Disk(str(a), a, 1), Disk(str(b), b, 1), Disk(str(c), c, 2)])
    placed = {k: disks.place(k, 0)[0] for k in KEYS}
    shares = Counter(placed.values())
    assert abs(shares[str(c)] / len(KEYS) - 0.5) < 0.05
    assert abs(shares[str(a)] / len(KEYS) - 0.25) < 0.05 and abs(shares[str(b)] / len(KEYS) - 0.25) < 0.05
    again = Disks([Disk(str(a), a, 1), Disk(str(b), b, 1), Disk(str(c), c, 2)])
    assert all(again.place(k, 0)[0] == d for k, d in placed.items())  # another process agrees
    # Disk b removed: only its keys move, to the others.
    shutil.rmtree(b)
    assert not disks.disks[str(b)].usable() and disks.store(str(b)) is None
    moved = {k: disks.place(k, 0)[0] for k in KEYS}
    assert all(moved[k] == d for k, d in placed.items() if d != str(b))
    assert str(b) not in moved.values()


def test_a_missing_directory_is_a_missing_disk_never_created(tmp_path, caplog):
    a, = dirs(tmp_path, "a")
    gone = tmp_path / "gone"
    disks = Disks([Disk(str(a), a), Disk(str(gone), gone)])
    assert not gone.exists() and disks.store(str(gone)) is None and (a / MARKER).exists()
    assert "mount or create it, or remove it from cache_dirs" in caplog.text
    assert {disks.place(k, 0)[0] for k in KEYS[:50]} == {str(a)}


def test_require_mount_refuses_a_plain_directory(tmp_path):
    a, b = dirs(tmp_path, "a", "b")
    disks = Disks([Disk(str(a), a), Disk(str(b), b, require_mount=True)])
    assert disks.store(str(b)) is None and not (b / MARKER).exists() and not (b / "blobs").exists()


def test_no_disk_with_room_is_named(tmp_path):
    a, = dirs(tmp_path, "a")
    disks = Disks([Disk(str(a), a, min_free=1 << 62)])
    with pytest.raises(NoDisk, match="add a disk"):
        disks.place(KEYS[0], 10)


# ---- a failed disk takes only its own objects out of service ----------------------------------------

def _ready_on(catalog, disks: Disks, label: str, name: str, body: bytes, last_hit: float | None = None) -> str:
    url = f"http://files.test/{name}.iso"
    key = cache_key(url, {})
    catalog.record_sightings([Sighting(time.time(), "10.0.0.5", 1, "127.0.0.1", 80, "GET", "files.test", url, key,
                                       f"/{name}.iso")], window=3600, now=time.time())
    store = disks.store(label)
    temp = store.new_temp_name(key)
    temp.write_bytes(body)
    from cachetap.store.blobs import file_digest

    digest = file_digest(temp)
    store.publish(temp, digest)
    walk(catalog, key, "ready", blob=digest, size=len(body), stored_size=len(body), disk=label,
         expires_at=time.time() + 3600, last_hit=time.time() if last_hit is None else last_hit)
    return key


def test_removed_disk_fails_open_and_reconcile_removes_only_its_rows(catalog, tmp_path):
    a, b = dirs(tmp_path, "a", "b")
    disks = Disks([Disk(str(a), a), Disk(str(b), b)])
    on_a = [_ready_on(catalog, disks, str(a), f"a{n}", b"A" * (100 + n)) for n in range(3)]
    on_b = [_ready_on(catalog, disks, str(b), f"b{n}", b"B" * (100 + n)) for n in range(3)]
    lookup = CatalogLookup(catalog, disks, ttl=0)
    assert all(lookup.find(k) is not None for k in on_a + on_b)
    assert {str(lookup.find(k).path).startswith(str(b)) for k in on_b} == {True}
    shutil.rmtree(b)  # the disk is gone
    assert all(lookup.find(k) is not None for k in on_a)
    assert all(lookup.find(k) is None for k in on_b)  # its clients go to the origin
    told = []
    report = reconcile(catalog, disks, time.time(), grace=0, on_removed=told.append)
    assert sorted(report.rows_missing_blob) == sorted(on_b) == sorted(told)
    assert all(catalog.get(k) is not None for k in on_a) and all(catalog.get(k) is None for k in on_b)
    assert report.orphan_blobs == []  # disk a's files are all named
    assert not b.exists()  # nothing was made where the disk was


def test_quota_pass_keeps_each_disk_within_its_own_limits_in_the_policy_order(catalog, tmp_path):
    from cachetap.core.policy import make_policy
    from cachetap.store.policy_store import CatalogPolicyStore
    from cachetap.tasks.housekeeping import run_quota

    a, b, c = dirs(tmp_path, "a", "b", "c")
    disks = Disks([Disk(str(a), a), Disk(str(b), b, quota=250), Disk(str(c), c, min_free=1050)])
    keys = {(d, n): _ready_on(catalog, disks, str(d), f"{d.name}{n}", d.name.encode() * (100 + n), last_hit=1000.0 + n)
            for d in (a, b, c) for n in range(3)}
    # The policy (GDSF: priority frequency / size) tracks a's and b's objects; c's it never saw.
    store = CatalogPolicyStore(catalog.engine)
    policy = make_policy("gdsf", store, 1 << 40)
    with store.transaction():
        for d in (a, b):
            for n in range(3):
                policy.insert(keys[(d, n)], 100 + n + (d == a), 2000.0)   # a2 (1/103) lowest of all
        for _ in range(3):
            policy.hit(keys[(b, 0)], 2001.0)   # b0: least recently requested in the catalog, GDSF's keeper
    settings = load_settings(cache_dir=tmp_path / "home", min_free_bytes=0, disk_quota=0, eviction_policy="gdsf")
    summary = run_quota(catalog, disks, settings, free_bytes=1000)  # every disk: 1000 bytes free
    gone = sorted(k for k, key in keys.items() if catalog.get(key) is None)
    # b: 303 bytes over its 250 -> the policy's lowest among b's objects goes (b2; not a's, lower
    # still but on another disk; not b0, least recently requested); c: 50 short of 1050 free -> the
    # policy tracks none of c's objects: its least recently requested goes.
    assert gone == [(b, 2), (c, 0)] and summary["evicted"] == 2 and summary["freed"] == 202
    assert disks.store(str(b)).exists(catalog.get(keys[(b, 1)]).blob)
    assert not policy.resident(keys[(b, 2)]) and policy.resident(keys[(a, 2)])


# ---- real free space per disk: two small tmpfs mounts ---------------------------------------------

@pytest.fixture
def two_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting tmpfs disks needs root")
    mounts = [tmp_path / "small", tmp_path / "large"]
    done = []
    try:
        for path, size in zip(mounts, ("4m", "32m")):
            path.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
            done.append(path)
        yield mounts
    finally:
        for path in done:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_free_space_is_checked_per_disk_and_unmount_takes_one_disk_out(two_tmpfs, catalog):
    small, large = two_tmpfs
    disks = Disks([Disk(str(small), small, 10, min_free=1 << 20, require_mount=True),
                   Disk(str(large), large, 1, min_free=1 << 20, require_mount=True)])
    # small is preferred by weight, but a 3.5 MiB object would leave it under 1 MiB free: it goes to large.
    first = [k for k in KEYS if disks.place(k, 0)[0] == str(small)][:20]
    assert len(first) == 20
    assert {disks.place(k, 3_500_000)[0] for k in first} == {str(large)}
    assert {disks.place(k, 1_000_000)[0] for k in first} == {str(small)}
    kept = _ready_on(catalog, disks, str(large), "kept", b"L" * 1000)
    lost = _ready_on(catalog, disks, str(small), "lost", b"S" * 1000)
    subprocess.run(["umount", str(small)], check=True)  # the disk goes away under us
    assert disks.store(str(small)) is None and disks.store(str(large)) is not None
    lookup = CatalogLookup(catalog, disks, ttl=0)
    assert lookup.find(kept) is not None and lookup.find(lost) is None
    assert {disks.place(k, 1_000_000)[0] for k in first} == {str(large)}
    report = reconcile(catalog, disks, time.time(), grace=0)
    assert report.rows_missing_blob == [lost] and catalog.get(kept) is not None
    assert not (small / "blobs").exists()  # nothing written to the empty mount point
