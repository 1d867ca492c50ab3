"""Offline pipeline speed: `cachetap replay --dry-run` of a mixed capture vs scapy's full dissection.

    .venv/bin/python bench/replay_bench.py [--conversations 2000]

Writes a pcap of HTTP conversations (handshake, one GET, 30 response segments of 1448 bytes and the
client's ACKs: about 1 packet in 60 a GET), then times, in one run, the real console command over it
and scapy reading the same file with full dissection (`rdpcap` + the HTTP layer lookups a straightforward scapy
capture does). Printed side by side, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cachetap.testing.pcaps import http_get_packets, write_capture


def build(path: Path, conversations: int) -> int:
    packets = []
    for n in range(conversations):
        packets += http_get_packets(f"10.0.{n // 250}.{n % 250 + 1}", "192.0.2.10", "mirror.example.org",
                                    f"/pool/main/pkg-{n % 300}.deb", headers={"User-Agent": "apt"},
                                    response_bytes=30 * 1448, client_port=30000 + n % 30000)
    write_capture(path, packets)
    return len(packets)


def time_replay(path: Path) -> tuple[float, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    with tempfile.TemporaryDirectory() as cache:
        env["CACHETAP_CACHE_DIR"] = cache
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "cachetap", "replay", "--dry-run", "-q", str(path)],
                             capture_output=True, text=True, env=env, check=True).stdout
        return time.perf_counter() - started, json.loads(out.splitlines()[-1])["summary"]


def time_scapy(path: Path) -> tuple[float, int]:
    code = ("import sys, time; from scapy.all import rdpcap, Raw, TCP; t = time.perf_counter();"
            "gets = sum(1 for p in rdpcap(sys.argv[1]) if p.haslayer(TCP) and p.haslayer(Raw)"
            " and bytes(p[Raw].load).startswith(b'GET '));"
            "print(time.perf_counter() - t, gets)")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return time.perf_counter() - started, int(out[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.pcap"
        count = build(path, args.conversations)
        ours, summary = time_replay(path)
        theirs, gets = time_scapy(path)
    print(f"{count:,} packets, {args.conversations:,} GETs (whole process, start-up included)")
    print(f"{'cachetap replay --dry-run':<34} {ours:7.2f} s {count / ours:>10,.0f} packets/s"
          f"  requests {summary['requests']}")
    print(f"{'scapy rdpcap + dissection':<34} {theirs:7.2f} s {count / theirs:>10,.0f} packets/s"
          f"  requests {gets}")
    print(f"speed-up {theirs / ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
