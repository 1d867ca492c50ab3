"""Health gate for the redirect fast path: inject only while the cache server answers now.

A thread asks the cache server's /healthz every `interval` seconds with a short timeout. One failed
check closes the gate at once (fail-open: clients go to the origin), one good check opens it again.
With the defaults (0.25 s, 0.5 s timeout) a dead server stops redirects within about 0.75 s.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class HealthGate:
    def __init__(self, base_url: str, interval: float = 0.25, timeout: float = 0.5) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"cache server URL must be http://host[:port], got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.interval = interval
        self.timeout = timeout
        self.ok = False  # closed until the first good answer
        self.checks = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cachetap-health", daemon=True)

    def start(self) -> HealthGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def check_once(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            healthy = conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            healthy = False
        finally:
            conn.close()
        self.checks += 1
        if healthy != self.ok:
            log.warning("cache server %s:%d is %s: redirects %s", self.host, self.port,
                        "healthy" if healthy else "NOT answering", "on" if healthy else "off")
        if not healthy:
            self.failures += 1
        self.ok = healthy
        return healthy

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.check_once()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
