"""Values that cross module boundaries: what was seen on the wire and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Built per captured request, before its 302 may leave: not frozen (a frozen dataclass's __init__ goes
# through object.__setattr__ per field, about 1.5 us more per object here). Nothing changes them after
# construction; unsafe_hash keeps them hashable and equal exactly as when they were frozen.
@dataclass(slots=True, unsafe_hash=True)
class RequestHead:
    """One parsed HTTP/1.x request head (no body)."""

    method: str                 # upper-case token, e.g. "GET"
    target: str                 # request-target as sent (origin-form "/a?b" or absolute-form "http://h/a")
    version: str                # "HTTP/1.1" or "HTTP/1.0"
    host: str | None            # Host header value as sent (may carry a port), None when absent
    range: str | None = None    # Range header value, None when absent
    user_agent: str | None = None
    authorization: bool = False  # an Authorization header was present (never cache)


@dataclass(slots=True, unsafe_hash=True)  # per packet: not frozen, see RequestHead
class Segment:
    """A TCP segment's addressing and payload, decoded from a frame by byte slicing."""

    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    vlan: int | None = None


@dataclass(slots=True, unsafe_hash=True)  # per request: not frozen, see RequestHead
class Sighting:
    """A request for an object worth considering, as the capture hands it to `analyze`."""

    ts: float
    client: str
    client_port: int
    server: str                 # observed destination address (the poisoning guard checks it)
    server_port: int
    method: str
    host: str                   # lower-case, no port
    url: str                    # canonical URL (see core.keys.canonical_url)
    key: str                    # cache key derived from url and the strip rules
    target: str = ""            # request-target as sent (not sent to analyze: see wire.encode_sighting)
    range: str | None = None
    user_agent: str | None = None  # not sent to analyze either
    authorization: bool = False

    def to_dict(self) -> dict[str, Any]:
        # Every field is a str, number, bool or None: no deep copy needed. asdict() recurses and copies
        # and costs several microseconds per request in the capture loop.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sighting:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ---- decisions: values returned by pure functions, acted upon by adapters -------------------

@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str
    kind: str = field(default="ignore", init=False)


@dataclass(frozen=True, slots=True)
class Count:
    key: str
    kind: str = field(default="count", init=False)


@dataclass(frozen=True, slots=True)
class Redirect:
    key: str
    location: str
    kind: str = field(default="redirect", init=False)


@dataclass(frozen=True, slots=True)
class Evict:
    key: str
    reason: str
    kind: str = field(default="evict", init=False)


Decision = Ignore | Count | Redirect | Evict
