"""Admission: when an object has been asked for often enough, and whether a sighting can be trusted.

The poisoning guard: a request seen on the wire names a host, but the packet went to some address.
Counting it toward a fetch is only safe when that address really serves the host (it is among the
host's DNS addresses, or inside a network the operator trusts such as a CDN cache), otherwise a
client could make us cache anything under any name by sending a forged Host to its own server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def admit(hits_in_window: int, threshold: int) -> bool:
    """True once an object was requested more than `threshold` times within the window."""
    return hits_in_window > threshold


def destination_trusted(server: str, host_addrs: set[str],
                        trusted_networks: Iterable[IPNetwork | str]) -> bool:
    """Whether `server` (the observed destination) may serve the host whose addresses are `host_addrs`."""
    address = _address(server)
    if address is None:
        return False
    if any(_address(a) == address for a in host_addrs):
        return True
    for network in trusted_networks:
        try:
            net = network if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)) \
                else ipaddress.ip_network(network, strict=False)
        except ValueError:
            continue  # a bad entry trusts nothing (settings validate them; this is a second line)
        if address in net:
            return True
    return False


def _address(text: str) -> IPAddress | None:
    """The address in `text`, IPv4-mapped IPv6 (::ffff:a.b.c.d) unwrapped to IPv4; None if invalid."""
    try:
        address = ipaddress.ip_address(text.strip() if isinstance(text, str) else text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a HEAD probe of a candidate object told us."""

    status: int
    size: int | None = None            # Content-Length; None when absent or invalid
    content_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    cache_control: str | None = None
    accept_ranges: bool = False        # the origin announced "Accept-Ranges: bytes"

    @classmethod
    def from_headers(cls, status: int, headers: Mapping[str, str]) -> ProbeResult:
        """Build from a response's headers (any Mapping; names matched case-insensitively)."""
        lower = {str(k).lower(): str(v).strip() for k, v in headers.items()}
        ranges = {t.strip().lower() for t in lower.get("accept-ranges", "").split(",")}
        return cls(status=int(status), size=_content_length(lower.get("content-length")),
                   content_type=lower.get("content-type") or None, etag=lower.get("etag") or None,
                   last_modified=lower.get("last-modified") or None,
                   cache_control=lower.get("cache-control") or None, accept_ranges="bytes" in ranges)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeResult:
        """Inverse of to_dict; raises ValueError for a missing status or a value of the wrong type."""
        status = data.get("status")
        size = data.get("size")
        if not isinstance(status, int) or isinstance(status, bool):
            raise ValueError(f"probe status must be an int, got {status!r}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError(f"probe size must be a non-negative int or None, got {size!r}")
        texts = {}
        for name in ("content_type", "etag", "last_modified", "cache_control"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"probe {name} must be a string or None, got {value!r}")
            texts[name] = value
        return cls(status=status, size=size, accept_ranges=bool(data.get("accept_ranges", False)), **texts)


def _content_length(value: str | None) -> int | None:
    # httpx joins repeated headers with ", "; identical repeats are allowed (RFC 9110 8.6).
    if value is None:
        return None
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        return None
    (digits,) = values
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        return None
    return int(digits)
