"""Zero-copy reads from the LMDB blob store (``open_views``) and the NAR renderer that uses them."""

from __future__ import annotations

import io
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_services import local_services

from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.chunker import MAX_SIZE
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DataCorruption, StorageError
from tvix_castore.nodes import FileNode
from tvix_store.nar.renderer import write_nar
from tvix_store.services import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with local_services("lmdb", tmp_path) as s:
        yield s


def _lmdb(services: Services) -> LmdbBlobService:
    blobs = services.blob_service
    assert isinstance(blobs, LmdbBlobService)
    return blobs


def _render(services: Services, node: FileNode, zero_copy: bool) -> bytes:
    out = io.BytesIO()
    tree = Directory({b"f": node})
    services.directory_service.put(tree)
    write_nar(
        out.write, tree.as_node(), services.blob_service, services.directory_service, zero_copy=zero_copy
    )
    return out.getvalue()


def _chunks_table_put(services: Services, key: bytes, value: bytes) -> None:
    blobs = _lmdb(services)
    db: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with blobs._env.begin(write=True, db=db) as txn:
        txn.put(key, value)


def test_views_cover_every_chunk(services: Services) -> None:
    """A multi-chunk blob's views concatenate to its bytes; size is announced up front."""
    data = os.urandom(4 * MAX_SIZE + 3)
    digest = services.blob_service.put(data)
    opened = _lmdb(services).open_views(digest)
    assert opened is not None
    size, views = opened
    assert size == len(data)
    assert b"".join(bytes(v) for v in views) == data
    assert _lmdb(services).open_views(B3Digest.of(b"absent")) is None


def test_zero_copy_render_matches_copying_render(services: Services) -> None:
    """Both rendering paths give the same NAR for a multi-chunk and a single-chunk file."""
    for data in (os.urandom(3 * MAX_SIZE + 11), b"small"):
        node = FileNode(services.blob_service.put(data), len(data), True)
        assert _render(services, node, True) == _render(services, node, False)


def test_corrupt_chunk_refused_by_views(services: Services) -> None:
    """A chunk whose bytes do not hash to its key is refused before any of it is handed out."""
    digest = services.blob_service.put(b"original bytes")
    _chunks_table_put(services, digest, b"tampered bytes")
    opened = _lmdb(services).open_views(digest)
    assert opened is not None
    with pytest.raises(DataCorruption, match=re.escape(str(digest))):
        next(opened[1])


def test_missing_chunk_of_multi_chunk_blob(services: Services) -> None:
    """A chunk list naming an absent chunk fails while iterating, naming chunk and blob."""
    data = os.urandom(3 * MAX_SIZE)
    digest = services.blob_service.put(data)
    chunks = services.blob_service.chunks(digest)
    assert chunks
    blobs = _lmdb(services)
    db: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with blobs._env.begin(write=True, db=db) as txn:
        txn.delete(chunks[1].digest)
    opened = blobs.open_views(digest)
    assert opened is not None
    with pytest.raises(StorageError, match=re.escape(str(chunks[1].digest))):
        list(opened[1])


@pytest.mark.parametrize("where", ["later half of the first batch", "last chunk"])
def test_corrupt_chunk_of_long_blob_refused_by_views(services: Services, where: str) -> None:
    """Chunks are checked in batches, half on a second thread: a bad one anywhere is refused.

    Nothing of its batch is handed out; the batches before it come out whole and in order.
    """
    # Seeded: random bytes of this size give 32 chunks now and then, and it needs three batches.
    data = random.Random(12).randbytes(16 * 1024 * 1024)
    digest = services.blob_service.put(data)
    chunks = services.blob_service.chunks(digest)
    assert chunks is not None and len(chunks) > 2 * 16
    bad = 12 if where == "later half of the first batch" else len(chunks) - 1
    start = sum(c.size for c in chunks[:bad])
    original = data[start : start + chunks[bad].size]
    _chunks_table_put(services, chunks[bad].digest, bytes([original[0] ^ 1]) + original[1:])
    opened = _lmdb(services).open_views(digest)
    assert opened is not None
    handed_out = bytearray()
    with pytest.raises(DataCorruption, match=re.escape(str(chunks[bad].digest))):
        for view in opened[1]:
            handed_out += view
    batch_start = sum(c.size for c in chunks[: bad - bad % 16])
    assert bytes(handed_out) == data[:batch_start]


def test_concurrent_views_all_checked_and_whole(services: Services) -> None:
    """Readers at once share the one verifier thread or check alone; each gets its bytes."""
    from concurrent.futures import ThreadPoolExecutor

    blobs = [os.urandom(5 * 1024 * 1024 + i) for i in range(4)]
    digests = [services.blob_service.put(b) for b in blobs]

    def read(digest: B3Digest) -> bytes:
        opened = _lmdb(services).open_views(digest)
        assert opened is not None
        return b"".join(bytes(v) for v in opened[1])

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(read, digests * 3)) == blobs * 3


def test_worker_takes_work_only_when_idle() -> None:
    """submit_if_idle refuses while a task is unfinished, and accepts again once it is done."""
    import threading

    from tvix_castore.blobservice.lmdb_store import _Worker

    worker = _Worker("test-worker")
    release = threading.Event()
    first = worker.submit(release.wait, 10)
    assert worker.submit_if_idle(lambda: 1) is None
    release.set()
    first.result(timeout=10)
    later = worker.submit_if_idle(lambda: 2)
    for _ in range(100):  # the done callback runs just after result() returns
        if later is not None:
            break
        release.wait(0.01)
        later = worker.submit_if_idle(lambda: 2)
    assert later is not None and later.result(timeout=10) == 2


def test_a_check_holds_only_briefly() -> None:
    """VerifiedChunks forgets a check after its time: later reads of the chunk are checked again."""
    import time

    from tvix_castore.blobservice.memo import VerifiedChunks

    checked = VerifiedChunks(holds=0.2)
    digest = B3Digest.of(b"chunk")
    checked.add(digest, 5)
    assert checked.size_of(digest) == 5 and digest in checked
    time.sleep(0.3)
    assert checked.size_of(digest) is None and digest not in checked
    small = VerifiedChunks(max_count=2)
    for i in range(3):
        small.add(B3Digest.of(bytes([i])), i)
    assert B3Digest.of(b"\x00") not in small and small.size_of(B3Digest.of(b"\x02")) == 2
