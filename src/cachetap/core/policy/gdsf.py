"""GDSF (Cherkasova 1998, Greedy-Dual-Size-Frequency): priority = L + frequency x cost / size.

With cost 1 (the classic form) small popular objects are favoured, which maximises hits counted in
requests; L, the inflation value, is the priority of the last victim, so long-idle objects age out.
L is shared state: every worker must read and raise the same value.
"""

from __future__ import annotations

from cachetap.core.policy.base import Policy, Record

INFLATION = "gdsf_inflation"


class GDSF(Policy):
    name = "gdsf"

    def hit(self, key: str, now: float) -> None:
        record = self.store.get(key)
        if record is not None:
            record.freq += 1
            record.last = now
            record.priority = self.store.value(INFLATION) + record.freq / record.size
            self.store.put(key, record)

    def _place(self, key: str, size: int, now: float) -> None:
        self.store.put(key, Record(size=size, priority=self.store.value(INFLATION) + 1 / size, freq=1, last=now))

    def _evict_one(self, now: float) -> str | None:
        found = self.store.lowest("main", 1)
        if not found:
            return None
        key, record = found[0]
        self.store.set_value(INFLATION, max(self.store.value(INFLATION), record.priority))
        self._drop(key, record)
        return key
