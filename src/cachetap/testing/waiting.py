"""Waiting for things in tests and benches: one `wait_for` and one `free_port` for all of them.

A limit in `wait_for` only guards against hanging for ever: nothing here measures time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition was not reached in time (an AssertionError, so pytest reports it as a failure)."""


def wait_for(predicate: Callable[[], T], what: str = "the condition", timeout: float = 60.0,
             step: float = 0.05, detail: Callable[[], str] | None = None) -> T:
    """Call `predicate` every `step` seconds until it returns something true, and return that; raise
    WaitTimeout naming `what` (and `detail()`, e.g. a worker's log tail) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}"
                              + (f"\n{detail()}" if detail is not None else ""))
        time.sleep(step)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may still take it: bind soon)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
