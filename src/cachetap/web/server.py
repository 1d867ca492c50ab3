"""The cache server: answers GET/HEAD for /c/<key>/<name> from local files, bodies via sendfile.

Hand-written minimal HTTP/1.1 on asyncio streams rather than a framework: the hot path must hand
the file to the kernel with sendfile (zero copy, memory independent of file size and client
count), while ASGI/WSGI frameworks read bodies into Python buffers and copy them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from cachetap.web import responses as resp
from cachetap.web.lookup import ObjectLookup, ServedObject
from cachetap.web.metrics import ServeMetrics
from cachetap.web.urls import origin_hint
from cachetap.web.request import MAX_HEAD_BYTES, BadRequest, Request, object_key, parse_request_head
from cachetap.web.semantics import (UNSATISFIABLE, ByteRange, not_modified, parse_range, range_allowed,
                                    safe_location)

log = logging.getLogger(__name__)


class CacheServer:
    """One event loop serving one listening socket.

    Tests: `CacheServer(lookup).start()` runs it in a thread on a free port (`.port`), `.stop()`.
    Production: `run_server()` runs `serve_forever()` in one or more worker processes.
    """

    def __init__(self, lookup: ObjectLookup, host: str = "127.0.0.1", port: int = 0, *,
                 head_timeout: float = 15.0, send_timeout: float = 60.0, grace: float = 10.0,
                 reuse_port: bool = False, strip_query_params: dict[str, list[str]] | None = None) -> None:
        self.lookup = lookup
        self.strip_query_params = strip_query_params or {}  # to check origin hints against keys
        self.host = host
        self.port = port
        self.head_timeout = head_timeout    # whole head within this (slowloris), also keep-alive idle
        self.send_timeout = send_timeout    # a client taking no data for this long is dropped
        self.grace = grace                  # seconds in-flight responses get on stop
        self.reuse_port = reuse_port
        self.metrics = ServeMetrics()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._idle: set[asyncio.Task[Any]] = set()     # connections waiting for a request head
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # ---- lifecycle --------------------------------------------------------------------------

    async def serve_forever(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Listen, serve until stop_soon(), then finish in-flight responses within `grace`.

        `on_ready(port)` is called once the socket is bound and listening."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_HEAD_BYTES,
                                            reuse_port=self.reuse_port or None, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready is not None:
            on_ready(self.port)
        try:
            await self._stop_event.wait()
        finally:
            self._stopping = True
            server.close()
            for task in list(self._idle):
                task.cancel()
            if self._tasks:
                _done, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
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

    # ---- one connection ----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while not self._stopping:
                self._idle.add(task)
                try:
                    async with asyncio.timeout(self.head_timeout):
                        raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return  # closed by the client, idle too long, or too slow to send a head
                except asyncio.LimitOverrunError:
                    await self._refuse(reader, writer, BadRequest("head_too_large", 431))
                    return
                finally:
                    self._idle.discard(task)
                try:
                    request = parse_request_head(raw)
                except BadRequest as bad:
                    await self._refuse(reader, writer, bad)
                    return
                if not await self._respond(request, writer):
                    return
        except (ConnectionError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stopping
        except Exception:
            log.exception("cache server: unexpected error on a connection")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      bad: BadRequest) -> None:
        """Answer a malformed request and close, reading what the client still sends first:
        closing with unread data makes the kernel send RST, which can destroy our answer."""
        self.metrics.bad_requests.labels(bad.reason).inc()
        self.metrics.answered(bad.status)
        writer.write(resp.simple(bad.status, f"bad request: {bad.reason}\n".encode(), keep_alive=False))
        try:
            await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(1.0):
                while await reader.read(65536):
                    pass
        except (ConnectionError, TimeoutError, asyncio.LimitOverrunError):
            pass

    async def _respond(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the connection may carry another one."""
        keep_alive = request.keep_alive and not request.has_body and not self._stopping
        is_head = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return await self._send(writer, resp.simple(405, b"only GET and HEAD\n", keep_alive,
                                                        [("Allow", "GET, HEAD")]), 405, keep_alive)
        path = request.path
        if path == "/healthz":
            return await self._send(writer, resp.simple(200, b"ok", keep_alive, with_body=not is_head),
                                    200, keep_alive)
        if path == "/metrics":
            body = self.metrics.exposition()
            return await self._send(writer, resp.simple(200, body, keep_alive, with_body=not is_head,
                                    content_type="text/plain; version=0.0.4; charset=utf-8"), 200, keep_alive)
        key = object_key(path)
        if key is None:
            return await self._send(writer, resp.simple(404, b"not found\n", keep_alive, with_body=not is_head),
                                    404, keep_alive)
        obj = self.lookup.find(key)
        if obj is None:
            hint = origin_hint(request.query, key, self.strip_query_params) if request.query else None
            return await self._fall_back(writer, key, hint, "not_servable", keep_alive, is_head)
        try:
            # O_NOFOLLOW: a lookup's path is trusted, but a symlink swapped in later is not.
            fd = os.open(obj.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return await self._fall_back(writer, key, obj.url, "file_missing", keep_alive, is_head)
        with open(fd, "rb", buffering=0) as file:
            if os.fstat(fd).st_size != obj.size:
                return await self._fall_back(writer, key, obj.url, "size_changed", keep_alive, is_head)
            return await self._send_object(request, writer, key, obj, file, keep_alive, is_head)

    async def _send_object(self, request: Request, writer: asyncio.StreamWriter, key: str, obj: ServedObject,
                           file: Any, keep_alive: bool, is_head: bool) -> bool:
        headers = request.headers
        validators = resp.object_fields(obj)
        modified = resp.modified_time(obj)
        etag = next((v for n, v in validators if n == "ETag"), None)
        if not_modified(headers, etag, modified):
            if not is_head:
                self.lookup.record_hit(key)
            return await self._send(writer, resp.head(304, validators, keep_alive), 304, keep_alive)
        wanted: ByteRange | None = None
        # Range is defined for GET only (RFC 9110 14.2); HEAD gets the 200 head.
        if not is_head and "range" in headers and range_allowed(headers.get("if-range"), etag, modified):
            chosen = parse_range(headers["range"], obj.size)
            if chosen is UNSATISFIABLE:
                fields = [("Content-Range", f"bytes */{obj.size}"), *validators]
                return await self._send(writer, resp.simple(416, b"", keep_alive, fields), 416, keep_alive)
            wanted = chosen if isinstance(chosen, ByteRange) else None
        fields = [*resp.representation_fields(obj), *validators]
        if wanted is not None:
            status, offset, length = 206, wanted.start, wanted.length
            fields.append(("Content-Range", f"bytes {wanted.start}-{wanted.end}/{obj.size}"))
        else:
            status, offset, length = 200, 0, obj.size
        fields.append(("Content-Length", str(length)))
        if is_head:
            writer.write(resp.head(status, fields, keep_alive))
            await writer.drain()
        else:
            self.lookup.record_hit(key)
            # Cork like nginx's tcp_nopush: the head rides in the first full segment of the body.
            sock = writer.transport.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            writer.write(resp.head(status, fields, keep_alive))
            await self._sendfile(writer, file, offset, length)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        self.metrics.answered(status)
        return keep_alive

    async def _sendfile(self, writer: asyncio.StreamWriter, file: Any, offset: int, length: int) -> None:
        """os.sendfile straight from the file to the socket until done.

        Our own loop instead of loop.sendfile(): that one re-registers the socket with epoll and
        returns to the event loop after every partial send (measured ~0.7x nginx). Here the body goes
        out without the event loop while the socket buffer takes it (a loopback or LAN client often
        takes a 4 MiB range in one call); only when the buffer is full is a duplicate of the socket
        watched, once for the rest of the body.
        """
        transport = writer.transport
        if transport.get_write_buffer_size():
            transport.set_write_buffer_limits(high=0)  # the head must be out before the body
            await writer.drain()
        file_fd = file.fileno()
        sock_fd = transport.get_extra_info("socket").fileno()
        start, end = offset, offset + length
        watched: int | None = None  # our duplicate of the socket, once the buffer ran full
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] | None = None

        def writable() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

        try:
            while offset < end:
                try:
                    sent = os.sendfile(sock_fd, file_fd, offset, end - offset)
                except BlockingIOError:
                    if watched is None:
                        # The transport owns its fd in the event loop; a duplicate may be watched for us.
                        watched = os.dup(sock_fd)
                        loop.add_writer(watched, writable)
                    waiter = loop.create_future()
                    async with asyncio.timeout(self.send_timeout):
                        await waiter
                    continue
                if sent == 0:
                    raise ConnectionError("file ended early: truncated behind our back")
                offset += sent
        except BaseException:
            transport.abort()  # a half-sent body cannot be repaired on this connection
            raise
        finally:
            self.metrics.bytes_sent.inc(offset - start)
            if watched is not None:
                loop.remove_writer(watched)
                os.close(watched)

    async def _fall_back(self, writer: asyncio.StreamWriter, key: str, url: str | None, reason: str,
                         keep_alive: bool, is_head: bool) -> bool:
        """Cannot serve: send the client to the original URL (never cached), else 404."""
        self.metrics.fallbacks.labels(reason).inc()
        location = safe_location(url if url is not None else self.lookup.origin_url(key))
        if location is None:
            return await self._send(writer, resp.simple(404, b"not in cache\n", keep_alive,
                                                        with_body=not is_head), 404, keep_alive)
        fields = [("Location", location), ("Cache-Control", "no-store")]
        return await self._send(writer, resp.simple(302, b"", keep_alive, fields), 302, keep_alive)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, status: int, keep_alive: bool) -> bool:
        writer.write(data)
        await writer.drain()
        self.metrics.answered(status)
        return keep_alive


def run_server(host: str, port: int, lookup: ObjectLookup, processes: int = 1, **options: Any) -> None:
    """Serve until SIGTERM/SIGINT with `processes` SO_REUSEPORT workers (see workers.py)."""
    from cachetap.web.workers import run_server as run
    run(host, port, lookup, processes, **options)
