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
from dataclasses import asdict
import signal
import threading
import time

from cachetap.capture.bpf import request_filter
from cachetap.capture.pipeline import Pipeline
from cachetap.capture.sniffer import LiveSource, interface_linktype
from cachetap.settings import Settings

log = logging.getLogger(__name__)
STATS_EVERY = 60.0
EXPIRE_EVERY = 1.0


def run_live_capture(settings: Settings, stop: threading.Event | None = None) -> dict:
    """Capture until SIGTERM/SIGINT (or `stop` is set); returns the final summary."""
    from cachetap.cli.capture_cmds import _analyze_sender

    stop = stop or threading.Event()
    sender = _analyze_sender(settings)
    pipeline = Pipeline(settings, sink=lambda s: sender.add(s.to_dict()))
    bpf = request_filter(settings.http_ports, interface_linktype(settings.interface))
    source = LiveSource(settings.interface, bpf)

    def _stop(signum, _frame):
        log.info("signal %s: stopping capture", signum)
        stop.set()
        source.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    log.info("capturing on %s (mode %s) with filter: %s", settings.interface, settings.mode, bpf)
    next_expire = next_stats = time.monotonic()
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
    sender.close()
    summary = pipeline.summary()
    log.info("capture stopped: %s", summary)
    return summary
