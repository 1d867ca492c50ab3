"""Byte hit ratio of cachetap's cache policies beside libCacheSim's, on generated traces.

    pip install -e '.[bench]'          # libcachesim==0.3.5 (not a runtime dependency)
    python bench/policy_bench.py                       # every trace, 150,000 requests, 1/5/10/25%
    python bench/policy_bench.py --traces lan30d --sizes 5 --requests 50000   # a quick look

Traces come from bench/traces.py (models and seeds are written down there). Cache sizes are
percentages of each trace's unique bytes. Columns:
  * libCacheSim policies, run by libCacheSim itself on the same trace (a CSV it reads);
  * cachetap's policies run by `cachetap.core.simulation` in the same model as libCacheSim: an object
    may be admitted on its first miss (admission_threshold 0) and is there for its next request;
  * `bypass`: cachetap's default policy with the default settings (admission_threshold 1) in the
    bypass model: requests go to the origin until the download at --rate has finished, BHR counts
    only bytes served from the cache, and `saved` subtracts the bytes the downloads cost;
  * `belady`: the exact offline Belady reference of bench/belady.py;
  * libCacheSim's own BeladySize (offline, 128 sampled objects per eviction), fed the trace in its
    binary oracleGeneral format, which carries each request's next-access time (with the CSV reader
    it has no next-access times and did not finish in minutes).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from belady import belady_bhr  # noqa: E402
from traces import MODELS, SEEDS, unique_bytes  # noqa: E402

from cachetap.core.policy import DEFAULT_POLICY, POLICIES, make_policy  # noqa: E402
from cachetap.core.policy.memory import MemoryStore  # noqa: E402
from cachetap.core.simulation import SimConfig, Simulation  # noqa: E402
from cachetap.settings import Settings  # noqa: E402

LCS_ONLINE = ["LRU", "FIFO", "Clock", "GDSF", "LFUDA", "ARC", "S3FIFO", "Sieve", "WTinyLFU", "TwoQ", "SLRU",
              "LIRS", "LHD", "Cacheus", "LeCaR", "Hyperbolic", "MQ", "Clock2QPlus", "GLCache", "LRUK"]


def _lcs_child(path: str, policy: str, capacity: int, out) -> None:
    import libcachesim as lcs

    if path.endswith(".oracleGeneral"):
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    else:
        params = lcs.ReaderInitParam(has_header=False, delimiter=",", obj_id_is_num=True)
        params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3
        reader = lcs.TraceReader(path, lcs.TraceType.CSV_TRACE, params)
    _omr, bmr = getattr(lcs, policy)(capacity).process_trace(reader)
    out.put(1.0 - bmr)


def write_oracle_general(trace, path: str) -> None:
    """libCacheSim's oracleGeneral binary trace: per request uint32 time, uint64 id, uint32 size (kB),
    int64 index of the object's next request (-1: none)."""
    following = [-1] * len(trace)
    seen: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        following[i] = seen.get(trace[i][1], -1)
        seen[trace[i][1]] = i
    with open(path, "wb") as f:
        f.writelines(struct.pack("<IQIq", int(ts), obj + 1, max(1, size // 1000), following[i])
                     for i, (ts, obj, size) in enumerate(trace))


def lcs_run(csv_path: str, policy: str, capacity: int, timeout: float) -> float:
    """BHR of a libCacheSim policy, in a child process: some hang or exit on some traces (NaN then)."""
    out = multiprocessing.Queue()
    child = multiprocessing.Process(target=_lcs_child, args=(csv_path, policy, capacity, out))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return float("nan")
    return out.get() if not out.empty() else float("nan")


def ours(trace, name: str, capacity: int, config: SimConfig, saved: bool = False):
    """BHR of a cachetap policy (and with `saved`, net bytes saved as a share of the bytes asked)."""
    sim = Simulation(make_policy(name, MemoryStore(), capacity), config)
    for ts, obj, size in trace:
        sim.request(ts, str(obj), size)
    result = sim.finish(trace[-1][0])
    return (result.byte_hit_ratio, result.net_saved / result.bytes_requested) if saved else result.byte_hit_ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=",".join(MODELS), help="comma-separated models from bench/traces.py")
    ap.add_argument("--requests", type=int, default=150_000)
    ap.add_argument("--seed", type=int, help="draw every trace with this seed instead of its own (a robustness check)")
    ap.add_argument("--sizes", default="1,5,10,25", help="cache sizes, percent of unique bytes")
    ap.add_argument("--lcs", default=",".join(LCS_ONLINE), help="libCacheSim policies ('' for none)")
    ap.add_argument("--ours", default=",".join(POLICIES), help="cachetap policies")
    ap.add_argument("--rate", type=float, default=12.5e6, help="download rate in bytes/s for the bypass column")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a libCacheSim run may take")
    args = ap.parse_args()
    try:
        import libcachesim  # noqa: F401
    except ImportError:
        sys.exit("libcachesim is missing: pip install -e '.[bench]' (or pip install libcachesim==0.3.5)")
    settings = Settings()
    instant = SimConfig(admission_threshold=0, admission_window=settings.admission_window,
                        default_ttl=settings.default_ttl, max_ttl=settings.max_ttl,
                        revalidate_interval=settings.revalidate_interval)
    bypass = replace(instant, admission_threshold=settings.admission_threshold, download_rate=args.rate)
    sizes = [float(s) for s in args.sizes.split(",")]
    lcs_names = [p for p in args.lcs.split(",") if p]
    our_names = [p for p in args.ours.split(",") if p]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.traces.split(","):
            trace = MODELS[model](args.seed if args.seed is not None else SEEDS[model], args.requests)
            ub = unique_bytes(trace)
            csv_path = os.path.join(tmp, f"{model}.csv")
            with open(csv_path, "w") as f:
                # In kB: libCacheSim overflows 32-bit counters with byte-sized caches of terabytes.
                f.writelines(f"{int(ts)},{obj + 1},{max(1, size // 1000)}\n" for ts, obj, size in trace)
            oracle_path = os.path.join(tmp, f"{model}.oracleGeneral")
            write_oracle_general(trace, oracle_path)
            print(f"\n## {model}: {len(trace)} requests, {len({o for _, o, _ in trace})} objects, "
                  f"{ub / 1e12:.2f} TB unique, {sum(s for *_, s in trace) / 1e12:.1f} TB requested")
            rows: dict[str, list[float]] = {}
            took: dict[str, float] = {}
            for pct in sizes:
                cap = int(ub * pct / 100)
                for name in lcs_names:
                    t0 = time.time()
                    rows.setdefault(f"lcs:{name}", []).append(lcs_run(csv_path, name, cap // 1000, args.timeout))
                    took[f"lcs:{name}"] = took.get(f"lcs:{name}", 0) + time.time() - t0
                for name in our_names:
                    t0 = time.time()
                    rows.setdefault(f"cachetap:{name}", []).append(ours(trace, name, cap, instant))
                    took[f"cachetap:{name}"] = took.get(f"cachetap:{name}", 0) + time.time() - t0
                bhr, saved = ours(trace, DEFAULT_POLICY, cap, bypass, saved=True)
                rows.setdefault(f"bypass:{DEFAULT_POLICY}@{args.rate / 1e6:g}MB/s BHR", []).append(bhr)
                rows.setdefault(f"bypass:{DEFAULT_POLICY} saved/asked", []).append(saved)
                rows.setdefault("belady (exact, offline)", []).append(belady_bhr(trace, cap))
                rows.setdefault("libCacheSim BeladySize (offline)", []).append(
                    lcs_run(oracle_path, "BeladySize", cap // 1000, args.timeout))
            print_table(rows, sizes, took)


def print_table(rows: dict[str, list[float]], sizes: list[float], took: dict[str, float]) -> None:
    online = {k: v for k, v in rows.items() if k.startswith("lcs:")}
    ours_default = rows.get(f"cachetap:{DEFAULT_POLICY}")
    best = [max((v[i] for v in online.values() if v[i] == v[i]), default=0.0) if online else 0.0 for i in range(len(sizes))]
    print(f"{'policy':34}" + "".join(f"{f'{s:g}%':>9}" for s in sizes) + "   seconds")
    for name, values in rows.items():
        marks = "".join(f"{v:9.4f}" for v in values)
        print(f"{name:34}{marks}   {took.get(name, 0):.1f}")
    print(f"{'best online libCacheSim':34}" + "".join(f"{b:9.4f}" for b in best))
    belady = rows["belady (exact, offline)"]
    if ours_default:
        print(f"{'default - best online':34}" + "".join(f"{o - b:+9.4f}" for o, b in zip(ours_default, best)))
        print(f"{'default / belady':34}" + "".join(f"{o / b if b else 0:9.3f}" for o, b in zip(ours_default, belady)))
        sampled = rows["libCacheSim BeladySize (offline)"]
        print(f"{'default / BeladySize':34}" + "".join(f"{o / b if b == b and b else 0:9.3f}"
                                                         for o, b in zip(ours_default, sampled)))


if __name__ == "__main__":
    main()
