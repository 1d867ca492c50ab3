"""Least privilege and private files.

Files: every process that writes under cache_dir first calls `prepare_cache_dir`: files are then
created 0600 and folders 0700 (umask 077), since client addresses, signed URLs and claim tokens live
there, and a cache directory owned by another user (than us, or as root than `run_as_user`) is refused,
since whoever owns it can read or swap what we serve.

Users: started as root, cachetap runs everything but the capture as an unprivileged user.

Only the capture needs privileges: CAP_NET_RAW for its sockets and CAP_SYS_NICE for real-time
priority. `cachetap run` started as root therefore starts its Celery workers, beat and the cache server
(which listens on every address) as `run_as_user` (created when missing), and the capture as the same
user with just those two capabilities, made ambient by `setpriv` so they survive the exec of Python.
CLI commands run as root (`ls`, `prefetch`, ...) run again as the owner of cache_dir before they open
anything, so they leave no root-owned SQLite -wal/-shm or broker files the service cannot open.

The systemd equivalent (README, "Security model"): `User=cachetap`, and for the capture unit
`AmbientCapabilities=CAP_NET_RAW CAP_SYS_NICE` with `CapabilityBoundingSet=CAP_NET_RAW CAP_SYS_NICE`.
"""

from __future__ import annotations

import os
import signal
import pwd
import stat
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cachetap.lifetime import die_with_parent
from cachetap.settings import ConfigError, Settings

CAPTURE_CAPS = "+net_raw,+sys_nice"
SETPRIV = "/usr/bin/setpriv"
SUPERVISOR_PID_ENV = "SUPERVISOR_PID_OF_CACHETAP"  # not CACHETAP_*: those are settings


@dataclass(frozen=True, slots=True)
class ServiceUser:
    name: str
    uid: int
    gid: int


def service_user(settings: Settings) -> ServiceUser | None:
    """The user to drop to, created when missing; None when not started as root or told to stay."""
    if os.geteuid() != 0 or settings.run_as_user in ("", "root"):
        return None
    name = settings.run_as_user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        if useradd is None:
            raise ConfigError(f"run_as_user {name!r} does not exist and there is no useradd to create it: "
                              "create the user, or set run_as_user") from None
        created = subprocess.run([useradd, "--system", "--user-group", "--no-create-home",
                                  "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                                 capture_output=True, text=True)
        if created.returncode != 0:
            raise ConfigError(f"run_as_user {name!r} does not exist and useradd failed "
                              f"({created.stderr.strip()[:200]}): create it, or set run_as_user") from None
        entry = pwd.getpwnam(name)
    return ServiceUser(name, entry.pw_uid, entry.pw_gid)


def give_cache_dir(path: Path, user: ServiceUser) -> None:
    """Hand cache_dir and everything in it (e.g. from a run as root) to the service user."""
    for root, dirs, files in os.walk(path):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if st.st_uid != user.uid:
                os.lchown(name, user.uid, user.gid)


def give_disks(settings: Settings, user: ServiceUser) -> list[Path]:
    """Hand the disks of `cache_dirs` that are there now (mounted, when that is required) to the
    service user, private to it; returns them. A missing one is left alone: never created."""
    given = []
    for disk in settings.cache_dirs:
        if not disk.path.is_dir() or (disk.require_mount and not os.path.ismount(disk.path)):
            continue
        give_cache_dir(disk.path, user)
        os.chmod(disk.path, 0o700)
        given.append(disk.path)
    return given


def as_user(argv: list[str], user: ServiceUser, caps: str = "") -> list[str]:
    """argv run as `user` with no supplementary groups and only the capabilities `caps` (ambient, so
    they survive the exec of Python; "" keeps none).

    setpriv rather than a preexec_fn: it changes the user after opening the program, so an
    interpreter under a directory only root can search (pyenv in /root) still starts. The user id
    change clears the kernel's parent-death signal, so each child sets it again itself at start
    (`die_with_supervisor`)."""
    keep = f"-all,{caps}" if caps else "-all"
    return [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
            f"--inh-caps={keep}", f"--ambient-caps={keep}", f"--bounding-set={keep}", "--", *argv]


def die_with_supervisor() -> None:
    """Called by every child of `cachetap run` at start (CLI and Celery entry points): die when the
    supervisor dies. Set here, after the user id change that would clear it. SIGKILL: a Celery
    worker's own shutdown takes seconds; its pool processes, aria2c and the cache server's workers
    each die with their parent in turn."""
    pid = os.environ.get(SUPERVISOR_PID_ENV)
    if pid and pid.isdigit():
        die_with_parent(int(pid), signal.SIGKILL)


def become_cache_owner(cache_dir: Path, run_as_user: str) -> None:
    """Run as root, run this command again as `run_as_user` when it owns cache_dir, so nothing it
    creates there is root's. Otherwise stay (a cache_dir owned by someone else is refused later).

    A new exec through setpriv, not setuid in this process: the interpreter's own files may sit where
    only root can search (pyenv in /root), and later imports would fail."""
    if os.geteuid() != 0:
        return
    try:
        st = cache_dir.stat()
    except OSError:
        return
    try:
        owner = pwd.getpwnam(run_as_user) if run_as_user not in ("", "root") else None
    except KeyError:
        owner = None
    if owner is None or st.st_uid != owner.pw_uid:
        return
    user = ServiceUser(run_as_user, owner.pw_uid, owner.pw_gid)
    argv = as_user([sys.executable, *sys.orig_argv[1:]], user)
    os.execv(argv[0], argv)


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
