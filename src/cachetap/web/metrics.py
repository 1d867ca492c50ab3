"""Prometheus counters of the cache server.

Each server owns a registry, so several in-process servers (tests) do not collide. `cachetap serve`
keeps the values in the machine's metrics folder (cachetap.metrics), and /metrics sums every
process of the machine (capture, workers, all cache server workers), whichever worker answers the
scrape; a plain directory served with worker processes gets a folder of its own (run_server).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter

from cachetap.metrics import exposition


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
        return exposition(self.registry)
