"""Make sure a local service is up for tests, starting it with the machine's own command if down.

The commands are the ones this machine's services are started with (see the README's Testing part).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

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
