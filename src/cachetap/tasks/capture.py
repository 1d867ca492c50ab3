"""Queue `capture`: replay an uploaded capture file through the capture pipeline into `analyze`.

A message names a file, and anyone who can write to the broker can write a message, so the path is
only accepted inside cache_dir/uploads or a directory listed in `settings.replay_dirs` (after
resolving symlinks and `..`); anything else is refused with the reason, never opened.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import shared_task

from cachetap.settings import Settings
from cachetap.wire import CAPTURE_REPLAY

log = logging.getLogger(__name__)


class PathRefused(ValueError):
    """The capture file is outside the directories replays may read."""


def allowed_dirs(settings: Settings) -> list[Path]:
    return [(settings.cache_dir / "uploads").resolve(), *(Path(d).resolve() for d in settings.replay_dirs)]


def checked_capture_path(path: Any, settings: Settings) -> Path:
    """The resolved capture file if it lies in an allowed directory, else PathRefused."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathRefused(f"not a file path: {path!r:.200}")
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(d) for d in allowed_dirs(settings)):
        raise PathRefused(f"{path!r:.200} is outside the replay directories {[str(d) for d in allowed_dirs(settings)]}")
    if not resolved.is_file():
        raise PathRefused(f"{path!r:.200} is not a regular file")
    return resolved


@shared_task(bind=True, name=CAPTURE_REPLAY)
def replay(self: Any, path: str) -> dict[str, Any]:
    """Run one capture file through the pipeline, sending sightings to analyze; returns the summary."""
    from cachetap.capture.replay import replay_capture  # only the capture queue's workers need scapy's parts

    settings = self.app.settings
    try:
        capture_file = checked_capture_path(path, settings)
    except PathRefused as exc:
        log.error("replay refused: %s", exc)
        return {"file": str(path)[:200], "error": f"refused: {exc}"}
    summary = replay_capture(settings, capture_file, app=self.app)
    if "error" in summary:
        log.error("replay of %s: %s", capture_file, summary["error"])
    log.info("replayed %s: %s", capture_file, summary)
    return summary
