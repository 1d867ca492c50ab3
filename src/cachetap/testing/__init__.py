"""Test helpers that ship with the package: local services, origins, capture files."""

# Tests and benches fetch from origins on loopback, which the fetch guard refuses unless listed.
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]
