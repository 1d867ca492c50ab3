"""`cachetap flower`: the real Flower on the embedded broker, behind basic auth with the admin token,
seeing a real worker and, through the task events it turns on, the tasks that worker ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from cachetap.settings import load_settings
from cachetap.testing.waiting import free_port, wait_for
from cachetap.testing.workers import CeleryWorker, settings_env
from cachetap.wire import ANALYZE_BATCH, send

pytest.importorskip("flower", reason="Flower is the `flower` extra (in the test extra too)")


class RunWorker(CeleryWorker):
    """A worker as `cachetap run` starts one on the embedded broker: heartbeats on (a worker without
    them and without gossip has no event dispatcher for Flower to turn task events on in)."""

    def command(self) -> list[str]:
        return [arg for arg in super().command() if arg != "--without-heartbeat"]


def test_flower_asks_for_the_admin_token_and_sees_the_workers_tasks(tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache", run_as_user="")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHETAP_", "FLOWER_"))}
    env.update(settings_env(settings))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with RunWorker(settings, ["analyze"], name="watched"):
        flower = subprocess.Popen([sys.executable, "-m", "cachetap", "flower", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        try:
            wait_for(lambda: _answers(base), "Flower to listen", timeout=90)
            token = (settings.cache_dir / "admin_token").read_text().strip()
            assert httpx.get(base + "/").status_code == 401
            assert httpx.get(base + "/", auth=("admin", token[:-1] + "x")).status_code == 401
            assert httpx.get(base + "/", auth=("admin", token)).status_code == 200
            assert token not in " ".join(_cmdline(flower.pid))  # not on the command line for `ps` to show

            def workers() -> dict:
                # refresh: Flower asks the workers now. Without it the list holds only the answers to its one
                # inspect at startup (1 s timeout): a worker slower than that (a loaded machine) never shows.
                return httpx.get(base + "/api/workers?refresh=1", auth=("admin", token), timeout=30).json()
            assert any(name.startswith("watched@") for name in wait_for(workers, "Flower to see the worker", timeout=120))

            from cachetap.tasks.app import create_app

            app, sent = create_app(settings), []

            def seen() -> bool:
                # Flower turns events on by a broadcast every few seconds: tasks run before that
                # one reaches the worker send none, so keep sending until one shows.
                sent.append(send(app, ANALYZE_BATCH, []).id)
                tasks = httpx.get(base + "/api/tasks", auth=("admin", token), timeout=30).json()
                return any(tasks.get(task_id, {}).get("state") == "SUCCESS" for task_id in sent)
            wait_for(seen, "a task's events in Flower", timeout=90, step=2)
        finally:
            os.killpg(flower.pid, signal.SIGTERM)
            flower.wait(30)


def _answers(base: str) -> bool:
    try:
        httpx.get(base + "/", timeout=2)
        return True
    except httpx.HTTPError:
        return False


def _cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return [part.decode() for part in fh.read().split(b"\0")]
