"""A running stack for the console's tests and screenshots: a real origin on loopback, a real download worker
(Celery, aria2), the real cache server and the real console, as subprocesses on one catalog."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from cachetap.console.app import TokenSource
from cachetap.core.lifecycle import EntryState
from cachetap.settings import Settings, load_settings
from cachetap.store.catalog import open_catalog
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin, Resource
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.workers import CeleryWorker, settings_env

MiB = 1 << 20


@dataclass
class Stack:
    settings: Settings
    origin: Origin
    token: str
    console: str      # base URL of the console
    cache: str        # base URL of the cache server
    logs: list

    def url(self, path: str) -> str:
        return f"http://files.test:{self.origin.port}{path}"

    def client(self, token: bool = False) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if token else {}
        return httpx.Client(base_url=self.console, headers=headers, timeout=60)

    def log_tail(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in self.logs if path.exists())


def _start(settings: Settings, name: str, *args: str) -> tuple[subprocess.Popen, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(settings_env(settings))
    log = settings.cache_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cachetap", name, *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.HTTPError:
        return False


@contextmanager
def console_stack(cache_dir: Path) -> Iterator[Stack]:
    """Origin (with the paths the tests use), download worker, cache server and console."""
    origin = Origin().__enter__()
    origin.add("/tool.bin", Resource(size=3 * MiB, rate=200_000))  # ~8 s over 2 connections: progress shows
    origin.add("/image.iso", Resource(size=2 * MiB, rate=400_000))
    origin.add("/small.iso", Resource(size=2 * MiB))
    origin.add("/gone.iso", Resource(size=2 * MiB, status=404))
    origin.add("/broken.iso", Resource(size=2 * MiB, drop_after=MiB))  # every download of it fails
    serve_port, console_port = free_port(), free_port()
    settings = load_settings(cache_dir=cache_dir,
                             resolve_overrides={"files.test": ["127.0.0.1"]}, fetch_allow_networks=LOOPBACK_NETWORKS,
                             min_size=MiB, download_retries=1, download_retry_wait=0, download_attempts=1,
                             download_split=2, download_connections_per_server=2,
                             serve_host="127.0.0.1", serve_port=serve_port, console_port=console_port)
    catalog = open_catalog(settings.effective_database_url)
    token = TokenSource(settings, catalog)()  # the one the console compares with
    processes = []
    worker = CeleryWorker(settings, ["download"], pool="threads", concurrency=2).start()
    try:
        serve, serve_log = _start(settings, "serve", "--quiet")
        console, console_log = _start(settings, "console", "--quiet")
        processes = [serve, console]
        stack = Stack(settings, origin, token, f"http://127.0.0.1:{console_port}",
                      f"http://127.0.0.1:{serve_port}", [serve_log, console_log, worker.log_path])
        wait_for(lambda: _answers(f"{stack.cache}/healthz") and _answers(f"{stack.console}/api/overview"),
                 "the cache server and the console", timeout=120, step=0.2, detail=stack.log_tail)
        yield stack
    finally:
        for proc in processes:
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        worker.stop()
        catalog.engine.dispose()
        origin.__exit__(None, None, None)


def prefetch_and_wait(stack: Stack, path: str) -> dict:
    """Prefetch through the API and wait until the catalog says ready; returns the entry's JSON."""
    with stack.client(token=True) as api:
        answer = api.post("/api/prefetch", json={"url": stack.url(path)})
        assert answer.status_code == 200, answer.text
        key = answer.json()["key"]

        def ready():
            entry = api.get(f"/api/entries/{key}").json()
            return entry if entry["state"] == EntryState.READY else None
        return wait_for(ready, f"{path} ready", timeout=180, step=0.3, detail=stack.log_tail)
