"""Access-log lines in Squid's native format."""

from cachetap.core.accesslog import HIT, MISS, REDIRECT, squid_line


def test_native_fields_in_order():
    line = squid_line(1_700_000_000.1234, 12, "10.0.0.5", HIT, 206, 1048576, "GET", "http://cdn.test/a.iso",
                      "application/x-iso9660-image")
    assert line == ("1700000000.123     12 10.0.0.5 TCP_HIT/206 1048576 GET http://cdn.test/a.iso - HIER_NONE/- "
                    "application/x-iso9660-image")
    assert len(line.split()) == 10


def test_a_miss_carries_its_reason_as_an_eleventh_field_and_aborts_are_tagged():
    fields = squid_line(1.0, 0, "10.0.0.5", MISS, 302, 120, "GET", "http://cdn.test/a.iso", None,
                        "not_servable").split()
    assert fields[3] == "TCP_MISS/302" and fields[9] == "-" and fields[10] == "not_servable"
    assert squid_line(1.0, 5, "::1", HIT, 200, 10, "GET", "/x", aborted=True).split()[3] == "TCP_HIT_ABORTED/200"
    assert squid_line(1.0, 0, "10.0.0.5", REDIRECT, 302, 0, "GET", "http://h/x").split()[3] == "TCP_REDIRECT/302"


def test_hostile_urls_cannot_split_or_forge_a_line():
    line = squid_line(1.0, 0, "10.0.0.5", HIT, 200, 1, "GET", "http://h/a b\nTCP_HIT/200 x", None)
    assert "\n" not in line and len(line.split()) == 10 and "a%20b%0ATCP_HIT/200%20x" in line
