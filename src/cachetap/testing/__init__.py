"""Test helpers that ship with the package: local services, origins, capture files."""
