"""cachetap's files are private: client addresses, signed URLs and claim tokens live under cache_dir.

Every process that writes there first calls `prepare_cache_dir`: files are then created 0600 and
folders 0700 (umask 077), and a cache directory owned by another user is refused, since whoever owns
it can read or swap what we serve.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from cachetap.settings import ConfigError


class CacheDirError(ConfigError):
    """The cache directory cannot be used; the message is one line naming the fix."""


def prepare_cache_dir(path: Path, service_user: str = "") -> Path:
    """Create `path` (0700) or check the existing one is ours (or, as root, `service_user`'s: see
    privileges.py) and private; set umask 077."""
    os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError as exc:
        raise CacheDirError(f"cache_dir {path}: {exc.strerror}; create it for user {_user(os.geteuid())} "
                            f"or set cache_dir") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CacheDirError(f"cache_dir {path} is not a directory; set cache_dir to a directory")
    if st.st_uid not in _allowed_owners(service_user):
        raise CacheDirError(f"cache_dir {path} is owned by {_user(st.st_uid)}, not {_user(os.geteuid())} "
                            f"who runs cachetap: chown -R {_user(os.geteuid())} {path}, or set cache_dir")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)  # made by an older version or by hand: close it
    return path


def _allowed_owners(service_user: str) -> set[int]:
    owners = {os.geteuid()}
    if os.geteuid() == 0 and service_user and service_user != "root":
        try:
            owners.add(pwd.getpwnam(service_user).pw_uid)
        except KeyError:
            pass
    return owners


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
