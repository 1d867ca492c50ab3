"""Redirect fast path figures: injection latency, race win rate, hot index memory. Needs root.

    .venv/bin/python bench/redirect_latency.py [--requests 1000] [--race-requests 300] [--load-mbps 1000]

In a namespace topology (client <-> router <-> origin, testing/netns.py) a client makes real TCP
connections one after the other; a sniff loop on the router's client-side interface answers every GET
with a 302, once with our `Injector` (raw AF_PACKET, hand-built frames) and once the straightforward
scapy way (`scapy.send()` per packet). Latency is from the kernel's capture timestamp of the GET to right after
the 302's send call returned. The race win rate is the share of requests whose client reads the 302
before the origin's own answer, for an origin that answers after 0.5 (a CDN node next door), 1, 2, 5
and 10 ms.
The "capture" row is the production path as `cachetap capture` runs it in redirect mode: LiveSource
(kernel BPF) + Pipeline (byte-sliced decode, head parser, rules, cache key) + Redirector (a real
HotIndex holding the keys of the bench's URLs, a real HealthGate on a real cache server, scope and loop
guards) + Injector, at SCHED_FIFO as with capture_realtime (the default). The other rows use a minimal
sniff loop (scapy's L2listen, no parsing) around the injector alone.
Under load: the capture path answers IPv4 GETs once more while tcpreplay, in the client namespace on
the same veth, pushes capture_throughput.py's mixed traffic (1 frame in 10 a GET start of another
flow, the rest 1448-byte segments; --unique-ip loops) at --load-mbps; tcpreplay's own "Rated:" line
says what it reached (two cores carry tcpreplay, the capture, the client and the origin).
Figures are printed side by side, never asserted. Roles (--role) run inside the namespaces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

GET_FILTER = ("(ip and tcp dst port 80 and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420)"
              " or (ip6 and tcp dst port 80)")
RACE_DELAYS_MS = (0.5, 1, 2, 5, 10)
LATENCY_DELAY_MS = 200  # the origin answers late, so the client always waits for the redirect
LOAD_DELAY_MS = LATENCY_DELAY_MS + 2  # the latency phase under background load (its own paths)
LOAD_FRAMES = 60_000    # frames in the background pcap, looped with --unique-ip
MAX_COUNT = 20_000      # requests per phase at most (the capture mode indexes the keys of all of them)
LABELS = {"raw": "Injector (raw AF_PACKET)", "raw-fifo": "Injector, sniffer at SCHED_FIFO",
          "capture": "cachetap capture path (FIFO)", "scapy": "scapy send() per packet"}
MODES = tuple(LABELS)


# ---- roles (each runs in its own process inside a namespace) -------------------------------------

def bench_path(delay_ms: float, i: int) -> str:
    return f"/d/{delay_ms:g}/{i}.iso"


def role_origin(port: int) -> None:
    """An HTTP origin that answers GET /d/<ms>/... after <ms> milliseconds."""
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("::", port))
    server.listen(512)
    body = b"x" * 512

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                path = data.split(b" ", 2)[1].decode()
                delay_ms = float(path.split("/")[2]) if path.startswith("/d/") else 0.0
                time.sleep(delay_ms / 1000)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except (OSError, ValueError, IndexError):
                pass  # reset by the injected RST, or a client that left

    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def role_router(mode: str, capture_if: str, origin_if: str, origin_mac: str, location_base: str, out: str) -> None:
    """Sniff GETs on `capture_if` and answer each with a 302, recording the latency per GET."""
    from scapy.all import conf

    from cachetap.capture.inject import Injector, redirect_payload
    from cachetap.capture.linklayer import decode_frame
    from cachetap.core.types import Segment

    listen = conf.L2listen(iface=capture_if, filter=GET_FILTER)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    records: list[tuple[str, float, float]] = []  # (path, capture -> 302 sent, recv returned -> 302 sent)
    if mode == "raw-fifo":
        # Real-time priority: the kernel wakes the sniffer ahead of ordinary processes.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))

    if mode == "capture":
        role_capture(capture_if, origin_if, origin_mac, location_base, out, stop)
        return
    if mode in ("raw", "raw-fifo"):
        injector = Injector(capture_if, origin_interface=origin_if, origin_mac=origin_mac)

        def answer(seg: Segment, frame: bytes, location: str) -> float:
            injector.redirect(seg, frame, location)
            return injector.last_sent_at
    else:
        from scapy.all import IP, TCP, IPv6, send

        def answer(seg: Segment, frame: bytes, location: str) -> float:
            # The straightforward way: scapy builds each packet and send() opens a socket and routes per call.
            l3 = IPv6 if ":" in seg.src else IP
            payload = redirect_payload(location)
            end = seg.seq + len(seg.payload)
            send(l3(src=seg.dst, dst=seg.src) / TCP(sport=seg.dport, dport=seg.sport, seq=seg.ack, ack=end,
                                                    flags="FPA") / payload, verbose=0)
            sent_at = time.time()
            send(l3(src=seg.src, dst=seg.dst) / TCP(sport=seg.sport, dport=seg.dport, seq=end, ack=seg.ack,
                                                    flags="RA"), verbose=0)
            return sent_at

    print("ready", flush=True)
    while not stop.is_set():
        if not select.select([listen.ins], [], [], 0.1)[0]:
            continue
        _, frame, ts = listen.recv_raw(65535)
        received = time.time()
        if frame is None:
            continue
        seg = decode_frame(1, frame, ts)
        if not isinstance(seg, Segment) or not seg.payload.startswith(b"GET /d/"):
            continue
        path = seg.payload.split(b" ", 2)[1]
        key = hashlib.sha256(path).hexdigest()[:32]  # a different Location per object, as in production
        sent_at = answer(seg, frame, f"{location_base}/c/{key}/file.iso")
        records.append((path.decode(), sent_at - ts, sent_at - received))
    Path(out).write_text(json.dumps(records))


def role_capture(capture_if: str, origin_if: str, origin_mac: str, location_base: str, out: str,
                 stop: threading.Event) -> None:
    """The production fast path, composed as capture/live.py's FastPath does, and acted on by its `act`
    (302 first, then the sighting through a SightingRelay to a BatchSender in its own process)."""
    import tempfile

    from cachetap.capture.bpf import request_filter
    from cachetap.capture.health import HealthGate
    from cachetap.capture.hotindex import HotIndex
    from cachetap.capture.inject import Injector
    from celery import Celery

    from cachetap.capture.batcher import BatchSender, make_analyze_sender
    from cachetap.capture.relay import SightingRelay
    from cachetap.capture.live import _freeze_startup_objects, _raise_priority, _shorten_switch_interval, act, idle
    from cachetap.capture.prometheus import MetricsPublisher
    from cachetap.metrics import use_box_directory
    from cachetap.wire import encode_sighting
    from cachetap.capture.pipeline import Pipeline
    from cachetap.capture.redirector import RedirectScope, Redirector
    from cachetap.capture.sniffer import LiveSource, interface_linktype
    from cachetap.capture.targets import addresses_of
    from cachetap.core.keys import cache_key, canonical_url
    from cachetap.fetch.resolver import Resolver
    from cachetap.settings import load_settings

    work = tempfile.mkdtemp(prefix="cachetap-bench-capture-")
    host, port = location_base.split("//", 1)[1].rsplit(":", 1)
    server = subprocess.Popen([sys.executable, "-m", "cachetap.web", "--dir", work, "--host", host, "--port", port],
                              stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "listening on ..."
        delays = (LATENCY_DELAY_MS, LATENCY_DELAY_MS + 1, LOAD_DELAY_MS, *RACE_DELAYS_MS)
        keys = {cache_key(canonical_url(bench_path(d, i), "origin.test", 80), {})
                for d in delays for i in range(MAX_COUNT)}
        settings = load_settings(cache_dir=work, http_ports=[80], mode="redirect", interface=capture_if)
        use_box_directory(settings.cache_dir)  # as `cachetap capture` does: values in files, before the fork
        # Forked before the first thread, as in capture/live.py. Batches are encoded by kombu as for a
        # broker and kept in memory (no broker in this namespace): the sending costs what it costs live.
        broker = Celery("bench", broker="memory://")
        relay = SightingRelay(lambda: BatchSender(make_analyze_sender(broker), size=settings.batch_size,
                                                  interval=settings.batch_interval, buffer=settings.batch_buffer))
        health = HealthGate(location_base, interval=settings.health_interval).start()
        while not health.ok:
            time.sleep(0.05)
        # The namespaces' origin addresses are private: allowed as an operator would list them.
        guard = Resolver(allow_networks=["10.77.0.0/16", "fd00:77::/32"]).refusal
        redirector = Redirector(HotIndex(keys), health, location_base, RedirectScope(), addresses_of(location_base),
                                fetch_guard=guard)
        injector = Injector(capture_if, origin_interface=origin_if, origin_mac=origin_mac)
        pipeline = Pipeline(settings, redirector=redirector)

        def queue(sighting) -> None:
            relay.add(encode_sighting(sighting))

        source = LiveSource(capture_if, request_filter([80], interface_linktype(capture_if)),
                            on_idle=lambda: idle(relay, published))
        published = MetricsPublisher(pipeline, relay, redirector.index, source)  # metrics, published when idle
        signal.signal(signal.SIGTERM, lambda *_: (stop.set(), source.stop()))
        _raise_priority()
        _shorten_switch_interval()
        _freeze_startup_objects()
        records: list[tuple[str, float, float]] = []
        with source:
            print("ready", flush=True)
            for ts, linktype, frame in source:
                received = time.time()
                observations = pipeline.feed(ts, linktype, frame)
                act(observations, frame, pipeline, injector, queue)
                for obs in observations:
                    if obs.decision.kind == "redirect":
                        sent_at = injector.last_sent_at
                        records.append((obs.head.target, sent_at - ts, sent_at - received))
        health.stop()
        injector.close()
        relay.close()
        Path(out).write_text(json.dumps(records))
        print(json.dumps({"summary": pipeline.summary()}), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=30)


def role_client(host: str, delay_ms: float, count: int, out: str) -> None:
    """`count` GETs, one TCP connection each; records which answer arrived first."""
    outcome = {"redirect": 0, "origin": 0, "error": 0}
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for i in range(count):
        request = f"GET {bench_path(delay_ms, i)} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode()
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect((host, 80))
                sock.sendall(request)
                first = b""
                while b"\r\n" not in first:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    first += chunk
            status = first.split(b" ", 2)[1] if first.count(b" ") >= 2 else b""
            outcome["redirect" if status == b"302" else "origin" if status == b"200" else "error"] += 1
        except OSError:
            outcome["error"] += 1
    Path(out).write_text(json.dumps(outcome))


# ---- orchestration -------------------------------------------------------------------------------

def _ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"helper did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")


def _me(role: str, *args: str) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), "--role", role, *args]


RATED = re.compile(r"Rated:\s+([\d.]+) Bps,\s+([\d.]+) Mbps,\s+([\d.]+) pps")


def start_load(topo, pcap: Path, mbps: float) -> subprocess.Popen:
    """tcpreplay pushing the mixed traffic through the client's veth until interrupted."""
    return topo.client.popen(["tcpreplay", "-i", topo.client_if, f"--mbps={mbps:g}", "--loop=0", "--unique-ip",
                              "--preload-pcap", str(pcap)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)


def stop_load(proc: subprocess.Popen) -> dict:
    """Interrupt tcpreplay (it prints its statistics on SIGINT) and read its own Rated: figure."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    match = RATED.search(out)
    if match is None:
        return {"rated": None, "output": out[-500:]}
    return {"rated": match.group(0), "mbps": float(match.group(2)), "pps": float(match.group(3))}


def measure(requests: int, race_requests: int, seed_race_requests: int, work: Path,
            modes: tuple[str, ...] = MODES, load_mbps: float = 0) -> dict:
    from capture_throughput import write_traffic  # bench/ is this script's directory

    from cachetap.testing.netns import Topology

    results: dict = {}
    load_pcap = work / "background.pcap"
    if load_mbps:
        write_traffic(load_pcap, LOAD_FRAMES)
    with Topology() as topo:
        origin = topo.origin.popen(_me("origin"), stdout=subprocess.PIPE, text=True)
        _ready(origin)
        origin_mac = topo.origin.mac(topo.origin_if)
        for mode in modes:
            records_file = work / f"router-{mode}.json"
            router = topo.router.popen(
                _me("router", "--mode", mode, "--capture-if", topo.router_client_if, "--origin-if",
                    topo.router_origin_if, "--origin-mac", origin_mac,
                    "--location-base", f"http://{topo.router_client_ip4}:8080", "--out", str(records_file)),
                stdout=subprocess.PIPE, text=True)
            _ready(router)
            phases = [("latency4", topo.origin_ip4, LATENCY_DELAY_MS, requests)]
            if mode != "scapy":
                phases.append(("latency6", topo.origin_ip6, LATENCY_DELAY_MS + 1, requests))
            race_count = seed_race_requests if mode == "scapy" else race_requests
            phases += [(f"race{d}", topo.origin_ip4, d, race_count) for d in RACE_DELAYS_MS]
            if mode == "capture" and load_mbps:
                phases.append(("load4", topo.origin_ip4, LOAD_DELAY_MS, requests))
            for name, host, delay, count in phases:
                client_file = work / f"client-{mode}-{name}.json"
                load = start_load(topo, load_pcap, load_mbps) if name == "load4" else None
                try:
                    if load is not None:
                        time.sleep(1.0)  # tcpreplay preloads the pcap, then runs at its rate
                    topo.client.run(_me("client", "--host", host, "--delay", str(delay), "--count", str(count),
                                        "--out", str(client_file)), timeout=3600)
                finally:
                    if load is not None:
                        results[(mode, "load")] = stop_load(load)
                results[(mode, name)] = json.loads(client_file.read_text())
            router.send_signal(signal.SIGTERM)
            router.wait(timeout=120)
            records = json.loads(records_file.read_text())
            for name, delay in (("latency4", LATENCY_DELAY_MS), ("latency6", LATENCY_DELAY_MS + 1),
                                ("load4", LOAD_DELAY_MS)):
                prefix = f"/d/{delay:g}/"
                results[(mode, name, "seconds")] = [s for path, s, _ in records if path.startswith(prefix)]
                results[(mode, name, "in_python")] = [p for path, _, p in records if path.startswith(prefix)]
    return results


def hotindex_figures(count: int) -> dict:
    """Memory and lookup time of a HotIndex with `count` keys, in a fresh process."""
    code = f"""
import json, time, tracemalloc, random
import scapy.all  # the capture process carries scapy anyway: count it in the RSS
from cachetap.capture import hotindex, inject, linklayer
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096
def keys(seed, n):
    rng = random.Random(seed)
    return (f"{{rng.getrandbits(128):032x}}" for _ in range(n))
base = rss()
index = hotindex.HotIndex(keys(5, {count}))   # from a generator: no list of 1M strings in the way
after = rss()
tracemalloc.start()
traced_index = hotindex.HotIndex(keys(5, {count}))
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
del traced_index
present, absent = list(keys(5, 100_000)), list(keys(6, 100_000))
def per_call(ks):
    t = time.process_time()
    for k in ks: index.contains(k)
    return (time.process_time() - t) / len(ks)
set_of = set(present)
t = time.process_time()
for k in absent: k in set_of
set_time = (time.process_time() - t) / len(absent)
print(json.dumps(dict(keys=len(index), table=index.table_bytes(), traced=current, traced_peak=peak,
      rss_base=base, rss=after, hit=per_call(present), miss=per_call(absent), set_lookup=set_time)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(results: dict, hot: dict) -> None:
    ms = 1000
    print("\nRedirect latency: capture timestamp of the GET -> 302 sent (ms)")
    print(f"{'path':<40}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}   recv->sent p50/p99")
    for mode, label in LABELS.items():
        for name, fam in (("latency4", "IPv4"), ("latency6", "IPv6"), ("load4", "IPv4 + mix")):
            values, in_python = results.get((mode, name, "seconds")), results.get((mode, name, "in_python"))
            if values:
                print(f"{label + ' ' + fam:<40}{len(values):>6}{_pct(values, .5) * ms:>9.3f}"
                      f"{_pct(values, .9) * ms:>9.3f}{_pct(values, .99) * ms:>9.3f}{max(values) * ms:>9.3f}"
                      f"   {_pct(in_python, .5) * ms:.3f}/{_pct(in_python, .99) * ms:.3f}")
        load = results.get((mode, "load"))
        if load is not None:
            print(f"{'':<40}  background mix by tcpreplay: {load['rated'] or 'no Rated: line: ' + load['output']}")
    print("\nRace win rate: share of GETs whose client read the 302 before the origin's answer")
    print(f"{'origin answers after':<40}" + "".join(f"{d:>7g} ms" for d in RACE_DELAYS_MS))
    for mode, label in LABELS.items():
        if (mode, f"race{RACE_DELAYS_MS[0]}") not in results:
            continue
        cells = []
        for d in RACE_DELAYS_MS:
            r = results[(mode, f"race{d}")]
            total = sum(r.values())
            cells.append(f"{100 * r['redirect'] / total:>8.1f}%" if total else f"{'-':>9}")
        print(f"{label:<40}" + "".join(cells))
    for mode in MODES:
        for name in ("latency4", "latency6", "load4", *(f"race{d}" for d in RACE_DELAYS_MS)):
            r = results.get((mode, name))
            if r and r["error"]:
                print(f"  note: {mode} {name}: {r['error']} requests failed")
    mib = 1 << 20
    print(f"\nHotIndex with {hot['keys']:,} keys: table {hot['table'] / mib:.1f} MiB, tracemalloc "
          f"{hot['traced'] / mib:.1f} MiB (peak while building {hot['traced_peak'] / mib:.1f} MiB), process RSS "
          f"{hot['rss'] / mib:.1f} MiB with scapy loaded ({hot['rss_base'] / mib:.1f} MiB before the keys)")
    print(f"contains() CPU time per call: hit {hot['hit'] * 1e9:.0f} ns, miss {hot['miss'] * 1e9:.0f} ns "
          f"(a Python set lookup here: {hot['set_lookup'] * 1e9:.0f} ns)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["main", "origin", "router", "client"], default="main")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--race-requests", type=int, default=300)
    parser.add_argument("--seed-race-requests", type=int, default=100)
    parser.add_argument("--hot-keys", type=int, default=1_000_000)
    parser.add_argument("--load-mbps", type=float, default=1000,
                        help="background mix rate for the capture path's row under load (0: no such row)")
    parser.add_argument("--mode", choices=list(MODES))
    parser.add_argument("--modes", default=",".join(MODES), help="modes to measure, comma-separated")
    parser.add_argument("--capture-if"), parser.add_argument("--origin-if"), parser.add_argument("--origin-mac")
    parser.add_argument("--location-base"), parser.add_argument("--out"), parser.add_argument("--host")
    parser.add_argument("--delay", type=float), parser.add_argument("--count", type=int)
    args = parser.parse_args()
    if args.role == "origin":
        role_origin(80)
    elif args.role == "router":
        role_router(args.mode, args.capture_if, args.origin_if, args.origin_mac, args.location_base, args.out)
    elif args.role == "client":
        role_client(args.host, args.delay, args.count, args.out)
    else:
        from cachetap.testing.netns import netns_problem
        if problem := netns_problem():
            sys.exit(f"cannot run: {problem}")
        import tempfile
        with tempfile.TemporaryDirectory(prefix="cachetap-bench-") as work:
            modes = tuple(m for m in args.modes.split(",") if m)
            unknown = set(modes) - set(MODES)
            if unknown or max(args.requests, args.race_requests, args.seed_race_requests) > MAX_COUNT:
                sys.exit(f"unknown modes {sorted(unknown)} or more than {MAX_COUNT} requests per phase")
            results = measure(args.requests, args.race_requests, args.seed_race_requests, Path(work), modes,
                              args.load_mbps)
        report(results, hotindex_figures(args.hot_keys))


if __name__ == "__main__":
    main()
