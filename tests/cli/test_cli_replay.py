"""`cachetap replay`: capture files of every supported kind through the real console script."""

import json
import os
import subprocess
import sys

import pytest

from cachetap.testing import pcaps
from cachetap.testing.pcaps import http_get_packets, write_capture, write_pcapng


def replay(path, *extra, env_extra=None, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    if tmp_path is not None:
        env["CACHETAP_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-m", "cachetap", "replay", "--dry-run", *extra, str(path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


def conversation(**kw):
    defaults = dict(client="10.1.0.5", server="93.184.216.34", host="Mirror.Example.ORG:80",
                    target="/pub/ubuntu-24.04-desktop-amd64.iso",
                    headers={"Range": "bytes=100-", "User-Agent": "curl/8.5.0"}, response_bytes=3000)
    defaults.update(kw)
    return http_get_packets(defaults.pop("client"), defaults.pop("server"), defaults.pop("host"),
                            defaults.pop("target"), **defaults)


LINKTYPES = {"ethernet": pcaps.LINKTYPE_ETHERNET, "sll": pcaps.LINKTYPE_LINUX_SLL,
             "sll2": pcaps.LINKTYPE_LINUX_SLL2, "raw": pcaps.LINKTYPE_RAW}


@pytest.mark.parametrize("kind", [*LINKTYPES, "pcapng", "vlan", "qinq", "ipv6", "nanosecond"])
def test_every_capture_kind_reports_host_target_and_range(tmp_path, kind):
    path = tmp_path / f"{kind}.pcap"
    client, server, vlan = "10.1.0.5", "93.184.216.34", None
    if kind == "ipv6":
        client, server = "fd00::5", "2001:db8::34"
    if kind in ("vlan", "qinq"):
        vlan = 42 if kind == "vlan" else [100, 42]
    packets = conversation(client=client, server=server, vlan=vlan)
    if kind == "pcapng":
        write_pcapng(path, packets)
    else:
        write_capture(path, packets, LINKTYPES.get(kind, pcaps.LINKTYPE_ETHERNET), nano=kind == "nanosecond")
    requests, summary = replay(path, tmp_path=tmp_path)
    assert len(requests) == 1, requests
    req = requests[0]
    assert req["client"] == client and req["server"] == server
    assert req["host"] == "Mirror.Example.ORG:80"
    assert req["target"] == "/pub/ubuntu-24.04-desktop-amd64.iso"
    assert req["range"] == "bytes=100-"
    assert req["url"] == "http://mirror.example.org/pub/ubuntu-24.04-desktop-amd64.iso"
    assert len(req["key"]) == 32 and req["decision"] == "count"
    assert summary["requests"] == 1 and summary["rejected"] == {}
    if kind in ("vlan", "qinq"):
        assert req["vlan"] == (42 if kind == "vlan" else 100)


def test_pipelined_and_split_requests(tmp_path):
    path = tmp_path / "mixed.pcap"
    packets = conversation(pipelined=["/b.zip", "/c.deb"], headers={}) + \
        conversation(client_port=40001, target="/split/" + "x" * 3000 + ".iso", split_at=[20, 1500])
    write_capture(path, packets)
    requests, summary = replay(path, tmp_path=tmp_path)
    targets = [r["target"] for r in requests]
    assert targets == ["/pub/ubuntu-24.04-desktop-amd64.iso", "/b.zip", "/c.deb", "/split/" + "x" * 3000 + ".iso"]
    assert summary["decisions"] == {"count": 4}


def test_rules_and_keys_applied(tmp_path):
    path = tmp_path / "rules.pcap"
    packets = (conversation(target="/index.html", client_port=40001)
               + conversation(target="/v.mp4?token=abc&q=1", client_port=40002, headers={})
               + conversation(target="/v.mp4?token=xyz&q=1", client_port=40003, headers={})
               + conversation(method="POST", body=b"x=1", target="/upload.zip", client_port=40004)
               + conversation(host="tracker.ads.test", target="/a.iso", client_port=40005))
    write_capture(path, packets)
    env = {"CACHETAP_STRIP_QUERY_PARAMS": '{"*.example.org": ["token"]}',
           "CACHETAP_HOST_DENY": '["*.ads.test"]'}
    requests, summary = replay(path, env_extra=env, tmp_path=tmp_path)
    by_target = {r["target"]: r for r in requests}
    assert by_target["/index.html"]["reason"] == "extension"
    assert by_target["/upload.zip"]["reason"] == "method"
    assert requests[-1]["reason"] == "host_denied"
    assert by_target["/v.mp4?token=abc&q=1"]["key"] == by_target["/v.mp4?token=xyz&q=1"]["key"]
    assert summary["decisions"]["count"] == 2


def test_hostile_capture_completes_with_every_bad_packet_counted(tmp_path):
    path = tmp_path / "hostile.pcap"
    cases = pcaps.hostile_cases()
    write_capture(path, [c.frame for c in cases])
    # And a record cut off at the end of the file.
    import struct
    path.write_bytes(path.read_bytes() + struct.pack("<IIII", 1_700_000_100, 0, 100, 100) + b"\x00" * 10)
    requests, summary = replay(path, tmp_path=tmp_path)
    expected_link = {}
    for case in cases:
        if case.link_reason:
            expected_link[case.link_reason] = expected_link.get(case.link_reason, 0) + 1
    for reason, count in expected_link.items():
        assert summary["rejected"].get(reason) == count, (reason, summary)
    assert summary["rejected"]["truncated_file"] == 1
    assert summary["packets"] == len(cases)
    # Nothing hostile reaches a cache key with a path that climbs out.
    for req in requests:
        if req["url"]:
            assert "/../" not in req["url"] and "%2e%2e" not in req["url"].lower()
            assert "\x00" not in req["url"]
    # Every request-level oddity is accounted for: either a decision with a reason or a reject.
    http_cases = [c for c in cases if c.link_reason is None]
    accounted = summary["requests"] + sum(v for k, v in summary["rejected"].items()
                                          if k not in expected_link and k != "truncated_file")
    assert accounted >= len([c for c in http_cases if not c.name.startswith("long_target_part_")])


def test_not_a_capture_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHETAP_")}
    result = subprocess.run([sys.executable, "-m", "cachetap", "replay", "--dry-run", str(path)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "not a pcap or pcapng file" in result.stderr and "Traceback" not in result.stderr
