"""LRFU behind a probation window, its half-life tuned online by miniature simulations, evicting
bursts that have ended.

Main queue: LRFU (Lee et al., IEEE ToC 2001). Every request adds 1 to an object's score and scores
halve every `half_life` seconds, so the order runs from LRU (short half-life) to LFU (long). Scores
of all objects decay alike, so the order only changes when an object is requested: the priority kept
per record is time-invariant, now + half_life x log2(score), in seconds, which a database can index.

Window (after W-TinyLFU, Einziger et al. 2017, and S3-FIFO's quick demotion): new objects enter a
probation queue; one not requested again while there leaves as history, so scans and one-hit
wonders never push out objects that earn hits. Its size follows ARC's rule (Megiddo and Modha,
FAST 2003), between 0 and 5% of the bytes: a request for history seen once (a newcomer that left
too soon) grows it by that object's size, a request for history seen more often (evicted from the
main queue) shrinks it alike. Releases that fade within hours and LAN-party images want no window,
a month of downloads with one-hit wonders wants the full 5% (bench/policy_bench.py's traces).
Evicted objects keep their score as history (up to `history` x capacity bytes), and one that comes
back goes straight to the main queue.
Byte hit ratio is the goal, and a byte of an object requested r times per second earns r whatever
the object's size, so scores are not divided by size; size enters as the bytes a resident occupies.

The right half-life depends on the workload (patch-day releases fade within hours, a stable catalogue
rewards weeks of memory), so `AdaptiveLRFU` (the policy called "lrfu") runs miniature simulations
(Waldspurger et al., ATC 2017): one fixed-half-life LRFU per candidate, fed a hash-sampled share of
the keys at that share of the capacity (all of them while few keys are known), and follows the
candidate whose miniature earned more hit bytes lately. "Lately" is a time memory (earnings halve
every two days), not a count of requests: a LAN's load comes in daily phases (a LAN-party session,
a release evening, then quiet hours). A memory of a few thousand requests forgets the quiet hours
during a busy session and then switches to the half-life that won the phase just ended, whose
gains came from content the real cache does not hold (bench/policy_bench.py's `lanparty` spent
half its time on a half-life that did worse than every fixed one). On a switch the kept scores are
re-expressed in the new half-life (one pass over the records; switches are rare). The chosen
half-life is shared state; the miniatures live in the memory of the process that runs the policy.

Ended bursts. Keeping an object pays one miss per byte (in this model a missed object comes back at
once), earned at its next request, so the best victim is the object whose next request is furthest
away (Belady). A steady request rate r puts it 1/r away, which the score tells; but requests often
come in bursts (a LAN-party session, a release day) and a burst's high score says nothing about
the wait once it is over: an object idle for several of the gaps its score predicts is no longer on
that rate, and its next request is guessed in proportion to how long it has been idle (Lindy's
rule). So each main eviction also looks at the resident requested longest ago (a (queue, last)
index) and evicts it instead of the lowest score when its burst has ended and its expected wait is
the longer one. The space of an idle image then serves steady objects until its next burst, which
costs one miss.
"""

from __future__ import annotations

import math
import zlib
from math import log2

from cachetap.core.policy.base import GHOST, USED, Policy, PolicyStore, Record

WINDOW, MAIN = "window", "main"
GHOST_BYTES, WINDOW_BYTES, HALF_LIFE = "lrfu_ghost_bytes", "lrfu_window_bytes", "lrfu_half_life"
WINDOW_TARGET = "lrfu_window_target"   # the window's size now, a share of the capacity
WINDOW_SHARE = 0.05                    # the most it may grow to
BURST_OVER = 3.0   # idle for this many expected gaps: the burst is over
LINDY = 2.0        # an ended burst's next request is expected this many times its idle time away
HASH_SPACE = 1 << 32   # crc32 values
LN2 = math.log(2.0)


class LRFU(Policy):
    name = "lrfu-fixed"
    queues = (WINDOW, MAIN)

    def __init__(self, store: PolicyStore, capacity: int, half_life: float = 48 * 3600.0,
                 history: float = 4.0) -> None:
        super().__init__(store, capacity)
        self.default_half_life = half_life
        self.history = history

    @property
    def half_life(self) -> float:
        return self.store.value(HALF_LIFE) or self.default_half_life

    def hit(self, key: str, now: float) -> None:
        record = self.store.get(key)
        if record is not None:
            self._requested(key, record, now)

    def _requested(self, key: str, record: Record, now: float) -> None:
        if record.queue == GHOST:
            self._size_window(record)
        if record.queue != WINDOW:   # the window is a FIFO: its position never changes
            h = self.store.value(HALF_LIFE) or self.default_half_life
            record.priority = now + h * log2(2.0 ** min(64.0, (record.priority - now) / h) + 1.0)
        record.freq += 1
        record.last = now
        self.store.put(key, record)

    def _size_window(self, ghost: Record) -> None:
        """ARC's rule on a request for history: seen once, a longer window would have kept it; seen
        more often, a larger main queue would have."""
        store = self.store
        step = ghost.size / self.capacity if ghost.freq <= 1 else -ghost.size / self.capacity
        target = store.value(WINDOW_TARGET) + step
        store.set_value(WINDOW_TARGET, min(WINDOW_SHARE, max(0.0, target)))

    def miss(self, key: str, size: int, now: float) -> None:
        record = self.store.get(key)
        if record is None:
            self._remember(key, size, now)
        elif record.queue == GHOST:
            self.hit(key, now)

    def _remember(self, key: str, size: int, now: float) -> None:
        """History for a key seen for the first time (or forgotten since)."""
        store = self.store
        store.put(key, Record(size, GHOST, now, 1, now))
        store.set_value(GHOST_BYTES, max(0.0, store.value(GHOST_BYTES) + size))
        self._trim_history()

    def replay(self, key: str, size: int, now: float) -> bool:
        """One request in libCacheSim's model (any missed object that fits comes in at once): what
        the miniatures run. The same steps as `hit`, or `miss` + `admit` + `insert`, in one call
        because the miniatures make millions of them. True on a hit."""
        record = self.store.get(key)
        if record is not None and record.queue != GHOST:
            self._requested(key, record, now)
            return True
        if record is None:
            self._remember(key, size, now)
        else:
            self._requested(key, record, now)
        if 0 < size <= self.capacity:
            self.make_room(size, now)
            self._place(key, size, now)
            store = self.store
            store.set_value(USED, store.value(USED) + size)
        return False

    def remove(self, key: str) -> bool:
        record = self.store.get(key)
        if record is not None and record.queue == WINDOW:
            self._add(WINDOW_BYTES, -record.size)
        return super().remove(key)

    def _place(self, key: str, size: int, now: float) -> None:
        store = self.store
        old = store.get(key)
        if old is not None and old.queue == GHOST:
            store.set_value(GHOST_BYTES, max(0.0, store.value(GHOST_BYTES) - old.size))
            if old.freq > 1:
                # Requested before this admission (or evicted earlier): its history earns it the main queue.
                store.put(key, Record(size, MAIN, old.priority, old.freq, now))
                return
        store.set_value(WINDOW_BYTES, max(0.0, store.value(WINDOW_BYTES) + size))
        store.put(key, Record(size, WINDOW, now, 1, now))

    def _evict_one(self, now: float) -> str | None:
        store = self.store
        lowest, value, set_value = store.lowest, store.value, store.set_value
        window_share = value(WINDOW_TARGET) * self.capacity
        while True:
            main = lowest(MAIN, 1)
            found = main
            if value(WINDOW_BYTES) > window_share or not main:
                found = lowest(WINDOW, 1) or main
            if not found:
                return None
            key, record = found[0]
            if record.queue == WINDOW:
                set_value(WINDOW_BYTES, max(0.0, value(WINDOW_BYTES) - record.size))
                if record.freq > 1:   # requested again while on probation
                    # Its requests all fell within the short stay in the window: hardly decayed.
                    record.queue = MAIN
                    record.priority = record.last + self.half_life * math.log2(record.freq)
                    store.put(key, record)
                    continue
            else:
                key, record = self._burst_ended(key, record, now) or (key, record)
            self._drop(key, record)
            return key

    def _burst_ended(self, head_key: str, head: Record, now: float) -> tuple[str, Record] | None:
        """The main resident requested longest ago, if its requests came in a burst that has ended
        and its next one is further away than the head's (see the module doc); else None."""
        found = self.store.oldest(MAIN)
        if found is None or found[0] == head_key:
            return None
        _key, record = found
        h, idle = self.half_life, now - record.last
        if idle <= BURST_OVER * _expected_gap(record.priority - record.last, h):
            return None
        wait = max(_expected_gap(record.priority - now, h), LINDY * idle)
        return found if wait > _expected_gap(head.priority - now, h) else None

    def _drop(self, key: str, record: Record) -> None:
        store = self.store
        size = record.size
        store.remove(key)
        store.set_value(USED, max(0.0, store.value(USED) - size))
        store.put(key, Record(size, GHOST, record.priority, record.freq, record.last))
        store.set_value(GHOST_BYTES, max(0.0, store.value(GHOST_BYTES) + size))
        self._trim_history()

    def _trim_history(self) -> None:
        if self.store.value(GHOST_BYTES) > self.history * self.capacity:
            self._trim_ghosts(GHOST_BYTES, self.history * self.capacity)


class AdaptiveLRFU(LRFU):
    """LRFU whose half-life follows the best of several miniature simulations (see the module doc).

    The miniatures see a hash-sampled share of the keys at the same share of the capacity, and the
    share shrinks as keys arrive so that they remember at most `max_sampled` keys (fixed-size
    SHARDS, Waldspurger et al., FAST 2015): their memory and time stay bounded at any catalogue size.
    """

    name = "lrfu"
    # Keys the miniatures remember at most (tens of MB in all). Samples of 8,192 keys already chose
    # worse half-lives on heavy-tailed sizes (bench/policy_bench.py's `shift` trace).
    max_sampled = 65536
    candidates = tuple(h * 3600.0 for h in (3, 12, 48, 192, 768))   # half-lives tried, seconds
    memory = 2 * 86400.0                                        # earnings halve every `memory` s
    margin = 1.005                                              # switch only for a gain, not a tie

    def __init__(self, store: PolicyStore, capacity: int, history: float = 4.0) -> None:
        super().__init__(store, capacity, self.candidates[2], history)
        from cachetap.core.policy.memory import MemoryStore

        self.minis = [LRFU(MemoryStore(), capacity, h, history) for h in self.candidates]
        self.earned = [0.0] * len(self.candidates)
        self.threshold = HASH_SPACE            # keys whose hash is below it are sampled
        self.sampled: dict[str, int] = {}      # key -> hash, for the keys the miniatures may remember
        self.earned_at = -math.inf             # when `earned` was last decayed

    def hit(self, key: str, now: float) -> None:
        h = zlib.crc32(key.encode())
        if h < self.threshold:
            record = self.store.get(key)
            if record is not None:
                self._shadow(key, h, record.size, now)
        super().hit(key, now)

    def miss(self, key: str, size: int, now: float) -> None:
        h = zlib.crc32(key.encode())
        if h < self.threshold:
            self._shadow(key, h, size, now)
        super().miss(key, size, now)

    def _shadow(self, key: str, h: int, size: int, now: float) -> None:
        if key not in self.sampled:
            self.sampled[key] = h
            if len(self.sampled) > self.max_sampled:
                self._shrink_sample(now)
                if h >= self.threshold:
                    return
        earned = self.earned
        if now > self.earned_at:
            decay = 0.5 ** ((now - self.earned_at) / self.memory)
            self.earned = earned = [e * decay for e in earned]
            self.earned_at = now
        for i, mini in enumerate(self.minis):
            if mini.replay(key, size, now):
                earned[i] += size
        best = max(range(len(earned)), key=earned.__getitem__)
        current = self.candidates.index(self.half_life) if self.half_life in self.candidates else best
        if best != current and earned[best] > self.margin * earned[current]:
            # Scores are kept as offsets of half-lives: re-express them in the new one.
            self.store.rescale(self.candidates[best] / self.half_life)
            self.store.set_value(HALF_LIFE, self.candidates[best])

    def _shrink_sample(self, now: float) -> None:
        """Forget the keys no miniature remembers; if still too many, lower the sampling threshold."""
        self.sampled = {k: h for k, h in self.sampled.items() if any(m.store.get(k) is not None for m in self.minis)}
        if len(self.sampled) <= 3 * self.max_sampled // 4:
            return
        hashes = sorted(self.sampled.values())
        threshold = hashes[self.max_sampled // 2]
        share = threshold / self.threshold
        self.threshold = threshold
        self.sampled = {k: h for k, h in self.sampled.items() if h < threshold}
        for mini in self.minis:
            for key in [k for k in mini.store.records if zlib.crc32(k.encode()) >= threshold]:
                _forget(mini, key)
            mini.capacity = max(1, int(mini.capacity * share))
            mini.make_room(0, now)
            mini._trim_history()
        # `earned` counts sampled bytes: one sampled request now stands for more real ones.
        self.earned = [e * share for e in self.earned]


def _expected_gap(offset: float, half_life: float) -> float:
    """Seconds to the next request of an object requested at the rate its score says: a steady
    rate r keeps the score at r x half_life / ln 2. `offset` is priority - t, which is
    half_life x log2(score at t)."""
    return half_life / (LN2 * 2.0 ** max(-64.0, min(64.0, offset / half_life)))


def _forget(policy: LRFU, key: str) -> None:
    """Drop `key` from a miniature whatever queue it is in, keeping its byte counts right."""
    record = policy.store.get(key)
    if record is None:
        return
    if record.queue == GHOST:
        policy.store.remove(key)
        policy._add(GHOST_BYTES, -record.size)
    else:
        policy.remove(key)
