"""The real-time redirect, end to end, on a virtual network.

    client (10.77.1.2, fd00:77:1::2; 10.77.1.3 out of scope) -- router -- origin (10.77.2.2, 10.77.2.3, fd00:77:2::2)

A real `cachetap run` (workers, beat, cache server, live capture in redirect mode) runs in the router
namespace on the client-facing veth; a real HTTP origin listens in the origin namespace; real clients
(curl, wget, ffprobe) run in the client namespace. Each test admits its own object (two requests with
admission_threshold 1), waits until `cachetap ls --json` says ready, then checks what clients get.

The only timed assertions are the issue's behavioural bounds (redirectable within 1 s of the download
finishing, not any more within 1 s of a purge, origin again within 1 s of the cache server dying),
each checked against 1 s plus SLACK for a loaded 2-core machine, with the measured figure printed.
The origin answers after ORIGIN_DELAY, as a real origin across a WAN would; the 302 has to beat it.
"""

from __future__ import annotations

import hashlib
from ipaddress import ip_network
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from cachetap.core.keys import cache_key, canonical_url
from cachetap.testing.netns import Topology, netns_problem
from cachetap.core.urls import HINT_SECRET, object_url
from cachetap.testing.origin import Origin, Resource, _Handler, _Server

pytestmark = pytest.mark.root

SERVE_PORT = 8642
ORIGIN_DELAY = 0.1      # seconds before the origin answers (no netem here: the origin is slow itself)
SLACK = 1.5             # on top of the 1 s bounds, for a loaded 2-core machine
OUT_OF_SCOPE_CLIENT = "10.77.1.3"
OTHER_ORIGIN_HOST = "10.77.2.3"   # the same origin under an address outside redirect_hosts
MIB = 1 << 20
FILES = {  # path -> size of generated content
    "/files/basic.bin": 4 * MIB,
    "/files/ipv6.bin": 2 * MIB,
    "/files/scope.bin": 2 * MIB,
    "/files/timing.bin": 1 * MIB,
    "/files/purge.bin": 1 * MIB,
    "/files/kill.bin": 3 * MIB,
    "/files/survive.bin": 2 * MIB,
}
VIDEO = "/video/clip.mp4"


def _missing_tools() -> str | None:
    missing = [t for t in ("curl", "wget", "ffmpeg", "ffprobe", "ip") if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)} (./dev.sh test installs them)" if missing else None


# ---- the origin, in the origin namespace ------------------------------------------------------

class _DualStackServer(_Server):
    address_family = socket.AF_INET6

    resets = 0  # answers the client side reset (our RST after a 302) before the origin could send them

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as ::ffff:a.b.c.d
        super().server_bind()

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            type(self).resets += 1
            return
        super().handle_error(request, client_address)


class NamespaceOrigin(Origin):
    """The test origin listening on [::]:80 inside a namespace instead of 127.0.0.1."""

    def __init__(self, namespace, **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace

    def start(self) -> NamespaceOrigin:
        self._stopping.clear()
        with self.namespace.entered():  # the listening socket lives in the namespace for good
            server = _DualStackServer(("::", 80), _Handler)
        server.origin = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="netns-origin", daemon=True)
        self._thread.start()
        return self


# ---- the stack --------------------------------------------------------------------------------

class Stack:
    def __init__(self, topo: Topology, origin: NamespaceOrigin, config: Path, log: Path, video: Path) -> None:
        self.topo, self.origin, self.config, self.log, self.video = topo, origin, config, log, video
        self.run_proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    # URLs and content
    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.topo.origin_ip4}{path}"

    def content(self, path: str) -> bytes:
        if path == VIDEO:
            return self.video.read_bytes()
        return b"".join(bytes(c) for c in _generated(path, FILES[path]))

    # processes
    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
        env.update(CACHETAP_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            self.run_proc = self.topo.router.popen([sys.executable, "-m", "cachetap", "run"], env=env,
                                                   stdout=out, stderr=subprocess.STDOUT,
                                                   preexec_fn=_terminate_with_parent)
        deadline = time.monotonic() + 120
        wanted = ("capturing on r-c", "analyze@", "download@", "redirect mode:")
        while time.monotonic() < deadline:
            text = self.log_text()
            if all(w in text for w in wanted) and text.count(" ready.") >= 3 and self.cache_healthy():
                self.remember_pids()
                return
            assert self.run_proc.poll() is None, f"cachetap run exited:\n{text[-4000:]}"
            time.sleep(0.3)
        raise AssertionError(f"cachetap run did not come up:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def cache_healthy(self) -> bool:
        out = self.topo.router.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                    f"http://{self.topo.router_client_ip4}:{SERVE_PORT}/healthz"], check=False)
        return out.stdout == "200"

    def processes(self) -> list[psutil.Process]:
        if self.run_proc is None:
            return []
        try:
            parent = psutil.Process(self.run_proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def remember_pids(self) -> None:
        self.pids.update(p.pid for p in self.processes())

    def child(self, marker: str) -> psutil.Process:
        for proc in self.processes()[1:]:
            if marker in " ".join(proc.cmdline()):
                return proc
        raise AssertionError(f"no child process {marker!r}")

    def stop(self) -> None:
        self.remember_pids()
        if self.run_proc is not None and self.run_proc.poll() is None:
            self.run_proc.send_signal(signal.SIGTERM)
            try:
                self.run_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.pids:  # only the processes this test started
            try:
                proc = psutil.Process(pid)
                if "cachetap" in " ".join(proc.cmdline()) or "aria2c" in proc.name():
                    proc.kill()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    # catalog
    def entries(self) -> list[dict]:
        out = subprocess.run([sys.executable, "-m", "cachetap", "-c", str(self.config), "ls", "--json",
                              "--limit", "1000"], capture_output=True, text=True, timeout=60, env=_clean_env())
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def entry(self, url: str) -> dict | None:
        key = cache_key(canonical_url(url, None, 80), {})
        return next((e for e in self.entries() if e["key"] == key), None)

    def wait_ready(self, url: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        entry = None
        while time.monotonic() < deadline:
            entry = self.entry(url)
            if entry is not None and entry["state"] == "ready":
                return entry
            assert entry is None or entry["state"] not in ("failed", "rejected"), entry
            time.sleep(0.2)
        raise AssertionError(f"{url} never became ready: {entry}\n{self.log_text()[-3000:]}")

    def location_for(self, url: str) -> str:
        canonical = canonical_url(url, None, 80)
        key = cache_key(canonical, {})
        return object_url(f"http://{self.topo.router_client_ip4}:{SERVE_PORT}", key, url.rsplit('/', 1)[-1],
                          origin=canonical, secret=self.hint_secret())

    def hint_secret(self) -> bytes:
        from cachetap.cli.catalog_cmds import open_catalog
        from cachetap.settings import load_settings

        catalog = open_catalog(load_settings(self.config))
        try:
            return catalog.shared_secret(HINT_SECRET)
        finally:
            catalog.engine.dispose()

    # clients
    def curl(self, url: str, *args: str, out: Path | None = None, check: bool = True) -> Answer:
        """One curl in the client namespace: status line of the first answer, headers, body."""
        body_file = out or Path(self.log.parent / f"curl-{time.monotonic_ns()}.body")
        result = self.topo.client.run(["curl", "-sS", "--max-time", "60", "--globoff", "-D", "-",
                                       "-o", str(body_file), *args, url], check=False)
        body = body_file.read_bytes() if body_file.exists() else b""
        if out is None and body_file.exists():
            body_file.unlink()
        if check:
            assert result.returncode == 0, f"curl {url} {args}: {result.returncode} {result.stderr}"
        return Answer(result.stdout, body, result.returncode)

    def status(self, url: str, *args: str) -> int:
        """The status of the first answer (no redirect following): 302 from us, 200/206 from the origin."""
        result = self.topo.client.run(["curl", "-s", "--max-time", "30", "--globoff", "-o", "/dev/null",
                                       "-w", "%{http_code}", *args, url], check=False)
        return int(result.stdout or 0)

    def admit(self, url: str, *args: str) -> dict:
        """Two requests from the client (admission_threshold 1), both answered by the origin; then ready."""
        for _ in range(2):
            answer = self.curl(url, *args)
            assert answer.status in (200, 206), answer.head
        return self.wait_ready(url)


class Answer:
    def __init__(self, head: str, body: bytes, returncode: int) -> None:
        self.head, self.body, self.returncode = head, body, returncode
        blocks = [b for b in head.replace("\r\n", "\n").split("\n\n") if b.strip()]
        self.statuses = [int(b.split(None, 2)[1]) for b in blocks]
        self.headers = [dict(line.split(": ", 1) for line in b.splitlines()[1:] if ": " in line) for b in blocks]

    @property
    def status(self) -> int:
        return self.statuses[0] if self.statuses else 0


def _generated(path: str, size: int):
    from cachetap.testing.origin import generated_chunks
    return generated_chunks(path, 0, size)


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (no orphaned
    `cachetap run` sniffing in a namespace nobody deletes any more). `ip netns exec` keeps it: it execs."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    problem = netns_problem() or _missing_tools()
    if problem:
        pytest.skip(problem)
    work = tmp_path_factory.mktemp("redirect-netns")
    video = work / "clip.mp4"
    # No +faststart: the moov atom is at the end, so ffprobe has to seek there with a Range request.
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=duration=5:size=640x480:rate=25", "-c:v", "libx264", "-preset", "ultrafast",
                    "-qp", "0", "-pix_fmt", "yuv420p", str(video)], check=True, timeout=120)
    with Topology() as topo:
        topo.client.run(["ip", "addr", "add", f"{OUT_OF_SCOPE_CLIENT}/24", "dev", topo.client_if])
        topo.origin.run(["ip", "addr", "add", f"{OTHER_ORIGIN_HOST}/24", "dev", topo.origin_if])
        origin = NamespaceOrigin(topo.origin)
        fresh = "public, max-age=86400"
        for path, size in FILES.items():
            origin.add(path, Resource(size=size, delay=ORIGIN_DELAY, cache_control=fresh))
        origin.add(VIDEO, Resource(file=video, content_type="video/mp4", delay=ORIGIN_DELAY, cache_control=fresh))
        origin.start()
        config = work / "cachetap.toml"
        config.write_text("\n".join([
            f'cache_dir = "{work / "cache"}"',
            f'interface = "{topo.router_client_if}"',
            'mode = "redirect"',
            f'serve_host = "{topo.router_client_ip4}"',
            f"serve_port = {SERVE_PORT}",
            "admission_threshold = 1",
            "min_size = 65536",
            "http_ports = [80]",
            # The origin namespace's addresses are private: the fetch guard needs them listed.
            f'fetch_allow_networks = ["{ip_network(topo.origin_ip4 + "/24", strict=False)}", '
            f'"{ip_network(topo.origin_ip6 + "/64", strict=False)}"]',
            # The router is the gateway: the RST to the origin leaves by the origin-side link.
            f'redirect_origin_interface = "{topo.router_origin_if}"',
            f'redirect_origin_mac = "{topo.origin.mac(topo.origin_if)}"',
            f'redirect_client_subnets = ["{topo.client_ip4}/32", "{topo.client_ip6}/128"]',
            f'redirect_hosts = ["{topo.origin_ip4}", "{topo.origin_ip6}"]',
            'log_level = "INFO"',
            'run_as_user = ""',  # the work folder is under root's private pytest folder
        ]) + "\n")
        stack = Stack(topo, origin, config, work / "cachetap-run.log", video)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()
            origin.stop()
            print(f"\ncachetap run log tail:\n{stack.log_text()[-2500:]}")


# ---- tests ------------------------------------------------------------------------------------

def test_first_requests_go_to_origin_then_302_to_cache_with_identical_bytes(stack):
    path = "/files/basic.bin"
    url, content = stack.url(path), stack.content(path)
    first = stack.curl(url)
    assert first.statuses == [200] and _sha(first.body) == _sha(content)  # from the origin
    entry = stack.admit(url)
    assert entry["size"] == len(content)
    location = stack.location_for(url)

    head = stack.curl(url)  # no -L: the injected answer itself
    assert head.statuses == [302], head.head
    assert head.headers[0]["Location"] == location and head.body == b""

    ranged = stack.curl(url, "-L", "-r", "1000-299999")
    assert ranged.statuses == [302, 206], ranged.head
    assert ranged.body == content[1000:300000]

    full = stack.curl(url, "-L")
    assert full.statuses == [302, 200], full.head
    assert _sha(full.body) == _sha(content)

    target = stack.log.parent / "wget.out"
    wget = stack.topo.client.run(["wget", "-S", "-O", str(target), "--tries=1", "--timeout=30", url], check=False)
    assert wget.returncode == 0, wget.stderr
    assert "HTTP/1.1 302 Found" in wget.stderr and f"Location: {location}" in wget.stderr
    assert _sha(target.read_bytes()) == _sha(content)


def test_ffprobe_seeks_with_ranges_served_by_the_cache(stack):
    url = stack.url(VIDEO)
    stats = stack.origin.stats(VIDEO)
    probe = ["ffprobe", "-v", "error", "-show_entries", "format=duration,size", "-of", "json", url]
    for _ in range(2):  # admission: ffprobe's own requests (several Range GETs each) count
        assert stack.topo.client.run(probe, check=False).returncode == 0
    assert len(stats.ranges) >= 2 and any(r and r != "bytes=0-" for r in stats.ranges), \
        f"ffprobe did not seek with Range: {stats.ranges}"
    stack.wait_ready(url)
    gets_before, bytes_before, resets_before = stats.methods["GET"], stats.body_bytes, _DualStackServer.resets

    result = stack.topo.client.run(["ffprobe", "-v", "debug", "-show_entries", "format=duration,size",
                                    "-of", "json", url], check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)["format"]
    assert float(info["duration"]) == pytest.approx(5.0, abs=0.1)
    assert int(info["size"]) == len(stack.content(VIDEO))
    # ffmpeg 5.1 goes back to the original URL for every seek, so each of its GETs there reaches the
    # origin (the tap is passive) and is answered by our 302 (the origin's own answer meets our RST);
    # each is followed by the same request to the cache server, which serves the bytes.
    cache_path = urlsplit(stack.location_for(url)).path
    requests = [line.split("request: GET ", 1)[1].split()[0].split("?", 1)[0]  # path only: no origin hint
                for line in result.stderr.splitlines() if "request: GET " in line]
    to_origin = [i for i, r in enumerate(requests) if r == VIDEO]
    assert requests[0] == VIDEO and all(requests[i + 1:i + 2] == [cache_path] for i in to_origin), requests
    assert set(requests) == {VIDEO, cache_path} and requests.count(cache_path) >= 2, requests  # it seeked
    assert stats.methods["GET"] - gets_before == len(to_origin)
    # The origin answers ORIGIN_DELAY late: wait for its attempts (to a reset connection) to finish.
    deadline = time.monotonic() + 10
    while _DualStackServer.resets - resets_before < len(to_origin) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _DualStackServer.resets - resets_before == len(to_origin)
    assert stats.body_bytes == bytes_before, "the origin sent body bytes: a seek was not redirected"


def test_ipv6_client_is_redirected(stack):
    path = "/files/ipv6.bin"
    url = stack.url(path, host=f"[{stack.topo.origin_ip6}]")
    stack.admit(url)
    answer = stack.curl(url, "-L")
    assert answer.statuses == [302, 200], answer.head
    assert answer.headers[0]["Location"] == stack.location_for(url)
    assert _sha(answer.body) == _sha(stack.content(path))


def test_clients_and_hosts_outside_the_redirect_scope_are_never_redirected(stack):
    path = "/files/scope.bin"
    url, other_host_url = stack.url(path), stack.url(path, host=OTHER_ORIGIN_HOST)
    content = stack.content(path)
    stack.admit(url)
    stack.admit(other_host_url)  # cached (the rules allow it) but not redirected (redirect_hosts)
    outside = ("--interface", OUT_OF_SCOPE_CLIENT)
    for i in range(3):
        # In scope (control): the same key, at the same time, is redirected.
        assert stack.status(url, "-r", f"{i}-{i}") == 302
        answer = stack.curl(url, *outside, "-r", f"{i}-{i + 99}")
        assert answer.statuses == [206] and answer.body == content[i:i + 100], answer.head
        answer = stack.curl(other_host_url, "-r", f"{i}-{i + 99}")
        assert answer.statuses == [206] and answer.body == content[i:i + 100], answer.head
    for args, target in ((outside, url), ((), other_host_url)):
        full = stack.curl(target, *args)
        assert full.statuses == [200] and _sha(full.body) == _sha(content)


def _loop_until(stack: Stack, url: str, done, deadline: float) -> list[tuple[float, float, int]]:
    """Requests in a tight loop, each for a different one-byte range (so the loop guard, which ends
    redirects for a client repeating the same request within a second, never applies), until
    `done(status)`; returns (start, end, status) per request."""
    seen = []
    i = 0
    while time.time() < deadline:
        start = time.time()
        status = stack.status(url, "-r", f"{i}-{i}")
        seen.append((start, time.time(), status))
        if done(status):
            break
        i += 1
    return seen


def test_key_becomes_redirectable_within_1s_of_its_download_finishing(stack):
    path = "/files/timing.bin"
    url = stack.url(path)
    for i in range(2):  # admission; from here on every request is answered by the origin or by us
        assert stack.status(url, "-r", f"{1000 + i}-{1000 + i}") == 206
    seen = _loop_until(stack, url, lambda s: s == 302, time.time() + 120)
    assert seen[-1][2] == 302, f"never redirected: {seen[-5:]}"
    assert all(s == 206 for _, _, s in seen[:-1]), seen
    published_at = stack.wait_ready(url)["published_at"]
    first_start, first_end, _ = seen[-1]
    last_origin_start = seen[-2][0] if len(seen) > 1 else None
    # Never before the file is published (nothing partial is ever served) ...
    assert first_end >= published_at
    # ... and within the bound after.
    delay = first_start - published_at
    print(f"\nredirectable {delay * 1000:.0f} ms after published_at (request started; answered after "
          f"{(first_end - published_at) * 1000:.0f} ms; previous origin-answered request started "
          f"{(last_origin_start - published_at) * 1000 if last_origin_start else float('nan'):.0f} ms; "
          f"{len(seen)} loop requests)")
    assert delay <= 1.0 + SLACK


def test_key_stops_being_redirected_within_1s_of_purge(stack):
    url = stack.url("/files/purge.bin")
    stack.admit(url)
    assert stack.status(url, "-r", "500000-500000") == 302
    purge = subprocess.run([sys.executable, "-m", "cachetap", "-c", str(stack.config), "purge", url],
                           capture_output=True, text=True, timeout=60, env=_clean_env())
    assert purge.returncode == 0, purge.stderr
    purged = time.time()
    seen = _loop_until(stack, url, lambda s: s != 302, purged + 1.0 + SLACK + 1.0)
    assert seen and seen[-1][2] == 206, f"still redirected {time.time() - purged:.1f}s after purge: {seen[-3:]}"
    delay = seen[-1][0] - purged
    print(f"\norigin again {delay * 1000:.0f} ms after the purge returned ({len(seen)} loop requests)")
    assert delay <= 1.0 + SLACK


def test_dead_cache_server_sends_clients_back_to_origin_within_1s(stack):
    path = "/files/kill.bin"
    url, content = stack.url(path), stack.content(path)
    stack.admit(url)
    assert stack.status(url, "-r", "0-0") == 302
    serve = stack.child("cachetap serve")
    serve.kill()  # SIGKILL: no goodbye, the port just stops answering
    killed = time.time()
    seen = _loop_until(stack, url, lambda s: s != 302, killed + 30)
    assert seen[-1][2] == 206, f"still redirected {time.time() - killed:.1f}s after the kill: {seen[-3:]}"
    delay = seen[-1][0] - killed
    print(f"\norigin again {delay * 1000:.0f} ms after SIGKILL of the cache server ({len(seen)} loop requests)")
    assert delay <= 1.0 + SLACK
    # From now on every download succeeds with the right bytes, whether the origin serves it or the
    # cache server the supervisor restarts meanwhile (then redirects resume).
    statuses = []
    for i in range(6):
        if i % 2:
            answer = stack.curl(url, "-L", "-r", f"{i * 1000}-{i * 1000 + 65535}")
            assert answer.body == content[i * 1000:i * 1000 + 65536], answer.head
        else:
            answer = stack.curl(url, "-L")
            assert _sha(answer.body) == _sha(content), answer.head
        statuses.append(answer.statuses)
        time.sleep(0.3)
    print(f"answers after the kill: {statuses}")


def test_clients_get_the_origin_when_every_cachetap_process_is_killed(stack):
    path = "/files/survive.bin"
    url, content = stack.url(path), stack.content(path)
    stack.admit(url)
    assert stack.status(url, "-r", "0-0") == 302
    procs = stack.processes()
    stack.remember_pids()
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for args in ((), ("-r", "100-200099")):
        answer = stack.curl(url, "-L", *args)
        assert answer.statuses == [206 if args else 200], answer.head
        assert answer.body == (content[100:200100] if args else content)
