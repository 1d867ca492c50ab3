"""A download failure keeps its reason across the result backend (what `status` and the console show)."""

from __future__ import annotations

from celery import Celery

from cachetap.fetch.download import DownloadError


def test_download_error_survives_the_json_result_backend():
    app = Celery("roundtrip", backend="cache+memory://", set_as_current=False)
    app.conf.result_serializer = "json"
    backend = app.backend
    sent = DownloadError("aria2_error_1", retryable=True, detail="Got EOF from the server.")
    received = backend.exception_to_python(backend.prepare_exception(sent, "json"))
    assert type(received) is DownloadError
    assert (received.reason, received.retryable, received.detail) == ("aria2_error_1", True, "Got EOF from the server.")
    assert str(received) == "aria2_error_1: Got EOF from the server. (retryable=True)"
