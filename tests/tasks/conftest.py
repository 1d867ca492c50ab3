"""Fixtures for the Celery tests: settings per broker, sightings, a real origin, worker startup."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cachetap.core.keys import cache_key, canonical_url
from cachetap.settings import Settings, load_settings
from cachetap.testing import LOOPBACK_NETWORKS
from cachetap.testing.origin import Origin

MiB = 1 << 20


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides) -> Settings:
        values = {
            "cache_dir": tmp_path / "cache",
            "admission_threshold": 1,
            "resolve_overrides": {"files.test": ["127.0.0.1"]},
            "fetch_allow_networks": LOOPBACK_NETWORKS,
            "min_size": MiB,
            "probe_timeout": 30,
            "log_level": "DEBUG",
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def make_sighting() -> Callable[..., dict]:
    return sighting


def sighting(request_url: str, server: str = "127.0.0.1", client: str = "10.0.0.5", **extra) -> dict:
    """A sighting dict as the capture sends it, for a request of `request_url` sent to `server`."""
    from urllib.parse import urlsplit

    parts = urlsplit(request_url)
    canonical = canonical_url(parts.path or "/", parts.netloc, 80)
    data = {
        "ts": time.time(), "client": client, "client_port": 40000, "server": server,
        "server_port": parts.port or 80, "method": "GET", "host": parts.hostname,
        "url": canonical, "key": cache_key(canonical, {}), "target": parts.path,
        "range": None, "user_agent": "test", "authorization": False,
    }
    data.update(extra)
    return data
