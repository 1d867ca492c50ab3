"""How fast `cachetap simulate` replays a Squid access.log, per policy: lines per second, peak RSS.

    python bench/simulate_speed.py                          # 150,000 and 1,000,000 lines, every policy
    python bench/simulate_speed.py --lines 150000 --policies lrfu

Writes a Squid native log of the `lan30d` model of bench/traces.py (seed 30, with as many requests
as `--lines`; one URL per object), then runs the real console command, `cachetap simulate LOG
--policy P --cache-size 5% --json --quiet`, once per policy in a fresh process, and reports its wall
and CPU time (start-up, reading and replaying), lines per CPU second and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traces import MODELS, SEEDS  # noqa: E402

from cachetap.core.policy import POLICIES  # noqa: E402

T0 = 1_700_000_000.0


def write_squid_log(path: Path, model: str, lines: int) -> int:
    trace = MODELS[model](SEEDS[model], lines)
    with open(path, "w") as f:
        f.writelines(f"{T0 + ts:.3f}    120 10.0.{obj % 200}.{obj % 250 + 1} TCP_MISS/200 {size} GET "
                     f"http://dl{obj % 7}.example.com/files/{obj}/file{obj}.bin - HIER_DIRECT/192.0.2.1 "
                     f"application/octet-stream\n" for ts, obj, size in trace)
    return len(trace)


def run(log: Path, policy: str, size: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one `cachetap simulate` run in a child process."""
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "cachetap", "simulate", str(log), "--policy", policy,
                              "--cache-size", size, "--json", "--quiet"], stdout=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(child.pid, 0)   # this child's own peak RSS
    took = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"cachetap simulate failed on {log} with {policy}")
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", default="150000,1000000", help="comma-separated log lengths")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--model", default="lan30d", choices=sorted(MODELS))
    ap.add_argument("--cache-size", default="5%")
    args = ap.parse_args()
    env_dir = tempfile.mkdtemp()
    os.environ.setdefault("CACHETAP_CACHE_DIR", env_dir)
    # CPU seconds as well as wall: on a shared machine the wall time is mostly waiting for a core.
    print(f"{'lines':>10} {'policy':8} {'wall s':>7} {'CPU s':>7} {'lines/CPU s':>12} {'peak RSS MiB':>13}")
    for n in (int(x) for x in args.lines.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "access.log"
            written = write_squid_log(log, args.model, n)
            for policy in args.policies.split(","):
                took, cpu, rss = run(log, policy, args.cache_size)
                print(f"{written:10,} {policy:8} {took:7.1f} {cpu:7.1f} {written / cpu:12,.0f} {rss:13.0f}", flush=True)


if __name__ == "__main__":
    main()
