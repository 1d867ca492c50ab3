"""Fixtures for the Celery tests: settings per broker, sightings, a real origin, worker startup."""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from cachetap.core.keys import cache_key, canonical_url
from cachetap.settings import Settings, load_settings
from cachetap.tasks.app import QUEUE_NAMES
from cachetap.testing import services
from cachetap.testing.origin import Origin

MiB = 1 << 20


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


def _rabbitmq_vhost() -> Iterator[str]:
    """A vhost of our own, so concurrent test runs never consume each other's messages."""
    try:
        services.ensure("rabbitmq")
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    vhost = f"cachetap_test_{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=120)
    subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=120)


def _redis_db() -> Iterator[str]:
    try:
        services.ensure("redis")
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    db = random.randint(4, 15)
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    client.delete(*QUEUE_NAMES, *[f"{q}\x06\x163" for q in QUEUE_NAMES])  # plain and priority lists
    yield url
    client.delete(*QUEUE_NAMES, *[f"{q}\x06\x163" for q in QUEUE_NAMES])
    client.close()


@pytest.fixture(params=["filesystem", "redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """"" for the embedded broker, else the URL of an isolated Redis db / RabbitMQ vhost."""
    if request.param == "filesystem":
        yield ""
    elif request.param == "redis":
        yield from _redis_db()
    else:
        yield from _rabbitmq_vhost()


@pytest.fixture
def redis_broker_url() -> Iterator[str]:
    yield from _redis_db()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides) -> Settings:
        values = {
            "cache_dir": tmp_path / "cache",
            "admission_threshold": 1,
            "resolve_overrides": {"files.test": ["127.0.0.1"]},
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
