"""RSS of the real `cachetap capture` process in redirect mode with one million ready keys. Needs root.

    .venv/bin/python bench/capture_memory.py [--keys 1000000]

Fills a SQLite catalog with N ready entries, starts `cachetap capture` on the loopback interface in
redirect mode (index loaded from the catalog at start, as in production), waits for its
"redirect mode: N ready keys" log line and prints its RSS from /proc, next to the same process with an
empty catalog. The standing target is under 150 MB with one million keys. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from cachetap.store.db import make_engine, upgrade
from cachetap.store.catalog import ENTRIES


def fill(url: str, count: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    now = time.time()
    batch = []
    with engine.begin() as conn:
        for n in range(count):
            key = hashlib.sha256(str(n).encode()).hexdigest()[:32]
            batch.append({"key": key, "url": f"http://files.test/{n}.iso", "host": "files.test",
                          "filename": f"{n}.iso", "state": "ready", "hits": 2, "first_seen": now,
                          "last_hit": now, "expires_at": now + 86400, "blob": "ab" * 32, "stored_size": 1,
                          "attempts": 0, "bytes_done": 0, "speed": 0, "created_at": now, "updated_at": now})
            if len(batch) == 20_000:
                conn.execute(sa.insert(ENTRIES), batch)
                batch.clear()
        if batch:
            conn.execute(sa.insert(ENTRIES), batch)


def capture_rss(cache_dir: Path, keys: int) -> tuple[int, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(CACHETAP_CACHE_DIR=str(cache_dir), CACHETAP_MODE="redirect", CACHETAP_INTERFACE="lo",
               CACHETAP_HTTP_PORTS="[18080]", CACHETAP_SERVE_HOST="127.0.0.1", CACHETAP_SERVE_PORT="18642",
               CACHETAP_CAPTURE_REALTIME="false", CACHETAP_LOG_LEVEL="INFO")  # the index line is INFO
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cachetap", "capture"], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:
            if "redirect mode:" in line:
                loaded = time.monotonic() - started
                assert f"{keys} ready keys" in line, line
                break
        else:
            raise RuntimeError("capture exited before loading its index")
        time.sleep(1.0)
        rss_kib = next(int(l.split()[1]) for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS"))
        return rss_kib, loaded
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (raw sockets)", file=sys.stderr)
        return 2
    print(f"{'ready keys':>12} {'capture RSS':>12} {'index load':>11}")
    for keys in (0, args.keys):
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = Path(tmp)
            fill(f"sqlite:///{cache_dir / 'catalog.sqlite'}", keys)
            rss_kib, loaded = capture_rss(cache_dir, keys)
            print(f"{keys:>12,} {rss_kib / 1024:>9.1f} MiB {loaded:>9.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
