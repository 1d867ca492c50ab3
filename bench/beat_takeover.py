"""Time for a standby beat to take over after the active one is killed with SIGKILL.

    python bench/beat_takeover.py [--runs 3] [--lease 3] [--backends sqlite,postgresql,mariadb]

Per catalog backend: two real `celery beat` processes (LeasedScheduler) share one catalog; the
holder of the lease is killed with SIGKILL, and the time until the other one holds it is measured
from the catalog (polled every 20 ms). The next run adds a fresh standby and kills the new holder.
Printed side by side with the bound the design promises (4/3 of `beat_lease`). PostgreSQL and MariaDB
run on a database of their own on the local server (created and dropped here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from cachetap.settings import load_settings
from cachetap.store.catalog import open_catalog
from cachetap.store.leases import Leases
from cachetap.tasks.beat import BEAT_LEASE
from cachetap.testing import services
from cachetap.testing.workers import CeleryBeat


def wait_holder(leases: Leases, tag: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while leases.holder(BEAT_LEASE, time.time()) != tag:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{tag} never held the beat lease")
        time.sleep(0.02)
    return time.monotonic() - start


def takeovers(database_url: str, cache_dir: Path, runs: int, lease: float) -> list[float]:
    settings = load_settings(cache_dir=cache_dir, database_url=database_url, beat_lease=lease, log_level="INFO")
    catalog = open_catalog(settings.effective_database_url)
    leases = Leases(catalog)
    beats = [CeleryBeat(settings, "b0").start()]
    times = []
    try:
        wait_holder(leases, beats[0].tag)
        for n in range(1, runs + 1):
            standby = CeleryBeat(settings, f"b{n}").start()
            beats.append(standby)
            deadline = time.monotonic() + 120
            while "standing by" not in standby.log_text():  # up, and asking for the lease
                if time.monotonic() > deadline:
                    raise TimeoutError(f"standby never started:\n{standby.log_text()[-2000:]}")
                time.sleep(0.05)
            holder = beats[-2]
            holder.kill()
            times.append(wait_holder(leases, standby.tag))
    finally:
        for beat in beats:
            beat.stop()
        catalog.engine.dispose()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="beat-bench-") as tmp:
            if backend == "sqlite":
                rows.append((backend, takeovers("", Path(tmp), args.runs, args.lease)))
                continue
            with services.scratch_database(backend) as url:
                rows.append((backend, takeovers(url, Path(tmp), args.runs, args.lease)))
    bound = args.lease * 4 / 3
    print(f"beat takeover after SIGKILL, beat_lease {args.lease:g}s (bound {bound:.2f}s), {args.runs} runs each")
    print(f"{'catalog':<12}{'median s':>10}{'max s':>10}  runs")
    for backend, times in rows:
        print(f"{backend:<12}{statistics.median(times):>10.2f}{max(times):>10.2f}  "
              + " ".join(f"{t:.2f}" for t in times))


if __name__ == "__main__":
    main()
