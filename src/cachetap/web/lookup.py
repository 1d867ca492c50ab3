"""What the cache server may serve: a small protocol and its two real implementations.

`CatalogLookup` adapts the catalog and blob store (production); `DirectoryLookup` serves a plain
directory tree (`serve --dir`, and the server's own tests). The server only ever hands a key to
a lookup, so no part of a request path can reach the file system.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cachetap.core.lifecycle import EntryState
from cachetap.core.semantics import parse_http_date, valid_etag

if TYPE_CHECKING:  # a directory server (python -m cachetap.web) loads no database code
    from cachetap.store.blobs import BlobStore
    from cachetap.store.disks import Disks
    from cachetap.store.catalog import Catalog, EntryView

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedObject:
    path: Path
    size: int
    filename: str               # original file name, for Content-Disposition
    content_type: str
    etag: str                   # quoted entity tag, e.g. '"abc"' or 'W/"abc"'
    last_modified: float | None  # epoch seconds of the origin's Last-Modified, None if unknown
    url: str | None             # original URL: where to send the client if the file is gone
    mtime: float                # the local file's mtime (Last-Modified when the origin gave none)
    beneath: Path | None = None  # a served directory the path must stay inside (see open_object)
    refreshed_at: float | None = None  # a revalidation confirmed it then, no answer has taken that yet
    directory: OpenDirectory | None = None  # `beneath`, opened once by the lookup that scanned it


class OpenDirectory:
    """A served directory held open, so each request opens only what lies below it (nginx opens one
    file per request; opening the directory too cost two more system calls per answer). Objects keep
    it alive: its descriptor is closed only when nothing can open through it any more."""

    __slots__ = ("fd",)

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)

    def __del__(self) -> None:
        fd = getattr(self, "fd", -1)  # unset when the open in __init__ failed
        if fd >= 0:
            os.close(fd)


def open_object(obj: ServedObject) -> int:
    """Open the object's file read-only (a file descriptor) without following any symlink.

    Below a served directory every path component is opened on its own with O_NOFOLLOW, so a
    directory swapped for a symlink after the scan cannot lead outside; blob paths are ours alone,
    so only their last component needs it.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    if obj.beneath is None:
        return os.open(obj.path, flags)
    # String work, not PurePath.relative_to (a third of this function's time on the hot path).
    root, path = str(obj.beneath).rstrip("/") + "/", str(obj.path)
    if not path.startswith(root):
        raise ValueError(f"{path!r} is not below {str(obj.beneath)!r}")
    *dirs, name = path[len(root):].split("/")
    if obj.directory is not None and not dirs:
        return os.open(name, flags, dir_fd=obj.directory.fd)
    if obj.directory is not None:
        fd = os.dup(obj.directory.fd)
    else:
        fd = os.open(obj.beneath, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for part in dirs:
            inner = os.open(part, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)


@runtime_checkable
class ObjectLookup(Protocol):
    def find(self, key: str) -> ServedObject | None:
        """The object to serve for key, or None (unknown, not ready, expired, file missing)."""

    def origin_url(self, key: str) -> str | None:
        """The original URL of key if known, to redirect a client the cache cannot serve."""

    def record_hit(self, key: str, nbytes: int = 0) -> None:
        """Count one request answered from the cache with `nbytes` of body; must be cheap (called on
        the event loop)."""

    def forget(self, key: str) -> None:
        """Drop what is cached for key: the file on disk no longer matches what find() returned."""

    def miss_reason(self, key: str) -> str:
        """Why find(key) gave None, for the access log: "stale" (expired, awaiting revalidation) or
        "not_servable" (unknown, not downloaded yet, file missing)."""

    def take_refresh(self, key: str, refreshed_at: float) -> bool:
        """True for the one answer, across processes, that is the first after the revalidation at
        `refreshed_at` (logged TCP_REFRESH_HIT); may query the catalog, so call it once per answer."""

    def available(self) -> bool:
        """Whether this lookup can tell what is servable now (`/healthz` says 503 otherwise, so
        captures stop sending clients here); cheap, called per health check."""


def directory_key(relative_path: str) -> str:
    """Key of a file in a served directory: sha256 prefix of its '/'-separated relative path."""
    return hashlib.sha256(relative_path.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class DirectoryLookup:
    """Serve the regular files below `root` (no symlinks, no dot files) under /c/<key>/<name>.

    `origin_base`, when given, is the URL the tree mirrors: a file that vanished is redirected to
    origin_base + its relative path. The index is rebuilt on a miss, at most every `rescan` s.
    """

    def __init__(self, root: Path | str, origin_base: str | None = None, rescan: float = 1.0) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: not a directory")
        self.origin_base = origin_base
        self.rescan = rescan
        self.hits: Counter[str] = Counter()
        # find() results for `rescan` seconds: a stat and its Path work per request cost the hot
        # path ~20% of a small answer; the server's fstat of the opened file catches a change.
        self._found: dict[str, tuple[float, ServedObject]] = {}
        self._index: dict[str, str] = {}
        self._scanned_at = float("-inf")
        self._scanning = False
        self._lock = threading.Lock()
        self._scan()

    def _scan(self) -> None:
        directory = OpenDirectory(self.root)  # the tree this scan indexes, also for opening its files
        index: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = Path(dirpath, name)
                if name.startswith(".") or full.is_symlink() or not full.is_file():
                    continue
                relative = full.relative_to(self.root).as_posix()
                index[directory_key(relative)] = relative
        with self._lock:
            self._index = index
            self._directory = directory
            self._scanned_at = time.monotonic()

    def entries(self) -> dict[str, str]:
        """key -> relative path of every file currently indexed."""
        with self._lock:
            return dict(self._index)

    def url_path(self, relative_path: str) -> str:
        from cachetap.core.urls import object_path
        return object_path(directory_key(relative_path), relative_path.rsplit("/", 1)[-1])

    def _relative(self, key: str) -> str | None:
        """The indexed path of key. An unknown key starts a rescan (at most every `rescan` s) in a
        thread and is unknown for now: walking a big tree on the event loop would stall every client."""
        relative = self._index.get(key)
        if relative is None and time.monotonic() - self._scanned_at >= self.rescan:
            with self._lock:
                if self._scanning:
                    return None
                self._scanning = True
                self._scanned_at = time.monotonic()
            threading.Thread(target=self._rescan, name="directory-rescan", daemon=True).start()
        return relative

    def _rescan(self) -> None:
        try:
            self._scan()
        except OSError as exc:
            log.warning("rescanning %s failed: %s", self.root, exc)
        finally:
            self._scanning = False

    def find(self, key: str) -> ServedObject | None:
        now = time.monotonic()
        found = self._found.get(key)
        if found is not None and found[0] > now:
            return found[1]
        obj = self._stat(key)
        if obj is None:
            self._found.pop(key, None)
        else:
            self._found[key] = (now + self.rescan, obj)
        return obj

    def forget(self, key: str) -> None:
        self._found.pop(key, None)

    def _stat(self, key: str) -> ServedObject | None:
        relative = self._relative(key)
        if relative is None:
            return None
        path = self.root / relative
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        if not (st.st_mode & 0o170000 == 0o100000):  # regular file only
            return None
        name = relative.rsplit("/", 1)[-1]
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        # The same shape as nginx's ETag: mtime and size in hex.
        etag = f'"{int(st.st_mtime):x}-{st.st_size:x}"'
        return ServedObject(path, st.st_size, name, content_type, etag, st.st_mtime,
                            self._origin(relative), st.st_mtime, beneath=self.root, directory=self._directory)

    def _origin(self, relative: str) -> str | None:
        if not self.origin_base:
            return None
        return self.origin_base.rstrip("/") + "/" + relative

    def origin_url(self, key: str) -> str | None:
        relative = self._relative(key)
        return self._origin(relative) if relative is not None else None

    def record_hit(self, key: str, nbytes: int = 0) -> None:
        self.hits[key] += 1

    def miss_reason(self, key: str) -> str:
        return "not_servable"  # plain files never go stale

    def take_refresh(self, key: str, refreshed_at: float) -> bool:
        return False

    def available(self) -> bool:
        return True


PROBE_INTERVAL = 1.0  # seconds between catalog reads while it is down, to notice it is back
PROBE_KEY = "0" * 32


class CatalogLookup:
    """Ready, unexpired catalog entries whose blob is on disk.

    Catalog rows are cached for `ttl` seconds (negative answers too) so that a busy object costs
    no query per request; hits are summed in memory and written by a background thread every
    `flush_interval` seconds with `catalog.add_hits(counts, now, served_bytes)`, never one write per request.
    A cache miss queries the catalog on the caller's thread: one primary-key read.
    """

    def __init__(self, catalog: Catalog, blobs: Disks | BlobStore, ttl: float = 1.0, flush_interval: float = 5.0,
                 max_cached: int = 10_000) -> None:
        self.catalog = catalog
        from cachetap.store.disks import as_disks

        self.disks = as_disks(blobs)  # every disk of this node; an entry names the one holding it
        self.ttl = ttl
        self.flush_interval = flush_interval
        self.max_cached = max_cached
        self._cache: OrderedDict[str, tuple[float, Any, ServedObject | None]] = OrderedDict()
        self._pending: Counter[str] = Counter()
        self._refresh_asked: dict[tuple[str, float], None] = {}  # insertion-ordered, bounded
        self._bytes: Counter[str] = Counter()  # body bytes of those hits (the console's bytes saved)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._pid = os.getpid()
        self.catalog_failing = False  # the last catalog read failed and none succeeded since
        self._next_probe = 0.0

    def _check_fork(self) -> None:
        # Worker processes are forked: threads and pooled DB connections do not survive a fork.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._flusher = None
        self._pending.clear()
        self._bytes.clear()
        self._cache.clear()
        engine = getattr(self.catalog, "engine", None)
        if engine is not None and hasattr(engine, "dispose"):
            engine.dispose(close=False)

    def _entry(self, key: str) -> tuple[Any, ServedObject | None]:
        self._check_fork()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        try:
            entry = self.catalog.get(key)
        except Exception as exc:
            # The catalog is down: nothing can be shown servable, but the client must still reach its
            # download (fail open). The request falls back to its signed origin hint, and
            # /healthz answers 503 until the catalog is back, so captures stop redirecting here.
            if not self.catalog_failing:
                log.warning("catalog unreachable, redirected clients go back to their origin: %s", exc)
            self.catalog_failing = True
            return None, None  # not cached: the next request asks the catalog again
        if self.catalog_failing:
            log.warning("catalog reachable again")
            self.catalog_failing = False
        obj = self._served(key, entry)
        self._cache[key] = (now + self.ttl, entry, obj)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return entry, obj

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def find(self, key: str) -> ServedObject | None:
        entry, obj = self._entry(key)
        if obj is None or _expired(entry):
            return None
        return obj

    def miss_reason(self, key: str) -> str:
        entry, obj = self._entry(key)
        if self.catalog_failing:
            return "catalog_unavailable"
        return "stale" if obj is not None and _expired(entry) else "not_servable"

    def available(self) -> bool:
        """False while the catalog fails; asks it again (one primary-key read) at most every second."""
        if not self.catalog_failing:
            return True
        now = time.monotonic()
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL
            self._entry(PROBE_KEY)
        return not self.catalog_failing

    def take_refresh(self, key: str, refreshed_at: float) -> bool:
        """One conditional UPDATE per revalidation and process: rows are cached for `ttl`, so the
        answers after the first see the same `refreshed_at` and are not asked again."""
        if (key, refreshed_at) in self._refresh_asked:
            return False
        self._refresh_asked[(key, refreshed_at)] = None
        while len(self._refresh_asked) > self.max_cached:
            self._refresh_asked.pop(next(iter(self._refresh_asked)))
        try:
            return self.catalog.take_refresh(key, refreshed_at)
        except Exception as exc:  # the catalog being down must never break serving: a plain hit
            log.warning("could not take the refresh of %s: %s", key, exc)
            return False

    def _served(self, key: str, entry: EntryView | None) -> ServedObject | None:
        """The object a ready entry serves, or None; built once per cached row (stat included)."""
        if entry is None or entry.state != EntryState.READY or not entry.blob:
            return None
        store = self.disks.store(entry.disk)
        if store is None:  # its disk failed or was removed: the client goes to the origin
            return None
        path = Path(store.path(entry.blob))
        try:
            st = path.stat()
        except OSError:
            return None
        if entry.size is not None and st.st_size != entry.size:
            log.warning("blob %s of %s has %d bytes, catalog says %d: not served",
                        entry.blob, key, st.st_size, entry.size)
            return None
        etag = entry.etag if valid_etag(entry.etag, obs_text=False) else f'"{entry.blob[:32]}"'
        return ServedObject(path, st.st_size, entry.filename or "download",
                            entry.content_type or "application/octet-stream", etag,
                            _epoch(entry.last_modified), entry.url, st.st_mtime,
                            refreshed_at=entry.refreshed_at)

    def origin_url(self, key: str) -> str | None:
        entry, _ = self._entry(key)
        return entry.url if entry is not None else None

    def record_hit(self, key: str, nbytes: int = 0) -> None:
        self._check_fork()
        with self._lock:
            self._pending[key] += 1
            self._bytes[key] += nbytes
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="hit-flusher", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._pending = dict(self._pending), Counter()
            sent, self._bytes = dict(self._bytes), Counter()
        if not counts:
            return
        try:
            self.catalog.add_hits(counts, time.time(), served_bytes=sent)
        except Exception:  # the catalog being down must never break serving
            log.exception("could not record %d served hits; they are dropped", sum(counts.values()))

    def close(self) -> None:
        self._stop.set()
        self.flush()


def _expired(entry: Any) -> bool:
    return entry.expires_at is not None and entry.expires_at <= time.time()


def _epoch(value: Any) -> float | None:
    """Catalog Last-Modified as epoch seconds; it may be stored as a number or an HTTP-date."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return parse_http_date(str(value))
