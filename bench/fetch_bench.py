"""Fetch one big object three ways and print the times side by side (never asserted).

    .venv/bin/python bench/fetch_bench.py [--size-mib 256] [--rate-mb 20] [--runs 3]

The origin is cachetap's test origin (testing/origin.py) in a process of its own on a free loopback
port, serving the file with sendfile; the kernel paces every connection to `--rate-mb` MB/s from its
first byte (SO_MAX_PACING_RATE). nginx's `limit_rate`, used before, grants every request a second's
worth of data up front, and aria2 fetches 1 MiB pieces with a request each, so it never limited
anything: the "20 MB/s" origin ran at loopback speed. Compared:
  cachetap  download() from call to published (aria2 via RPC, BLAKE3 digest, re-HEAD, fsync, rename);
            the daemon is started beforehand, as in a running worker
  queued    the whole path: a real download worker (embedded broker), from send_task of the job the
            analyze stage queues to the worker's published_at in the catalog
  aria2c    a bare `aria2c` process with the same split/connection/allocation options
  curl      one connection
  small     the same paths for a `--small-kib` object, `--small-repeat` times per run: what a fetch
            costs besides moving bytes (a bare aria2c pays its process start, the queue its pickup,
            claim and catalog writes, download() its RPCs, re-HEAD, hash and publish)
  defaults  download() on default settings (16 connections, at most 4 per address) from an origin
            whose name resolves to four loopback addresses (127.0.0.2-5, the same files), and from
            one address: what splitting over a CDN's addresses keeps of the 16-connection speed
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cachetap.fetch.aria2 import ARIA2C, Aria2Daemon, Aria2Options
from cachetap.fetch.download import download
from cachetap.store.blobs import BlobStore, file_digest
from cachetap.core.keys import cache_key, host_of
from cachetap.core.types import Sighting
from cachetap.fetch.probe import probe
from cachetap.settings import load_settings
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.store.evict import evict
from cachetap.tasks.app import create_app
from cachetap.wire import DOWNLOAD_FETCH, DownloadJob
from cachetap.testing.origin import generated_chunks
from cachetap.testing.workers import CeleryWorker
from cachetap.core.lifecycle import EntryState, Event

MULTI_ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def start_origin(www: Path, rate: int, addresses: list[str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """The test origin in a process of its own, each connection paced to `rate` by the kernel."""
    listen = [arg for address in addresses or [] for arg in ("--address", address)]
    proc = subprocess.Popen([sys.executable, "-m", "cachetap.testing.origin", "--dir", str(www),
                             "--rate", str(rate), *listen], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the origin did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1].strip("/\n"))


def write_object(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        for piece in generated_chunks("bench", 0, size):
            fh.write(piece)


class QueuedFetch:
    """A real `celery worker -Q download` and the catalog; `run(url)` queues as analyze does."""

    def __init__(self, cache_dir: Path) -> None:
        # One origin address here, so the 16 connections a CDN with several addresses gets by default
        # (4 per address) are asked for explicitly, like the bare aria2c run beside it.
        self.settings = load_settings(cache_dir=cache_dir, min_size=0, fetch_allow_networks=LOOPBACK_NETWORKS,
                                      download_connections_per_server=16)
        self.app = create_app(self.settings)
        self.catalog = self.app.catalog
        self.worker = CeleryWorker(self.settings, ["download"], pool="threads").start()

    def run(self, url: str) -> float:
        key = cache_key(url, {})
        now = time.time()
        self.catalog.record_sightings([Sighting(now, "10.0.0.5", 1, "127.0.0.1", 80, "GET", host_of(url), url,
                                                key, url)], window=3600, now=now)
        token = str(uuid.uuid4())
        assert self.catalog.claim(key, [EntryState.COUNTING], token, now=now, stale_after=600)
        result = probe(url, self.app.resolver, 30)
        self.catalog.set_probe(key, result, Event.PROBE_ACCEPTED, token=token, claimed_at=time.time())
        sent_at = time.time()
        self.app.send_task(DOWNLOAD_FETCH, args=[DownloadJob.from_probe(key, url, result, token).to_message()], queue="download")
        deadline = time.monotonic() + 600
        while (entry := self.catalog.get(key)).state != EntryState.READY:
            if entry.state == EntryState.FAILED or time.monotonic() > deadline:
                raise RuntimeError(f"queued download did not finish: {entry.state} {entry.reason}")
            time.sleep(0.01)
        evict(self.catalog, BlobStore(self.settings.cache_dir), key, "bench")
        return entry.published_at - sent_at

    def close(self) -> None:
        self.worker.stop()


def bare_aria2c(options: Aria2Options, out_dir: Path, url: str) -> list[str]:
    """A plain aria2c run with the options download() gives the daemon, into out_dir/aria2c.iso."""
    return [ARIA2C, "--no-conf", "-q", f"-s{options.split}", f"-x{options.max_connection_per_server}",
            f"-k{options.min_split_size}", f"--stream-piece-selector={options.piece_selector}",
            "--file-allocation=none", "--disk-cache=0",
            "--allow-overwrite=true", "--auto-file-renaming=false", "--async-dns=false",
            f"--dir={out_dir}", "--out=aria2c.iso", url]


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rate-mb", type=float, default=20.0, help="per-connection limit, MB/s (10^6 bytes)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--piece-selector", default="inorder", help="aria2 --stream-piece-selector")
    ap.add_argument("--small-kib", type=int, default=1024, help="size of the object of the fixed-cost rows")
    ap.add_argument("--small-repeat", type=int, default=5, help="small fetches per path and run")
    args = ap.parse_args()
    size = args.size_mib << 20
    small = args.small_kib << 10
    options = Aria2Options(piece_selector=args.piece_selector, max_connection_per_server=16)  # -s16 -x16 -k1M
    work = Path(tempfile.mkdtemp(prefix="cachetap-bench-"))
    (work / "www").mkdir()
    write_object(work / "www" / "object.iso", size)
    write_object(work / "www" / "small.iso", small)
    origin, port = start_origin(work / "www", int(args.rate_mb * 1e6))
    url = f"http://127.0.0.1:{port}/object.iso"
    mirrors, mirrors_port = start_origin(work / "www", int(args.rate_mb * 1e6), MULTI_ADDRESSES)
    defaults = Aria2Options.from_settings(load_settings(cache_dir=work / "defaults"))
    blobs = BlobStore(work / "cache")
    out_dir = work / "out"
    out_dir.mkdir()
    times: dict[str, list[float]] = {"cachetap download()": [], "cachetap queued": [], "bare aria2c": [],
                                     "curl (1 connection)": [], "digest alone (floor)": [],
                                     "defaults, 4 addresses": [], "defaults, 1 address": [],
                                     "small: download()": [], "small: queued": [], "small: bare aria2c": []}
    queued = QueuedFetch(work / "queued")
    try:
        with Aria2Daemon(work / "aria2", options) as daemon:
            queued.run(f"{url}?warm-up")  # the worker starts its aria2c on its first job
            for run in range(args.runs):
                job = {"key": f"{run:032x}", "url": url, "size": size, "etag": None,
                       "last_modified": None, "content_type": None, "claim": "bench"}
                result = {}
                times["cachetap download()"].append(
                    timed(lambda: result.update(r=download(job, daemon, blobs, options))))
                blobs.remove(result["r"].digest)
                times["cachetap queued"].append(queued.run(f"{url}?run={run}"))
                # Default settings: a name with four addresses (as the resolver pins them), then one.
                for name, addresses, at in (("defaults, 4 addresses", MULTI_ADDRESSES, mirrors_port),
                                            ("defaults, 1 address", ["127.0.0.1"], port)):
                    pinned = {**job, "url": f"http://mirrors.test:{at}/object.iso", "addresses": addresses}
                    times[name].append(timed(lambda: result.update(r=download(pinned, daemon, blobs, defaults))))
                    blobs.remove(result["r"].digest)

                target = out_dir / "aria2c.iso"
                times["bare aria2c"].append(timed(lambda: subprocess.run(bare_aria2c(options, out_dir, url),
                                                                         check=True)))
                target.unlink()

                small_url = url.replace("/object.iso", "/small.iso")
                for repeat in range(args.small_repeat):
                    small_job = {**job, "key": f"{run:016x}{repeat:016x}", "url": small_url, "size": small}
                    times["small: download()"].append(
                        timed(lambda: result.update(r=download(small_job, daemon, blobs, options))))
                    blobs.remove(result["r"].digest)
                    times["small: queued"].append(queued.run(f"{small_url}?run={run}.{repeat}"))
                    times["small: bare aria2c"].append(
                        timed(lambda: subprocess.run(bare_aria2c(options, out_dir, small_url), check=True)))
                    target.unlink()

                target = out_dir / "curl.iso"
                times["curl (1 connection)"].append(
                    timed(lambda: subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)))
                target.unlink()
                # The content hash is the floor for download(): it cannot publish before it is known.
                times["digest alone (floor)"].append(timed(lambda: file_digest(work / "www" / "object.iso")))
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
    finally:
        queued.close()
        for proc in (origin, mirrors):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.size_mib} MiB from an origin paced to {args.rate_mb:g} MB/s per connection, "
          f"aria2 -s{options.split} -x{options.max_connection_per_server} -k{options.min_split_size >> 20}M, "
          f"{args.runs} runs, {os.cpu_count()} CPUs")
    print(f"{'method':<22}{'best s':>9}{'median s':>10}{'MB/s (median)':>15}")
    for name, values in times.items():
        if name.startswith("small: "):
            continue
        med = statistics.median(values)
        print(f"{name:<22}{min(values):>9.2f}{med:>10.2f}{size / med / 1e6:>15.0f}")
    ratio = statistics.median(times["cachetap download()"]) / statistics.median(times["bare aria2c"])
    print(f"cachetap / bare aria2c (median): {ratio:.3f}x  (target <= 1.05x)")
    ratio = statistics.median(times["cachetap queued"]) / statistics.median(times["bare aria2c"])
    print(f"cachetap queued / bare aria2c (median): {ratio:.3f}x")
    print(f"fixed cost: a {args.small_kib} KiB object, {args.small_repeat * args.runs} fetches per path "
          f"(interleaved)")
    print(f"{'method':<22}{'best ms':>9}{'median ms':>11}{'vs bare (median)':>18}")
    bare_small = statistics.median(times["small: bare aria2c"])
    for name in ("small: bare aria2c", "small: download()", "small: queued"):
        values = times[name]
        med = statistics.median(values)
        print(f"{name[7:]:<22}{min(values) * 1000:>9.1f}{med * 1000:>11.1f}{med - bare_small:>+17.3f}s")
    print(f"defaults: -s{defaults.split} -x{defaults.max_connection_per_server} per address")
    for name in ("defaults, 4 addresses", "defaults, 1 address"):
        ratio = statistics.median(times[name]) / statistics.median(times["bare aria2c"])
        print(f"cachetap {name} / bare aria2c -x16 on one address (median): {ratio:.3f}x")


if __name__ == "__main__":
    main()
