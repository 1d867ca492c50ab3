"""The admin token: what the console's write actions and Flower's password are checked against.

One value per cluster. It is made by the first node that starts, as a secret of the catalog (the
same table and path as the origin-hint key, `Catalog.shared_secret`), so every node reading that
catalog agrees. Each node also writes it to `<cache_dir>/admin_token` (mode 0600) for a one-box
operator to read; the catalog's value wins over a stale file. An operator may set `admin_token` in
the settings instead, which then wins over both (set it on every node, or on none).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachetap.store.catalog import Catalog

ADMIN_TOKEN = "admin_token"  # the catalog secret's name, and the file's name in cache_dir


def token_file(cache_dir: Path) -> Path:
    return cache_dir / ADMIN_TOKEN


def admin_token(catalog: Catalog, cache_dir: Path, configured: str = "") -> str:
    """The token in force (the configured one, else the cluster's, made on first use), also written to
    cache_dir/admin_token when that file does not hold it yet."""
    token = configured or catalog.shared_secret(ADMIN_TOKEN).hex()
    _write_private(token_file(cache_dir), token)
    return token


def token_matches(presented: str | bytes | None, expected: str) -> bool:
    """Whether a presented token is the admin token, in time independent of where they differ."""
    if not presented or not expected:
        return False
    if isinstance(presented, str):
        presented = presented.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, expected.encode())


def _write_private(path: Path, token: str) -> None:
    """Write token + newline with mode 0600, atomically, unless the file already says exactly that."""
    wanted = f"{token}\n"
    try:
        if path.read_text() == wanted and (path.stat().st_mode & 0o077) == 0:
            return
    except (OSError, UnicodeDecodeError):
        pass
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, wanted.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
