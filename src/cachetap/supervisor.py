"""Start and watch the processes of an all-in-one `cachetap run`.

Each child runs in its own session so that a Ctrl-C in the terminal reaches only the supervisor, which
then stops the children: Celery workers with SIGQUIT (cold shutdown: running downloads are not waited
for, they resume from their partial file on the next start), the others with SIGTERM, and after a
short grace period whatever is left of each child's process group with SIGKILL. Only each child's
main process is signalled, so a worker ends its own pool without logging it as a crash.

A child dies with the supervisor too (privileges.die_with_supervisor: SIGKILL on the supervisor's death,
set by the child after any user change), so a `kill -9` of `cachetap run` leaves nothing holding the
port or the catalog. A child that dies on its own is restarted with a growing back-off, so one crash does not end the service; one that exits with
EXIT_CONFIG is not, since only the operator can fix it.
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

LOG_WRITERS = ("serve", "capture")  # the children that write the access log
EXIT_CONFIG = 78  # sysexits EX_CONFIG: a child that needs the operator to fix something is not restarted


@dataclass
class Child:
    name: str
    argv: list[str]
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    env: dict[str, str] | None = None
    quiet_stdout: bool = False  # Celery prints its shutdown notes to stdout, for a terminal of its own


def plan_children(settings: Settings, python: str, capture: bool = True,
                  user: ServiceUser | None = None) -> list[Child]:
    """The processes one machine runs: one worker per kind of work, beat, server, console, capture.

    With `user` (started as root), every child runs as that user and only the capture keeps
    CAP_NET_RAW and CAP_SYS_NICE (privileges.py). cache_dir is resolved here once: a child whose HOME
    still says /root would otherwise derive another default."""
    celery = [python, "-m", "celery", "-A", "cachetap", "--quiet"]  # no banner
    level = ["--loglevel", settings.log_level]  # WARNING by default: Celery logs every task at INFO
    quiet = ["--without-gossip", "--without-mingle"] if settings.embedded_broker else []
    cold = signal.SIGQUIT  # Celery's cold shutdown: running downloads are not waited for
    # A worker prints "Cold shutdown (MainProcess)" and "Hitting Ctrl+C again..." to stdout, for someone
    # who runs it in a terminal of its own; here `cachetap run` says how the stop went. Its logs go to
    # stderr and stay; --log-level debug keeps everything.
    notes_off = settings.log_level != "DEBUG"
    children = [
        Child("analyze", celery + ["worker", "-Q", "analyze", "-c", "2", "-n", "analyze@%h", *quiet, *level], cold,
              quiet_stdout=notes_off),
        # Downloads spend their time waiting on aria2, so threads are enough and cost no extra memory.
        Child("download", celery + ["worker", "-Q", "download", "-P", "threads",
                                    "-c", str(settings.download_max_concurrent),
                                    "-n", "download@%h", *quiet, *level], cold, quiet_stdout=notes_off),
        Child("schedule", celery + ["worker", "-Q", "schedule,capture", "-c", "1", "-n", "schedule@%h",
                                    *quiet, *level], cold, quiet_stdout=notes_off),
        Child("beat", celery + ["beat", "-s", str(settings.cache_dir / "beat-schedule"), *level]),
        Child("serve", [python, "-m", "cachetap", "serve", "--quiet"]),
        Child("console", [python, "-m", "cachetap", "console", "--quiet"]),
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
    def __init__(self, children: list[Child], grace: float = 1.5, max_backoff: float = 60.0) -> None:
        self.children = children
        self.grace = grace
        self.max_backoff = max_backoff
        self._stopping = False
        self.stop_began: float | None = None  # monotonic time the stop signal arrived
        self.stopped_in: float | None = None  # seconds from that signal to the last child reaped

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGUSR1, self._reopen_logs)
        for child in self.children:
            self._start(child)
        while not self._stopping:
            self._watch()
            time.sleep(0.2)
        return self._stop_all()

    def _reopen_logs(self, signum, _frame) -> None:
        """USR1 (logrotate moved the access log): the processes that write it reopen it."""
        for child in self.children:
            if child.name in LOG_WRITERS and child.process is not None and child.process.poll() is None:
                _signal(child.process.pid, signum)

    def _request_stop(self, signum, _frame) -> None:
        log.info("signal %s: stopping", signum)
        if self.stop_began is None:
            self.stop_began = time.monotonic()
        self._stopping = True

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(child.argv, start_new_session=True, env=child.env,
                                         stdout=subprocess.DEVNULL if child.quiet_stdout else None)
        child.started_at = time.monotonic()
        log.debug("%s started (pid %d)", child.name, child.process.pid)

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
        began = self.stop_began if self.stop_began is not None else time.monotonic()
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in reversed(running):  # capture and server first, then the workers behind them
            _signal(child.process.pid, child.stop_signal)
        deadline = time.monotonic() + self.grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                log.debug("%s ended %.2fs into the stop", child.name, time.monotonic() - began)
            except subprocess.TimeoutExpired:
                # Expected for Celery workers, whose shutdown takes seconds after their tasks ended.
                log.debug("%s still running after %.1fs: killing", child.name, self.grace)
        for child in self.children:  # leftovers: a pool process, an aria2c, a child that hung
            if child.process is not None:
                _signal(-child.process.pid, signal.SIGKILL)
                child.process.wait()
        self.stopped_in = time.monotonic() - began
        log.info("all stopped")
        return 0


def _signal(pid: int, sig: int) -> None:
    """Signal a process (pid > 0) or a process group (pid < 0) that may be gone already."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
