"""Join request heads split over several TCP segments, per flow, within fixed memory.

Most request heads fit one segment and go straight through `parse_heads` without being copied.
Only a flow whose segment ends inside an unfinished head is held, keyed by (src, sport, dst, dport),
until the next in-sequence segment completes it.

Live capture note: the kernel filter (capture/bpf.py) passes only segments that *start* with a
request, so the continuation of a split head never reaches us live; such heads end up counted
"incomplete" (by LRU eviction or `expire`). Replaying a capture file without the filter sees every
segment and reassembles them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from cachetap.core.http import parse_heads
from cachetap.core.types import RequestHead, Segment

FIN, RST = 0x01, 0x04
SEQ_MOD = 1 << 32
HALF_SEQ = 1 << 31

FlowKey = tuple[str, int, str, int]


@dataclass(slots=True)
class AssemblyResult:
    requests: list[RequestHead] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _HeldHead:
    data: bytes      # the unfinished head so far
    next_seq: int    # sequence number of the byte after `data`
    last_ts: float


def _seq_after(a: int, b: int) -> int:
    """Signed distance from b to a in 32-bit sequence space (RFC 1982 serial arithmetic)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= HALF_SEQ else d



class HeadAssembler:
    """Feed TCP segments towards HTTP ports; get back the request heads they complete.

    Bounded: at most `max_flows` held heads and `max_bytes` held bytes in all (the least recently
    active are evicted and counted ``incomplete``), each at most `max_head` bytes (``head_too_large``). Heads idle longer than
    `idle_timeout` seconds of capture time are counted ``incomplete`` by `expire`.
    A retransmitted request start (data before the end of the last complete request on that flow,
    seen within `idle_timeout`) is ignored and counted ``retransmission`` instead of being
    reported twice.
    """

    def __init__(self, max_flows: int, max_head: int = 65536, idle_timeout: float = 10.0,
                 max_bytes: int = 16 << 20) -> None:
        if max_flows < 1 or max_head < 1 or idle_timeout <= 0 or max_bytes < max_head:
            raise ValueError("max_flows, max_head and idle_timeout must be positive, max_bytes >= max_head")
        self.max_flows = max_flows
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.max_head = max_head
        self.idle_timeout = idle_timeout
        self._held: OrderedDict[FlowKey, _HeldHead] = OrderedDict()   # least recently active first
        self._done: OrderedDict[FlowKey, tuple[int, float]] = OrderedDict()  # flow -> (next seq, ts)

    def __len__(self) -> int:
        """Heads held now."""
        return len(self._held)

    def feed(self, seg: Segment) -> AssemblyResult:
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        payload = seg.payload
        held = self._held.pop(key, None)
        if held is not None:
            self.held_bytes -= len(held.data)
        if held is None:
            if not payload:
                return AssemblyResult()
            if self._is_retransmission(key, seg):
                return AssemblyResult(rejects=["retransmission"])
            return self._parse(key, payload, seg.seq, seg.ts, AssemblyResult())

        result = AssemblyResult()
        offset = _seq_after(seg.seq, held.next_seq)
        if not payload:
            if seg.flags & (FIN | RST):
                result.rejects.append("incomplete")  # the connection ends inside the head
            else:
                self._hold(key, held, result)        # a bare ACK: keep waiting
            return result
        if offset > 0:
            # Data missing between the held head and this segment: the head cannot be completed.
            # This segment may still start a new request (live, only request starts arrive).
            result.rejects.append("gap")
            return self._parse(key, payload, seg.seq, seg.ts, result)
        if offset + len(payload) <= 0:
            self._hold(key, held, result)  # entirely old data: a retransmission
            return result
        new_data = payload[-offset:] if offset < 0 else payload
        start_seq = (held.next_seq - len(held.data)) % SEQ_MOD
        return self._parse(key, held.data + new_data, start_seq, seg.ts, result)

    def expire(self, now: float) -> list[str]:
        """Drop heads idle for longer than `idle_timeout`; one ``incomplete`` per head dropped."""
        reasons = []
        while self._held:
            key, held = next(iter(self._held.items()))
            if now - held.last_ts <= self.idle_timeout:
                break
            del self._held[key]
            self.held_bytes -= len(held.data)
            reasons.append("incomplete")
        while self._done:
            key, (_, ts) = next(iter(self._done.items()))
            if now - ts <= self.idle_timeout:
                break
            del self._done[key]
        return reasons

    # ---- internals ---------------------------------------------------------------------------
    def _parse(self, key: FlowKey, data: bytes, start_seq: int, ts: float,
               result: AssemblyResult) -> AssemblyResult:
        parsed = parse_heads(data)
        result.requests.extend(parsed.requests)
        end_seq = (start_seq + len(data)) % SEQ_MOD
        if parsed.error is not None:
            result.rejects.append(parsed.error)
        elif parsed.incomplete:
            rest = data[parsed.consumed:]
            if len(rest) > self.max_head:
                result.rejects.append("head_too_large")
            else:
                self._hold(key, _HeldHead(rest, end_seq, ts), result)
                return result
        if parsed.requests:
            self._remember_done(key, end_seq, ts)
        return result

    def _hold(self, key: FlowKey, held: _HeldHead, result: AssemblyResult) -> None:
        self._held[key] = held  # (re)inserted last: most recently active
        self.held_bytes += len(held.data)
        while len(self._held) > self.max_flows or self.held_bytes > self.max_bytes:
            _, dropped = self._held.popitem(last=False)
            self.held_bytes -= len(dropped.data)
            result.rejects.append("incomplete")

    def _remember_done(self, key: FlowKey, next_seq: int, ts: float) -> None:
        self._done.pop(key, None)
        self._done[key] = (next_seq, ts)
        while len(self._done) > self.max_flows:
            self._done.popitem(last=False)

    def _is_retransmission(self, key: FlowKey, seg: Segment) -> bool:
        done = self._done.get(key)
        if done is None:
            return False
        next_seq, ts = done
        if seg.ts - ts > self.idle_timeout:
            return False  # too old to trust: the 4-tuple may be a new connection
        return _seq_after(seg.seq, next_seq) < 0
