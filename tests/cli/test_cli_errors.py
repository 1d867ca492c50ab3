"""Operator mistakes through the real `cachetap` console script: one or two lines naming what is wrong
and what to do, a non-zero exit status, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachetap.testing.origin import Origin, Resource

CACHETAP = str(Path(sys.executable).with_name("cachetap"))
TIMEOUT = 60


def run(*args: str, env: dict[str, str] | None = None, home: str | None = None,
        prefix: tuple[str, ...] = (), cache_dir: Path | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    if cache_dir is not None:
        base["CACHETAP_CACHE_DIR"] = str(cache_dir)
    if home is not None:
        base["HOME"] = home
        base.pop("XDG_CACHE_HOME", None)
    base.update(env or {})
    return subprocess.run([*prefix, CACHETAP, *args], env=base, capture_output=True, text=True, timeout=TIMEOUT)


def short_error(result: subprocess.CompletedProcess, lines: int = 3) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip()
    assert 0 < len(err.splitlines()) <= lines, err
    return err


def test_capture_on_a_missing_interface(tmp_path):
    result = run("capture", "-i", "doesnotexist", cache_dir=tmp_path)
    err = short_error(result, lines=1)
    assert result.returncode == 78
    assert "no such network interface" in err and "lo" in err and "set `interface` or -i" in err


def test_run_on_a_missing_interface_refuses_before_starting_anything(tmp_path):
    started = time.monotonic()
    result = run("run", "-i", "doesnotexist", cache_dir=tmp_path)
    err = short_error(result, lines=1)
    assert "cannot capture on doesnotexist: no such network interface" in err
    assert time.monotonic() - started < 30 and not (tmp_path / "broker").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to drop CAP_NET_RAW")
def test_capture_without_cap_net_raw_names_the_systemd_line_and_setpriv(tmp_path):
    result = run("capture", "-i", "lo", cache_dir=tmp_path,
                 prefix=("setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw"))
    assert result.returncode == 78, result.stderr
    err = result.stderr.strip().splitlines()
    errors = [line for line in err if "INFO" not in line]
    assert len(errors) == 2 and "Traceback" not in result.stderr, result.stderr
    assert "permission denied, the capture needs CAP_NET_RAW" in errors[0]
    assert "AmbientCapabilities=CAP_NET_RAW CAP_SYS_NICE" in errors[1]
    assert "setpriv --reuid=cachetap" in errors[1] and "--ambient-caps=+net_raw" in errors[1]


def test_no_writable_home_names_cache_dir_and_how_to_set_it():
    result = run("ls", home="/proc/no-such-home")
    err = short_error(result, lines=1)
    assert "cache_dir /proc/no-such-home/.cache/cachetap is not writable" in err
    assert "CACHETAP_CACHE_DIR=" in err


def test_prefetch_with_the_broker_down_fails_fast_and_leaves_nothing_queued(tmp_path):
    with Origin() as origin:
        origin.add("/big.iso", Resource(size=2 << 20))
        url = f"http://files.test:{origin.port}/big.iso"
        env = {"CACHETAP_BROKER_URL": "redis://127.0.0.1:1/0",
               "CACHETAP_RESOLVE_OVERRIDES": '{"files.test": ["127.0.0.1"]}',
               "CACHETAP_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"}
        started = time.monotonic()
        result = run("prefetch", url, env=env, cache_dir=tmp_path)
        assert time.monotonic() - started < 30
        err = short_error(result, lines=2)
        assert "cannot reach the broker at redis://127.0.0.1:1/0" in err and "fix broker_url" in err
        assert "No hostname was supplied" not in result.stderr
        listed = run("ls", "--json", env=env, cache_dir=tmp_path)
        assert '"state": "failed"' in listed.stdout and "broker unreachable" in listed.stdout
        assert '"queued"' not in listed.stdout
        again = run("prefetch", "--detach", url, env=env, cache_dir=tmp_path)  # no waiting for ever
        assert "cannot reach the broker" in short_error(again, lines=2)


def test_prefetch_of_a_too_small_file_says_the_limit_and_how_to_change_it(tmp_path):
    with Origin() as origin:
        origin.add("/tiny.iso", Resource(size=1000))
        result = run("prefetch", f"http://files.test:{origin.port}/tiny.iso", cache_dir=tmp_path,
                     env={"CACHETAP_RESOLVE_OVERRIDES": '{"files.test": ["127.0.0.1"]}',
                          "CACHETAP_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"})
    err = short_error(result, lines=1)
    assert "1000 bytes is below min_size (1048576 bytes)" in err and "CACHETAP_MIN_SIZE=1000" in err


def test_status_of_an_unknown_or_malformed_task_id(tmp_path):
    unknown = run("status", "00000000-0000-0000-0000-000000000000", cache_dir=tmp_path)
    assert "00000000-0000-0000-0000-000000000000: unknown" in short_error(unknown, lines=1)
    malformed = run("status", "nope", cache_dir=tmp_path)
    assert "'nope' is not a task id" in short_error(malformed, lines=1)


def test_list_settings_from_the_environment_as_plain_text_or_json(tmp_path):
    plain = run("config", "show", "--json", env={"CACHETAP_CLIENT_SUBNETS": "10.0.0.0/8, fd00::/8"}, cache_dir=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert '"10.0.0.0/8"' in plain.stdout and '"fd00::/8"' in plain.stdout
    bad = run("config", "show", env={"CACHETAP_CLIENT_SUBNETS": "10.0.0.0/33"}, cache_dir=tmp_path)
    err = short_error(bad, lines=2)
    assert "CACHETAP_CLIENT_SUBNETS: client_subnets[0] = '10.0.0.0/33': not an IP network" in err


def test_a_bad_subnet_in_the_file_is_one_readable_line_naming_the_file(tmp_path):
    cfg = tmp_path / "cachetap.toml"
    cfg.write_text('client_subnets = ["10.0.0.0/8", "10.0.0.300/8"]\n')
    err = short_error(run("-c", str(cfg), "config", "show", cache_dir=tmp_path), lines=2)
    assert err.splitlines()[-1] == (f"{cfg}: client_subnets[1] = '10.0.0.300/8': not an IP network "
                                    "(write it as 10.0.0.0/8 or fd00::/8, host bits zero)")


def test_a_typo_gets_did_you_mean_in_the_file_and_the_environment(tmp_path):
    cfg = tmp_path / "cachetap.toml"
    cfg.write_text("admision_threshold = 2\n")
    err = short_error(run("-c", str(cfg), "ls", cache_dir=tmp_path), lines=2)
    assert f"{cfg}: unknown setting 'admision_threshold'; did you mean admission_threshold?" in err
    err = short_error(run("ls", env={"CACHETAP_BROKER_ULR": "redis://x"}, cache_dir=tmp_path), lines=2)
    assert "CACHETAP_BROKER_ULR: unknown setting; did you mean CACHETAP_BROKER_URL?" in err


def test_bad_values_name_the_variable_or_file_that_held_them(tmp_path):
    cfg = tmp_path / "cachetap.toml"
    cfg.write_text("batch_size = 0\n")
    err = short_error(run("-c", str(cfg), "config", "show", env={"CACHETAP_SERVE_PORT": "http"},
                          cache_dir=tmp_path), lines=3)
    assert f"{cfg}: batch_size = 0: Input should be greater than or equal to 1" in err
    assert "CACHETAP_SERVE_PORT: serve_port = 'http':" in err


def test_sizes_take_units(tmp_path):
    shown = run("config", "show", "--json", env={"CACHETAP_MAX_SIZE": "64G", "CACHETAP_MIN_SIZE": "1MiB",
                                                  "CACHETAP_DISK_QUOTA": "2TB"}, cache_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert '"max_size": 68719476736' in shown.stdout and '"min_size": 1048576' in shown.stdout
    assert '"disk_quota": 2000000000000' in shown.stdout
    err = short_error(run("config", "show", env={"CACHETAP_MAX_SIZE": "64Q"}, cache_dir=tmp_path), lines=2)
    assert "CACHETAP_MAX_SIZE: max_size = '64Q': not a size" in err


def test_ls_with_an_unknown_state_lists_the_states(tmp_path):
    err = short_error(run("ls", "--state", "bogus", cache_dir=tmp_path), lines=4)  # click: usage, hint, error
    assert "'bogus' is not one of 'counting', 'probing', 'queued', 'downloading', 'ready'" in err


def test_replay_of_a_file_that_is_no_capture_names_it_once(tmp_path):
    readme = Path(__file__).parents[2] / "README.md"
    err = short_error(run("replay", str(readme), cache_dir=tmp_path), lines=1)
    assert err.count(str(readme)) == 1 and "not a pcap or pcapng file" in err


def test_config_show_prints_the_help_texts(tmp_path):
    shown = run("config", "show", cache_dir=tmp_path)
    assert shown.returncode == 0
    assert "# Smallest object in bytes worth caching.\nmin_size = 1048576" in shown.stdout
    assert "# Interface to sniff (mirror port or gateway). Unset: no live capture.\n# interface is unset" in shown.stdout


