"""The live capture process: sniff, decide, batch sightings to `analyze`.

Why a dedicated process and not a task or a worker bootstep: sniffing never ends, so as a task it would
hold a worker slot for ever and be re-delivered by the broker after its visibility timeout; inside a worker it would share a GIL with the consumer and the pool, while the redirect fast path
needs a loop that nothing else delays. It needs raw-socket privileges the workers should not
have. As its own process, `cachetap run`, systemd or `celery multi`'s neighbours supervise it like any
daemon, and it talks to the rest only through the broker.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from celery import Celery

from cachetap.capture.batcher import analyze_batch_sender
from cachetap.capture.bpf import request_filter
from cachetap.capture.health import HealthGate
from cachetap.capture.hotindex import HotIndex
from cachetap.capture.index_sync import IndexSync
from cachetap.capture.inject import Injector
from cachetap.capture.pipeline import Observation, Pipeline
from cachetap.capture.redirector import RedirectScope, Redirector
from cachetap.capture.relay import SightingRelay
from cachetap.capture.prometheus import MetricsPublisher
from cachetap.capture.report import CaptureReport
from cachetap.capture.sniffer import LiveSource, interface_linktype
from cachetap.capture.targets import CacheTargets, NodeURL
from cachetap.core.accesslog import REDIRECT, squid_line
from cachetap.core.rules import Rules
from cachetap.core.types import Count, Redirect, Sighting
from cachetap.fetch.resolver import Resolver
from cachetap.logs import AccessLog, open_access_log
from cachetap.reloading import LiveSettings
from cachetap.settings import Settings
from cachetap.store.nodes import CACHE_ROLE, liveness_window
from cachetap.wire import encode_sighting
from cachetap.web.urls import public_base_url

log = logging.getLogger(__name__)
STATS_EVERY = 60.0
# How long the capture loop may wait for the GIL a helper thread holds (CPython's default: 5 ms).
SWITCH_INTERVAL = 0.0001
EXPIRE_EVERY = 1.0
PUBLISH_LATEST = 5.0  # seconds the figures may wait for an idle moment at most


def run_live_capture(settings: Settings, app: Celery, stop: threading.Event | None = None) -> dict:
    """Capture until SIGTERM/SIGINT (or `stop` is set), sending sightings through `app` (the cachetap
    Celery app, handed in by the CLI); returns the final summary."""
    stop = stop or threading.Event()
    bpf = request_filter(settings.http_ports, interface_linktype(settings.interface))
    # Before any thread exists: the relay forks the process that talks to the broker.
    relay = SightingRelay(lambda: analyze_batch_sender(app, settings))
    fast_path = FastPath.start(settings, app) if settings.mode == "redirect" else None
    pipeline = Pipeline(settings, redirector=fast_path.redirector if fast_path else None)
    injector = fast_path.injector if fast_path else None
    access_log = open_access_log(settings.access_log_path) if fast_path else None

    heartbeat = None  # started once the interface is open: a capture that cannot start never registers
    # `cachetap reload`: new rules and redirect scope from the next packet on; the socket stays open.
    live = LiveSettings(settings).watch("capture", lambda fresh: apply_reload(fresh, pipeline, fast_path))

    def queue(sighting: Sighting) -> None:
        relay.add(encode_sighting(sighting))

    source = LiveSource(settings.interface, bpf, on_idle=lambda: idle(relay, published))
    published = MetricsPublisher(pipeline, relay, fast_path.index_sync.index if fast_path else None, source)
    published.publish()  # the index size from the start, whatever the traffic

    def _stop(signum, _frame):
        log.info("signal %s: stopping capture", signum)
        stop.set()
        source.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    if settings.capture_realtime:
        _raise_priority()
    _shorten_switch_interval()
    _freeze_startup_objects()

    log.info("capturing on %s (mode %s)", settings.interface, settings.mode)
    log.debug("capture filter: %s", bpf)
    next_expire = next_stats = time.monotonic()
    try:
        with source:
            heartbeat = _capture_heartbeat(settings, pipeline, fast_path)
            for ts, linktype, frame in source:
                try:
                    act(pipeline.feed(ts, linktype, frame), frame, pipeline, injector, queue, access_log)
                except Exception:  # one bad packet must never end the capture
                    pipeline.rejected["internal_error"] += 1
                    log.exception("packet handling failed; counted as internal_error")
                now = time.monotonic()
                if now >= next_expire:
                    pipeline.finish(time.time())
                    next_expire = now + EXPIRE_EVERY
                    if now - published.published_at >= PUBLISH_LATEST:  # a link too busy to ever be idle
                        published.publish()
                if now >= next_stats:
                    log.info("capture stats: %s queued: %s", pipeline.summary(), asdict(relay.counters))
                    next_stats = now + STATS_EVERY
                if stop.is_set():
                    break
    finally:
        published.publish()
        live.stop()
        if heartbeat is not None:
            heartbeat.stop()
        if fast_path is not None:
            fast_path.stop()
        relay.close()
        if access_log is not None:
            access_log.close()
    summary = pipeline.summary()
    log.info("capture stopped: %s", summary)
    return summary


def idle(relay: SightingRelay, published: MetricsPublisher) -> None:
    """The kernel's queue is drained: hand the pending sightings over, publish figures if due."""
    relay.flush()
    published.maybe_publish()


def apply_reload(settings: Settings, pipeline: Pipeline, fast_path: FastPath | None) -> None:
    """Reloaded settings take effect between two packets (each attribute is swapped whole)."""
    pipeline.rules = Rules.from_settings(settings)
    if fast_path is not None:
        fast_path.redirector.scope = RedirectScope(tuple(settings.redirect_client_subnets),
                                                   tuple(settings.redirect_hosts))


def act(observations: list[Observation], frame: bytes, pipeline: Pipeline, injector: Injector | None,
        queue: Callable[[Sighting], None] | None, access_log: AccessLog | None = None) -> None:
    """Carry out the pipeline's decisions for one frame: the 302 first (it races the origin's answer),
    then the sighting to `queue`, redirected or not (it counts for admission either way), then the
    access-log line of an injected 302."""
    for obs in observations:
        injected = False
        match obs.decision:
            case Redirect(location=location) if injector is not None:
                if injector.redirect(obs.segment, frame, location) > 0:
                    pipeline.redirected(obs, injector.last_sent_at)
                    injected = True
                else:
                    pipeline.redirect_failed(obs)
            case Count() | Redirect():
                pass
            case _:
                continue
        if queue is not None:
            queue(obs.sighting())
        if injected and access_log is not None:
            access_log.write(squid_line(obs.segment.ts, 0, obs.segment.src, REDIRECT, 302, 0, obs.head.method,
                                        obs.url or obs.head.target, None, None))


def _capture_heartbeat(settings: Settings, pipeline: Pipeline, fast_path: FastPath | None):
    """This capture in the node registry, with its figures (capture/report.py), on its own thread."""
    from cachetap.store.nodes import start_heartbeat

    index_size = health = None
    if fast_path is not None:
        index = fast_path.index_sync.index
        index_size = lambda: len(index)  # noqa: E731
        health = fast_path.redirector.targets.health
    report = CaptureReport(settings.interface, pipeline, index_size, health)
    try:
        return start_heartbeat(settings.effective_database_url, settings.effective_node_name, "capture",
                               settings.node_heartbeat_interval, report)
    except Exception as exc:  # the registry is for placement and display: capture without it
        log.warning("node registry: capture heartbeat not started: %s", exc)
        return None


def _hint_secret(app) -> bytes | None:
    """The cluster's key for signing origin hints; without the catalog, redirects carry no hint."""
    from cachetap.core.urls import HINT_SECRET

    try:
        return app.catalog.shared_secret(HINT_SECRET)
    except Exception as exc:  # the catalog is down: redirects still work, minus the fallback hint
        log.warning("origin hints disabled: the catalog did not give the signing secret (%s)", exc)
        return None


class FastPath:
    """The redirect mode's parts: ready-key index kept in sync, health gate, injector, redirector."""

    def __init__(self, index_sync: IndexSync, health: HealthGate, injector: Injector, redirector: Redirector):
        self.index_sync, self.health, self.injector, self.redirector = index_sync, health, injector, redirector

    @classmethod
    def start(cls, settings: Settings, app: Celery) -> FastPath:
        base_url = public_base_url(settings.public_url, settings.serve_host, settings.serve_port)
        index = HotIndex()
        health = HealthGate(base_url, interval=settings.health_interval).start()
        targets = CacheTargets(base_url, health, lambda url: HealthGate(url, interval=settings.health_interval).start(),
                               _registry_reader(app, settings)).start(settings.node_heartbeat_interval)
        index_sync = IndexSync(app, index, node=settings.interface or "capture",
                               reconcile_every=settings.index_reconcile_interval, node_index=targets.index_of).start()
        injector = Injector.from_settings(settings)
        scope = RedirectScope(tuple(settings.redirect_client_subnets), tuple(settings.redirect_hosts))
        redirector = Redirector(index, health, base_url, scope, targets.addresses, hint_secret=_hint_secret(app),
                                fetch_guard=Resolver.from_settings(settings).refusal, targets=targets)
        index_sync.ready.wait(timeout=30)  # redirect from the first packet if the catalog answers
        log.info("redirect mode: %d ready keys, cache server %s", len(index), base_url)
        return cls(index_sync, health, injector, redirector)

    def stop(self) -> None:
        self.index_sync.stop()
        self.redirector.targets.stop()  # every node's health gate, the configured one's too
        self.injector.close()


def _registry_reader(app: Celery, settings: Settings) -> Callable[[], list[NodeURL]]:
    """The cache nodes of the registry with their URLs (live or not: their health gate decides)."""
    window = liveness_window(settings.node_heartbeat_interval)

    def read() -> list[NodeURL]:
        return [NodeURL(n.name, n.public_url) for n in app.catalog.nodes.nodes(time.time(), window)
                if CACHE_ROLE in n.roles]
    return read


def _freeze_startup_objects() -> None:
    """Keep what start-up built (scapy's modules, settings, the fast path) out of the cyclic garbage
    collector's passes: they live as long as the process, and a full collection over them paused the
    loop for about 12 ms in the middle of a redirect (bench/redirect_latency.py)."""
    gc.collect()
    gc.freeze()


def _shorten_switch_interval() -> None:
    """A frame wakes the loop out of recv while a helper thread (index sync, health gate) may be
    running Python: the loop then waits for the GIL until that thread blocks or the
    switch interval forces a hand-over. The default 5 ms would put 5 ms into a redirect that races
    an origin answering in 1, for instance while the index reconcile walks a million keys; the
    helpers are light otherwise, so switching more often costs them little."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def _raise_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        log.info("capture loop runs at real-time priority (SCHED_FIFO 10)")
    except (OSError, AttributeError) as exc:
        log.info("capture loop at normal priority (real-time refused: %s)", exc)
