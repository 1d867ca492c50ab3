"""Reading settings the way operators write them, and saying precisely what is wrong when they cannot.

* Sizes with units: `64G`, `1MiB`, `500 MB` (K/M/G/T and KiB/MiB/... are powers of 1024, as in nginx
  and Squid; KB/MB/GB/TB are powers of 1000).
* CACHETAP_* variables: lists as JSON or comma-separated (`CACHETAP_CLIENT_SUBNETS=10.0.0.0/8`),
  tables as JSON; each value remembers the variable it came from.
* Errors: one line per bad key naming where the value came from (file or variable), the value, and
  what would be accepted; an unknown key gets "did you mean".
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

SIZE_UNITS = {"": 1, "b": 1,
              "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
              "t": 1 << 40, "tib": 1 << 40,
              "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: Any) -> Any:
    """Bytes from an int or a string such as "64G", "1MiB", "1.5 GB"; other values pass unchanged
    (the field's own validation then names them)."""
    if not isinstance(value, str):
        return value
    match = _SIZE.fullmatch(value)
    if match is None or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use bytes or a unit: 64G, 500MiB, 2TB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def env_value(raw: str, kind: str) -> Any:
    """A CACHETAP_* string for a field of `kind` ("list", "dict" or "scalar")."""
    text = raw.strip()
    if kind == "list":
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    if kind == "dict":
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("expected a JSON table such as {\"*.cdn.example.com\": [\"token\"]}")
        return value
    return raw


def unknown_key_message(key: str, known: Iterable[str], where: str, env: bool = False) -> str:
    close = difflib.get_close_matches(key.lower(), list(known), n=1, cutoff=0.7)
    if env:
        hint = f"; did you mean CACHETAP_{close[0].upper()}?" if close else ""
        return f"{where}: unknown setting{hint or '; `cachetap config show` lists every setting'}"
    hint = f"; did you mean {close[0]}?" if close else "; `cachetap config show` lists every setting"
    return f"{where}: unknown setting {key!r}{hint}"


def describe_errors(errors: list[Mapping[str, Any]], origin_of: Mapping[str, str]) -> str:
    """One line per bad key: `<where>: <key> = <value>: <reason>`; union alternatives merged."""
    grouped: dict[str, list[tuple[Any, str]]] = {}
    for err in errors:
        loc = [p for p in err.get("loc", ()) if isinstance(p, int) or _is_name(p)]
        key = str(loc[0]) if loc else "settings"
        path = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        grouped.setdefault(path, []).append((err.get("input"), _reason(err)))
    lines = []
    for path, items in grouped.items():
        key = re.split(r"[.\[]", path, maxsplit=1)[0]
        where = origin_of.get(key, "settings")
        value, reasons = items[0][0], list(dict.fromkeys(r for _, r in items))
        shown = "" if isinstance(value, dict) and key == path else f" = {_short(value)}"
        lines.append(f"{where}: {path}{shown}: {' or '.join(reasons)}")
    return "\n".join(lines)


def _is_name(part: Any) -> bool:
    return isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) is not None


def _reason(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        return "unknown key (`cachetap config show` explains the keys each setting takes)"
    if "valid IPv4 network" in msg or "valid IPv6 network" in msg:
        return "not an IP network (write it as 10.0.0.0/8 or fd00::/8, host bits zero)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
