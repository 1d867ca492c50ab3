"""Sightings leave the capture process through a child process that owns the broker connection.

Why: the capture loop and a broker-sending thread would share one GIL. Sending a batch of 256
sightings through Celery costs about a millisecond of Python and JSON encoding; a GET arriving
meanwhile waits for the GIL, and that millisecond lands inside a 302 racing an origin that answers
in one. So the capture process only pickles batches of the sighting dicts (C code, well under a
microsecond each) and sends them over a SOCK_SEQPACKET socket pair; the child feeds them to an
ordinary `BatchSender`, which batches, retries and counts drops as it always did.

Fail-open: the loop never waits. A full socket (the child is behind) drops that batch and counts
it; a dead child is logged once and sightings go to an in-process `BatchSender` from then on.
The child leaves when the parent closes its end (or dies): it flushes what it holds and exits.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

FLUSH_COUNT = 64          # sightings per message at most (a message is one sendmsg, ~10 KiB)
SOCKET_BUFFER = 4 << 20   # bytes of messages the child may lag behind before batches are dropped
MAX_MESSAGE = 1 << 20     # the child's receive size; a message of FLUSH_COUNT sightings is far below
_PARENTS_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Sink(Protocol):
    """What the child (or the fallback) feeds: capture/batcher.py's BatchSender."""

    def add(self, sighting: dict[str, Any]) -> None: ...
    def close(self, timeout: float = ...) -> bool: ...


@dataclass
class RelayCounters:
    relayed: int = 0   # sightings handed to the child
    dropped: int = 0   # sightings lost because the child lagged behind
    fallback: int = 0  # sightings given to the in-process sender after the child died


class SightingRelay:
    """Parent side: `add()` per sighting, `flush()` when the capture is idle, `close()` at the end."""

    def __init__(self, make_sink: Callable[[], Sink]) -> None:
        """Forks the child at once: call before the process starts threads (a forked child gets
        only the calling thread, and locks other threads held stay held in it)."""
        self.counters = RelayCounters()
        self._make_sink = make_sink
        self._pending: list[dict[str, Any]] = []
        self._fallback: Sink | None = None
        self._reaped = False
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (parent_end, child_end):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        # Held back across the fork, so that none reaches the child before it chose to ignore them.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENTS_SIGNALS)
        try:
            self.pid = os.fork()
        except OSError as exc:  # out of processes or memory: send from this process instead
            log.warning("cannot start the sighting sender process (%s); sending from the capture process", exc)
            self.pid = -1
        if self.pid == 0:  # the child: never returns
            parent_end.close()
            _child_main(child_end, make_sink, held)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child_end.close()
        parent_end.setblocking(False)
        self._sock: socket.socket | None = parent_end
        if self.pid < 0:
            parent_end.close()
            self._sock = None

    # --- capture side (hot path) ----------------------------------------------------------------
    def add(self, sighting: dict[str, Any]) -> None:
        pending = self._pending
        pending.append(sighting)
        if len(pending) >= FLUSH_COUNT:
            self.flush()

    def flush(self) -> None:
        """Send what is pending as one message; never blocks."""
        batch = self._pending
        if not batch:
            return
        self._pending = []
        if self._sock is None:
            self._to_fallback(batch)
            return
        try:
            self._sock.send(pickle.dumps(batch, pickle.HIGHEST_PROTOCOL))
            self.counters.relayed += len(batch)
        except BlockingIOError:
            self.counters.dropped += len(batch)  # the child lags behind: recent demand will repeat
        except OSError as exc:  # the child died (EPIPE, ECONNRESET): keep the sightings in-process
            log.warning("sighting sender process gone (%s); sending from the capture process instead", exc)
            self._sock.close()
            self._sock = None
            self._to_fallback(batch)

    def close(self, timeout: float = 10.0) -> None:
        """Hand over what is pending, let the child flush to the broker, and reap it."""
        self.flush()
        if self._sock is not None:
            self._sock.close()  # EOF for the child: it sends what it holds and exits
            self._sock = None
        if self.pid > 0 and not self._reaped:
            _wait_child(self.pid, timeout)  # a child that died earlier is reaped here too
            self._reaped = True
        if self._fallback is not None:
            self._fallback.close(timeout)

    def _to_fallback(self, batch: list[dict[str, Any]]) -> None:
        if self._fallback is None:
            self._fallback = self._make_sink()
        for sighting in batch:
            self._fallback.add(sighting)
        self.counters.fallback += len(batch)


def _child_main(sock: socket.socket, make_sink: Callable[[], Sink], mask: set[signal.Signals]) -> None:
    # Signals to the process group (Ctrl-C, systemd's SIGTERM) are the parent's to act on: it
    # closes the socket when it stops, and only then has the child seen every sighting.
    for signum in _PARENTS_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    code = 0
    try:
        threading.current_thread().name = "cachetap-sighting-sender"
        sink = make_sink()
        while True:
            try:
                message = sock.recv(MAX_MESSAGE)
            except InterruptedError:
                continue
            if not message:
                break
            for sighting in pickle.loads(message):
                sink.add(sighting)
        sink.close()
    except BaseException:  # noqa: BLE001 - whatever happens, never return into the parent's code
        log.exception("sighting sender process failed")
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _wait_child(pid: int, timeout: float) -> None:
    """Reap the child, giving it `timeout` seconds (plus its own flush) before killing it."""
    done = threading.Event()

    def killer() -> None:
        if not done.wait(timeout + 1):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    watchdog = threading.Thread(target=killer, daemon=True)
    watchdog.start()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    done.set()
