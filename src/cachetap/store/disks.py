"""The disks of one cache node, without RAID: one blob store per disk, objects placed by key.

Each object goes to one disk, chosen by weighted rendezvous hashing of its key over the disks
(core/placement.py, the same function that places keys on nodes), skipping a disk that is not
usable or that would drop below its `min_free_bytes`; the catalog records the disk (`entries.disk`,
the directory's path) so every reader finds the file without searching.

A disk is usable while its marker file `cachetap-disk` can be read (and, with `require_mount`, while
its directory is a mount point). The marker is written when a process opens the disks and finds
the directory there: a disk that fails later (I/O errors), is removed or unmounted loses it, and only
the objects on it go out of service (the cache server sends their clients to the origin; reconcile
removes their rows), while the other disks keep serving. A directory listed in `cache_dirs` is never
created: a missing one is a disk that is not there.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cachetap.core.placement import Member, ranking
from cachetap.settings import Settings
from cachetap.store.blobs import BlobStore

log = logging.getLogger(__name__)

MARKER = "cachetap-disk"


class NoDisk(OSError):
    """No usable disk has room for the object."""


@dataclass(frozen=True)
class Disk:
    label: str            # what entries.disk holds: the directory's path
    path: Path
    weight: float = 1.0
    quota: int = 0        # bytes the objects here may use at most; 0: none
    min_free: int = 0     # bytes to keep free here
    require_mount: bool = False

    def usable(self) -> bool:
        """The disk is there now: marker readable (no I/O error), mounted when that is required."""
        try:
            os.stat(self.path / MARKER)
            return not self.require_mount or os.path.ismount(self.path)
        except OSError:
            return False

    def free(self) -> int | None:
        try:
            return shutil.disk_usage(self.path).free
        except OSError:
            return None

    def open(self) -> bool:
        """Prepare the disk (marker, blobs/, tmp/) if its directory is there; whether it is usable."""
        if not self.path.is_dir() or (self.require_mount and not os.path.ismount(self.path)):
            return False
        try:
            marker = self.path / MARKER
            if not marker.exists():
                marker.write_text("a disk of cachetap's blob store: objects under blobs/, downloads under tmp/\n")
            BlobStore(self.path)
        except OSError as exc:
            log.warning("disk %s cannot be prepared (%s): its objects are not served", self.path, exc.strerror or exc)
            return False
        return self.usable()


class Disks:
    """The blob stores of this node by disk label; `store(label)` is None for a disk not usable now."""

    def __init__(self, disks: Iterable[Disk]) -> None:
        self.disks = {d.label: d for d in disks}
        if not self.disks:
            raise ValueError("a cache node needs at least one disk")
        self.default = next(iter(self.disks))  # holds entries recorded before disks were (entries.disk NULL)
        for disk in self.disks.values():
            if not disk.open():
                log.warning("disk %s is not there%s: its objects are not served and none are placed on it; "
                            "mount or create it, or remove it from cache_dirs", disk.path,
                            " (not a mount point)" if disk.require_mount and disk.path.is_dir() else "")
        self._stores: dict[str, BlobStore] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Disks:
        return cls(Disk(str(d.path), Path(d.path), d.weight, d.disk_quota,
                        settings.min_free_bytes if d.min_free_bytes is None else d.min_free_bytes, d.require_mount)
                   for d in settings.disks)

    @classmethod
    def single(cls, root: Path | str, min_free: int = 0) -> Disks:
        return cls([Disk(str(root), Path(root), min_free=min_free)])

    def __iter__(self) -> Iterator[Disk]:
        return iter(self.disks.values())

    def label_of(self, disk: str | None) -> str:
        return self.default if disk is None else disk

    def store(self, disk: str | None) -> BlobStore | None:
        """The blob store of the disk an entry names (None: its default), or None when that disk is
        unknown to this node or not usable now."""
        found = self.disks.get(self.label_of(disk))
        if found is None or not found.usable():
            return None
        store = self._stores.get(found.label)
        if store is None:
            store = self._stores[found.label] = BlobStore(found.path)
        return store

    def place(self, key: str, size: int | None) -> tuple[str, BlobStore]:
        """The disk for a new object: the first by `key`'s weighted ranking that is usable and keeps
        its min_free with `size` more bytes; NoDisk when none does."""
        order = ranking(key, [Member(d.label, d.weight) for d in self.disks.values()])
        for label in order:
            disk, store = self.disks[label], self.store(label)
            if store is None:
                continue
            free = disk.free()
            if free is None or free - (size or 0) < disk.min_free:
                continue
            return label, store
        raise NoDisk(f"no disk has {size or 0} bytes to spare above its min_free_bytes "
                     f"({', '.join(str(d.path) for d in self.disks.values())}): add a disk or lower the quota")


def as_disks(blobs: Disks | BlobStore, min_free: int = 0) -> Disks:
    """Disks as they are, or one blob store as a node with that single disk."""
    return blobs if isinstance(blobs, Disks) else Disks.single(blobs.root, min_free)
