"""Make sure a local service is up for tests, starting it with the machine's own command if down.

The commands are the ones this machine's services are started with (see the README's Testing part).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

START_COMMANDS = {
    "redis": "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' "
             "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    "rabbitmq": "rabbitmq-server -detached",
    "postgresql": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "mariadb": "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
}
PORTS = {"redis": 6379, "rabbitmq": 5672, "postgresql": 5432, "mariadb": 3306}
URLS = {
    "redis": "redis://127.0.0.1:6379/{db}",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/{db}",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/{db}",
}


class ServiceUnavailable(Exception):
    pass


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure(name: str, wait: float = 60.0) -> None:
    """Return once the service answers on its port; start it if it is down."""
    port = PORTS[name]
    if port_open(port):
        return
    first_word = START_COMMANDS[name].split()[0]
    if shutil.which(first_word) is None:
        raise ServiceUnavailable(f"{name} is down and {first_word} is not installed")
    subprocess.run(START_COMMANDS[name], shell=True, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=wait)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if port_open(port):
            if name == "rabbitmq":
                time.sleep(2)  # the port opens before the vhost is ready
            return
        time.sleep(0.5)
    raise ServiceUnavailable(f"{name} did not come up on port {port} within {wait:.0f}s")


@contextmanager
def scratch_database(kind: str) -> Iterator[str]:
    """URL of a database of our own on the local PostgreSQL or MariaDB server, dropped afterwards."""
    import sqlalchemy as sa

    ensure(kind)
    name = f"cachetap_scratch_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(URLS[kind].format(db="postgres" if kind == "postgresql" else ""),
                             isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            extra = " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if kind == "mariadb" else ""
            conn.exec_driver_sql(f"CREATE DATABASE {name}{extra}")
        yield URLS[kind].format(db=name)
    finally:
        with admin.connect() as conn:
            force = " WITH (FORCE)" if kind == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        admin.dispose()


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of our own, so concurrent runs never consume each other's messages."""
    ensure("rabbitmq")
    vhost = f"cachetap_test_{uuid.uuid4().hex[:8]}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=120)
    subprocess.run([*ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([*ctl, "delete_vhost", vhost], check=False, capture_output=True, timeout=120)


@contextmanager
def redis_database() -> Iterator[str]:
    """A Redis database (4-15) that no other run holds, emptied before and after.

    Emptied whole, not just the queue lists: a worker killed mid-task leaves its message in kombu's
    `unacked` hash, and the next worker on that database would restore it. A lock in database 0 (the
    holder's pid) keeps concurrent runs on this machine apart.
    """
    import redis

    from cachetap.lifetime import pid_is_alive

    ensure("redis")
    locks = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for db in random.sample(range(4, 16), 12):
        lock = f"cachetap-test-db:{db}"
        holder = locks.get(lock)
        if holder is None:
            if not locks.set(lock, os.getpid(), ex=3600, nx=True):
                continue  # another run took it just now
        elif pid_is_alive(int(holder)):
            continue
        else:  # left by a run that died
            locks.set(lock, os.getpid(), ex=3600)
        break
    else:
        locks.close()
        raise ServiceUnavailable("Redis databases 4-15 are all held by other runs on this machine")
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        locks.delete(lock)
        locks.close()
