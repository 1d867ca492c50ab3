"""Prometheus counters of the cache server.

Each server owns a registry, so several in-process servers (tests) do not collide. With worker
processes the values live in prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR,
set up by run_server) and /metrics sums all workers, whichever worker answers the scrape.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess(directory: str) -> None:
    """Store counter values in files under directory; call before forking workers."""
    os.environ[MULTIPROC_ENV] = directory
    # prometheus-client picks its value class at import time from the environment.
    values.ValueClass = values.MultiProcessValue()


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("cachetap_serve_requests", "Requests answered by the cache server, by status.",
                                ["status"], registry=self.registry)
        self.bytes_sent = Counter("cachetap_serve_body_bytes", "Body bytes sent by the cache server.",
                                  registry=self.registry)
        self.fallbacks = Counter("cachetap_serve_fallbacks", "Requests the cache could not serve, by reason.",
                                 ["reason"], registry=self.registry)
        self.bad_requests = Counter("cachetap_serve_bad_requests", "Malformed requests, by reason.",
                                    ["reason"], registry=self.registry)

        self._by_status: dict[int, Any] = {}

    def answered(self, status: int) -> None:
        """Count one response; the labelled child is looked up once per status (hot path)."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.requests.labels(str(status))
        child.inc()

    def exposition(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory and values.ValueClass is not values.MutexValue:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)
            return generate_latest(registry)
        return generate_latest(self.registry)
