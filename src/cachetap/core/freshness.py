"""Freshness (RFC 9111, as a shared cache): how long a stored object may be served, and revalidation.

Values in, decisions out: header mappings and clocks are arguments, nothing is read or sent here.

`expires_at` is the epoch second after which an entry must be revalidated before it is handed out
again (web.lookup.CatalogLookup already refuses entries past it, so "stale" needs no state of its
own). Precedence, RFC 9111 4.2.1: `s-maxage` (shared caches), then `max-age`, then `Expires`
(against `Date` when given), then the heuristic 10% of (Date - Last-Modified), else `default_ttl`.
The result always lies in [now, now + max_ttl]. Choices where the RFC leaves room, all erring on the
side of revalidating sooner:

* `no-cache` (with or without field names), `no-store`, `private`: expires now (revalidate before
  every use; the probe rules reject no-store/private objects anyway).
* A directive given twice with different values makes the response stale (RFC 9111 4.2.1 allows
  "first occurrence" or "stale"); a malformed delta-seconds (negative, non-digits) is ignored and
  the next source of freshness is used; an overflowing one counts as 2^31 (then max_ttl caps it).
* An invalid `Expires` (e.g. "0") means already expired (RFC 9111 5.3).
* The response's age (`Age`, or now - `Date` when Date is in the past) is subtracted from explicit
  lifetimes, so `Expires` against `Date` ends exactly at `Expires` whatever our clock says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from cachetap.core.semantics import parse_http_date, valid_etag, weak_match

HEURISTIC_FRACTION = 0.1          # RFC 9111 4.2.2 suggests 10% of the time since Last-Modified
DELTA_SECONDS_MAX = 2147483648    # RFC 9111 1.2.2: an overflowing delta-seconds counts as this

Outcome = Literal["fresh", "changed", "gone", "error"]
GONE_STATUSES = frozenset({404, 410})


def expires_at(now: float, headers: Mapping[str, str], default_ttl: float, max_ttl: float) -> float:
    """Epoch seconds until which a response with `headers`, received at `now`, is fresh."""
    h = _lower(headers)
    ceiling = now + max(0.0, max_ttl)
    directives = parse_cache_control(h.get("cache-control", ""))
    if directives is None or {"no-cache", "no-store", "private"} & directives.keys():
        return now
    date = parse_http_date(h.get("date"))
    age = _current_age(now, date, h.get("age"))
    lifetime: float | None = None
    for name in ("s-maxage", "max-age"):
        if name in directives:
            lifetime = _delta_seconds(directives[name])
            if lifetime is not None:
                break
    if lifetime is None and "expires" in h:
        expires = parse_http_date(h["expires"])
        if expires is None:
            return now  # invalid Expires, e.g. "0": already expired
        lifetime = expires - (date if date is not None else now)
    if lifetime is None:
        last_modified = parse_http_date(h.get("last-modified"))
        base = date if date is not None else now
        if last_modified is not None and last_modified < base:
            # Heuristic freshness is counted from now (no Age correction): an old file stays old.
            return min(ceiling, now + HEURISTIC_FRACTION * (base - last_modified))
        return min(ceiling, now + max(0.0, default_ttl))
    return min(ceiling, max(now, now + lifetime - age))


def revalidation_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    """Conditional request headers for a stored object's validators (invalid ones left out).

    Both are sent when known; an origin evaluates If-None-Match first (RFC 9110 13.2.2).
    """
    headers: dict[str, str] = {}
    if etag and valid_etag(etag.strip()):
        headers["If-None-Match"] = etag.strip()
    if last_modified and parse_http_date(last_modified) is not None:
        headers["If-Modified-Since"] = last_modified.strip()
    return headers


def revalidation_outcome(status: int | None, old_etag: str | None, new_etag: str | None,
                         old_size: int | None, new_size: int | None,
                         old_last_modified: str | None = None,
                         new_last_modified: str | None = None) -> Outcome:
    """What a conditional request's answer means for the stored copy.

    304 -> "fresh"; 404/410 -> "gone"; a 2xx is "fresh" only when a validator proves the content is
    the same (equal ETags by weak comparison, else equal Last-Modified; and equal sizes where both
    are known), otherwise "changed": a 2xx to a conditional request means modified, and an object
    without validators cannot be shown unchanged. Anything else (5xx, 403, no answer: None) is
    "error": keep the copy unserved and ask again later.
    """
    if status == 304:
        return "fresh"
    if status in GONE_STATUSES:
        return "gone"
    if status is None or not 200 <= status < 300:
        return "error"
    if old_size is not None and new_size is not None and old_size != new_size:
        return "changed"
    if old_etag or new_etag:
        same = bool(old_etag and new_etag) and weak_match(old_etag, new_etag)
        return "fresh" if same else "changed"
    old_lm, new_lm = parse_http_date(old_last_modified), parse_http_date(new_last_modified)
    if old_lm is not None and old_lm == new_lm:
        return "fresh"
    return "changed"


# ---- parsing -------------------------------------------------------------------------------------

def parse_cache_control(value: str) -> dict[str, str | None] | None:
    """Directive name (lower-case) -> argument (unquoted) or None; None when a directive is repeated
    with conflicting arguments (the response is then treated as stale)."""
    directives: dict[str, str | None] = {}
    for name, arg in _split_directives(value):
        if name in directives and directives[name] != arg:
            return None
        directives[name] = arg
    return directives


def _split_directives(value: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in ",=":
            j += 1
        name = value[i:j].strip().lower()
        arg: str | None = None
        if j < n and value[j] == "=":
            j += 1
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == '"':  # quoted-string: a comma inside does not split
                j += 1
                chars: list[str] = []
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    chars.append(value[j])
                    j += 1
                arg = "".join(chars)
                j += 1
                while j < n and value[j] != ",":  # junk after the closing quote is dropped
                    j += 1
            else:
                k = j
                while j < n and value[j] != ",":
                    j += 1
                arg = value[k:j].strip()
        if name:
            out.append((name, arg))
        i = j + 1
    return out


def _delta_seconds(arg: str | None) -> float | None:
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    # Long digit strings are not converted at all (int() of thousands of digits is slow or refused).
    return float(min(int(arg), DELTA_SECONDS_MAX) if len(arg) <= 10 else DELTA_SECONDS_MAX)


def _current_age(now: float, date: float | None, age_header: str | None) -> float:
    apparent = max(0.0, now - date) if date is not None else 0.0
    age = _delta_seconds(age_header.strip() if age_header else None) or 0.0
    return max(apparent, age)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; a repeated field (list value) is joined as HTTP joins field lines."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if value is None:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        key = str(name).lower()
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out

