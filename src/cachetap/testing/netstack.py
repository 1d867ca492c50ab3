"""A real `cachetap run` inside a network namespace, a real origin in another, clients in a third.

Shared by the end-to-end redirect tests: the router topology (cachetap between client and origin) and
the mirror-port topology (cachetap beside the path, fed by a switch's mirror port). `Stack` starts
and stops `cachetap run`, reads the catalog through the real CLI, and runs curl in the client
namespace; `NamespaceOrigin` is the test origin listening inside a namespace. Needs the `test` extra
(psutil).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from cachetap.core.keys import cache_key, canonical_url
from cachetap.core.lifecycle import EntryState
from cachetap.core.urls import HINT_SECRET, object_url
from cachetap.testing.netns import Namespace
from cachetap.testing.origin import Origin, _Handler, _Server, generated_chunks


class DualStackServer(_Server):
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

    def __init__(self, namespace: Namespace, **kwargs) -> None:
        super().__init__(**kwargs)
        self.namespace = namespace

    def start(self) -> NamespaceOrigin:
        self._stopping.clear()
        with self.namespace.entered():  # the listening socket lives in the namespace for good
            server = DualStackServer(("::", 80), _Handler)
        server.origin = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="netns-origin", daemon=True)
        self._thread.start()
        return self


class Stack:
    """`cachetap run` with `config` in namespace `tap`, capturing on `capture_if`, serving on
    `serve_ip:serve_port`; clients run in `topo.client`, the origin is at `topo.origin_ip4`.
    `files` maps an origin path to its generated size or to the file it serves."""

    def __init__(self, topo, origin: NamespaceOrigin, config: Path, log: Path, *, tap: Namespace,
                 capture_if: str, serve_ip: str, serve_port: int, files: dict[str, int | Path]) -> None:
        self.topo, self.origin, self.config, self.log = topo, origin, config, log
        self.tap, self.capture_if, self.serve_ip, self.serve_port, self.files = tap, capture_if, serve_ip, serve_port, files
        self.run_proc: subprocess.Popen | None = None
        self.pids: set[int] = set()

    # URLs and content
    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.topo.origin_ip4}{path}"

    def content(self, path: str) -> bytes:
        source = self.files[path]
        if isinstance(source, Path):
            return source.read_bytes()
        return b"".join(bytes(c) for c in generated_chunks(path, 0, source))

    # processes
    @contextlib.contextmanager
    def running(self) -> Iterator[Stack]:
        """`cachetap run` for the block; then stopped with the origin, and its log's tail printed."""
        try:
            self.start()
            yield self
        finally:
            self.stop()
            self.origin.stop()
            print(f"\ncachetap run log tail:\n{self.log_text()[-2500:]}")

    def start(self) -> None:
        env = clean_env()
        env.update(CACHETAP_CONFIG=str(self.config), PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            self.run_proc = self.tap.popen([sys.executable, "-m", "cachetap", "run"], env=env,
                                           stdout=out, stderr=subprocess.STDOUT,
                                           preexec_fn=terminate_with_parent)
        deadline = time.monotonic() + 120
        wanted = (f"capturing on {self.capture_if}", "analyze@", "download@", "redirect mode:")
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
        out = self.tap.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                            f"http://{self.serve_ip}:{self.serve_port}/healthz"], check=False)
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

    def kill_all(self) -> None:
        """SIGKILL to `cachetap run` and every process under it; returns when they are gone."""
        procs = self.processes()
        self.remember_pids()
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

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
                              "--limit", "1000"], capture_output=True, text=True, timeout=60, env=clean_env())
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
            if entry is not None and entry["state"] == EntryState.READY:
                return entry
            assert entry is None or entry["state"] not in (EntryState.FAILED, EntryState.REJECTED), entry
            time.sleep(0.2)
        raise AssertionError(f"{url} never became ready: {entry}\n{self.log_text()[-3000:]}")

    def location_for(self, url: str) -> str:
        canonical = canonical_url(url, None, 80)
        key = cache_key(canonical, {})
        return object_url(f"http://{self.serve_ip}:{self.serve_port}", key, url.rsplit('/', 1)[-1],
                          origin=canonical, secret=self.hint_secret())

    def hint_secret(self) -> bytes:
        from cachetap.settings import load_settings
        from cachetap.store.catalog import open_catalog  # the running stack made and migrated it

        catalog = open_catalog(load_settings(self.config).effective_database_url)
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

    def check_redirected(self, url: str) -> int:
        """curl (the 302 itself, a range, the whole file) and wget, each redirected to the cache and
        given the origin's exact bytes; returns how many GETs that sent to `url`."""
        content, location = self.content(urlsplit(url).path), self.location_for(url)
        head = self.curl(url)  # no -L: the injected answer itself
        assert head.statuses == [302], head.head
        assert head.headers[0]["Location"] == location and head.body == b""
        ranged = self.curl(url, "-L", "-r", "1000-299999")
        assert ranged.statuses == [302, 206], ranged.head
        assert ranged.body == content[1000:300000]
        full = self.curl(url, "-L")
        assert full.statuses == [302, 200], full.head
        assert sha256(full.body) == sha256(content)
        target = self.log.parent / "wget.out"
        wget = self.topo.client.run(["wget", "-S", "-O", str(target), "--tries=1", "--timeout=30", url], check=False)
        assert wget.returncode == 0, wget.stderr
        assert "HTTP/1.1 302 Found" in wget.stderr and f"Location: {location}" in wget.stderr
        assert sha256(target.read_bytes()) == sha256(content)
        return 4

    def check_origin_answers(self, url: str) -> None:
        """curl (whole file and a range, following redirects) and wget get the origin's own answers."""
        content = self.content(urlsplit(url).path)
        for args in ((), ("-r", "100-200099")):
            answer = self.curl(url, "-L", *args)
            assert answer.statuses == [206 if args else 200], answer.head
            assert answer.body == (content[100:200100] if args else content)
        wget = self.topo.client.run(["wget", "-q", "-O", "-", "--tries=1", "--timeout=30", url], check=False,
                                    text=False)
        assert wget.returncode == 0 and sha256(wget.stdout) == sha256(content)

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


def redirect_config(work: Path, *, interface: str, serve_ip: str, serve_port: int, lines: Sequence[str]) -> Path:
    """A redirect-mode config in `work` for a stack in namespaces: sniffing `interface`, admitting
    after two requests, serving on `serve_ip`; `lines` (TOML) give the scope and injection."""
    config = work / "cachetap.toml"
    config.write_text("\n".join([
        f'cache_dir = "{work / "cache"}"',
        f'interface = "{interface}"',
        'mode = "redirect"',
        f'serve_host = "{serve_ip}"',
        f"serve_port = {serve_port}",
        "admission_threshold = 1",
        "min_size = 65536",
        "http_ports = [80]",
        *lines,
        'log_level = "INFO"',
        'run_as_user = ""',  # the work folder is under root's private pytest folder
    ]) + "\n")
    return config


def missing_tools(*tools: str) -> str | None:
    """A reason to skip when a client or network tool is not installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    return f"missing tools: {', '.join(missing)} (./dev.sh test installs them)" if missing else None


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (no orphaned
    `cachetap run` sniffing in a namespace nobody deletes any more). `ip netns exec` keeps it: it execs."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
