"""A real HTTP/1.1 origin on 127.0.0.1 for tests and benches, with switches for misbehaviour.

    with Origin() as origin:
        origin.add("/big.iso", Resource(size=8 << 20, rate=20_000_000))
        url = origin.url("/big.iso")
        expected = origin.expected_digest("/big.iso")   # the blob store's BLAKE3 address

Generated content is a seeded pseudo-random pattern repeated with a prime period, so any byte can
be produced from its offset (Range is cheap, memory does not grow with size) and a shifted or
misplaced range never matches by accident. Files can also be served from a directory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import blake3

SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; Python names it from 3.12 on
UNLIMITED_PACING = 0xFFFFFFFF
PATTERN_LEN = 1_000_003  # prime: a range served from the wrong offset never lines up with the pattern
CHUNK = 64 << 10
BASE_MTIME = 1_700_000_000


@lru_cache(maxsize=32)
def _pattern(seed: str) -> memoryview:
    data = random.Random(seed).randbytes(PATTERN_LEN)
    return memoryview(data + data[:CHUNK])  # any chunk <= CHUNK is one slice, wrap included


def generated_chunks(seed: str, start: int, end: int, chunk: int = CHUNK):
    """Yield the generated content for bytes [start, end) in chunks of at most `chunk`."""
    pattern = _pattern(seed)
    chunk = min(chunk, CHUNK)
    pos = start
    while pos < end:
        n = min(chunk, end - pos)
        off = pos % PATTERN_LEN
        yield pattern[off:off + n]
        pos += n


def generated_digest(seed: str, size: int) -> str:
    """BLAKE3 digest (the blob store's content address) of the generated content, chunk by chunk."""
    hasher = blake3.blake3()
    for piece in generated_chunks(seed, 0, size):
        hasher.update(piece)
    return hasher.hexdigest()


def _file_digest(path: Path) -> str:
    hasher = blake3.blake3()
    with open(path, "rb") as fh:
        while piece := fh.read(1 << 20):
            hasher.update(piece)
    return hasher.hexdigest()


@dataclass
class Resource:
    """One path's content and behaviour. Exactly one of `size` (generated) or `file`."""

    size: int | None = None
    file: Path | None = None
    seed: str | None = None            # generated content seed (default: the path)
    status: int = 200                  # anything but 200: answer this status with a short body
    content_type: str = "application/octet-stream"
    etag: bool = True
    last_modified: bool = True
    accept_ranges: bool = True
    cache_control: str | None = None   # e.g. "no-store", "private"
    content_md5: bool | str = False    # True: send the content's Content-MD5; a str: send that (a lie)
    rate: int | None = None            # bytes/s per connection (None: the origin's default)
    delay: float = 0.0                 # seconds before answering
    drop_after: int | None = None      # close the connection when the body reaches this object offset
    extra_length: int = 0              # announce this many bytes more than exist (lying Content-Length)
    change_after: int | None = None    # content and ETag change once this many requests were answered
    version: int = 0                   # bumped by change_after or Origin.change()
    mtime: int | None = None           # Last-Modified in epoch seconds (default: a fixed date in 2023)


@dataclass
class PathStats:
    methods: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    body_bytes: int = 0
    ranges: list[str | None] = field(default_factory=list)   # Range header of each GET (None: none)
    hosts: list[str | None] = field(default_factory=list)
    requests: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # aria2 opens 16 connections at once; a short backlog costs a 1 s SYN retry
    origin: Origin


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # tests read counters, not logs
        pass

    def do_GET(self) -> None:
        self._answer(head_only=False)

    def do_HEAD(self) -> None:
        self._answer(head_only=True)

    def _answer(self, head_only: bool) -> None:
        origin = self.server.origin
        target = self.path
        path = unquote(urlsplit(target).path if "://" in target else target.split("?", 1)[0])
        stats = origin._stats_for(path)
        with origin._lock:
            stats.requests += 1
            stats.methods[self.command] += 1
            stats.hosts.append(self.headers.get("Host"))
            if not head_only:
                stats.ranges.append(self.headers.get("Range"))
        res = origin._lookup(path)
        if res is not None and res.delay:
            time.sleep(res.delay)
        if res is None or res.status != 200:
            self._short(404 if res is None else res.status, stats, head_only)
            return
        version = origin._version_for(res)
        seed = _seed(res, path, version)
        size = res.file.stat().st_size if res.file is not None else res.size
        assert size is not None
        announced = size + res.extra_length
        etag = _etag(res, seed)
        mtime = _mtime(res, version)
        headers = {"Content-Type": res.content_type}
        if res.accept_ranges:
            headers["Accept-Ranges"] = "bytes"
        if res.etag:
            headers["ETag"] = etag
        if res.last_modified:
            headers["Last-Modified"] = formatdate(mtime, usegmt=True)
        if res.cache_control:
            headers["Cache-Control"] = res.cache_control
        if res.content_md5:
            headers["Content-MD5"] = res.content_md5 if isinstance(res.content_md5, str) else origin._md5(res, seed)
        if _not_modified(self.headers, res, etag, mtime):
            self._head(304, headers, stats, None)
            return
        span = _range(self.headers, res, etag, announced)
        if span == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{announced}"
            self._head(416, headers, stats, 0)
            return
        if span is None:
            start, end, status = 0, announced, 200
        else:
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{announced}"
        self._head(status, headers, stats, end - start)
        if not head_only:
            self._body(res, seed, start, end, size, stats)

    def _head(self, status: int, headers: dict[str, str], stats: PathStats, length: int | None) -> None:
        with self.server.origin._lock:
            stats.statuses[status] += 1
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _short(self, status: int, stats: PathStats, head_only: bool) -> None:
        body = f"{status} from the test origin\n".encode()
        self._head(status, {"Content-Type": "text/plain"}, stats, len(body))
        if not head_only:
            self.wfile.write(body)

    def _body(self, res: Resource, seed: str, start: int, end: int, size: int, stats: PathStats) -> None:
        origin = self.server.origin
        stop = min(end, size)
        if res.drop_after is not None:
            stop = min(stop, res.drop_after)
        rate = res.rate if res.rate is not None else origin.rate
        chunk = CHUNK if not rate else max(4096, min(CHUNK, rate // 50))
        began = time.monotonic()
        sent = 0
        # The kernel paces the connection from its first byte (TCP pacing, Linux >= 4.13); a
        # limit kept in user space alone lets the socket buffer burst ahead of it.
        self._pace(rate)
        try:
            if res.file is not None and stop > start:
                sent = self._send_file(res.file, start, stop, stats)
            for piece in _content(res, seed, start + sent, max(start + sent, stop), chunk):
                if origin._stopping.is_set():
                    break
                self.wfile.write(piece)
                sent += len(piece)
                with origin._lock:
                    stats.body_bytes += len(piece)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if start + sent < end:  # dropped, lying or stopping: the client must see the connection end
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pace(self, rate: int | None) -> None:
        with contextlib.suppress(OSError):  # not TCP, or a kernel without pacing: user-space limit only
            value = min(rate, UNLIMITED_PACING - 1) if rate else UNLIMITED_PACING
            self.connection.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("=I", value))

    def _send_file(self, path: Path, start: int, stop: int, stats: PathStats) -> int:
        """sendfile() a file's range (zero copy, so the origin keeps up with many fast connections)."""
        self.wfile.flush()
        sent = 0
        with open(path, "rb") as fh:
            while start + sent < stop and not self.server.origin._stopping.is_set():
                n = os.sendfile(self.connection.fileno(), fh.fileno(), start + sent, min(stop - start - sent, 1 << 20))
                if n == 0:
                    break  # the file shrank; the caller ends the connection
                sent += n
                with self.server.origin._lock:
                    stats.body_bytes += n
        return sent


def _seed(res: Resource, path: str, version: int) -> str:
    base = res.seed or path
    return base if version == 0 else f"{base}#v{version}"


def _etag(res: Resource, seed: str) -> str:
    if res.file is not None:
        st = res.file.stat()
        return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    return '"' + hashlib.sha1(seed.encode()).hexdigest()[:16] + '"'


def _mtime(res: Resource, version: int) -> int:
    if res.file is not None:
        return int(res.file.stat().st_mtime)
    return (BASE_MTIME if res.mtime is None else res.mtime) + 3600 * version


def _content(res: Resource, seed: str, start: int, end: int, chunk: int):
    if res.file is None:
        yield from generated_chunks(seed, start, end, chunk)
        return
    with open(res.file, "rb") as fh:
        fh.seek(start)
        pos = start
        while pos < end and (data := fh.read(min(chunk, end - pos))):
            pos += len(data)
            yield data


def _not_modified(headers, res: Resource, etag: str, mtime: int) -> bool:
    inm = headers.get("If-None-Match")
    if inm is not None:
        return res.etag and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")])
    ims = headers.get("If-Modified-Since")
    if ims is not None and res.last_modified:
        try:
            return mtime <= parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
    return False


def _range(headers, res: Resource, etag: str, length: int) -> tuple[int, int] | str | None:
    """(start, end_exclusive) for one satisfiable byte range, "unsatisfiable", or None for 200."""
    value = headers.get("Range")
    if value is None or not res.accept_ranges:
        return None
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # multiple ranges: a full 200 is a valid answer
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, length - n), length
        start = int(first)
        end = int(last) + 1 if last else length
    except ValueError:
        return None
    if start < 0 or end <= start and last:
        return None
    if start >= length:
        return "unsatisfiable"
    return start, min(end, length)


class Origin:
    """Threaded HTTP/1.1 origin on a random port of 127.0.0.1 (or of each of `addresses`, all on the
    same port: a host whose name resolves to several addresses); start()/stop() or `with`."""

    def __init__(self, directory: Path | str | None = None, rate: int | None = None,
                 addresses: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.directory = Path(directory).resolve() if directory is not None else None
        self.rate = rate
        self.addresses = tuple(addresses)
        self._servers: list[_Server] = []
        self._resources: dict[str, Resource] = {}
        self._stats: dict[str, PathStats] = {}
        self._md5s: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # --- content ------------------------------------------------------------------------------
    def add(self, path: str, resource: Resource) -> str:
        if (resource.size is None) == (resource.file is None):
            raise ValueError("a Resource needs exactly one of size or file")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        with self._lock:
            self._resources[path] = resource
        return self.url(path) if self._server else path

    def change(self, path: str) -> None:
        """Change a generated object's content and ETag now (as if re-published upstream)."""
        with self._lock:
            self._resources[path].version += 1

    def expected_digest(self, path: str) -> str:
        """The content address (BLAKE3, as BlobStore names it) of what `path` serves now."""
        res = self._resources[path]
        if res.file is not None:
            return _file_digest(res.file)
        assert res.size is not None
        return generated_digest(_seed(res, path, res.version), res.size)

    def stats(self, path: str) -> PathStats:
        return self._stats_for(path)

    def _stats_for(self, path: str) -> PathStats:
        with self._lock:
            return self._stats.setdefault(path, PathStats())

    def _lookup(self, path: str) -> Resource | None:
        with self._lock:
            res = self._resources.get(path)
        if res is not None or self.directory is None:
            return res
        candidate = (self.directory / path.lstrip("/")).resolve()
        if candidate.is_relative_to(self.directory) and candidate.is_file():
            return Resource(file=candidate)
        return None

    def _version_for(self, res: Resource) -> int:
        with self._lock:
            current = res.version
            if res.change_after is not None:
                res.change_after -= 1
                if res.change_after < 0:
                    res.version += 1
                    res.change_after = None
                    current = res.version
            return current

    def _md5(self, res: Resource, seed: str) -> str:
        with self._lock:
            if seed not in self._md5s:
                digest = hashlib.md5()
                for piece in _content(res, seed, 0, res.size if res.file is None else res.file.stat().st_size, CHUNK):
                    digest.update(piece)
                self._md5s[seed] = base64.b64encode(digest.digest()).decode()
            return self._md5s[seed]

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("origin not started")
        return self._server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> Origin:
        self._stopping.clear()
        port = 0
        for address in self.addresses:  # the first picks a free port, the others share it
            server = _Server((address, port), _Handler)
            server.origin = self
            port = server.server_address[1]
            self._servers.append(server)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"origin:{address}:{port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._server = self._servers[0]
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # in-flight bodies end at their next chunk
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads, self._server = [], [], None

    def __enter__(self) -> Origin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m cachetap.testing.origin --dir D [--rate BYTES_PER_S]`: serve D in a process of its own
    (benches: the origin then shares no interpreter lock with what it is compared against)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--rate", type=int, default=None, help="bytes/s per connection")
    parser.add_argument("--address", action="append", help="listen here (repeat for several; default 127.0.0.1)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Origin(args.dir, rate=args.rate, addresses=tuple(args.address or ("127.0.0.1",))) as origin:
        print(f"listening on {origin.url('/')}", flush=True)
        while not stop.wait(1.0):
            pass


if __name__ == "__main__":
    main()
