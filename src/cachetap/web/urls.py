"""Where clients reach this cache server: the base URL of the 302s (the URL contract is core/urls.py)."""

from __future__ import annotations

import socket

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def public_base_url(public_url: str, serve_host: str, serve_port: int) -> str:
    """Base URL clients are redirected to: `public_url` if set, else derived from host and port.

    A wildcard bind address is replaced by the address of the interface holding the default
    route (a UDP connect sends no packet), falling back to 127.0.0.1 on a host with no route.
    """
    if public_url:
        return public_url.rstrip("/")
    host = serve_host
    if host in WILDCARDS:
        host = _primary_address()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}" if serve_port == 80 else f"http://{host}:{serve_port}"


def _primary_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1; connect() on UDP only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
