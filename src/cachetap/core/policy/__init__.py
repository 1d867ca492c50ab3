"""Pluggable cache policies (eviction and admission) over a small storage interface; see base.py."""

from __future__ import annotations

from cachetap.core.policy.base import GHOST, Policy, PolicyStore, Record
from cachetap.core.policy.gdsf import GDSF
from cachetap.core.policy.lrfu import LRFU, AdaptiveLRFU
from cachetap.core.policy.lru import LRU
from cachetap.core.policy.s3fifo import S3FIFO

POLICIES: dict[str, type[Policy]] = {p.name: p for p in (LRU, GDSF, S3FIFO, AdaptiveLRFU)}
DEFAULT_POLICY = "lrfu"


def make_policy(name: str, store: PolicyStore, capacity: int) -> Policy:
    """The policy called `name` over `store`; ValueError naming the choices for an unknown name."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown eviction policy {name!r}; one of {', '.join(sorted(POLICIES))}") from None
    return cls(store, capacity)


__all__ = ["DEFAULT_POLICY", "GHOST", "POLICIES", "Policy", "PolicyStore", "Record", "make_policy"]
