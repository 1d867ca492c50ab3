"""Settings that change without a restart: `cachetap reload`.

Not SIGHUP: Celery restarts a worker on it, and the capture would have to reopen its socket. Instead
`cachetap reload` checks the configuration and writes a new generation into `cache_dir/reload.stamp`.
Every long-running process (Celery workers and their pool children, beat, the cache server, the
capture) has a `LiveSettings` whose thread looks at the stamp once a second; on a new generation the
process loads its settings again from its own sources (the file and its own CACHETAP_* environment,
the same ones it started from), takes the LIVE ones (scope, rules, freshness, log level) and answers in
`cache_dir/live/<pid>.json`: which settings it applied, which differ but need a restart, or why it
kept its settings. Nothing is stopped: no capture is reopened, no download aborted. `reload` waits for
those answers and prints them, so what it reports is what the processes did.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachetap.lifetime import pid_is_alive
from cachetap.settings import ConfigError, Settings, load_settings

log = logging.getLogger(__name__)

STAMP = "reload.stamp"
ANSWERS = "live"
CHECK_EVERY = 1.0
LIVE = frozenset({
    # which requests matter, for whom, and who is redirected
    "client_subnets", "host_allow", "host_deny", "extensions", "content_types", "min_size", "max_size",
    "redirect_client_subnets", "redirect_hosts", "trusted_networks",
    # admission, freshness, housekeeping limits
    "admission_threshold", "admission_window", "refresh_min", "refresh_rules", "default_ttl", "max_ttl",
    "cleanup_min_hits", "cleanup_idle", "disk_quota", "min_free_bytes",
    "log_level",
})


def changed_settings(running: Settings, fresh: Settings) -> tuple[list[str], list[str]]:
    """(live, needing a restart): the names of the settings whose values differ."""
    before, after = running.model_dump(mode="json"), fresh.model_dump(mode="json")
    changed = sorted(k for k in after if before.get(k) != after[k])
    return [k for k in changed if k in LIVE], [k for k in changed if k not in LIVE]


def read_generation(cache_dir: Path) -> str | None:
    try:
        return (cache_dir / STAMP).read_text().strip() or None
    except OSError:
        return None


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temp.write_text(text)
    os.replace(temp, path)


class LiveSettings:
    """The settings a process started with; after `watch()`, it follows `cachetap reload` for LIVE ones
    (also in children forked later, such as Celery's prefork pool and the cache server's workers)."""

    def __init__(self, settings: Settings, check_every: float = CHECK_EVERY) -> None:
        self.settings = settings
        self.check_every = check_every
        self._generation = read_generation(settings.cache_dir)
        self._role: str | None = None
        self._on_change: list[Callable[[Settings], None]] = []
        self._stop = threading.Event()

    def watch(self, role: str, on_change: Callable[[Settings], None] | None = None) -> LiveSettings:
        """Answer reloads from now on as `role`; `on_change(settings)` runs after LIVE settings changed."""
        if on_change is not None:
            self._on_change.append(on_change)
        if self._role is None:
            self._role = role
            os.register_at_fork(after_in_child=self._start_in_child)
            self._start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        """Apply a new reload generation if there is one (the watcher thread calls this every second)."""
        generation = read_generation(self.settings.cache_dir)
        if generation is None or generation == self._generation:
            return
        self._generation = generation
        try:
            fresh = load_settings()
        except ConfigError as exc:  # edited again since `reload` checked it: keep running as we are
            log.warning("reload ignored, the configuration is invalid now: %s", str(exc).splitlines()[0])
            self._answer(error=str(exc).splitlines()[0])
            return
        live, restart = changed_settings(self.settings, fresh)
        if live:
            self.settings = self.settings.model_copy(update={name: getattr(fresh, name) for name in live})
            logging.getLogger("cachetap").setLevel(self.settings.log_level)
            for callback in self._on_change:
                callback(self.settings)
            log.info("reloaded: %s", ", ".join(live))
        self._answer(live=live, restart=restart)

    def _start(self, register_now: bool = True) -> None:
        self._stop = threading.Event()
        if register_now:
            self._answer()  # registers this process: `reload` waits for its answer
        threading.Thread(target=self._run, args=(not register_now,), name="cachetap-reload", daemon=True).start()

    def _start_in_child(self) -> None:
        if self._stop.is_set():  # stopped in the parent: the child does not follow reloads either
            return
        if not str(self._role).endswith("(child)"):
            self._role = f"{self._role} (child)"
        # Registered only after a first quiet second: a child that execs another program at once
        # (aria2c) must not leave an answer file behind that `reload` would wait for.
        self._start(register_now=False)

    def _run(self, register: bool) -> None:
        while not self._stop.wait(self.check_every):
            if register:
                self._answer()
                register = False
            try:
                self.check()
            except Exception:  # a reload problem must never end the process it runs in
                log.exception("reload check failed")

    def _answer(self, live: list[str] | None = None, restart: list[str] | None = None,
                error: str | None = None) -> None:
        folder = self.settings.cache_dir / ANSWERS
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            write_atomically(folder / f"{os.getpid()}.json", json.dumps(
                {"role": self._role, "generation": self._generation, "live": live or [],
                 "restart": restart or [], "error": error}))
        except OSError as exc:
            log.warning("cannot answer reloads in %s: %s", folder, exc)


@dataclass
class Outcome:
    """What the running processes answered to one reload."""
    answered: dict[int, dict] = field(default_factory=dict)
    silent: dict[int, str] = field(default_factory=dict)  # pid -> role of processes that did not answer

    @property
    def live(self) -> list[str]:
        return sorted({k for a in self.answered.values() for k in a["live"]})

    @property
    def restart(self) -> list[str]:
        return sorted({k for a in self.answered.values() for k in a["restart"]})

    @property
    def errors(self) -> dict[int, str]:
        return {pid: a["error"] for pid, a in self.answered.items() if a.get("error")}


def running_processes(cache_dir: Path) -> dict[int, str]:
    """pid -> role of the processes that answer reloads; answers of dead processes are removed."""
    found = {}
    for path in (cache_dir / ANSWERS).glob("*.json"):
        try:
            pid, answer = int(path.stem), json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if pid_is_alive(pid):
            found[pid] = str(answer.get("role"))
        else:
            path.unlink(missing_ok=True)
    return found


def request_reload(cache_dir: Path, timeout: float = 3 * CHECK_EVERY, poll: float = 0.05) -> Outcome:
    """Write a new generation and collect the answers of the running processes (at most `timeout` s)."""
    waiting = running_processes(cache_dir)
    generation = f"{time.time_ns()}-{os.getpid()}"
    write_atomically(cache_dir / STAMP, generation + "\n")
    outcome = Outcome()
    deadline = time.monotonic() + timeout
    while waiting:
        for pid in list(waiting):
            try:
                answer = json.loads((cache_dir / ANSWERS / f"{pid}.json").read_text())
            except (OSError, ValueError):
                answer = {}
            if answer.get("generation") == generation:
                outcome.answered[pid] = answer
                del waiting[pid]
            elif not pid_is_alive(pid):
                del waiting[pid]
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    outcome.silent = waiting
    return outcome

