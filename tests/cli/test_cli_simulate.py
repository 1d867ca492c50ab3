"""`cachetap simulate` on small logs and captures written by the tests, gzip-compressed or not."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from cachetap.cli import simulate_cmds  # noqa: F401  (registers the command)
from cachetap.cli.main import cli
from cachetap.testing.pcaps import http_get_packets, write_capture, write_pcapng

MB = 1_000_000
ENV = {"CACHETAP_MIN_SIZE": "0", "CACHETAP_CONFIG": ""}


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, ["simulate", "--quiet", *args], env=ENV)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def results(*args: str) -> dict:
    return json.loads(run("--json", *args).stdout)


def squid_line(ts: float, url: str, size: int, status: int = 200, method: str = "GET") -> str:
    return f"{ts:.3f}    120 10.0.0.7 TCP_MISS/{status} {size} {method} {url} - HIER_DIRECT/93.184.216.34 application/octet-stream\n"


def test_squid_log_counts_hits_after_admission(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("".join(squid_line(1_700_000_000 + i * 60, "http://dl.example.com/a.iso", 4 * MB) for i in range(4))
                   + squid_line(1_700_000_500, "http://dl.example.com/b.iso", 2 * MB)
                   + squid_line(1_700_000_600, "http://dl.example.com/c", 10, status=404)
                   + squid_line(1_700_000_700, "http://dl.example.com/d", 10, method="POST")
                   + "garbage line\n")
    data = results(str(log), "--cache-size", "10M", "--download-rate", "inf", "--threshold", "1", "--policy", "lru")
    (res,) = data["results"]
    # threshold 1: admitted on the 2nd request of a.iso, there for the 3rd and 4th.
    assert (res["requests"], res["hits"], res["bytes_hit"]) == (5, 2, 8 * MB)
    assert res["origin_bytes_for_cache"] == 4 * MB and res["net_saved"] == 4 * MB
    assert data["input"]["skipped"] == {"malformed": 1, "not_get": 1, "status_404": 1}


def test_gzip_and_several_policies_and_sizes(tmp_path):
    lines = "".join(squid_line(1_700_000_000 + i, f"http://h.example/{i % 3}", 3 * MB) for i in range(30))
    plain, packed = tmp_path / "a.log", tmp_path / "a.log.gz"
    plain.write_text(lines)
    with gzip.open(packed, "wt") as f:
        f.write(lines)
    args = ("--cache-size", "50%,100%", "--policy", "all", "--download-rate", "inf")
    a, b = results(str(plain), *args), results(str(packed), *args)
    assert a == b
    assert {(r["policy"], r["cache_size"]) for r in a["results"]} == \
        {(p, c) for p in ("gdsf", "lrfu", "lru", "s3fifo") for c in (4_500_000, 9 * MB)}
    full = [r for r in a["results"] if r["cache_size"] == 9 * MB]
    assert all(r["hits"] == 30 - 6 for r in full)   # every object admitted on its 2nd request


def test_bypass_model_sends_requests_to_the_origin_until_the_download_is_done(tmp_path):
    log = tmp_path / "access.log"
    # 8 MB at 1 MB/s: admitted at t=1, ready at t=9; requests at 2..8 still go to the origin.
    log.write_text("".join(squid_line(1_700_000_000 + t, "http://h.example/big", 8 * MB) for t in range(12)))
    (res,) = results(str(log), "--cache-size", "100M", "--download-rate", "1000000", "--threshold", "1",
                     "--policy", "lru")["results"]
    assert res["hits"] == 3   # t = 9, 10, 11


def test_nginx_combined_and_lancache_logs(tmp_path):
    combined = tmp_path / "access.log"
    combined.write_text("".join(
        f'10.0.0.{i} - - [10/Oct/2026:13:55:{30 + i:02d} +0000] "GET /pool/x.deb HTTP/1.1" 200 {2 * MB} "-" '
        f'"apt" "deb.example.org"\n' for i in range(3)))
    (res,) = results(str(combined), "--cache-size", "10M", "--download-rate", "inf")["results"]
    assert (res["requests"], res["hits"]) == (3, 1)
    lancache = tmp_path / "lancache.log.gz"
    with gzip.open(lancache, "wt") as f:
        for i in range(3):
            f.write(f'[steam] 10.0.0.{i} / - - - [10/Oct/2026:13:55:{30 + i:02d} +0200] "GET /depot/1/chunk/ab HTTP/1.1" '
                    f'206 {MB} "-" "Valve/Steam HTTP Client 1.0" "MISS" "cache1.steamcontent.com" "bytes=0-1048575"\n')
    (res,) = results(str(lancache), "--cache-size", "10M", "--download-rate", "inf")["results"]
    assert (res["requests"], res["hits"], res["bytes_hit"]) == (3, 1, MB)


def conversation(port: int, target: str, size: int, start: float):
    return http_get_packets("10.1.0.5", "93.184.216.34", "mirror.example.org", target, response_bytes=size,
                            client_port=port, start=start)


@pytest.mark.parametrize("writer", [write_capture, write_pcapng])
def test_capture_sizes_come_from_the_response_heads(tmp_path, writer):
    packets = []
    for i in range(3):
        packets += conversation(40000 + i, "/iso/a.iso", 3000, 1_700_000_000 + i)
    # a request whose response is not in the capture
    packets += http_get_packets("10.1.0.5", "93.184.216.34", "mirror.example.org", "/iso/b.iso",
                                client_port=41000, start=1_700_000_010)
    path = tmp_path / "cap.pcap"
    writer(path, packets)
    data = results(str(path), "--cache-size", "1M", "--download-rate", "inf")
    (res,) = data["results"]
    assert (res["requests"], res["hits"], res["bytes_hit"]) == (3, 1, 3000)
    assert data["input"]["skipped"]["no_response"] == 1


def test_plot_writes_a_png(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("".join(squid_line(1_700_000_000 + i * 600, f"http://h.example/{i % 5}", 3 * MB) for i in range(60)))
    out = tmp_path / "chart.png"
    run(str(log), "--cache-size", "5M,10M", "--policy", "lru,lrfu", "--plot", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mistakes_get_one_line(tmp_path):
    notlog = tmp_path / "notes.txt"
    notlog.write_text("hello world\n")
    result = run(str(notlog), ok=False)
    assert result.exit_code != 0 and "neither a Squid access.log" in result.output + (result.stderr or "")
    log = tmp_path / "a.log"
    log.write_text(squid_line(1_700_000_000, "http://h.example/x", 10))
    for args, words in ((("--policy", "mru"), "unknown policy mru"), (("--cache-size", "lots"), "not a size"),
                        (("--cache-size", "150%"), "(0, 100]")):
        result = run(str(log), *args, ok=False)
        assert result.exit_code == 2 and words in result.output + (result.stderr or "")
    empty = tmp_path / "empty.log"
    empty.write_text(squid_line(1_700_000_000, "http://h.example/x", 10, status=500))
    result = run(str(empty), ok=False)
    assert result.exit_code == 1 and "no cacheable request" in result.output + (result.stderr or "")
    assert "Traceback" not in result.output


def test_cut_off_gzip_log_and_capture_are_read_up_to_the_cut(tmp_path):
    lines = "".join(squid_line(1_700_000_000 + i, f"http://h.example/{i % 4}", 3 * MB) for i in range(4000))
    whole = gzip.compress(lines.encode())
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    data = results(str(cut), "--cache-size", "100M")
    assert 0 < data["input"]["requests"] < 4000 and data["input"]["skipped"] == {"truncated_file": 1}
    packets = []
    for i in range(3):
        packets += conversation(40000 + i, "/iso/a.iso", 3000, 1_700_000_000 + i)
    path = tmp_path / "cap.pcap"
    write_capture(path, packets)
    path.write_bytes(path.read_bytes()[:-10])
    data = results(str(path), "--cache-size", "1M")
    assert data["input"]["skipped"]["truncated_file"] == 1 and data["input"]["requests"] == 3
