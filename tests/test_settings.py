"""Settings: TOML file + CACHETAP_* environment, bad input named by key."""

from pathlib import Path

import pytest

from cachetap.settings import ConfigError, load_settings, mask_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os
    for key in list(os.environ):
        if key.startswith("CACHETAP_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cachetap.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_no_servers(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHETAP_CACHE_DIR", str(tmp_path))
    s = load_settings()
    assert s.cache_dir == tmp_path
    assert s.effective_broker_url == "filesystem://"
    assert s.effective_database_url == f"sqlite:///{tmp_path}/catalog.sqlite"
    assert s.embedded_broker and s.mode == "observe"


def test_environment_beats_file(tmp_path, monkeypatch):
    cfg = write(tmp_path, 'broker_url = "redis://file:6379/0"\nadmission_threshold = 3\n')
    monkeypatch.setenv("CACHETAP_BROKER_URL", "amqp://guest:guest@127.0.0.1//")
    s = load_settings(cfg)
    assert s.broker_url == "amqp://guest:guest@127.0.0.1//"
    assert s.admission_threshold == 3


def test_list_and_table_values_from_environment_as_json(monkeypatch):
    monkeypatch.setenv("CACHETAP_CLIENT_SUBNETS", '["10.0.0.0/8", "fd00::/8"]')
    monkeypatch.setenv("CACHETAP_STRIP_QUERY_PARAMS", '{"*.cdn.test": ["token"]}')
    s = load_settings()
    assert [str(n) for n in s.client_subnets] == ["10.0.0.0/8", "fd00::/8"]
    assert s.strip_query_params == {"*.cdn.test": ["token"]}


def test_cachetap_table_accepted(tmp_path):
    s = load_settings(write(tmp_path, '[cachetap]\nmode = "redirect"\n'))
    assert s.mode == "redirect"


@pytest.mark.parametrize("text, key", [
    ('admission_threshold = -1', "admission_threshold"),
    ('mode = "inject-everything"', "mode"),
    ('http_ports = [80, 70000]', "http_ports"),
    ('client_subnets = ["10.0.0.0/33"]', "client_subnets"),
    ('no_such_setting = 1', "no_such_setting"),
    ('resolve_overrides = { "h.test" = ["not-an-ip"] }', "resolve_overrides"),
    ('min_size = 10\nmax_size = 5', "min_size"),
    ('node_name = "cache one/../x"', "node_name"),
])
def test_bad_file_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert key in str(err.value)


def test_bad_environment_value_names_the_key(monkeypatch):
    monkeypatch.setenv("CACHETAP_BATCH_SIZE", "many")
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings()


def test_unknown_environment_variable_is_an_error(monkeypatch):
    monkeypatch.setenv("CACHETAP_BROKER_ULR", "redis://x")
    with pytest.raises(ConfigError, match="CACHETAP_BROKER_ULR: unknown setting"):
        load_settings()


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "mode = \n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_masked_hides_passwords_only():
    assert mask_url("amqp://guest:secret@host:5672//") == "amqp://guest:***@host:5672//"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    s = load_settings(database_url="postgresql+psycopg://u:pw@db/c")
    assert s.masked()["database_url"] == "postgresql+psycopg://u:***@db/c"
    assert "pw" not in str(s.masked())


def test_node_name_defaults_to_a_valid_host_name(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "box 7.campus")
    assert load_settings().effective_node_name == "box-7.campus"
    assert load_settings(node_name="cache-2").effective_node_name == "cache-2"


def test_result_backend_follows_a_shared_catalog(tmp_path):
    """Every node must see every task's result: with a server catalog, results live in it too."""
    assert load_settings(cache_dir=tmp_path).effective_result_backend == f"db+sqlite:///{tmp_path}/celery-results.sqlite"
    url = "postgresql+psycopg://u:pw@db/c"
    assert load_settings(cache_dir=tmp_path, database_url=url).effective_result_backend == f"db+{url}"
    assert load_settings(cache_dir=tmp_path, database_url=url, result_backend="redis://r/1").effective_result_backend \
        == "redis://r/1"
