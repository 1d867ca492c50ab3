"""The cache server: answers GET/HEAD for /c/<key>/<name> from local files, bodies via sendfile.

Hand-written minimal HTTP/1.1 on an asyncio Protocol (web/connection.py) rather than a framework: the hot path must hand
the file to the kernel with sendfile (zero copy, memory independent of file size and client
count), while ASGI/WSGI frameworks read bodies into Python buffers and copy them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

from cachetap.core.accesslog import HIT, IMS_HIT, MISS, REFRESH_HIT
from cachetap.core.semantics import (UNSATISFIABLE, ByteRange, not_modified, parse_range, range_allowed,
                                     safe_location)
from cachetap.core.urls import object_key, origin_hint
from cachetap.logs import AccessLog
from cachetap.web import responses as resp
from cachetap.web.connection import SENDING, Answer, Connection
from cachetap.web.limits import OUT_OF_DESCRIPTORS, ConnectionCaps, QuietLog, loop_error_handler
from cachetap.web.lookup import ObjectLookup, ServedObject, open_object
from cachetap.web.metrics import ServeMetrics
from cachetap.web.request import Request

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 64 * 1024
FIXED_FIELDS_KEPT = 1024  # objects whose constant answer fields are kept (about a kilobyte each)


class OpenFile:
    """A file descriptor with the two methods a body needs (an io.FileIO costs one more fstat and
    more Python work per request)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    __del__ = close  # as a FileIO does: an answer dropped on an error path leaks no descriptor


class CacheServer:
    """One event loop serving one listening socket.

    Tests: `CacheServer(lookup).start()` runs it in a thread on a free port (`.port`), `.stop()`.
    Production: `workers.run_server()` runs `serve_forever()` in one or more worker processes.
    """

    def __init__(self, lookup: ObjectLookup, host: str = "127.0.0.1", port: int = 0, *,
                 head_timeout: float = 15.0, send_timeout: float = 60.0, grace: float = 10.0,
                 reuse_port: bool = False, strip_query_params: dict[str, list[str]] | None = None,
                 hint_secret: bytes | None = None, max_connections: int = 10_000,
                 max_connections_per_address: int = 512, access_log: AccessLog | None = None) -> None:
        self.lookup = lookup
        self.access_log = access_log
        self.strip_query_params = strip_query_params or {}  # to check origin hints against keys
        self.hint_secret = hint_secret  # signs origin hints (core/urls.py); None: hints are ignored
        self.host = host
        self.port = port
        self.head_timeout = head_timeout    # whole head within this (slowloris), also keep-alive idle
        self.send_timeout = send_timeout    # a client taking no data for this long is dropped
        self.grace = grace                  # seconds in-flight responses get on stop
        self.reuse_port = reuse_port
        self.metrics = ServeMetrics()
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.caps: ConnectionCaps | None = None   # made in serve_forever, under the limit then in force
        self.quiet = QuietLog()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connections: set[Connection] = set()
        self._sweep_every = 1.0
        self._sweeper: asyncio.TimerHandle | None = None
        self._stopping = False
        self._fixed: dict[int, tuple[ServedObject, resp.ObjectFields]] = {}
        # What one read from a client socket lands in (Connection.get_buffer): one per server, since the
        # loop hands it to the connection that read it before it reads again; input is bounded per
        # connection by its own buffer's limit (connection.INPUT_LIMIT).
        self.receive_buffer = memoryview(bytearray(RECEIVE_BUFFER_BYTES))

    # ---- lifecycle --------------------------------------------------------------------------

    async def serve_forever(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Listen, serve until stop_soon(), then finish in-flight responses within `grace`.

        `on_ready(port)` is called once the socket is bound and listening."""
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(loop_error_handler(self.quiet))
        self.caps = ConnectionCaps(self.max_connections, self.max_connections_per_address)
        self._stop_event = asyncio.Event()
        server = await self._loop.create_server(lambda: Connection(self), self.host, self.port,
                                                reuse_port=self.reuse_port or None, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._sweep_every = max(0.05, min(1.0, self.head_timeout / 4, self.send_timeout / 4))
        self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)
        self._ready.set()
        if on_ready is not None:
            on_ready(self.port)
        try:
            await self._stop_event.wait()
        finally:
            self._stopping = True
            server.close()
            # Connections between requests end now; answers under way get `grace` seconds.
            for connection in list(self._connections):
                if connection.state != SENDING:
                    connection.close()
            deadline = self._loop.time() + self.grace
            while any(c.state == SENDING for c in self._connections) and self._loop.time() < deadline:
                await asyncio.sleep(0.05)
            for connection in list(self._connections):
                if connection.state == SENDING:
                    connection.abort()  # grace is over
                else:
                    connection.close()
            self._sweeper.cancel()
            await server.wait_closed()

    def stop_soon(self) -> None:
        """Ask the server to stop; callable from any thread or a signal handler."""
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)

    def start(self) -> CacheServer:
        """Run in a daemon thread; return once the socket is bound."""
        def run() -> None:
            try:
                asyncio.run(self.serve_forever())
            except BaseException as exc:  # surfaced by start() or stop()
                self._error = exc
                self._ready.set()
        self._thread = threading.Thread(target=run, name=f"cache-server-{self.port}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_soon()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> CacheServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- connections (called by Connection) ------------------------------------------------------

    def opened(self, connection: Connection) -> None:
        self._connections.add(connection)

    def closed(self, connection: Connection) -> None:
        self._connections.discard(connection)

    # ---- answers ------------------------------------------------------------------------------

    def _sweep(self) -> None:
        """End connections past their deadline (head, idle, send or linger), then look again soon."""
        now = self._loop.time()
        for connection in list(self._connections):
            connection.expire(now)
        self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)

    def answer(self, request: Request) -> Answer:
        """The answer to one parsed request (Connection sends it)."""
        keep_alive = request.keep_alive and not request.has_body and not self._stopping
        is_head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return Answer(resp.simple(405, b"only GET and HEAD\n", keep_alive, [("Allow", "GET, HEAD")]),
                          405, keep_alive)
        path = request.path
        if path == "/healthz":
            if not self.lookup.available():
                return Answer(resp.simple(503, b"catalog unavailable\n", keep_alive, with_body=not is_head), 503,
                              keep_alive)
            return Answer(resp.simple(200, b"ok", keep_alive, with_body=not is_head), 200, keep_alive)
        if path == "/metrics":
            body = self.metrics.exposition()
            return Answer(resp.simple(200, body, keep_alive, with_body=not is_head,
                                      content_type="text/plain; version=0.0.4; charset=utf-8"), 200, keep_alive)
        key = object_key(path)
        if key is None:
            return Answer(resp.simple(404, b"not found\n", keep_alive, with_body=not is_head), 404, keep_alive)
        for attempt in (1, 2):
            obj = self.lookup.find(key)
            if obj is None:
                hint = origin_hint(request.query, key, self.strip_query_params, self.hint_secret) if request.query else None
                return self._fall_back(key, hint, self.lookup.miss_reason(key), keep_alive, is_head, request)
            try:
                fd = open_object(obj)  # no symlink followed: one swapped in after the lookup is not ours
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:  # our limit, not the file: keep the key
                    self.quiet.event(f"cannot open cached files: {os.strerror(exc.errno)}")
                    return self._fall_back(key, obj.url, "out_of_descriptors", keep_alive, is_head, request)
                self.lookup.forget(key)
                return self._fall_back(key, obj.url, "file_missing", keep_alive, is_head, request)
            file = OpenFile(fd)
            st = os.fstat(fd)
            if st.st_size == obj.size and st.st_mtime == obj.mtime:
                break
            # The file changed since the lookup described it (lookups cache for a second): ask again.
            file.close()
            self.lookup.forget(key)
            if attempt == 2:
                return self._fall_back(key, obj.url, "size_changed", keep_alive, is_head, request)
        try:
            answer = self._object_answer(request, key, obj, keep_alive, is_head)
        except BaseException:
            file.close()
            raise
        answer.logged = (self._hit_tag(key, obj, answer.status, is_head), request.method, obj.url or request.target,
                         obj.content_type, None)
        if answer.length:
            answer.file = file  # Connection closes it when the body is out
        else:
            file.close()
        return answer

    def _hit_tag(self, key: str, obj: ServedObject, status: int, is_head: bool) -> str:
        """TCP_REFRESH_HIT for the first body sent after a revalidation confirmed the object (one
        catalog write per revalidation, only when an access log wants it), else TCP_HIT/TCP_IMS_HIT."""
        if status == 304:
            return IMS_HIT
        if (obj.refreshed_at is not None and not is_head and status in (200, 206) and self.access_log is not None
                and self.lookup.take_refresh(key, obj.refreshed_at)):
            return REFRESH_HIT
        return HIT

    def _object_answer(self, request: Request, key: str, obj: ServedObject, keep_alive: bool,
                       is_head: bool) -> Answer:
        headers = request.headers
        fixed = self._fixed_fields(obj)
        validators, etag, modified = fixed.validators, fixed.etag, fixed.modified
        if not_modified(headers, etag, modified):
            if not is_head:
                self.lookup.record_hit(key)
            return Answer(resp.head(304, validators, keep_alive), 304, keep_alive)
        wanted: ByteRange | None = None
        # Range is defined for GET only (RFC 9110 14.2); HEAD gets the 200 head.
        if not is_head and "range" in headers and range_allowed(headers.get("if-range"), etag, modified):
            chosen = parse_range(headers["range"], obj.size)
            if chosen is UNSATISFIABLE:
                fields = [("Content-Range", f"bytes */{obj.size}"), *validators]
                return Answer(resp.simple(416, b"", keep_alive, fields), 416, keep_alive)
            wanted = chosen if isinstance(chosen, ByteRange) else None
        fields = list(fixed.representation)
        if wanted is not None:
            status, offset, length = 206, wanted.start, wanted.length
            fields.append(("Content-Range", f"bytes {wanted.start}-{wanted.end}/{obj.size}"))
        else:
            status, offset, length = 200, 0, obj.size
        fields.append(("Content-Length", str(length)))
        head = resp.head(status, fields, keep_alive)
        if is_head:
            return Answer(head, status, keep_alive)
        self.lookup.record_hit(key, length)  # the body planned; a client may stop reading earlier
        return Answer(head, status, keep_alive, offset=offset, length=length)

    def _fixed_fields(self, obj: ServedObject) -> resp.ObjectFields:
        """The fields of `obj`'s answers that only change with the object (dates formatted, file name
        encoded), made once per object the lookup hands out (lookups keep one for a second or more)."""
        cached = self._fixed.get(id(obj))
        if cached is not None and cached[0] is obj:
            return cached[1]
        if len(self._fixed) >= FIXED_FIELDS_KEPT:
            self._fixed.clear()  # objects of lookups that moved on; the busy ones come back at once
        fields = resp.ObjectFields.of(obj)
        self._fixed[id(obj)] = (obj, fields)  # holding obj keeps its id from being reused meanwhile
        return fields

    def _fall_back(self, key: str, url: str | None, reason: str, keep_alive: bool, is_head: bool,
                   request: Request) -> Answer:
        """Cannot serve: send the client to the original URL (never cached), else 404."""
        self.metrics.fallbacks.labels(reason).inc()
        location = safe_location(url if url is not None else self.lookup.origin_url(key))
        if location is None:
            answer = Answer(resp.simple(404, b"not in cache\n", keep_alive, with_body=not is_head), 404, keep_alive)
        else:
            fields = [("Location", location), ("Cache-Control", "no-store")]
            answer = Answer(resp.simple(302, b"", keep_alive, fields), 302, keep_alive)
        answer.logged = (MISS, request.method, location or request.target, None, reason)
        return answer

