"""Fixtures for the cache server tests: a real directory, a real server on 127.0.0.1, raw sockets."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachetap.web.lookup import DirectoryLookup, directory_key
from cachetap.web.server import CacheServer

FILE_SIZE = 3 * 1024 * 1024 + 17  # not a multiple of any buffer size
UTF8_NAME = "café ü.bin"


@dataclass
class Served:
    server: CacheServer
    lookup: DirectoryLookup
    root: Path
    data: bytes

    def url(self, name: str = "big.iso") -> str:
        return self.server.base_url + self.lookup.url_path(name)

    def path(self, name: str = "big.iso") -> str:
        return self.lookup.url_path(name)

    def key(self, name: str = "big.iso") -> str:
        return directory_key(name)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def payload() -> bytes:
    return os.urandom(FILE_SIZE)


@pytest.fixture
def served(tmp_path: Path, payload: bytes) -> Iterator[Served]:
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    (root / "big.iso").write_bytes(payload)
    (root / UTF8_NAME).write_bytes(payload[:1000])
    (root / "sub" / "empty.bin").write_bytes(b"")
    lookup = DirectoryLookup(root, origin_base="http://origin.invalid/mirror")
    server = CacheServer(lookup, head_timeout=2.0, grace=10.0).start()
    try:
        yield Served(server, lookup, root, payload)
    finally:
        server.stop()


def exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send raw bytes, read until the server closes (the tests send Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_responses(data: bytes, head_only: tuple[bool, ...] = ()) -> list[RawResponse]:
    """Split a byte stream into responses using Content-Length (head_only: answers to HEAD)."""
    out = []
    index = 0
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if (index < len(head_only) and head_only[index]) or status == 304 \
            else int(headers.get("content-length", "0"))
        out.append(RawResponse(status, headers, rest[:length]))
        data = rest[length:]
        index += 1
    return out
