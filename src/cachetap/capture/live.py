"""The live capture process: sniff, decide, batch sightings to `analyze`.

Why a dedicated process and not a task or a worker bootstep: sniffing never ends, so as a task it would
hold a worker slot for ever and be re-delivered by the broker after its visibility timeout (what the seed
did); inside a worker it would share a GIL with the consumer and the pool, while the redirect fast path
(next stage) needs a loop that nothing else delays. It needs raw-socket privileges the workers should not
have. As its own process, `cachetap run`, systemd or `celery multi`'s neighbours supervise it like any
daemon, and it talks to the rest only through the broker.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict
import signal
import threading
import time
from urllib.parse import urlsplit

from cachetap.capture.batcher import analyze_batch_sender
from cachetap.capture.bpf import request_filter
from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.capture.inject import Injector
from cachetap.capture.pipeline import Pipeline
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.capture.sniffer import LiveSource, interface_linktype
from cachetap.settings import Settings
from cachetap.web.urls import public_base_url

log = logging.getLogger(__name__)
STATS_EVERY = 60.0
EXPIRE_EVERY = 1.0


def run_live_capture(settings: Settings, stop: threading.Event | None = None) -> dict:
    """Capture until SIGTERM/SIGINT (or `stop` is set); returns the final summary."""
    from cachetap.tasks.app import create_app

    stop = stop or threading.Event()
    app = create_app(settings)
    sender = analyze_batch_sender(app)
    fast_path = FastPath.start(settings, app) if settings.mode == "redirect" else None
    pipeline = Pipeline(settings, sink=lambda s: sender.add(s.to_dict()),
                        redirector=fast_path.redirector if fast_path else None,
                        injector=fast_path.injector if fast_path else None)
    bpf = request_filter(settings.http_ports, interface_linktype(settings.interface))
    source = LiveSource(settings.interface, bpf)

    def _stop(signum, _frame):
        log.info("signal %s: stopping capture", signum)
        stop.set()
        source.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if settings.capture_realtime:
        _raise_priority()

    log.info("capturing on %s (mode %s) with filter: %s", settings.interface, settings.mode, bpf)
    next_expire = next_stats = time.monotonic()
    try:
        with source:
            for ts, linktype, frame in source:
                try:
                    pipeline.feed(ts, linktype, frame)
                except Exception:  # never let one packet end the capture (promise 4)
                    pipeline.rejected["internal_error"] += 1
                    log.exception("packet handling failed; counted as internal_error")
                now = time.monotonic()
                if now >= next_expire:
                    pipeline.finish(time.time())
                    next_expire = now + EXPIRE_EVERY
                if now >= next_stats:
                    log.info("capture stats: %s queued: %s", pipeline.summary(), asdict(sender.counters))
                    next_stats = now + STATS_EVERY
                if stop.is_set():
                    break
    finally:
        if fast_path is not None:
            fast_path.stop()
        sender.close()
    summary = pipeline.summary()
    log.info("capture stopped: %s", summary)
    return summary


class FastPath:
    """The redirect mode's parts: ready-key index kept in sync, health gate, injector, redirector."""

    def __init__(self, index_sync: IndexSync, health: HealthGate, injector: Injector, redirector: Redirector):
        self.index_sync, self.health, self.injector, self.redirector = index_sync, health, injector, redirector

    @classmethod
    def start(cls, settings: Settings, app) -> FastPath:
        base_url = public_base_url(settings.public_url, settings.serve_host, settings.serve_port)
        index = HotIndex()
        index_sync = IndexSync(app, index, node=settings.interface or "capture",
                               reconcile_every=settings.index_reconcile_interval).start()
        health = HealthGate(base_url, interval=settings.health_interval).start()
        injector = Injector.from_settings(settings)
        scope = RedirectScope(tuple(settings.redirect_client_subnets), tuple(settings.redirect_hosts))
        redirector = Redirector(index, health, base_url, scope, _addresses_of(base_url))
        index_sync.ready.wait(timeout=30)  # redirect from the first packet if the catalog answers
        log.info("redirect mode: %d ready keys, cache server %s", len(index), base_url)
        return cls(index_sync, health, injector, redirector)

    def stop(self) -> None:
        self.health.stop()
        self.index_sync.stop()
        self.injector.close()


def _addresses_of(base_url: str) -> frozenset[tuple[str, int]]:
    """Where the cache server listens, as (address, port) pairs: requests to it are never redirected."""
    parts = urlsplit(base_url)
    port = parts.port or 80
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset()
    return frozenset((info[4][0], port) for info in infos)


def _raise_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        log.info("capture loop runs at real-time priority (SCHED_FIFO 10)")
    except (OSError, AttributeError) as exc:
        log.info("capture loop at normal priority (real-time refused: %s)", exc)
