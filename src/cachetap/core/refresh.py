"""Freshness rules for big files, in the spirit of Squid's `refresh_pattern` and lancache's fixed validity.

RFC 9111's heuristic (10% of the time since Last-Modified) suits web pages, not a game patch published
an hour ago: it would be fresh for six minutes, then unservable until revalidated, although release
files are immutable. A rule chosen by host glob and file extension therefore gives:

* `min_ttl`: the least freshness when the origin states no explicit lifetime (heuristic or default);
  0 keeps strict RFC behaviour. An explicit `max-age`/`Expires`/`no-cache` is obeyed as it is.
* `max_ttl`: the most freshness, whatever the origin says (None: the global `max_ttl`).
* `ignore_cache_control`: treat the object as immutable; the origin's Cache-Control, Expires and
  Pragma are ignored, so the lifetime is max(min_ttl, heuristic or default).

The first matching rule wins; a URL no rule matches gets `default_min_ttl` when its extension is one
of the big-file types cachetap caches, else 0. Values in, a deadline out: no I/O here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cachetap.core.freshness import expires_at

EXPLICIT_FIELDS = ("cache-control", "expires", "pragma")


@dataclass(frozen=True)
class RefreshRule:
    host: str = "*"                        # host glob, lower case
    extensions: tuple[str, ...] = ()       # without the dot, lower case; empty: any
    min_ttl: float = 0.0
    max_ttl: float | None = None
    ignore_cache_control: bool = False

    def matches(self, host: str, extension: str) -> bool:
        return (fnmatch.fnmatchcase(host.lower(), self.host.lower())
                and (not self.extensions or extension in self.extensions))


@dataclass(frozen=True)
class RefreshPolicy:
    rules: tuple[RefreshRule, ...] = ()
    default_min_ttl: float = 0.0           # for URLs of `big_extensions` that no rule matches
    big_extensions: frozenset[str] = frozenset()
    default_ttl: float = 0.0               # no explicit lifetime and no Last-Modified
    max_ttl: float = 0.0

    def rule_for(self, host: str, path: str) -> RefreshRule:
        ext = extension_of(path)
        for rule in self.rules:
            if rule.matches(host, ext):
                return rule
        return RefreshRule(min_ttl=self.default_min_ttl if ext in self.big_extensions else 0.0)

    def fresh_until(self, now: float, headers: Mapping[str, str], host: str, path: str) -> float:
        """Epoch seconds until which a response with `headers`, received at `now`, is fresh."""
        rule = self.rule_for(host, path)
        ceiling = self.max_ttl if rule.max_ttl is None else rule.max_ttl
        if rule.ignore_cache_control:
            headers = {k: v for k, v in headers.items() if k.lower() not in EXPLICIT_FIELDS}
        until = expires_at(now, headers, self.default_ttl, ceiling)
        if rule.min_ttl > 0 and not _explicit(headers):
            until = max(until, now + min(rule.min_ttl, max(0.0, ceiling)))
        return until


def extension_of(path: str) -> str:
    """The last path segment's extension, lower case, without query ("" when there is none)."""
    name = path.split("?", 1)[0].rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _explicit(headers: Mapping[str, str]) -> bool:
    """Whether the origin stated a lifetime (or forbade reuse) itself."""
    lowered = {k.lower(): v for k, v in headers.items() if v}
    if "expires" in lowered:
        return True
    directives = {d.split("=", 1)[0].strip().lower() for d in str(lowered.get("cache-control", "")).split(",")}
    return bool(directives & {"max-age", "s-maxage", "no-cache", "no-store", "private"})


def rules_from(items: Iterable[Mapping]) -> tuple[RefreshRule, ...]:
    """Rules from settings-shaped mappings (keys as in RefreshRule)."""
    return tuple(RefreshRule(host=str(i.get("host", "*")),
                             extensions=tuple(e.lower().lstrip(".") for e in i.get("extensions", ())),
                             min_ttl=float(i.get("min_ttl", 0)),
                             max_ttl=None if i.get("max_ttl") is None else float(i["max_ttl"]),
                             ignore_cache_control=bool(i.get("ignore_cache_control", False)))
                 for i in items)
