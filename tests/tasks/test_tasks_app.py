"""The Celery app's configuration, the `celery -A cachetap` entry point and the worker helper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachetap.tasks.app import create_app, retry_countdown

from cachetap.wire import QUEUE_NAMES, ROUTES
from cachetap.testing.workers import CELERY, CeleryWorker, WorkerFailed, settings_env


def test_every_registered_task_is_routed_and_hygiene_is_set(make_settings):
    app = create_app(make_settings())
    app.loader.import_default_modules()
    ours = {name for name in app.tasks if name.startswith("cachetap.")}
    assert {"cachetap.analyze.batch", "cachetap.schedule.reclaim", "cachetap.schedule.prune_hits"} <= ours
    assert ours <= set(ROUTES)
    assert {route["queue"] for route in ROUTES.values()} <= set(QUEUE_NAMES)
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in ROUTES
    conf = app.conf
    assert (conf.task_serializer, conf.result_serializer, conf.accept_content) == ("json", "json", ["json"])
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert [q.name for q in conf.task_queues] == list(QUEUE_NAMES)
    assert app.tasks["cachetap.analyze.batch"].acks_late


def test_embedded_broker_lives_under_the_cache_dir(make_settings, tmp_path):
    settings = make_settings(broker_polling_interval=0.2)
    app = create_app(settings)
    options = app.conf.broker_transport_options
    assert app.conf.broker_url == "filesystem://"
    assert options["polling_interval"] == 0.2
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert Path(options[key]).is_dir() and Path(options[key]).is_relative_to(settings.cache_dir)
    assert app.conf.result_backend.startswith("db+sqlite:///") and str(settings.cache_dir) in app.conf.result_backend


def test_server_brokers_are_used_as_configured(make_settings):
    app = create_app(make_settings(broker_url="amqp://guest:guest@127.0.0.1:5672//",
                                   result_backend="redis://127.0.0.1:6379/3"))
    assert app.conf.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert app.conf.result_backend == "redis://127.0.0.1:6379/3"
    assert not app.conf.broker_transport_options


def test_retry_backoff_grows_and_is_capped():
    for retries in range(12):
        delay = retry_countdown(retries, base=2, cap=300)
        assert 2 <= delay <= min(300, 2 * 2 ** retries)


def _celery(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    env.update(env_extra)
    return subprocess.run([str(CELERY), "-A", "cachetap", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd="/")


@pytest.mark.parametrize("env, named", [
    ({"CACHETAP_BATCH_SIZE": "0"}, "batch_size"),
    ({"CACHETAP_NO_SUCH_THING": "1"}, "CACHETAP_NO_SUCH_THING"),
    ({"CACHETAP_RESOLVE_OVERRIDES": json.dumps({"files.test": ["not-an-ip"]})}, "resolve_overrides"),
])
def test_bad_config_stops_the_worker_with_the_reason_not_a_traceback(tmp_path, env, named):
    result = _celery({"CACHETAP_CACHE_DIR": str(tmp_path), **env}, "worker", "-Q", "analyze")
    assert result.returncode == 2
    assert "bad configuration" in result.stderr and named in result.stderr
    assert "Traceback" not in result.stderr


def test_celery_finds_the_app_from_the_package(tmp_path):
    result = _celery({"CACHETAP_CACHE_DIR": str(tmp_path)}, "report")
    assert result.returncode == 0, result.stderr
    assert "transport:cachetap.tasks.embedded_broker:Transport" in result.stdout  # filesystem://, fixed


def test_settings_travel_to_the_worker_as_environment(make_settings):
    settings = make_settings(trusted_networks=["10.9.0.0/16"], resolve_overrides={"a.test": ["127.0.0.1"]})
    env = settings_env(settings)
    assert json.loads(env["CACHETAP_TRUSTED_NETWORKS"]) == ["10.9.0.0/16"]
    script = "from cachetap.settings import load_settings; print(load_settings().model_dump_json())"
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert json.loads(out) == json.loads(settings.model_dump_json())


def test_worker_helper_reports_a_worker_that_cannot_start(make_settings):
    worker = CeleryWorker(make_settings(), ["analyze"], extra_env={"CACHETAP_BATCH_SIZE": "-5"})
    with pytest.raises(WorkerFailed) as err:
        worker.start(timeout=120)
    assert "batch_size" in str(err.value)
    assert not worker.running
