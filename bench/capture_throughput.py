"""Live capture throughput: how much mixed traffic the capture keeps up with, GETs counted. Needs root.

    .venv/bin/python bench/capture_throughput.py [--rates 50,100,250,500,1000,2000,0] [--seconds 2]
    .venv/bin/python bench/capture_throughput.py --mix get-heavy --consumers cachetap

A pcap of mixed traffic is replayed with tcpreplay onto a veth in a namespace pair (testing/netns.py:
tcpreplay in the client namespace on `c-r`, consumers in the router namespace on `r-c`). In the
default mix one packet in ten is the start of an HTTP GET (a new flow each), the other nine are
1448-byte response segments; in the GET-heavy mix (`--mix get-heavy`) one packet in two is a GET
start, as a LAN of clients fetching small chunks produces, so the per-GET cost of the capture shows
(with one GET in ten frames tcpreplay's top speed runs out first). The frames are addressed to a MAC
nobody owns, so the router's kernel drops them right after the taps.

Two consumers sniff `r-c` in the same run, side by side:
  cachetap: `LiveSource` + `Pipeline`, the real capture path (kernel BPF passes request starts only,
            byte-sliced decode, head parser, rules, cache key), at SCHED_FIFO like `cachetap capture`
            (capture_realtime, on by default; --no-realtime to compare). With --sightings it also
            sends each GET's sighting as `cachetap capture` does (SightingRelay to a child process
            where kombu encodes the batches; its memory transport stands in for the broker).
  scapy:    plain `AsyncSniffer` with full dissection of every packet and no BPF, counting GETs in the
            callback (the straightforward scapy way), at normal priority.
Each rate (tcpreplay --mbps; 0 = --topspeed) gets fresh consumers; a rate's GETs count as missed when a
consumer reports fewer than were sent. The highest achieved rate with zero missed GETs is reported for
each, in Mbit/s and in GETs per second (GETs sent / tcpreplay's own sending time). `--alone` also runs each consumer without the other (2 cores: they compete with tcpreplay too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIXES = {"mixed": 10, "get-heavy": 2}  # one frame in N is the start of a GET
DATA_PAYLOAD = 1448
NOBODY_MAC = bytes.fromhex("020000c0ffee")
SENDER_MAC = bytes.fromhex("020000000001")


# ---- the traffic ---------------------------------------------------------------------------------

def _ipv4(src: bytes, dst: bytes, tcp: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:] + tcp


def _tcp(sport: int, dport: int, seq: int, ack: int, payload: bytes) -> bytes:
    # Checksum left 0: neither consumer verifies it and the frames are dropped right after the taps.
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0) + payload


def write_traffic(path: Path, packets: int, get_every: int = MIXES["mixed"]) -> int:
    """Write `packets` Ethernet frames (GET start every `get_every`-th, from frame 0); returns GETs."""
    server = bytes([10, 2, 0, 1])
    data = bytes(range(256)) * (DATA_PAYLOAD // 256 + 1)
    data = data[:DATA_PAYLOAD]
    gets = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ts = 1_700_000_000
        flow = 0
        seq = 0
        for i in range(packets):
            if i % get_every == 0:
                flow += 1
                client = bytes([10, 1, (flow >> 8) & 0xFF, flow & 0xFF])
                sport = 1024 + (flow * 7) % 60000
                seq = 1000
                payload = (f"GET /files/{flow}/object-{i}.iso HTTP/1.1\r\nHost: bench.test\r\n"
                           f"User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()
                frame = NOBODY_MAC + SENDER_MAC + b"\x08\x00" + _ipv4(client, server, _tcp(sport, 80, seq, 1, payload))
                gets += 1
            else:
                frame = NOBODY_MAC + SENDER_MAC + b"\x08\x00" + _ipv4(server, client, _tcp(80, sport, seq, 1000, data))
                seq += DATA_PAYLOAD
            out.write(struct.pack("<IIII", ts + i // 1_000_000, i % 1_000_000, len(frame), len(frame)))
            out.write(frame)
    return gets


def gets_in_first(n: int, get_every: int) -> int:
    return math.ceil(n / get_every)


def average_frame(path: Path, packets: int) -> float:
    return (path.stat().st_size - 24 - 16 * packets) / packets


# ---- consumers (each its own process in the router namespace) -------------------------------------

def consumer_cachetap(interface: str, realtime: bool, sightings: bool = False) -> None:
    from cachetap.capture.bpf import request_filter
    from cachetap.capture.live import _freeze_startup_objects, _raise_priority, _shorten_switch_interval, act
    from cachetap.capture.pipeline import Pipeline
    from cachetap.capture.sniffer import LiveSource, interface_linktype
    from cachetap.settings import load_settings
    from cachetap.wire import encode_sighting

    with tempfile.TemporaryDirectory() as cache:
        settings = load_settings(cache_dir=cache, http_ports=[80])
        pipeline = Pipeline(settings)
        relay = _sighting_relay(settings) if sightings else None  # else decisions only, nothing queued
        queue = (lambda sighting: relay.add(encode_sighting(sighting))) if relay else None
        source = LiveSource(interface, request_filter([80], interface_linktype(interface)),
                            on_idle=relay.flush if relay else None)
        signal.signal(signal.SIGTERM, lambda *_: source.stop())
        if realtime:
            _raise_priority()
        _shorten_switch_interval()
        _freeze_startup_objects()
        busy = 0.0
        with source:
            print("ready", flush=True)
            for ts, linktype, frame in source:
                started = time.process_time()
                observations = pipeline.feed(ts, linktype, frame)
                if relay is not None:
                    act(observations, frame, pipeline, None, queue)
                busy += time.process_time() - started
            stats = source.stats()
        if relay is not None:
            relay.close()
        summary = pipeline.summary()
        print(json.dumps({"gets": summary["requests"], "frames": stats["received"],
                          "kernel_drops": stats["kernel_drops"], "cpu": time.process_time(),
                          "decisions": summary["decisions"], "rejected": summary["rejected"],
                          "sightings_dropped": relay.counters.dropped if relay else 0}), flush=True)


def _sighting_relay(settings):
    """Sightings as `cachetap capture` sends them: through a SightingRelay to a child whose BatchSender
    has kombu encode every batch as for a broker (its memory transport: no broker in the namespace)."""
    from celery import Celery

    from cachetap.capture.batcher import BatchSender, make_analyze_sender
    from cachetap.capture.relay import SightingRelay

    broker = Celery("bench", broker="memory://")
    return SightingRelay(lambda: BatchSender(make_analyze_sender(broker), size=settings.batch_size,
                                             interval=settings.batch_interval, buffer=settings.batch_buffer))


def consumer_scapy(interface: str) -> None:
    from scapy.all import TCP, AsyncSniffer, Raw

    counts = {"gets": 0, "frames": 0}

    def on_packet(pkt) -> None:  # the straightforward way: every packet dissected, the test in Python
        counts["frames"] += 1
        if TCP in pkt and pkt[TCP].dport == 80 and Raw in pkt and pkt[Raw].load.startswith(b"GET "):
            counts["gets"] += 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sniffer = AsyncSniffer(iface=interface, prn=on_packet, store=False, promisc=True)
    sniffer.start()
    while not getattr(sniffer, "running", False):
        time.sleep(0.01)
    time.sleep(0.2)  # the socket is opened inside the sniffer thread
    print("ready", flush=True)
    stop.wait()
    sniffer.stop()
    print(json.dumps({**counts, "cpu": time.process_time()}), flush=True)


# ---- orchestration --------------------------------------------------------------------------------

def _me(*args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), *args]


def _start(topo, kind: str, realtime: bool, sightings: bool = False):
    argv = ["--consumer", kind, "--interface", topo.router_client_if]
    if not realtime:
        argv.append("--no-realtime")
    if sightings:
        argv.append("--sightings")
    proc = topo.router.popen(_me(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"{kind} consumer did not start: {line!r} {proc.stderr.read()}")
    return proc


def _finish(proc) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"consumer gave no result: {err[-2000:]}")
    return json.loads(lines[-1])


RATED = re.compile(r"Rated:\s+([\d.]+) Bps,\s+([\d.]+) Mbps,\s+([\d.]+) pps")


ACTUAL = re.compile(r"Actual:\s+\d+ packets \(\d+ bytes\) sent in ([\d.]+) seconds")


def replay_once(topo, pcap: Path, mbps: float, packets: int, consumers: list[str], realtime: bool,
                drain: float, get_every: int, sightings: bool = False) -> dict:
    procs = {kind: _start(topo, kind, realtime, sightings) for kind in consumers}
    speed = ["--topspeed"] if mbps == 0 else [f"--mbps={mbps}"]
    result = topo.client.run(["tcpreplay", "-i", topo.client_if, "--preload-pcap", f"--limit={packets}",
                              *speed, str(pcap)], timeout=600)
    time.sleep(drain)  # let the consumers work through what their sockets hold
    match = RATED.search(result.stdout)
    sent = re.search(r"Successful packets:\s+(\d+)", result.stdout)
    row = {"asked_mbps": mbps, "sent_packets": int(sent.group(1)) if sent else packets,
           "mbps": float(match.group(2)) if match else float("nan"),
           "pps": float(match.group(3)) if match else float("nan")}
    row["sent_gets"] = gets_in_first(row["sent_packets"], get_every)
    actual = ACTUAL.search(result.stdout)
    seconds = float(actual.group(1)) if actual else float("nan")
    row["gets_per_s"] = row["sent_gets"] / seconds if seconds > 0 else float("nan")
    for kind, proc in procs.items():
        row[kind] = _finish(proc)
    return row


def measure(rates: list[float], seconds: float, min_packets: int, alone: bool, realtime: bool, drain: float,
            get_every: int = MIXES["mixed"], consumers_run: tuple[str, ...] = ("cachetap", "scapy"),
            sightings: bool = False) -> list:
    from cachetap.testing.netns import Topology

    rows = []
    with tempfile.TemporaryDirectory(prefix="cachetap-tput-") as work, Topology() as topo:
        # Big enough for the top rate: 2.5 Gbit/s for `seconds` at ~1.3 kB per frame.
        capacity = max(min_packets, int(2_500e6 / 8 / 1300 * seconds))
        pcap = Path(work) / "mixed.pcap"
        write_traffic(pcap, capacity, get_every)
        avg = average_frame(pcap, capacity)
        print(f"traffic: {capacity:,} frames, 1 in {get_every} a GET start, average frame {avg:.0f} bytes "
              f"(pcap {pcap.stat().st_size / 1e6:.0f} MB)", flush=True)
        runs = [list(consumers_run)] + ([[c] for c in consumers_run] if alone and len(consumers_run) > 1 else [])
        for consumers in runs:
            for mbps in rates:
                wanted = capacity if mbps == 0 else int(mbps * 1e6 / 8 / avg * seconds)
                packets = min(capacity, max(min_packets, wanted))
                row = replay_once(topo, pcap, mbps, packets, consumers, realtime, drain, get_every, sightings)
                row["consumers"] = "+".join(consumers)
                rows.append(row)
                cells = "  ".join(f"{k}: {row[k]['gets']}/{row['sent_gets']} GETs" for k in consumers)
                print(f"  [{row['consumers']}] asked {f'{mbps:g}' if mbps else 'top':>5} Mbps -> {row['mbps']:8.1f} Mbps "
                      f"{row['pps']:9.0f} pps {row['gets_per_s']:9.0f} GETs/s  {cells}", flush=True)
    return rows


def report(rows: list[dict], get_every: int = MIXES["mixed"]) -> None:
    print(f"\nCapture throughput (GETs counted / sent; 1 in {get_every} frames a GET start)")
    print(f"{'run':<16}{'asked':>8}{'Mbit/s':>10}{'pps':>10}{'GETs/s':>10}{'cachetap GETs':>16}{'drops':>8}"
          f"{'scapy GETs':>14}")
    for row in rows:
        ours, theirs = row.get("cachetap"), row.get("scapy")
        ours_cell = f"{ours['gets']}/{row['sent_gets']}" if ours else "-"
        drops = str(ours["kernel_drops"]) if ours else "-"
        theirs_cell = f"{theirs['gets']}/{row['sent_gets']}" if theirs else "-"
        asked = f"{row['asked_mbps']:g}" if row["asked_mbps"] else "top"
        print(f"{row['consumers']:<16}{asked:>8}{row['mbps']:>10.1f}{row['pps']:>10.0f}{row['gets_per_s']:>10.0f}"
              f"{ours_cell:>16}{drops:>8}{theirs_cell:>14}")
    for row in rows:
        if row.get("cachetap", {}).get("sightings_dropped"):
            print(f"  note: at {row['asked_mbps']:g} Mbit/s the sighting sender lagged: "
                  f"{row['cachetap']['sightings_dropped']} sightings dropped")
    print("\nHighest achieved rate with zero missed GETs:")
    for run in sorted({r["consumers"] for r in rows}, key=len, reverse=True):
        for kind in run.split("+"):
            ok = [r for r in rows if r["consumers"] == run and r[kind]["gets"] >= r["sent_gets"]]
            best = max(ok, key=lambda r: r["mbps"], default=None)
            figure = (f"{best['mbps']:.0f} Mbit/s ({best['pps']:.0f} pps, {best['gets_per_s']:.0f} GETs/s)"
                      if best else "none of the rates tried")
            print(f"  {kind:<9} (run {run}): {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="1,2,5,10,25,50,100,250,500,1000,1500,2000,0",
                        help="tcpreplay --mbps values, comma-separated; 0 = --topspeed")
    parser.add_argument("--seconds", type=float, default=2.0, help="replay length per rate")
    parser.add_argument("--min-packets", type=int, default=500)
    parser.add_argument("--drain", type=float, default=1.5, help="seconds between replay end and the count")
    parser.add_argument("--alone", action="store_true", help="also run each consumer without the other")
    parser.add_argument("--no-realtime", action="store_true", help="cachetap consumer at normal priority")
    parser.add_argument("--mix", choices=sorted(MIXES), default="mixed",
                        help="mixed: 1 frame in 10 a GET start; get-heavy: 1 in 2")
    parser.add_argument("--consumers", default="cachetap,scapy", help="consumers to run, comma-separated")
    parser.add_argument("--consumer", choices=["cachetap", "scapy"])
    parser.add_argument("--sightings", action="store_true",
                        help="cachetap consumer also sends a sighting per GET, as `cachetap capture` does")
    parser.add_argument("--interface")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.consumer == "cachetap":
        consumer_cachetap(args.interface, realtime=not args.no_realtime, sightings=args.sightings)
        return
    if args.consumer == "scapy":
        consumer_scapy(args.interface)
        return
    from cachetap.testing.netns import netns_problem
    if problem := netns_problem():
        sys.exit(f"cannot run: {problem}")
    rates = [float(r) for r in args.rates.split(",")]
    consumers = tuple(c for c in args.consumers.split(",") if c)
    if not consumers or set(consumers) - {"cachetap", "scapy"}:
        sys.exit(f"--consumers: choose from cachetap, scapy (got {args.consumers!r})")
    rows = measure(rates, args.seconds, args.min_packets, args.alone, not args.no_realtime, args.drain,
                   MIXES[args.mix], consumers, args.sightings)
    report(rows, MIXES[args.mix])
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
