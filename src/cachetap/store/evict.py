"""Removing stored objects, and reconciling the catalog with the files on disk.

Order of `evict`: the catalog row goes first, then the blob. A crash in between leaves a file no row
names (harmless: reconcile deletes it after `grace`), never a row that names a missing file. Even
then nothing broken is served: CatalogLookup stats the blob before serving and sends the client to
the origin when it is gone. A blob is shared by every key whose content has the same digest, so it
is deleted only when no other row names it.

`reconcile` heals what a crash or an operator left behind:
  * a ready row whose blob file is missing: the row is removed (not re-queued). The object is then
    unknown, so the next requests count and admit it again like any new object; re-downloading
    things nobody asks for any more would be waste, and admission already does the right thing;
  * a blob file no row names, older than `grace` (a publish may be between its rename and its
    catalog update): deleted;
  * a temp file (`tmp/<key>.part`, aria2's `.aria2` control file, anything else in tmp/) older than
    `grace` whose key is not queued or downloading: deleted. Files of live downloads are kept
    whatever their age: aria2 resumes from them.
Paths come only from BlobStore (validated digest names under <disk>/blobs, entries of <disk>/tmp),
so nothing outside the cache directories is ever touched; symlinks are unlinked, never followed.

Several disks (store/disks.py): each row names its disk; a blob is shared only by rows on the same
disk. A disk that is not usable (failed, removed, unmounted) is left alone, and the ready rows of
objects on it are removed like rows whose file is missing: those objects are out of service, the
other disks' are not.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cachetap import metrics
from cachetap.core.keys import KEY_REGEX
from cachetap.core.lifecycle import LIVE_DOWNLOAD, EntryState
from cachetap.store.blobs import BlobStore
from cachetap.store.catalog import Catalog, EntryView
from cachetap.store.disks import Disks, as_disks

log = logging.getLogger(__name__)
OnRemoved = Callable[[str], None]  # told each key whose row is gone

_TEMP_KEY = re.compile(rf"({KEY_REGEX})\.")


@dataclass
class ReconcileReport:
    rows_missing_blob: list[str] = field(default_factory=list)   # keys whose row was removed
    orphan_blobs: list[str] = field(default_factory=list)        # digests of deleted blob files
    temp_files: list[str] = field(default_factory=list)          # names of deleted temp files
    kept_young: int = 0                                          # unreferenced files inside grace

    def summary(self) -> dict[str, int]:
        return {"rows_missing_blob": len(self.rows_missing_blob), "orphan_blobs": len(self.orphan_blobs),
                "temp_files": len(self.temp_files), "kept_young": self.kept_young}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evict(catalog: Catalog, blobs: Disks | BlobStore, key: str, reason: str, expect_state: str | None = None,
          on_removed: OnRemoved | None = None, node: str | None = None,
          held_elsewhere: Callable[[EntryView], None] | None = None) -> bool:
    """Remove `key`'s row, then its blob unless another row names the same digest.

    With `expect_state`, only an entry still in that state is removed (the caller decided on a
    snapshot). `on_removed(key)` runs once the row is gone (capture nodes stop redirecting it). With
    `node` (this node's name), an object another node holds is that node's to delete:
    `held_elsewhere(entry)` is told (it asks the holder), this node's disks are not touched.
    Returns whether the row was removed.
    """
    entry = catalog.get(key)
    if entry is None or (expect_state is not None and entry.state != expect_state):
        return False
    if not catalog.remove_if(key, entry.state, entry.blob):
        return False  # it changed under us: whoever changed it decides
    metrics.store().evictions.labels(reason).inc()  # the row is gone: whoever holds the file deletes it
    if on_removed is not None:
        on_removed(key)
    if node is not None and entry.node not in (None, node) and entry.blob:
        if held_elsewhere is not None:
            held_elsewhere(entry)
        log.info("evicted %s (%s, was %s, file on node %s): %s", key, reason, entry.state, entry.node, entry.url)
        return True
    freed = 0
    blob, disks = entry.blob, as_disks(blobs)
    disk, store = disks.label_of(entry.disk), disks.store(entry.disk)
    if blob and store is not None and not catalog.blob_referenced(blob, disk) and \
            store.remove_unreferenced(blob, lambda: not catalog.blob_referenced(blob, disk)):
        freed = entry.stored_size or 0
    log.info("evicted %s (%s, was %s, %s bytes freed): %s", key, reason, entry.state, freed, entry.url)
    return True


def reconcile(catalog: Catalog, blobs: Disks | BlobStore, now: float, grace: float,
              on_removed: OnRemoved | None = None, node: str | None = None) -> ReconcileReport:
    """With `node`, only the rows of objects that node holds are judged (another node's files are
    not on this node's disks)."""
    report, disks = ReconcileReport(), as_disks(blobs)
    # 1. Rows that promise a file that is not there (or on a disk that is not there now).
    down: dict[str, int] = {}
    for stat in catalog.entry_stats([EntryState.READY], node=node):
        store = disks.store(stat.disk)
        if store is not None and stat.blob and store.exists(stat.blob):
            continue
        if catalog.remove_if(stat.key, EntryState.READY, stat.blob):
            report.rows_missing_blob.append(stat.key)
            metrics.store().evictions.labels("missing_file").inc()
            if on_removed is not None:
                on_removed(stat.key)
            if store is None:
                down[disks.label_of(stat.disk)] = down.get(disks.label_of(stat.disk), 0) + 1
            else:
                log.warning("ready entry %s has no blob file %s: row removed", stat.key, stat.blob)
    for disk, count in down.items():
        log.warning("disk %s is not usable: %d objects on it taken out of service (rows removed)", disk, count)
    live = {s.key for s in catalog.entry_stats(LIVE_DOWNLOAD)}
    for disk in disks:
        store = disks.store(disk.label)
        if store is not None:
            _reconcile_files(catalog, store, disk.label, live, now, grace, report)
    return report


def _reconcile_files(catalog: Catalog, blobs: BlobStore, disk: str, live: set[str], now: float, grace: float,
                     report: ReconcileReport) -> None:
    # 2. Files no row names. References are read after the listing, so a blob published and
    #    recorded meanwhile is seen as referenced; one published but not yet recorded is young.
    on_disk = list(blobs.iter_blobs())
    referenced = catalog.blob_references(disk)
    for digest, _size in on_disk:
        if digest in referenced:
            continue
        if _age(blobs.path(digest), now) < grace:
            report.kept_young += 1
            continue
        if blobs.remove_unreferenced(digest, lambda d=digest: not catalog.blob_referenced(d, disk)):
            report.orphan_blobs.append(digest)
            log.info("deleted blob %s from %s: no catalog entry names it", digest, disk)
    # 3. Leftover temp files of downloads that are no longer running.
    for path in blobs.iter_temp():
        match = _TEMP_KEY.match(path.name)
        if match is not None and match.group(1) in live:
            continue
        if _age(path, now) < grace:
            report.kept_young += 1
            continue
        if _unlink(path):
            report.temp_files.append(path.name)
            log.info("deleted leftover temp file %s", path.name)


def _age(path: os.PathLike[str], now: float) -> float:
    try:
        return now - os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _unlink(path: os.PathLike[str]) -> bool:
    """Unlink a file or symlink (never following it); a directory someone put in tmp/ is left."""
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False
    return True
