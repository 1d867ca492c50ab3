"""Pieces of a cluster on one machine, for tests and benches: a cache node as its own process groups,
a capture node as a live `cachetap capture` process, and the capture's redirect decision asked
without a raw socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cachetap.core.keys import cache_key
from cachetap.core.types import RequestHead, Segment
from cachetap.testing.workers import CeleryWorker, settings_env

CACHETAP = Path(sys.executable).with_name("cachetap")


class Node:
    """One cache node: its cache server and its download worker, each in a process group of its own."""

    def __init__(self, name: str, settings, pool: str = "prefork", concurrency: int = 1) -> None:
        self.name, self.settings = name, settings
        self.pool, self.concurrency = pool, concurrency
        self.serve: subprocess.Popen | None = None
        self.worker: CeleryWorker | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.serve_host}:{self.settings.serve_port}"

    def start(self) -> Node:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(settings_env(self.settings))
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.settings.cache_dir.parent / f"{self.name}-serve.log", "ab")
        self.serve = subprocess.Popen([str(CACHETAP), "serve", "--quiet"], env=env, stdout=log, stderr=log,
                                      start_new_session=True)
        log.close()
        self.worker = CeleryWorker(self.settings, ["download"], pool=self.pool, concurrency=self.concurrency,
                                   name=self.name).start()
        return self

    def kill(self) -> None:
        """kill -9 both process groups, as a machine that loses power."""
        for pid in (self.serve.pid if self.serve else None, self.worker.process.pid if self.worker else None):
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.serve is not None:
            self.serve.wait(30)
        if self.worker is not None:
            self.worker.kill()

    def stop(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            self.serve.wait(30)
        if self.worker is not None:
            self.worker.stop()


class Capture:
    """One capture node: `cachetap capture` (live, in the mode its settings say) in a process group of
    its own, ended with the test process even if that is killed."""

    def __init__(self, name: str, settings) -> None:
        self.name, self.settings = name, settings
        self.process: subprocess.Popen | None = None
        self.log = settings.cache_dir.parent / f"{name}-capture.log"

    def start(self, timeout: float = 60) -> Capture:
        from cachetap.testing.netstack import terminate_with_parent

        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(settings_env(self.settings), PYTHONUNBUFFERED="1")
        self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(CACHETAP), "capture"], env=env, stdout=log, stderr=log,
                                            start_new_session=True, preexec_fn=terminate_with_parent)
        deadline = time.monotonic() + timeout
        while f"capturing on {self.settings.interface}" not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"capture {self.name} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # its relay child too
            except ProcessLookupError:
                pass
            self.process.wait(30)


def decide(redirector, host: str, port: int, path: str):
    """The capture's decision for a client's GET of http://host:port/path (None: not redirected)."""
    url = f"http://{host}:{port}{path}"
    seg = Segment(0.0, "10.0.0.5", "93.184.216.34", 40000, port, 1, 1, 0x18, b"")
    return redirector.decide(seg, RequestHead("GET", path, "HTTP/1.1", f"{host}:{port}", None), url,
                             cache_key(url, {}), host, pipelined=False, now=time.monotonic())
