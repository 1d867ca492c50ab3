"""Content-addressed blob store: complete, verified files named by their BLAKE3 digest.

Layout under `root` (settings.cache_dir):

    blobs/ab/cd/<digest>   published objects, never modified after publish
    tmp/<key>.part         downloads in progress (same filesystem, so publish is an atomic rename)

A path is only ever derived from a validated digest or a validated cache key, never from a URL,
so nothing can be written outside `root` whatever arrives on the wire.

The content address ("digest") is the 32-byte BLAKE3 hash of the content as 64 lower-case hex chars.
BLAKE3 rather than SHA-256 because the hash runs beside the download and must keep up with it: on
these CPUs (no SHA extensions) SHA-256 manages ~290 MB/s, slower than a 16-connection aria2
download, while the `blake3` package hashes at ~4 GB/s on one thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3

from cachetap.core.keys import KEY_PATTERN

CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BadDigest(ValueError):
    """A digest or key that is not exactly the expected lower-case hex string."""


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise BadDigest(f"not a content digest (64 lower-case hex chars): {digest!r:.80}")
    return digest


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise BadDigest(f"not a cache key (32 lower-case hex chars): {key!r:.80}")
    return key


def file_digest(path: Path, chunk: int = CHUNK) -> str:
    """BLAKE3 digest (the content address) of a file, read in chunks so memory does not grow with the file."""
    hasher = blake3.blake3()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            hasher.update(view[:n])
    return hasher.hexdigest()


class ShortFile(OSError):
    """The file ended before the prefix it was said to hold."""


class PrefixHasher:
    """BLAKE3 digest of a file that is still being written, front to back, on a background thread.

    The writer says how far the file is final with `advance(upto)`; the thread hashes up to there
    (blake3 updates of a chunk and file reads release the GIL, so this runs beside the caller). `finish(total)` waits
    for the whole file. Memory stays at one chunk whatever the size.
    """

    def __init__(self, path: Path, chunk: int = CHUNK) -> None:
        self.path = Path(path)
        self.chunk = chunk
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._digest = blake3.blake3()
        self.done = 0
        self._target = 0
        self._stopping = False
        self._error: BaseException | None = None

    def advance(self, upto: int) -> None:
        with self._cond:
            if upto <= self._target:
                return
            self._target = upto
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"digest:{self.path.name}", daemon=True)
            self._thread.start()

    def reset(self) -> None:
        """Start over from byte 0 (the file may have been rewritten)."""
        self.close()
        self._reset_state()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self, total: int) -> str:
        """The digest of the first `total` bytes, which must be the whole file."""
        self.advance(total)
        with self._cond:
            while self.done < total and self._error is None and self._thread is not None:
                self._cond.wait()
        self.close()
        if self._error is not None:
            raise self._error
        size = self.path.stat().st_size
        if self.done != total or size != total:
            raise ShortFile(f"{self.path.name}: hashed {self.done}, file has {size}, expected {total} bytes")
        return self._digest.hexdigest()

    def _run(self) -> None:
        buf = bytearray(self.chunk)
        view = memoryview(buf)
        try:
            with open(self.path, "rb", buffering=0) as fh:
                fh.seek(self.done)
                while True:
                    with self._cond:
                        while self.done >= self._target and not self._stopping:
                            self._cond.wait()
                        if self._stopping:
                            return
                        upto = self._target
                    while self.done < upto and not self._stopping:
                        n = fh.readinto(view[:min(self.chunk, upto - self.done)])
                        if not n:
                            raise ShortFile(f"{self.path.name}: EOF at {self.done} of {upto}")
                        self._digest.update(view[:n])
                        with self._cond:
                            self.done += n
                            self._cond.notify_all()
        except BaseException as exc:  # handed to finish(), which the caller waits on
            with self._cond:
                self._error = exc
                self._cond.notify_all()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_locked(path: Path) -> int | None:
    """The existing blob at `path`, share-locked, or None when there is none (or it was just deleted:
    the lock waits out a running removal, and an unlinked inode has no links left)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    if os.fstat(fd).st_nlink == 0:
        os.close(fd)
        return None
    return fd


class BlobHold:
    """A shared lock on a published blob, held until the catalog row of the key it was published for
    names it: a blob is shared by every key with the same content, and without the lock an eviction of
    another key could delete it between this publish and that row's update (see remove_unreferenced)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        self.release()


class BlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.temp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)

    def new_temp_name(self, key: str) -> Path:
        """The temp path for a download of `key`; stable per key so a killed download can resume."""
        return self.temp_dir / f"{check_key(key)}.part"

    def path(self, digest: str) -> Path:
        digest = check_digest(digest)
        return self.blob_dir / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def publish(self, temp: Path, digest: str) -> Path:
        """Move a complete, verified temp file to its content address (durably, atomically).

        Idempotent: if the blob exists already the temp file is dropped and the existing path returned.
        """
        path, hold = self.publish_held(temp, digest)
        hold.release()
        return path

    def publish_held(self, temp: Path, digest: str) -> tuple[Path, BlobHold]:
        """publish(), and a shared lock on the blob: release it once the catalog row names the blob."""
        final = self.path(digest)
        temp = Path(temp)
        if temp.resolve().parent != self.temp_dir.resolve():
            raise ValueError(f"publish only takes files from {self.temp_dir}, got {temp}")
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # on the inode: it stays locked through the rename
            existing = _open_locked(final)
            if existing is not None:
                os.close(fd)
                temp.unlink(missing_ok=True)
                return final, BlobHold(existing)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.fsync(fd)  # the data must be on disk before the name is
            os.chmod(temp, 0o600)
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except BaseException:
            os.close(fd)
            raise
        return final, BlobHold(fd)

    def remove_unreferenced(self, digest: str, unreferenced: Callable[[], bool]) -> bool:
        """Delete a blob no row names, unless a publish holds it (BlobHold): under an exclusive lock,
        `unreferenced()` is asked again (a row may have named it meanwhile) before the unlink."""
        final = self.path(digest)
        try:
            fd = os.open(final, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self.remove(digest)  # a symlink is no blob of ours: unlinked, never followed
            raise
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # being published for another key right now: it stays
            if not unreferenced():
                return False
            return self.remove(digest)
        finally:
            os.close(fd)

    def remove(self, digest: str) -> bool:
        final = self.path(digest)
        try:
            final.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(final.parent)
        return True

    def iter_blobs(self) -> Iterator[tuple[str, int]]:
        """(digest, size) of every published blob; stray files with other names are skipped."""
        for first in sorted(self.blob_dir.iterdir()):
            if not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for f in sorted(second.iterdir()):
                    name = f.name
                    if (_DIGEST.fullmatch(name) and name[:2] == first.name and name[2:4] == second.name
                            and f.is_file()):
                        yield name, f.stat().st_size

    def iter_temp(self) -> Iterator[Path]:
        """Temp files (and aria2 control files) for the reconcile pass to age out."""
        yield from sorted(self.temp_dir.iterdir())
