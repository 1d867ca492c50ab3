"""One client connection of the cache server, as an asyncio Protocol: read a head, answer, repeat.

A Protocol rather than asyncio streams because this is the hot path (hand-written where a library
costs speed): streams put a Task step, a Future and a timeout object under every
head read and every full socket buffer, about half the Python time of a served 4 MiB range. Here
bytes arrive in `buffer_updated` (a BufferedProtocol: the loop reads into one buffer the server
shares by all its connections; a plain Protocol gets a new 256 KiB bytes object per read, which
glibc maps and unmaps: three more system calls per request), the answer is written at once, and a body goes out with
`os.sendfile` from the socket's own writable callback. Timeouts are not timers per request: the
server sweeps its connections once in a while and compares each one's deadline (see
CacheServer._sweep).

States: READING (waiting for a complete head; `deadline` bounds the wait, slowloris and keep-alive
idle alike), SENDING (a body via sendfile; `deadline` moves on with every byte the client takes),
LINGERING (a malformed request was answered; what the client still sends is read and dropped until it
closes or `deadline`, because closing with unread data makes the kernel send RST, which can destroy
our answer in flight).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachetap.core.accesslog import squid_line
from cachetap.web import responses as resp
from cachetap.web.request import MAX_HEAD_BYTES, BadRequest, parse_request_head

if TYPE_CHECKING:
    from cachetap.web.server import CacheServer

log = logging.getLogger(__name__)

READING, SENDING, LINGERING, CLOSED = "reading", "sending", "lingering", "closed"
LINGER_SECONDS = 1.0
# Input held while an answer is under way (pipelined requests); beyond it the connection stops
# reading until the answer is out, so a client that never reads cannot make us buffer without end.
INPUT_LIMIT = 4 * MAX_HEAD_BYTES


@dataclass(slots=True)
class Answer:
    """What to send for one request: a head (or a whole small response) and maybe a file range."""

    data: bytes
    status: int
    keep_alive: bool
    file: Any = None          # an open binary file whose [offset, offset + length) is the body
    offset: int = 0
    length: int = 0
    logged: Any = None        # (tag, method, url, content type, reason) for the access log, if any


class Connection(asyncio.BufferedProtocol):
    def __init__(self, server: CacheServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.sock: Any = None
        self.buffer = bytearray()
        self.state = READING
        self.deadline = 0.0
        self.write_paused = False
        self.close_after = False      # the current answer ends the connection
        self.eof = False              # the client half-closed: end after the answer under way
        self._body: Answer | None = None
        self._body_end = 0
        self._body_start = 0
        self._watched: int | None = None  # duplicate of the socket fd, watched while its buffer is full
        self._waiting_for_head_flush = False
        self._serving = False             # inside _serve_buffered (a body that completes at once returns there)
        self.admitted = False             # counted by the server's connection caps
        self.peer = ""
        self._started = 0.0               # loop time the current answer was decided (access log)

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        refused = self.server.caps.admit(self.peer)
        if refused is not None:
            self.server.quiet.event(f"connections refused over the {refused} cap")
            self.state = CLOSED
            transport.abort()
            return
        self.admitted = True
        self.sock = transport.get_extra_info("socket")
        self.deadline = self.loop.time() + self.server.head_timeout
        self.server.opened(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.receive_buffer  # filled and handed to buffer_updated at once, then reused

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == LINGERING:
            return  # dropped: only read so that closing sends FIN, not RST
        self.buffer += self.server.receive_buffer[:nbytes]
        self._received()

    def _received(self) -> None:
        if self.state == READING:
            self._serve_buffered()
        elif len(self.buffer) >= INPUT_LIMIT:
            self.transport.pause_reading()  # resumed when the answer under way is out (_pump)

    def eof_received(self) -> bool:
        self.eof = True
        if self.state == SENDING:
            return True  # half-closed client: keep sending the body it asked for
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_body()
        self.state = CLOSED
        self.server.closed(self)
        if self.admitted:
            self.admitted = False
            self.server.caps.release(self.peer)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._waiting_for_head_flush:
            self._waiting_for_head_flush = False
            self.transport.set_write_buffer_limits()  # back to the defaults
            self._pump()
        elif self.state == READING:
            self.transport.resume_reading()
            self._serve_buffered()

    # ---- requests --------------------------------------------------------------------------------

    def _serve_buffered(self) -> None:
        """Answer every complete head in the buffer (pipelining), in order."""
        self._serving = True
        try:
            self._serve_heads()
        finally:
            self._serving = False

    def _serve_heads(self) -> None:
        while self.state == READING and not self.write_paused:
            end, size = self.buffer.find(b"\r\n\r\n"), 4
            # A head ended by bare LFs (RFC 9112 2.2 lets a server accept them) must be answered too,
            # not left waiting for a CRLF CRLF that never comes; empty lines before a request are not one.
            bare = self.buffer.find(b"\n\n", 0, end if end >= 0 else len(self.buffer))
            if bare >= 0 and self.buffer[:bare].strip(b"\r\n"):
                end, size = bare, 2
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self._refuse(BadRequest("head_too_large", 431))
                return
            raw = bytes(self.buffer[:end + size])
            del self.buffer[:end + size]
            try:
                request = parse_request_head(raw)
            except BadRequest as bad:
                self._refuse(bad)
                return
            try:
                answer = self.server.answer(request)
            except Exception:
                log.exception("cache server: unexpected error answering a request")
                self.transport.abort()
                return
            self._started = self.loop.time()
            self._send(answer)
        if self.write_paused and self.state == READING:
            self.transport.pause_reading()  # the client does not read its answers: stop taking requests

    def _send(self, answer: Answer) -> None:
        self.close_after = not answer.keep_alive
        if answer.file is None:
            self.transport.write(answer.data)
            self.server.metrics.answered(answer.status)
            if answer.logged is not None:
                self._log(answer, len(answer.data), aborted=False)
            self._answered()
            return
        # Cork like nginx's tcp_nopush: the head rides in the first full segment of the body.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self.transport.write(answer.data)
        self.state = SENDING
        self._body = answer
        self._body_start = self._body_end = answer.offset
        self.deadline = self.loop.time() + self.server.send_timeout
        if self.transport.get_write_buffer_size():
            # Pipelined answers (or this head) are still queued: the body must wait for them.
            self._waiting_for_head_flush = True
            self.transport.set_write_buffer_limits(high=0)  # resume_writing() once all is out
            return
        self._pump()

    def _pump(self) -> None:
        """sendfile() until the body is out or the socket buffer is full (then wait to be writable)."""
        body = self._body
        if body is None or self.state != SENDING:
            return
        sock_fd, file_fd = self.sock.fileno(), body.file.fileno()
        offset, end = self._body_end, body.offset + body.length
        try:
            while offset < end:
                sent = os.sendfile(sock_fd, file_fd, offset, end - offset)
                if sent == 0:
                    raise ConnectionError("file ended early: truncated behind our back")
                offset += sent
        except BlockingIOError:
            self._body_end = offset
            self.deadline = self.loop.time() + self.server.send_timeout
            if self._watched is None:
                # No new requests while this body waits for the client (a body that goes out in one
                # call, the common case, costs no epoll changes at all).
                self.transport.pause_reading()
                # The transport owns its fd in the event loop; a duplicate of it may be watched for us.
                try:
                    self._watched = os.dup(sock_fd)
                except OSError as exc:  # out of descriptors: this body cannot wait, end it cleanly
                    self.server.quiet.event(f"cannot wait for a slow client: {os.strerror(exc.errno)}")
                    self.abort()
                    return
                self.loop.add_writer(self._watched, self._pump)
            return
        except OSError:
            self._body_end = offset
            self.abort()  # a half-sent body cannot be repaired on this connection
            return
        self._body_end = offset
        status = body.status
        self._end_body()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        self.server.metrics.answered(status)
        self.state = READING
        self._answered()
        if self.state == READING:
            self.transport.resume_reading()  # paused while the body waited or the input was full
            if not self._serving:
                self._serve_buffered()  # requests the client pipelined meanwhile

    def _end_body(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        sent = self._body_end - self._body_start
        self.server.metrics.bytes_sent.inc(sent)
        if body.logged is not None:
            self._log(body, len(body.data) + sent, aborted=sent < body.length)
        if self._watched is not None:
            self.loop.remove_writer(self._watched)
            os.close(self._watched)
            self._watched = None
        body.file.close()

    def _log(self, answer: Answer, size: int, aborted: bool) -> None:
        access_log = self.server.access_log
        if access_log is None:
            return
        tag, method, url, content_type, reason = answer.logged
        elapsed = int((self.loop.time() - self._started) * 1000)
        access_log.write(squid_line(time.time(), elapsed, self.peer or "-", tag, answer.status, size,
                                    method, url, content_type, reason, aborted))

    def _answered(self) -> None:
        """One answer is out (or queued): next head, or the end of the connection."""
        if self.close_after or self.eof or self.server._stopping:
            self.close()
        else:
            self.deadline = self.loop.time() + self.server.head_timeout

    def _refuse(self, bad: BadRequest) -> None:
        """Answer a malformed request, half-close, and linger (see the module docstring)."""
        self.server.metrics.bad_requests.labels(bad.reason).inc()
        self.server.metrics.answered(bad.status)
        self.transport.write(resp.simple(bad.status, f"bad request: {bad.reason}\n".encode(), keep_alive=False))
        self.buffer.clear()
        self.state = LINGERING
        self.deadline = self.loop.time() + LINGER_SECONDS
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()

    # ---- ending ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close after what is queued has been sent."""
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.close()

    def abort(self) -> None:
        self._end_body()
        self.state = CLOSED
        self.transport.abort()

    def expire(self, now: float) -> None:
        """Called by the server's sweep: end a connection whose deadline has passed."""
        if now < self.deadline or self.state == CLOSED:
            return
        if self.state == SENDING:
            self.abort()  # the client took no data for send_timeout
        else:
            self.close()  # head too slow, idle keep-alive, or the lingering time is over
