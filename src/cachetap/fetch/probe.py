"""HEAD probe of a candidate object: size, type, validators and cache directives, before any download.

The probe connects to an address from the cache's own `Resolver`, never to the address a client
was seen talking to, and sends the original Host header; redirects are followed only to the same
scheme, a few hops at most, and each new host is resolved again the same way; every address passes
the fetch guard (`Resolver.fetch_addresses`) before we connect to it. Any failure raises
`ProbeError` with a short machine reason ("timeout", "connect", "unresolved", "too_many_redirects", ...).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

import httpx

from cachetap.core.admission import ProbeResult
from cachetap.fetch.resolver import FetchRefused, Resolver

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
USER_AGENT = "cachetap-probe/0.1"


class ProbeError(Exception):
    """The probe could not produce an answer; `reason` is a short machine reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def probe(url: str, resolver: Resolver, timeout: float) -> ProbeResult:
    """HEAD `url` through the cache's own resolution and return what the origin says about it."""
    return ProbeResult.from_headers(*probe_response(url, resolver, timeout))


def probe_response(url: str, resolver: Resolver, timeout: float,
                   headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Status and headers (names lower-case) of a HEAD of `url`, with extra request `headers`
    (e.g. If-None-Match for a revalidation); redirects are followed as for `probe`."""
    # trust_env=False: no proxy or netrc from the environment may redirect the probe elsewhere.
    with httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False) as client:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            response = _head(client, current, resolver, headers or {})
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response.status_code, {k.lower(): v for k, v in response.headers.items()}
            following = urljoin(current, location)
            if urlsplit(following).scheme.lower() != urlsplit(current).scheme.lower():
                raise ProbeError("redirect_scheme", f"{current} -> {following}")
            log.debug("probe %s redirected to %s", current, following)
            current = following
        raise ProbeError("too_many_redirects", url)


def _head(client: httpx.Client, url: str, resolver: Resolver, extra: Mapping[str, str]) -> httpx.Response:
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        raise ProbeError("scheme", parts.scheme or "(none)")
    try:
        host, port = parts.hostname, parts.port or 80
    except ValueError as exc:  # a port that is not a number or out of range
        raise ProbeError("bad_url", str(exc)) from None
    if not host:
        raise ProbeError("bad_url", url)
    try:
        addresses = resolver.fetch_addresses(host)  # the fetch guard, on each hop's own resolution
    except FetchRefused as exc:
        raise ProbeError("forbidden_address", str(exc)) from None
    if not addresses:
        raise ProbeError("unresolved", host)
    host_header = host if port == 80 else f"{_bracket(host)}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {**extra, "Host": host_header, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    last_error: ProbeError | None = None
    for address in addresses:  # try each of the host's addresses until one answers
        try:
            return client.head(f"http://{_bracket(address)}:{port}{target}", headers=headers)
        except httpx.TimeoutException as exc:
            last_error = ProbeError("timeout", f"{address}:{port} {type(exc).__name__}")
        except httpx.ConnectError as exc:
            last_error = ProbeError("connect", f"{address}:{port} {exc}")
        except httpx.HTTPError as exc:  # protocol errors: a broken origin, not worth another address
            raise ProbeError("protocol", f"{address}:{port} {exc}") from None
        log.debug("probe %s via %s failed: %s", url, address, last_error)
    assert last_error is not None
    raise last_error


def _bracket(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host
