"""Logging shared by every cachetap process: what stays out of an operator's log by default, and the
access log (lines from core.accesslog)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path


class _DropNoHostname(logging.Filter):
    """kombu warns "No hostname was supplied" for every connection to the embedded broker's
    filesystem:// URL, which has no host by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No hostname was supplied")


def quiet_kombu() -> None:
    logger = logging.getLogger("kombu.connection")
    if not any(isinstance(f, _DropNoHostname) for f in logger.filters):
        logger.addFilter(_DropNoHostname())


class AccessLog:
    """An append-only access log, one line per write (O_APPEND: lines from several processes do not
    interleave). `reopen()` after logrotate moved the file, as nginx does on USR1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None
        self.reopen()

    def reopen(self) -> None:
        old = self._fh
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1, encoding="utf-8")
            os.chmod(self.path, 0o640)
        except OSError as exc:  # a log that cannot be written never stops serving
            logging.getLogger(__name__).warning("access log %s: %s", self.path, exc)
            self._fh = None
        if old is not None:
            old.close()

    def write(self, line: str) -> None:
        if self._fh is not None:
            try:
                self._fh.write(line + "\n")
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def open_access_log(path: Path | None, reopen_on_usr1: bool = True) -> AccessLog | None:
    """The access log at `path` (None: off), reopened on SIGUSR1 when called in the main thread."""
    if path is None:
        return None
    log = AccessLog(path)
    if reopen_on_usr1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda _sig, _frame: log.reopen())
    return log
