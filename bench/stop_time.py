"""How long `cachetap run` takes to stop on SIGTERM, without and with Flower watching (printed, never asserted).

    .venv/bin/python bench/stop_time.py [--runs 2]

Each run starts `cachetap run --no-capture` on embedded defaults in a fresh cache_dir and waits until a
task went through. With Flower, `cachetap flower` is started too and the run waits until Flower shows a
task it learnt of by task events (so the workers send them), then SIGTERM goes to `cachetap run` and the
time until it exited is printed, one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from cachetap.testing.waiting import free_port, wait_for
from cachetap.wire import ANALYZE_BATCH, send


def measure(with_flower: bool) -> float:
    work = Path(tempfile.mkdtemp(prefix="cachetap-stop-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHETAP_", "FLOWER_"))}
    env.update(CACHETAP_CACHE_DIR=str(work), CACHETAP_RUN_AS_USER="", CACHETAP_SERVE_HOST="127.0.0.1",
               CACHETAP_SERVE_PORT=str(free_port()))
    run = subprocess.Popen([sys.executable, "-m", "cachetap", "run", "--no-capture"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    flower = None
    try:
        from cachetap.settings import load_settings
        from cachetap.tasks.app import create_app

        app = create_app(load_settings(cache_dir=work, run_as_user=""))
        send(app, ANALYZE_BATCH, []).get(timeout=120)  # the workers are up
        if with_flower:
            port = free_port()
            flower = subprocess.Popen([sys.executable, "-m", "cachetap", "flower", "--port", str(port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

            def events_seen() -> bool:
                try:
                    token = (work / "admin_token").read_text().strip()
                    send(app, ANALYZE_BATCH, [])
                    tasks = httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=("admin", token), timeout=10).json()
                    return bool(tasks)
                except (OSError, httpx.HTTPError, ValueError):
                    return False
            wait_for(events_seen, "task events in Flower", timeout=120, step=1.0)
        started = time.monotonic()
        run.send_signal(signal.SIGTERM)
        run.wait(60)
        return time.monotonic() - started
    finally:
        if flower is not None:
            os.killpg(flower.pid, signal.SIGTERM)
            flower.wait(30)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.runs):
        for with_flower in (False, True):
            print(json.dumps({"flower": with_flower, "stop_seconds": round(measure(with_flower), 2)}), flush=True)


if __name__ == "__main__":
    main()
