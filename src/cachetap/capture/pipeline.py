"""Frames in, sightings and decisions out: the capture side's one loop body, live and offline alike.

Everything here runs per packet, so it stays on byte slicing (linklayer), the hand-written head parser
and precompiled rules; nothing does I/O except the sink it is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cachetap.capture.linklayer import decode_frame
from cachetap.capture.inject import Injector
from cachetap.capture.reassembly import HeadAssembler
from cachetap.capture.redirector import Redirector
from cachetap.core.keys import BadTarget, cache_key, canonical_url, host_of
from cachetap.core.rules import Rules
from cachetap.core.types import Count, Decision, Ignore, RequestHead, Segment, Sighting
from cachetap.settings import Settings

SightingSink = Callable[[Sighting], None]


@dataclass(frozen=True, slots=True)
class Observation:
    """One request seen on the wire and what the capture decided about it."""

    segment: Segment
    head: RequestHead
    url: str | None
    key: str | None
    decision: Decision

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
    """Decode, reassemble, parse and decide; sightings worth counting go to `sink`."""

    def __init__(self, settings: Settings, sink: SightingSink | None = None,
                 redirector: Redirector | None = None, injector: Injector | None = None) -> None:
        self.rules = Rules.from_settings(settings)
        self.strip = settings.strip_query_params
        self.ports = frozenset(settings.http_ports)
        self.assembler = HeadAssembler(max_flows=settings.reassembly_flows)
        self.sink = sink
        self.redirector = redirector if injector is not None else None
        self.injector = injector
        self.packets = 0
        self.rejected: Counter[str] = Counter()   # malformed input, by reason
        self.decisions: Counter[str] = Counter()  # "count", "ignore:<reason>", ...

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
        return [self._decide(seg, head, frame, pipelined) for head in assembled.requests]

    def _decide(self, seg: Segment, head: RequestHead, frame: bytes, pipelined: bool) -> Observation:
        try:
            # No Host (HTTP/1.0): the destination address is the only name the request has.
            url = canonical_url(head.target, head.host or _ip_host(seg.dst), seg.dport)
        except BadTarget as exc:
            return self._record(Observation(seg, head, None, None, Ignore(f"bad_target_{exc.reason}")))
        key = cache_key(url, self.strip)
        ignored = self.rules.consider(head, seg.src, url)
        if ignored is not None:
            return self._record(Observation(seg, head, url, key, ignored))
        host = host_of(url)
        decision: Decision = Count(key)
        if self.redirector is not None:  # the fast path first: the 302 races the origin's answer
            redirect = self.redirector.decide(seg, head, url, key, host, pipelined)
            if redirect is not None:
                if self.injector.redirect(seg, frame, redirect.location) > 0:
                    self.redirector.sent(seg, head, key)
                    decision = redirect
                else:
                    self.redirector.failed()
        if self.sink is not None:  # redirected or not, the request still counts for admission
            self.sink(Sighting(
                ts=seg.ts, client=seg.src, client_port=seg.sport, server=seg.dst,
                server_port=seg.dport, method=head.method, host=host, url=url, key=key,
                target=head.target, range=head.range, user_agent=head.user_agent,
                authorization=head.authorization))
        return self._record(Observation(seg, head, url, key, decision))

    def _record(self, obs: Observation) -> Observation:
        reason = getattr(obs.decision, "reason", None)
        self.decisions[f"{obs.decision.kind}:{reason}" if reason else obs.decision.kind] += 1
        return obs

    def finish(self, now: float | None = None) -> None:
        """Count heads still waiting for their end as incomplete (end of a capture file)."""
        for reason in self.assembler.expire(float("inf") if now is None else now):
            self.rejected[reason] += 1

    def summary(self) -> dict:
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


def _ip_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
