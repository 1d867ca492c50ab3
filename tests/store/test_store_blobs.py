import os

import blake3
import pytest

from cachetap.store.blobs import BadDigest, BlobStore, file_digest


def _write_temp(store: BlobStore, key: str, data: bytes):
    temp = store.new_temp_name(key)
    temp.write_bytes(data)
    return temp


def test_publish_places_blob_by_content_and_is_idempotent(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(3 << 20)
    digest = blake3.blake3(data).hexdigest()
    temp = _write_temp(store, "a" * 32, data)
    assert file_digest(temp) == digest
    final = store.publish(temp, digest)
    assert final == tmp_path / "blobs" / digest[:2] / digest[2:4] / digest
    assert final.read_bytes() == data and not temp.exists()
    again = store.publish(_write_temp(store, "b" * 32, data), digest)
    assert again == final and list(store.iter_temp()) == []
    assert list(store.iter_blobs()) == [(digest, len(data))]
    assert store.remove(digest) and not final.exists() and not store.remove(digest)


def test_file_digest_of_empty_and_chunk_boundaries(tmp_path):
    for size in (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1):
        data = os.urandom(size)
        p = tmp_path / f"f{size}"
        p.write_bytes(data)
        assert file_digest(p) == blake3.blake3(data).hexdigest()
    # The content address is BLAKE3 (32 bytes, hex): the published test vector of the empty input.
    assert file_digest(tmp_path / "f0") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


@pytest.mark.parametrize("bad", ["", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../" + "a" * 61,
                                 "a" * 32 + "/" + "a" * 31, None, 123, "a" * 63 + "\n"])
def test_bad_digest_never_becomes_a_path(tmp_path, bad):
    store = BlobStore(tmp_path)
    with pytest.raises(BadDigest):
        store.path(bad)
    with pytest.raises(BadDigest):
        store.remove(bad)


@pytest.mark.parametrize("bad", ["", "A" * 32, "a" * 31, "a" * 64, "../../etc/passwd", "a" * 31 + "/", None])
def test_bad_key_never_becomes_a_temp_name(tmp_path, bad):
    with pytest.raises(BadDigest):
        BlobStore(tmp_path).new_temp_name(bad)


def test_publish_refuses_files_outside_temp_dir(tmp_path):
    store = BlobStore(tmp_path / "cache")
    outside = tmp_path / "elsewhere"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError):
        store.publish(outside, blake3.blake3(b"x").hexdigest())
    assert outside.exists() and list(store.iter_blobs()) == []


def test_iter_blobs_skips_strays(tmp_path):
    store = BlobStore(tmp_path)
    digest = blake3.blake3(b"y").hexdigest()
    store.publish(_write_temp(store, "c" * 32, b"y"), digest)
    (store.blob_dir / "stray.txt").write_text("x")
    (store.blob_dir / digest[:2] / digest[2:4] / ("0" * 64)).write_text("misplaced")
    assert list(store.iter_blobs()) == [(digest, 1)]


def test_prefix_hasher_follows_a_growing_file(tmp_path):
    from cachetap.store.blobs import PrefixHasher
    data = os.urandom((5 << 20) + 3)
    path = tmp_path / "growing"
    hasher = PrefixHasher(path)
    with open(path, "wb") as fh:
        for start in range(0, len(data), 700_000):
            fh.write(data[start:start + 700_000])
            fh.flush()
            hasher.advance(min(len(data), start + 700_000))
    assert hasher.finish(len(data)) == blake3.blake3(data).hexdigest()


def test_prefix_hasher_reset_and_short_file(tmp_path):
    from cachetap.store.blobs import PrefixHasher, ShortFile
    path = tmp_path / "f"
    path.write_bytes(b"a" * 1000)
    hasher = PrefixHasher(path)
    hasher.advance(500)
    hasher.reset()
    path.write_bytes(b"b" * 1000)  # rewritten: only a fresh hash is right
    assert hasher.finish(1000) == blake3.blake3(b"b" * 1000).hexdigest()
    with pytest.raises(ShortFile):
        PrefixHasher(path).finish(2000)
    longer = PrefixHasher(path)
    with pytest.raises(ShortFile):  # the file holds more than it should
        longer.finish(999)
