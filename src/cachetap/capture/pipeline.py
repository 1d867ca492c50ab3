"""Frames in, decisions out: the capture side's one loop body, live and offline alike.

Sans-IO: `feed()` decodes, reassembles, parses and decides, and returns one `Observation` per
request with its decision (`Ignore | Count | Redirect`); it sends nothing and queues nothing. The
caller acts on the decisions (capture/live.py injects the 302 first, then queues the sighting) and
reports an injection's outcome back with `redirected()` or `redirect_failed()` (which is when a
Redirect is counted: the count then says what happened, and nothing runs between decision and send). The clock the loop
guards read is passed in, so a test can play frames and a clock without privileges.
Everything here runs per packet, so it stays on byte slicing (linklayer), the hand-written head
parser and precompiled rules.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cachetap.capture.linklayer import decode_frame
from cachetap.capture.reassembly import HeadAssembler
from cachetap.capture.redirector import Redirector
from cachetap.core.keys import BadTarget, cache_key, canonical_url, host_of
from cachetap.core.rules import Rules
from cachetap.core.tally import BucketTally
from cachetap.core.types import Count, Decision, Ignore, Redirect, RequestHead, Segment, Sighting
from cachetap.settings import Settings

Clock = Callable[[], float]
MAX_REMEMBERED = 4096       # request targets whose URL and key are kept...
MAX_REMEMBERED_NAME = 512   # ...when target and Host are this short: a few MB at most


@dataclass(slots=True)
class Observation:
    """One request seen on the wire and what the capture decided about it.

    Not frozen, though nothing changes it: a frozen dataclass's __init__ costs half a microsecond
    more, and one is built for every request before its 302 may leave (hot path)."""

    segment: Segment
    head: RequestHead
    url: str | None
    key: str | None
    decision: Decision
    host: str | None = None

    def sighting(self) -> Sighting:
        """What `analyze` is told (built only for Count and Redirect, after any 302 left)."""
        seg, head = self.segment, self.head
        return Sighting(ts=seg.ts, client=seg.src, client_port=seg.sport, server=seg.dst,
                        server_port=seg.dport, method=head.method, host=self.host, url=self.url, key=self.key,
                        target=head.target, range=head.range, user_agent=head.user_agent,
                        authorization=head.authorization)

    def to_dict(self) -> dict:
        seg, head, decision = self.segment, self.head, self.decision
        return {
            "ts": seg.ts, "client": seg.src, "client_port": seg.sport,
            "server": seg.dst, "server_port": seg.dport, "vlan": seg.vlan,
            "method": head.method, "host": head.host, "target": head.target,
            "range": head.range, "user_agent": head.user_agent,
            "url": self.url, "key": self.key, "decision": decision.kind,
            "reason": getattr(decision, "reason", None),
        }


class Pipeline:
    """Decode, reassemble, parse and decide. With a `redirector`, GETs of ready keys become Redirects."""

    def __init__(self, settings: Settings, redirector: Redirector | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.rules = Rules.from_settings(settings)
        self.strip = settings.strip_query_params
        self.ports = frozenset(settings.http_ports)
        self.assembler = HeadAssembler(max_flows=settings.reassembly_flows)
        self.redirector = redirector
        self.clock = clock
        self.packets = 0
        self.rejected: Counter[str] = Counter()   # malformed input, by reason
        self.decisions: Counter[str] = Counter()  # "count", "ignore:<reason>", ...
        # What a target names, remembered: the same objects are asked for again and again, and
        # canonicalising costs a third of a request's time. lru_cache's C code keeps a miss cheap.
        self._remembered_resource = functools.lru_cache(maxsize=MAX_REMEMBERED)(self._resource)
        self.latency = BucketTally()  # capture timestamp -> 302 sent, per redirect (capture/prometheus.py)

    def feed(self, ts: float, linktype: int, frame: bytes) -> list[Observation]:
        self.packets += 1
        seg = decode_frame(linktype, frame, ts)
        if isinstance(seg, str):
            self.rejected[seg] += 1
            return []
        if seg.dport not in self.ports or not seg.payload:
            # Responses, handshakes and pure ACKs: normal traffic in an unfiltered capture, not errors.
            return []
        assembled = self.assembler.feed(seg)
        for reason in assembled.rejects:
            self.rejected[reason] += 1
        pipelined = len(assembled.requests) > 1
        return [self._decide(seg, head, pipelined) for head in assembled.requests]

    def _decide(self, seg: Segment, head: RequestHead, pipelined: bool) -> Observation:
        # No Host (HTTP/1.0): the destination address is the only name the request has.
        target, name = head.target, head.host or _ip_host(seg.dst)
        if len(target) + len(name) <= MAX_REMEMBERED_NAME:
            resource = self._remembered_resource(target, name, seg.dport)
        else:
            resource = self._resource(target, name, seg.dport)
        if isinstance(resource, str):
            return self._record(Observation(seg, head, None, None, Ignore(resource)))
        url, key, host = resource
        ignored = self.rules.consider(head, seg.src, url)
        if ignored is not None:
            return self._record(Observation(seg, head, url, key, ignored))
        decision: Decision = Count(key)
        if self.redirector is not None:  # the fast path: the 302 races the origin's answer
            redirect = self.redirector.decide(seg, head, url, key, host, pipelined, self.clock())
            if redirect is not None:  # counted when the caller reports the outcome: nothing delays the send
                return Observation(seg, head, url, key, redirect, host)
        return self._record(Observation(seg, head, url, key, decision, host))

    def _resource(self, target: str, host: str, port: int) -> tuple[str, str, str] | str:
        """(URL, key, host) a request names, or why it names none."""
        try:
            url = canonical_url(target, host, port)
        except BadTarget as exc:
            return f"bad_target_{exc.reason}"
        return url, cache_key(url, self.strip), host_of(url)

    def _record(self, obs: Observation) -> Observation:
        reason = getattr(obs.decision, "reason", None)
        self.decisions[f"{obs.decision.kind}:{reason}" if reason else obs.decision.kind] += 1
        return obs

    # --- outcomes of acting on a Redirect, reported by the loop that sent (or failed to send) it ----
    def redirected(self, obs: Observation, sent_at: float | None = None) -> None:
        """The 302 left at `sent_at` (the clock of the capture timestamps): its latency is tallied."""
        self.decisions["redirect"] += 1
        if sent_at is not None:
            self.latency.add(sent_at - obs.segment.ts)
        self.redirector.sent(obs.segment, obs.head, obs.key, self.clock())

    def redirect_failed(self, obs: Observation) -> None:
        """The 302 could not be sent: the client goes on to the origin, so the request counts plainly."""
        self.decisions["count"] += 1
        self.redirector.failed()

    def finish(self, now: float | None = None) -> None:
        """Count heads still waiting for their end as incomplete (end of a capture file)."""
        for reason in self.assembler.expire(float("inf") if now is None else now):
            self.rejected[reason] += 1

    def summary(self) -> dict:
        """Counts so far; a Redirect appears once its outcome was reported (`redirected` or
        `redirect_failed`)."""
        summary = {
            "packets": self.packets,
            "requests": sum(self.decisions.values()),
            "decisions": dict(sorted(self.decisions.items())),
            "rejected": dict(sorted(self.rejected.items())),
        }
        if self.redirector is not None:
            summary["not_redirected"] = dict(sorted(self.redirector.skipped.items()))
        return summary

    def run(self, frames: Iterable[tuple[float, int, bytes]]) -> Iterator[Observation]:
        for ts, linktype, frame in frames:
            yield from self.feed(ts, linktype, frame)


def counts(decision: Decision) -> bool:
    """Whether the request is told to `analyze` (redirected or not, it counts for admission)."""
    return isinstance(decision, (Count, Redirect))


def _ip_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
