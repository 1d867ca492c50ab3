"""Start and watch the processes of an all-in-one `cachetap run`.

Each child runs in its own session so that a Ctrl-C in the terminal reaches only the supervisor, which
then stops the children in order with SIGTERM (Celery's warm shutdown) and, after a grace period, SIGKILL.
A child that dies on its own is restarted with a growing back-off, so one crash does not end the service.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from cachetap.privileges import CAPTURE_CAPS, SUPERVISOR_PID_ENV, ServiceUser, as_user
from cachetap.settings import Settings

log = logging.getLogger(__name__)

EXIT_CONFIG = 78  # sysexits EX_CONFIG: a child that needs the operator to fix something is not restarted


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    env: dict[str, str] | None = None


def plan_children(settings: Settings, python: str, capture: bool = True,
                  user: ServiceUser | None = None) -> list[Child]:
    """The processes one machine runs: one worker per kind of work, beat, server, capture.

    With `user` (started as root), every child runs as that user and only the capture keeps
    CAP_NET_RAW and CAP_SYS_NICE (privileges.py). cache_dir is resolved here once: a child whose HOME
    still says /root would otherwise derive another default."""
    celery = [python, "-m", "celery", "-A", "cachetap"]
    level = ["--loglevel", settings.log_level]
    quiet = ["--without-gossip", "--without-mingle"] if settings.embedded_broker else []
    children = [
        Child("analyze", celery + ["worker", "-Q", "analyze", "-c", "2", "-n", "analyze@%h", *quiet, *level]),
        # Downloads spend their time waiting on aria2, so threads are enough and cost no extra memory.
        Child("download", celery + ["worker", "-Q", "download", "-P", "threads",
                                    "-c", str(settings.download_max_concurrent),
                                    "-n", "download@%h", *quiet, *level]),
        Child("schedule", celery + ["worker", "-Q", "schedule,capture", "-c", "1", "-n", "schedule@%h",
                                    *quiet, *level]),
        Child("beat", celery + ["beat", "-s", str(settings.cache_dir / "beat-schedule"), *level]),
        Child("serve", [python, "-m", "cachetap", "serve"]),
    ]
    if capture and settings.interface:
        children.append(Child("capture", [python, "-m", "cachetap", "capture"]))
    env = {**os.environ, "CACHETAP_CACHE_DIR": str(settings.cache_dir.resolve()),
           SUPERVISOR_PID_ENV: str(os.getpid())}
    for child in children:
        child.env = env
        if user is not None:
            child.argv = as_user(child.argv, user, CAPTURE_CAPS if child.name == "capture" else "")
    return children


class Supervisor:
    def __init__(self, children: list[Child], grace: float = 30.0, max_backoff: float = 60.0) -> None:
        self.children = children
        self.grace = grace
        self.max_backoff = max_backoff
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        for child in self.children:
            self._start(child)
        while not self._stopping:
            self._watch()
            time.sleep(0.2)
        return self._stop_all()

    def _request_stop(self, signum, _frame) -> None:
        log.info("signal %s: stopping", signum)
        self._stopping = True

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, start_new_session=True, env=child.env)
        child.started_at = time.monotonic()
        log.info("%s started (pid %d)", child.name, child.process.pid)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            proc = child.process
            if proc is not None and proc.poll() is None:
                if now - child.started_at > self.max_backoff:
                    child.restarts = 0  # ran long enough: forget old crashes
                continue
            if proc is not None and proc.returncode == EXIT_CONFIG:
                log.error("%s stopped: its configuration needs fixing (see its message above); not restarted",
                          child.name)
                child.process, child.next_start = None, float("inf")
                continue
            if proc is not None:
                delay = min(2 ** child.restarts, self.max_backoff)
                log.error("%s exited with %s; restarting in %.0fs", child.name, proc.returncode, delay)
                child.process = None
                child.restarts += 1
                child.next_start = now + delay
            if now >= child.next_start:
                self._start(child)

    def _stop_all(self) -> int:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in reversed(running):  # capture and server first, then the workers behind them
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: killing", child.name, self.grace)
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()
        log.info("all stopped")
        return 0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
