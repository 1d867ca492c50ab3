"""Downloads land on the disk their key is placed on, and the catalog records it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cachetap.store.blobs import file_digest
from cachetap.store.disks import Disks
from cachetap.tasks.app import create_app
from cachetap.testing.entries import walk
from cachetap.testing.origin import Resource
from cachetap.testing.workers import CeleryWorker
from cachetap.web.lookup import CatalogLookup
from tests.tasks.test_tasks_download import MiB, WAIT, admit, fast_settings, send


def test_downloads_spread_over_two_disks_and_are_served_from_each(make_settings, make_sighting, origin, tmp_path):
    disk_dirs = [tmp_path / "disk1", tmp_path / "disk2"]
    for d in disk_dirs:
        d.mkdir()
    settings = fast_settings(make_settings, cache_dirs=[str(d) for d in disk_dirs], min_free_bytes=0)
    app = create_app(settings)
    disks = Disks.from_settings(settings)
    by_disk: dict[str, list[str]] = {str(d): [] for d in disk_dirs}  # three objects for each disk
    for n in range(200):
        name = f"/f{n}.iso"
        found = by_disk[disks.place(make_sighting(f"http://files.test:{origin.port}{name}")["key"], 0)[0]]
        if len(found) < 3:
            found.append(name)
    names = [name for found in by_disk.values() for name in found]
    assert len(names) == 6
    for name in names:
        origin.add(name, Resource(size=MiB + len(name)))
    jobs = [admit(app, f"http://files.test:{origin.port}{name}", make_sighting) for name in names]
    with CeleryWorker(settings, ["download"], pool="threads", concurrency=4):
        results = [send(app, job) for job in jobs]
        for r in results:
            r.get(timeout=WAIT)
    lookup = CatalogLookup(app.catalog, disks, ttl=0)
    where = Counter()
    for job, name in zip(jobs, names):
        entry = app.catalog.get(job["key"])
        assert entry.disk == disks.place(job["key"], entry.size)[0]  # the key's own disk, by hash
        path = disks.store(entry.disk).path(entry.blob)
        assert file_digest(path) == origin.expected_digest(name) and lookup.find(job["key"]).path == path
        where[entry.disk] += 1
    assert where == {str(d): 3 for d in disk_dirs}, where
    assert not (settings.cache_dir / "blobs").exists() or not any((settings.cache_dir / "blobs").iterdir())


def _stored_on(app, disks: Disks, node: str, name: str) -> tuple[str, Path]:
    """A ready entry held by `node` on its first disk, with its file; returns (key, file path)."""
    import time

    from cachetap.core.keys import cache_key
    from cachetap.core.types import Sighting

    url = f"http://files.test/{name}.iso"
    key = cache_key(url, {})
    app.catalog.record_sightings([Sighting(time.time(), "10.0.0.5", 1, "127.0.0.1", 80, "GET", "files.test", url,
                                           key, f"/{name}.iso")], window=3600, now=time.time())
    store = disks.store(disks.default)
    temp = store.new_temp_name(key)
    temp.write_bytes(name.encode() * 1000)
    digest = file_digest(temp)
    path = store.publish(temp, digest)
    walk(app.catalog, key, "ready", blob=digest, stored_size=path.stat().st_size,
         node=node, disk=disks.default, expires_at=time.time() + 3600)
    return key, path


def test_purge_on_one_node_deletes_the_file_on_the_node_holding_it(make_settings, tmp_path):
    """Node a purges an object node b holds: the row goes at once, and node b's download worker deletes
    the file from its own disk (node a's disks are never touched)."""
    from cachetap.tasks.housekeeping import purge_key
    from cachetap.tasks.index_events import IndexNotifier
    from cachetap.testing.waiting import wait_for

    disk_a, disk_b = tmp_path / "disk-a", tmp_path / "disk-b"
    disk_a.mkdir(), disk_b.mkdir()
    settings_a = make_settings(node_name="node-a", cache_dirs=[str(disk_a)])
    settings_b = make_settings(node_name="node-b", cache_dirs=[str(disk_b)])  # same catalog and broker
    app_a, app_b = create_app(settings_a), create_app(settings_b)
    key, path = _stored_on(app_b, Disks.from_settings(settings_b), "node-b", "held-by-b")
    with CeleryWorker(settings_b, ["download"]) as worker:
        entry, file = purge_key(app_a.catalog, Disks.from_settings(settings_a), settings_a, key, IndexNotifier(app_a))
        assert entry is not None and file == "elsewhere" and app_a.catalog.get(key) is None
        wait_for(lambda: not path.exists(), "node b deleting the file", timeout=60, detail=worker.log_text)


def test_a_file_drop_only_deletes_an_unnamed_file_on_a_disk_of_ours(make_settings, tmp_path):
    from cachetap.tasks.download import drop_file
    from cachetap.wire import FileDrop

    disk = tmp_path / "disk"
    disk.mkdir()
    settings = make_settings(node_name="node-b", cache_dirs=[str(disk)])
    app, disks = create_app(settings), Disks.from_settings(settings)
    key, path = _stored_on(app, disks, "node-b", "named")
    digest = path.name
    assert FileDrop.from_message({"blob": "../../etc/passwd", "disk": str(disk)}) is None
    assert FileDrop.from_message({"blob": digest, "disk": 5}) is None
    assert drop_file(app.catalog, disks, FileDrop(digest, "/etc")) == "not_our_disk"
    assert drop_file(app.catalog, disks, FileDrop(digest, str(disk))) == "kept" and path.exists()  # a row names it
    app.catalog.remove(key)
    assert drop_file(app.catalog, disks, FileDrop(digest, str(disk))) == "deleted" and not path.exists()


def test_each_cache_node_reconciles_its_own_disks(make_settings, tmp_path):
    """The reconcile pass goes to every live cache node's own queue: each deletes the files no row
    names on its disks and drops its own rows whose file is gone, never another node's."""
    import os
    import time

    from cachetap.store.nodes import CACHE_ROLE, disks_of
    from cachetap.tasks.housekeeping import _on_every_cache_node
    from cachetap.testing.waiting import wait_for

    made = {}
    for node in ("node-a", "node-b"):
        disk = tmp_path / f"disk-{node}"
        disk.mkdir()
        made[node] = make_settings(node_name=node, cache_dirs=[str(disk)], reconcile_grace=0, min_free_bytes=0)
    apps = {node: create_app(s) for node, s in made.items()}
    catalog = apps["node-a"].catalog
    disks = {node: Disks.from_settings(s) for node, s in made.items()}
    orphans, kept, lost = {}, {}, {}
    for node, d in disks.items():
        kept[node] = _stored_on(apps[node], d, node, f"kept-{node}")
        lost[node] = _stored_on(apps[node], d, node, f"lost-{node}")
        os.unlink(lost[node][1])   # its row now names a missing file
        store = d.store(d.default)
        temp = store.new_temp_name("0" * 32)
        temp.write_bytes(node.encode())
        orphans[node] = store.publish(temp, file_digest(temp))
        catalog.nodes.beat(node, CACHE_ROLE, time.time(), public_url="http://127.0.0.1:1",
                           disks=disks_of([str(Path(x.path)) for x in d]))
    workers = [CeleryWorker(s, ["download"]).start() for s in made.values()]
    try:
        for node in made:  # keep both cache nodes alive in the registry while the passes run
            catalog.nodes.beat(node, CACHE_ROLE, time.time(), public_url="http://127.0.0.1:1")
        assert _on_every_cache_node(apps["node-a"]) == {"nodes": 2}
        wait_for(lambda: not any(p.exists() for p in orphans.values())
                 and all(catalog.get(k) is None for k, _ in lost.values()), "both nodes reconciled",
                 timeout=90, detail=lambda: "\n".join(w.log_text()[-2000:] for w in workers))
    finally:
        for w in workers:
            w.stop()
    assert all(catalog.get(k) is not None and p.exists() for k, p in kept.values())
