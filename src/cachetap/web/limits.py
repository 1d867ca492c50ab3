"""Limits that keep one cache server process answering under floods: connection caps and quiet logs.

Without caps, clients that open connections and never finish a request take every file descriptor
(systemd's default is 1024), after which real clients cannot connect and asyncio logs a traceback for
every failed accept (367,000 in 40 s in a review). So connections are capped in total and per client
address, the total also below the process's open-files limit, and loop errors are logged at most once
a second with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import time
from collections import Counter
from typing import Any

log = logging.getLogger("cachetap.web.server")

# Descriptors kept free beyond the connection cap: files being sent, the listening socket, logs.
FD_RESERVE = 64
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard or soft == resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("open files limit stays at %s: %s", soft, exc)
    return soft


class ConnectionCaps:
    """Admit a connection or not: at most `total` at once, `per_address` from one client address."""

    def __init__(self, total: int, per_address: int) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd_room = soft - _open_descriptors() - FD_RESERVE if soft != resource.RLIM_INFINITY else total
        self.total = max(1, min(total, fd_room))
        self.per_address = per_address
        self.open = 0
        self.by_address: Counter[str] = Counter()

    def admit(self, address: str) -> str | None:
        """None when admitted (and counted), else the reason it is refused."""
        if self.open >= self.total:
            return "total"
        if self.by_address[address] >= self.per_address:
            return "per_address"
        self.open += 1
        self.by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        left = self.by_address[address] - 1
        if left > 0:
            self.by_address[address] = left
        else:
            del self.by_address[address]


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class QuietLog:
    """Log a recurring event at most once per `every` seconds, with how often it happened meanwhile."""

    def __init__(self, every: float = 1.0, clock=time.monotonic) -> None:
        self.every, self.clock = every, clock
        self._counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def event(self, what: str, level: int = logging.WARNING) -> None:
        self._counts[what] += 1
        now = self.clock()
        if now - self._last.get(what, float("-inf")) >= self.every:
            log.log(level, "cache server: %s (%d times since the last report)", what, self._counts.pop(what))
            self._last[what] = now


def loop_error_handler(quiet: QuietLog):
    """An asyncio exception handler: OS errors (a failed accept, a reset) logged quietly and without a
    traceback; anything else goes to asyncio's default handler."""
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            quiet.event(f"{context.get('message', 'loop error')}: {name}")
            return
        loop.default_exception_handler(context)
    return handle
