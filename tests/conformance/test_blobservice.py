"""The BlobService contract (tvix castore/src/blobservice/tests/mod.rs, spec §2.3, §12.1).

Every test runs against every backend in ``BLOB_BACKENDS``; none of them names a backend.
"""

from __future__ import annotations

import io
import os
import random
import threading

import pytest
from fixtures import BLOB_A, BLOB_A_DIGEST, BLOB_B, BLOB_B_DIGEST, EMPTY_BLOB_CONTENTS

from tvix_castore.blobservice import BlobService
from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.errors import ClosedError, InvalidRequest


def test_has_nonexistent_false(blob_service: BlobService) -> None:
    """has() of an unknown digest is False."""
    assert blob_service.has(BLOB_A_DIGEST) is False


def test_chunks_nonexistent_none(blob_service: BlobService) -> None:
    """chunks() of an unknown digest is None (absent), not []."""
    assert blob_service.chunks(BLOB_A_DIGEST) is None


def test_open_read_nonexistent_none(blob_service: BlobService) -> None:
    """open_read() of an unknown digest is None."""
    assert blob_service.open_read(BLOB_A_DIGEST) is None


@pytest.mark.parametrize(
    ("blob", "digest"), [(BLOB_A, BLOB_A_DIGEST), (BLOB_B, BLOB_B_DIGEST)], ids=["A", "B"]
)
def test_put_has_get(blob_service: BlobService, blob: bytes, digest: B3Digest) -> None:
    """A written blob gets its BLAKE3 digest, is present, and reads back identically."""
    w = blob_service.open_write()
    # Several writes of odd sizes: message boundaries must not matter.
    for i in range(0, len(blob), 100_003):
        assert w.write(blob[i : i + 100_003]) == len(blob[i : i + 100_003])
    assert w.close() == digest
    assert blob_service.has(digest)
    assert blob_service.chunks(digest) is not None
    r = blob_service.open_read(digest)
    assert r is not None
    with r:
        assert r.size() == len(blob)
        assert r.read() == blob


def test_seek_sequence(blob_service: BlobService) -> None:
    """tvix's seek sequence on BLOB_B: reads after Start, no-op seek, Current and at EOF."""
    assert blob_service.put(BLOB_B) == BLOB_B_DIGEST
    r = blob_service.open_read(BLOB_B_DIGEST)
    assert r is not None
    with r:
        pos = 0
        assert r.read(10) == BLOB_B[pos : pos + 10]
        pos += 10
        assert r.seek(pos, io.SEEK_SET) == pos  # same position: a no-op
        assert r.read(10) == BLOB_B[pos : pos + 10]
        pos += 10
        pos += 5
        assert r.seek(pos, io.SEEK_SET) == pos
        assert r.read(10) == BLOB_B[pos : pos + 10]
        pos += 10
        pos += 12345
        assert r.seek(12345, io.SEEK_CUR) == pos
        assert r.read(10) == BLOB_B[pos : pos + 10]
        pos += 10
        assert r.tell() == pos
        assert r.seek(len(BLOB_B), io.SEEK_SET) == len(BLOB_B)
        assert r.read(10) == b""
        # Beyond EOF: an error, or (tvix allows either) an empty read.
        try:
            r.seek(len(BLOB_B) + 1, io.SEEK_SET)
        except InvalidRequest:
            pass
        else:
            assert r.read(10) == b""


def test_empty_blob(blob_service: BlobService) -> None:
    """The empty blob has the digest of b"" and reads back as nothing."""
    w = blob_service.open_write()
    assert w.close() == EMPTY_BLOB_DIGEST
    assert blob_service.has(EMPTY_BLOB_DIGEST)
    assert blob_service.chunks(EMPTY_BLOB_DIGEST) == []
    r = blob_service.open_read(EMPTY_BLOB_DIGEST)
    assert r is not None
    with r:
        assert r.size() == 0
        assert r.read() == EMPTY_BLOB_CONTENTS
        assert r.seek(0, io.SEEK_END) == 0


def test_close_idempotent(blob_service: BlobService) -> None:
    """Closing a writer twice returns the same digest."""
    w = blob_service.open_write()
    w.write(BLOB_A)
    assert w.close() == BLOB_A_DIGEST
    assert w.close() == BLOB_A_DIGEST


def test_write_after_close(blob_service: BlobService) -> None:
    """Writing to a closed writer raises ClosedError."""
    w = blob_service.open_write()
    w.write(BLOB_A)
    w.close()
    with pytest.raises(ClosedError):
        w.write(BLOB_A)


def test_aborted_writer_stores_nothing(blob_service: BlobService) -> None:
    """Leaving a writer's with-block on an exception stores nothing."""
    with pytest.raises(RuntimeError), blob_service.open_write() as w:
        w.write(BLOB_A)
        raise RuntimeError("boom")
    assert not blob_service.has(BLOB_A_DIGEST)


def test_reupload_idempotent(blob_service: BlobService) -> None:
    """Putting the same blob twice gives the same digest and still reads back."""
    assert blob_service.put(BLOB_B) == BLOB_B_DIGEST
    assert blob_service.put(BLOB_B) == BLOB_B_DIGEST
    r = blob_service.open_read(BLOB_B_DIGEST)
    assert r is not None
    with r:
        assert r.read() == BLOB_B


def test_concurrent_threads(blob_service: BlobService) -> None:
    """Many threads writing and reading different and identical blobs at once all succeed."""
    rng = random.Random(7)
    blobs = [rng.randbytes(rng.choice([0, 1, 4096, 300_000, 1_500_000])) for _ in range(12)]
    blobs += blobs[:4]  # identical blobs written concurrently
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(blobs))

    def work(data: bytes) -> None:
        try:
            barrier.wait()
            digest = blob_service.put(data)
            assert digest == B3Digest.of(data)
            for _ in range(3):
                r = blob_service.open_read(digest)
                assert r is not None
                with r:
                    assert r.read() == data
                assert blob_service.has(digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_large_blob_chunks(blob_service: BlobService) -> None:
    """chunks() of a large blob: chunk reads verify and concatenate to the blob ([] allowed)."""
    data = os.urandom(6 * 1024 * 1024)
    digest = blob_service.put(data)
    chunks = blob_service.chunks(digest)
    assert chunks is not None
    if not chunks:
        return
    assert sum(c.size for c in chunks) == len(data)
    parts = []
    for c in chunks:
        assert blob_service.has(c.digest)
        r = blob_service.open_read(c.digest)
        assert r is not None
        with r:
            part = r.read()
        assert len(part) == c.size
        assert B3Digest.of(part) == c.digest
        parts.append(part)
    assert b"".join(parts) == data


def test_random_access(blob_service: BlobService) -> None:
    """seek + read at random offsets of a multi-MiB blob returns the right slices."""
    rng = random.Random(3)
    data = rng.randbytes(3 * 1024 * 1024 + 17)
    digest = blob_service.put(data)
    r = blob_service.open_read(digest)
    assert r is not None
    with r:
        for _ in range(50):
            o = rng.randrange(len(data) + 1)
            n = rng.randrange(700_000)
            r.seek(o)
            assert r.read(n) == data[o : o + n]
        r.seek(-5, io.SEEK_END)
        assert r.read() == data[-5:]


def test_reader_on_chunk_digest(blob_service: BlobService) -> None:
    """A reader opened on a chunk digest serves exactly that chunk's bytes."""
    data = os.urandom(3 * 1024 * 1024)
    digest = blob_service.put(data)
    chunks = blob_service.chunks(digest)
    assert chunks is not None
    offset = 0
    for c in chunks:
        assert blob_service.chunks(c.digest) == []
        r = blob_service.open_read(c.digest)
        assert r is not None
        with r:
            assert r.size() == c.size
            r.seek(c.size // 2)
            assert r.read() == data[offset + c.size // 2 : offset + c.size]
        offset += c.size
