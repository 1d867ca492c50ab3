"""Run a real `celery -A cachetap worker` subprocess for tests, configured by CACHETAP_* variables.

    with CeleryWorker(settings, queues=["analyze"]) as worker:
        ...                      # the worker is consuming
    worker.log_text()            # its combined output, for assertions and failure messages

Readiness is the worker's own "<name> ready." log line, which it prints once its consumer is
connected to the broker; a worker that exits first raises `WorkerFailed` with its log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from cachetap.settings import Settings

CELERY = Path(sys.executable).with_name("celery")


class WorkerFailed(Exception):
    pass


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as CACHETAP_* variables (lists and dicts as JSON), unset values left out."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"CACHETAP_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


class CeleryWorker:
    """One `celery worker` process (and its pool children) in its own process group."""

    def __init__(self, settings: Settings, queues: Sequence[str], concurrency: int = 1,
                 pool: str = "prefork", name: str | None = None, log_path: Path | None = None,
                 extra_env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()):
        self.settings = settings
        self.queues = list(queues)
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.log_path = log_path or settings.cache_dir / f"worker-{self.name}.log"
        self._concurrency = concurrency
        self._pool = pool
        self._extra_env = dict(extra_env or {})
        self._extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [str(CELERY), "-A", "cachetap", "worker", "-Q", ",".join(self.queues),
                "-c", str(self._concurrency), "-P", self._pool, "-n", f"{self.name}@%h",
                "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
                *self._extra_args]

    def start(self, timeout: float = 120.0) -> CeleryWorker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(settings_env(self.settings))
        env.update(self._extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        marker = f"{self.name}@"
        while time.monotonic() < deadline:
            text = self.log_text()
            if any(marker in line and line.rstrip().endswith("ready.") for line in text.splitlines()):
                return
            if self.process.poll() is not None:
                raise WorkerFailed(f"worker {self.name} exited with {self.process.returncode}:\n{text[-4000:]}")
            time.sleep(0.1)
        self.stop()
        raise WorkerFailed(f"worker {self.name} not ready within {timeout:.0f}s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """Warm shutdown (SIGTERM to the worker), then SIGKILL to its whole group if it hangs."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._kill_group()  # pool children left behind by an unclean exit
        return self.process.returncode

    def kill(self) -> None:
        """kill -9 the worker and its pool children (for crash tests)."""
        if self.process is None:
            return
        self._kill_group()
        self.process.wait(30)

    def _kill_group(self) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group this helper created
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> CeleryWorker:
        return self.start() if self.process is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def take_tasks(app, queue: str, count: int, timeout: float = 120.0,
               settle: float = 0.0) -> list[tuple[str, list]]:
    """Consume (and ack) up to `count` task messages from `queue` through the app's own broker.

    Returns (task name, args) pairs. Waits up to `timeout` for the first `count`; then, when `settle`
    is positive, keeps listening that long so that extra messages are taken and show up too.
    """
    from queue import Empty

    from cachetap.wire import direct_queue

    declared = direct_queue(queue)
    taken: list[tuple[str, list]] = []
    deadline = time.monotonic() + timeout
    with app.connection_for_read() as conn, conn.SimpleQueue(declared) as simple:
        while True:
            wanted = len(taken) < count
            left = deadline - time.monotonic() if wanted else settle
            if left <= 0:
                break
            try:
                message = simple.get(block=True, timeout=min(left, 1.0) if wanted else left)
            except Empty:
                if wanted:
                    continue
                break
            args, _kwargs, _embed = message.decode()
            taken.append((message.headers["task"], args))
            message.ack()
    return taken


class CeleryBeat:
    """One `celery -A cachetap beat` process in its own process group, with its own schedule file."""

    def __init__(self, settings: Settings, name: str, extra_env: Mapping[str, str] | None = None):
        self.settings = settings
        self.name = name
        self.log_path = settings.cache_dir / f"beat-{name}.log"
        self._extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CeleryBeat:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(settings_env(self.settings))
        env.update(self._extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        schedule = self.settings.cache_dir / f"beat-schedule-{self.name}"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen([str(CELERY), "-A", "cachetap", "beat", "-s", str(schedule), "-l", "INFO"],
                                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        return self

    @property
    def tag(self) -> str:
        """The lease holder name this beat uses ("<hostname>:<pid>")."""
        import socket

        assert self.process is not None
        return f"{socket.gethostname()[:50]}:{self.process.pid}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
