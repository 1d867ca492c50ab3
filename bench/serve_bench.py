"""Cache server vs nginx on loopback, same files, same number of worker processes; prints figures.

    .venv/bin/python bench/serve_bench.py [--processes 2] [--repeat 5] [--seconds 10] [--connections 32] [--rounds 3]
                                          [--idle 2000]

1. one 256 MiB file, curl to /dev/null, `--repeat` times each (alternating servers);
2. wrk, `--connections` connections requesting random 4 MiB ranges of that file for `--seconds`
   (falls back to curl --parallel when wrk is not installed);
3. the same ranged load while `--idle` other keep-alive connections (one small request each, then
   silent) stay open, with each server's memory (RSS of all its processes) beside its throughput;
4. the cache server's RSS (all workers) before and after.
All clients come from 127.0.0.1, so the cache server's per-address connection cap is raised for it.

Where one stream goes: for a 256 MiB body both servers make the same system calls (strace -c: ~150
sendfile calls that fill the socket, ~150 that hit EAGAIN, ~150 epoll waits), so the gap is only
Python's time per wake-up (tens of microseconds, a few percent); medians swing far more than that
when other work shares the two cores (the best-of row shows it), so compare runs on an idle machine.
Nothing is asserted: speed depends on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cachetap.testing.waiting import free_port
from cachetap.web.lookup import directory_key

BIG = 256 << 20
RANGE = 4 << 20
WRK_SCRIPT = """
math.randomseed(os.time())
request = function()
  local first = math.random(0, %(slots)d) * %(range)d
  return wrk.format("GET", nil, {["Range"] = "bytes=" .. first .. "-" .. (first + %(range)d - 1)})
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%d\\n", summary.bytes, summary.duration, summary.requests,
           summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write))
end
"""
NGINX_CONF = """
worker_processes %(processes)d;
daemon off;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/nginx-error.log;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path %(tmp)s/body;
  proxy_temp_path %(tmp)s/proxy;
  fastcgi_temp_path %(tmp)s/fastcgi;
  uwsgi_temp_path %(tmp)s/uwsgi;
  scgi_temp_path %(tmp)s/scgi;
  server { listen 127.0.0.1:%(port)d; root %(root)s; }
}
"""


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def curl_speed(url: str) -> float:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}", url],
                         capture_output=True, text=True, check=True).stdout.split()
    if int(out[1]) != BIG:
        raise RuntimeError(f"{url}: got {out[1]} bytes")
    return float(out[0])


def ranged_load(url: str, seconds: int, connections: int, script: Path) -> tuple[float, float, int]:
    """(bytes/s, requests/s, errors) for random 4 MiB ranges."""
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("RESULT"))
        nbytes, micros, requests, errors = (int(v) for v in line.split()[1:])
        return nbytes / (micros / 1e6), requests / (micros / 1e6), errors
    count = connections * 8  # fallback: curl --parallel, fixed amount of work
    args = ["curl", "-sS", "-Z", "--parallel-max", str(connections)]
    for i in range(count):
        first = (i * 7919 % (BIG // RANGE)) * RANGE
        args += ["-o", "/dev/null", "-r", f"{first}-{first + RANGE - 1}", url]
    start = time.monotonic()
    subprocess.run(args, check=True)
    took = time.monotonic() - start
    return count * RANGE / took, count / took, 0


def idle_connections(port: int, path: str, count: int) -> list[socket.socket]:
    """`count` keep-alive connections that each made one small request and then stay silent."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        held.append(sock)
    for sock in held:
        if not sock.recv(4096).startswith(b"HTTP/1.1 "):
            raise RuntimeError("an idle connection got no answer")
    return held


def with_idle(url: str, port: int, path: str, idle: int, pids: list[int], seconds: int, connections: int,
              script: Path) -> tuple[float, float, int, float]:
    """(bytes/s, requests/s, errors, RSS MiB under load) of the ranged load beside `idle` idle connections."""
    held = idle_connections(port, path, idle)
    try:
        rate, reqs, errors = ranged_load(url, seconds, connections, script)
        rss = rss_mib(pids)
        if sum(1 for s in held if _still_open(s)) < idle:
            errors += 1  # a server that dropped idle connections within the round is not comparable
        return rate, reqs, errors, rss
    finally:
        for sock in held:
            sock.close()


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per server, alternating")
    parser.add_argument("--idle", type=int, default=2000, help="idle keep-alive connections in the last row")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    tmp.chmod(0o755)  # nginx workers drop to an unprivileged user when started as root
    root = tmp / "files"
    root.mkdir()
    with open(root / "big.bin", "wb") as fh:  # real bytes, not a sparse file: the page cache is real
        for _ in range(BIG // (16 << 20)):
            fh.write(os.urandom(16 << 20))
    script = tmp / "ranges.lua"
    script.write_text(WRK_SCRIPT % {"slots": BIG // RANGE - 1, "range": RANGE})
    nginx_port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF % {"processes": args.processes, "tmp": tmp, "port": nginx_port,
                                                  "root": root})
    ours = subprocess.Popen([sys.executable, "-m", "cachetap.web", "--dir", str(root), "--port", "0",
                             "--processes", str(args.processes), "--max-connections-per-address", "100000"],
                            stdout=subprocess.PIPE, text=True)
    nginx = subprocess.Popen(["/usr/sbin/nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)])
    try:
        base = ours.stdout.readline().split()[-1]
        wait_port(nginx_port)
        ours_url = f"{base}/c/{directory_key('big.bin')}/big.bin"
        nginx_url = f"http://127.0.0.1:{nginx_port}/big.bin"
        workers = [int(p) for p in Path(f"/proc/{ours.pid}/task/{ours.pid}/children").read_text().split()]
        pids = workers or [ours.pid]
        rss_before = rss_mib(pids)
        curl_speed(ours_url), curl_speed(nginx_url)  # warm the page cache
        # Alternate the two servers every round: other load on the machine hits both alike.
        speeds: dict[str, list[float]] = {"cachetap": [], "nginx": []}
        ranged: dict[str, list[tuple[float, float, int]]] = {"cachetap": [], "nginx": []}
        for _ in range(args.repeat):
            speeds["cachetap"].append(curl_speed(ours_url))
            speeds["nginx"].append(curl_speed(nginx_url))
        for _ in range(args.rounds):
            ranged["cachetap"].append(ranged_load(ours_url, args.seconds, args.connections, script))
            ranged["nginx"].append(ranged_load(nginx_url, args.seconds, args.connections, script))
        ours_port = int(base.rsplit(":", 1)[1])
        nginx_pids = [nginx.pid, *(int(p) for p in Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split())]
        idle: dict[str, list[tuple[float, float, int, float]]] = {"cachetap": [], "nginx": []}
        for _ in range(args.rounds):
            idle["cachetap"].append(with_idle(ours_url, ours_port, ours_url.split(base, 1)[1], args.idle, pids,
                                              args.seconds, args.connections, script))
            idle["nginx"].append(with_idle(nginx_url, nginx_port, "/big.bin", args.idle, nginx_pids,
                                           args.seconds, args.connections, script))
        rss_after = rss_mib(pids)
    finally:
        for process in (ours, nginx):
            process.terminate()
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"loopback, {args.processes} worker process(es) each, {os.cpu_count()} cores")
    print(f"{'':38}{'cachetap':>14}{'nginx':>14}{'ratio':>8}")
    med = {k: statistics.median(v) for k, v in speeds.items()}
    best = {k: max(v) for k, v in speeds.items()}
    print(f"{'256 MiB, curl, median of %d (GB/s)' % args.repeat:38}{med['cachetap'] / 1e9:14.2f}"
          f"{med['nginx'] / 1e9:14.2f}{med['cachetap'] / med['nginx']:8.2f}")
    print(f"{'256 MiB, curl, best (GB/s)':38}{best['cachetap'] / 1e9:14.2f}{best['nginx'] / 1e9:14.2f}"
          f"{best['cachetap'] / best['nginx']:8.2f}")
    tool = "wrk" if shutil.which("wrk") else "curl -Z"
    label = f"4 MiB ranges, {tool} c={args.connections}"
    rate = {k: statistics.median(r[0] for r in v) for k, v in ranged.items()}
    reqs = {k: statistics.median(r[1] for r in v) for k, v in ranged.items()}
    errors = {k: sum(r[2] for r in v) for k, v in ranged.items()}
    print(f"{label + ' (GB/s)':38}{rate['cachetap'] / 1e9:14.2f}{rate['nginx'] / 1e9:14.2f}"
          f"{rate['cachetap'] / rate['nginx']:8.2f}")
    print(f"{'  (median of %d rounds of %d s)' % (args.rounds, args.seconds):38}")
    print(f"{label + ' (req/s)':38}{reqs['cachetap']:14.0f}{reqs['nginx']:14.0f}")
    print(f"{'errors (non-2xx, socket)':38}{errors['cachetap']:14d}{errors['nginx']:14d}")
    label = f"same + {args.idle} idle keep-alive"
    rate = {k: statistics.median(r[0] for r in v) for k, v in idle.items()}
    rss = {k: max(r[3] for r in v) for k, v in idle.items()}
    errors = {k: sum(r[2] for r in v) for k, v in idle.items()}
    print(f"{label + ' (GB/s)':38}{rate['cachetap'] / 1e9:14.2f}{rate['nginx'] / 1e9:14.2f}"
          f"{rate['cachetap'] / rate['nginx']:8.2f}")
    print(f"{'  memory under that load (RSS MiB)':38}{rss['cachetap']:14.1f}{rss['nginx']:14.1f}")
    print(f"{'  errors (incl. idle ones dropped)':38}{errors['cachetap']:14d}{errors['nginx']:14d}")
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} (figures mean little when other work shares the cores)")
    print(f"cachetap RSS, all workers: {rss_before:.1f} MiB before, {rss_after:.1f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
