"""The admin token: one value per cluster from the catalog, a private file per node, constant-time check."""

from __future__ import annotations

import stat

from cachetap.store.admin_token import admin_token, token_file, token_matches
from cachetap.store.catalog import open_catalog


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_node_of_a_cluster_gets_the_same_token_and_its_private_file(catalog, catalog_url, tmp_path):
    node_a, node_b = tmp_path / "a", tmp_path / "b"
    node_a.mkdir()
    node_b.mkdir()
    first = admin_token(catalog, node_a)
    other_node = open_catalog(catalog_url)  # a second node: its own engine on the same catalog
    try:
        assert admin_token(other_node, node_b) == first
    finally:
        other_node.engine.dispose()
    assert len(first) == 64 and int(first, 16) >= 0  # 32 random bytes in hex
    for node in (node_a, node_b):
        assert token_file(node).read_text() == first + "\n"
        assert mode_of(token_file(node)) == 0o600
    assert admin_token(catalog, node_a) == first  # asked again: the same


def test_the_catalog_wins_over_a_stale_or_open_file(catalog, tmp_path):
    token = admin_token(catalog, tmp_path)
    path = token_file(tmp_path)
    path.write_text("stale-token-from-another-catalog\n")
    path.chmod(0o644)
    assert admin_token(catalog, tmp_path) == token
    assert path.read_text() == token + "\n"
    assert mode_of(path) == 0o600


def test_a_configured_token_wins_and_is_written(catalog, tmp_path):
    generated = catalog.shared_secret("admin_token").hex()
    assert admin_token(catalog, tmp_path, configured="operator-chosen-token-1") == "operator-chosen-token-1"
    assert token_file(tmp_path).read_text() == "operator-chosen-token-1\n"
    assert admin_token(catalog, tmp_path) == generated  # the setting removed: the cluster's again


def test_token_matches_only_the_exact_token():
    token = "a" * 63 + "b"
    assert token_matches(token, token)
    assert token_matches(token.encode(), token)
    for wrong in (None, "", b"", "a" * 64, token[:-1], token + "b", token.upper(), "\udcff" * 3):
        assert not token_matches(wrong, token)
    assert not token_matches("", "")  # no token configured and none presented: still no
