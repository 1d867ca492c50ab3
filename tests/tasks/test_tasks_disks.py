"""Downloads land on the disk their key is placed on, and the catalog records it."""

from __future__ import annotations

from collections import Counter

from cachetap.store.blobs import file_digest
from cachetap.store.disks import Disks
from cachetap.tasks.app import create_app
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
