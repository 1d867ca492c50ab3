"""Replaying a capture file through the pipeline: the one routine `cachetap replay` and the `capture`
queue's task share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from celery import Celery

from cachetap.capture.batcher import analyze_batch_sender
from cachetap.capture.pcapfile import CaptureFileError, read_frames
from cachetap.capture.pipeline import Observation, Pipeline, counts
from cachetap.capture.prometheus import MetricsPublisher
from cachetap.settings import Settings
from cachetap.wire import encode_sighting


def replay_capture(settings: Settings, path: Path, app: Celery | None = None,
                   each: Callable[[Observation], None] | None = None) -> dict:
    """Run the file at `path` through a Pipeline, calling `each(observation)` per request and, with
    `app`, sending the sightings to its analyze queue. Returns the pipeline's summary with `file`,
    `queued` (with `app`) and `error` (a capture file cut short or unreadable: what was read counts).
    """
    pipeline = Pipeline(settings)
    sender = analyze_batch_sender(app, settings) if app is not None else None
    error = None
    try:
        with read_frames(path) as frames:
            for obs in pipeline.run(frames):
                if sender is not None and counts(obs.decision):
                    sender.add(encode_sighting(obs.sighting()))
                if each is not None:
                    each(obs)
            if frames.end_reason:
                pipeline.rejected[frames.end_reason] += 1
    except CaptureFileError as exc:
        error = str(exc)
    finally:
        pipeline.finish()
        if sender is not None:
            sender.close()
            MetricsPublisher(pipeline).publish()  # a replay that queues counts as captured traffic
    summary = pipeline.summary()
    summary["file"] = str(path)
    if sender is not None:
        summary["queued"] = asdict(sender.counters)
    if error is not None:
        summary["error"] = error
    return summary
