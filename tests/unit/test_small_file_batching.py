"""Small blobs stored in batches: ``BlobService.put_many`` and the walker's batched uploads."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import blake3
import pytest
from store_services import LOCAL_KINDS, local_services

from tvix_castore.blobservice import BlobService
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.chunker import MIN_SIZE
from tvix_castore.digests import EMPTY_BLOB_DIGEST, B3Digest
from tvix_castore.ingest import DirectoryEntry, RegularEntry, SymlinkEntry
from tvix_castore.ingest.fs import SMALL_FILE, walk_path
from tvix_store.services import Services


@pytest.fixture(params=LOCAL_KINDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    with local_services(request.param, tmp_path) as s:
        yield s


_RNG = random.Random(20261123)


def _blobs() -> list[bytes]:
    return [
        b"",
        b"a",
        _RNG.randbytes(MIN_SIZE - 1),  # the largest blob that is always a single chunk
        _RNG.randbytes(MIN_SIZE),
        # Longer than the chunker's maximum (4 * MIN_SIZE), so it is cut at least once whatever the
        # data; random data of a length below the maximum may or may not be cut.
        _RNG.randbytes(5 * MIN_SIZE + 17),
        b"a",  # a repeat
    ]


def test_put_many_digests_and_reads(services: Services) -> None:
    """put_many returns each blob's BLAKE3 in order; every blob reads back whole."""
    blobs = _blobs()
    digests = services.blob_service.put_many(blobs)
    assert digests == [B3Digest(blake3.blake3(b).digest()) for b in blobs]
    assert digests[0] == EMPTY_BLOB_DIGEST
    for data, digest in zip(blobs, digests, strict=True):
        reader = services.blob_service.open_read(digest)
        assert reader is not None
        with reader:
            assert reader.read() == data


def test_put_many_stores_like_open_write(tmp_path: Path) -> None:
    """LMDB: a batched blob has the chunk list of the same bytes written through open_write."""
    blobs = _blobs()
    with local_services("lmdb", tmp_path / "a") as batched, local_services("lmdb", tmp_path / "b") as one:
        digests = batched.blob_service.put_many(blobs)
        for data, digest in zip(blobs, digests, strict=True):
            assert one.blob_service.put(data) == digest
            assert batched.blob_service.chunks(digest) == one.blob_service.chunks(digest)
        assert batched.blob_service.chunks(digests[4])  # the multi-chunk blob has an index


def test_put_many_is_one_commit_with_chunked_blobs(tmp_path: Path) -> None:
    """LMDB: a batch, its multi-chunk blobs included, costs one transaction (one disk flush)."""
    with local_services("lmdb", tmp_path) as s:
        blob_service = s.blob_service
        assert isinstance(blob_service, LmdbBlobService) and blob_service._store is not None
        env = blob_service._store.env
        before = env.info()["last_txnid"]
        digests = blob_service.put_many(_blobs())
        assert env.info()["last_txnid"] == before + 1
        assert blob_service.chunks(digests[4])  # stored chunked, with its chunk list


class _CountingBlobs(BlobService):
    """A memory blob service that records each put_many batch (to observe the walker)."""

    def __init__(self, inner: BlobService) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.singles = 0

    def has(self, digest: B3Digest) -> bool:
        return self.inner.has(digest)

    def open_read(self, digest: B3Digest):  # type: ignore[no-untyped-def]
        return self.inner.open_read(digest)

    def open_write(self):  # type: ignore[no-untyped-def]
        self.singles += 1
        return self.inner.open_write()

    def put_many(self, blobs: Sequence[bytes]) -> list[B3Digest]:
        self.batches.append(len(blobs))
        return self.inner.put_many(blobs)


def test_walker_batches_small_files_and_keeps_order(services: Services, tmp_path: Path) -> None:
    """Small files go through few put_many calls, big ones through open_write; the entries come
    leaves first in walk order, each after its blob is stored."""
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    for i in range(300):
        (root / "d" / f"f{i:03}").write_bytes(str(i).encode() * 10)
    (root / "big").write_bytes(os.urandom(SMALL_FILE))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("d/f000")
    blobs = _CountingBlobs(services.blob_service)
    entries = []
    for entry in walk_path(blobs, root):
        if isinstance(entry, RegularEntry):
            assert services.blob_service.has(entry.digest), entry.path
        entries.append(entry)
    assert blobs.singles == 1  # only "big"
    assert sum(blobs.batches) == 301 and len(blobs.batches) <= 2
    paths = [e.path for e in entries]
    expected = (
        [(b"big",)]
        + [(b"d", f"f{i:03}".encode()) for i in range(300)]
        + [(b"d",), (b"empty",), (b"link",), ()]
    )
    assert paths == expected
    assert isinstance(entries[-1], DirectoryEntry) and isinstance(entries[-2], SymlinkEntry)
    by_path = {e.path: e for e in entries}
    f7 = by_path[(b"d", b"f007")]
    assert isinstance(f7, RegularEntry)
    assert f7.digest == B3Digest(blake3.blake3(b"7" * 10).digest()) and f7.size == 10


def test_walker_single_small_file_root(services: Services, tmp_path: Path) -> None:
    """A small file as the root still yields its entry, after storing it."""
    f = tmp_path / "one"
    f.write_bytes(b"hello")
    (entry,) = list(walk_path(services.blob_service, f))
    assert isinstance(entry, RegularEntry) and entry.path == ()
    assert services.blob_service.has(entry.digest)


def test_batch_of_deep_entries_is_stored_before_it_holds_too_many_names() -> None:
    """Entries 2,000 directories deep hold paths of 2,000 names: a batch is released once its
    paths hold BATCH_NAMES names, not only after BATCH_ENTRIES entries."""
    from tvix_castore.blobservice.memory import MemoryBlobService
    from tvix_castore.ingest.batch import BATCH_ENTRIES, BATCH_NAMES, SmallFileBatch

    batch = SmallFileBatch(MemoryBlobService())
    deep = tuple(b"d" for _ in range(2000))
    added = 0
    while not batch.full():
        batch.add_entry(DirectoryEntry(deep[: 2000 - added % 10]))
        added += 1
    assert added < BATCH_ENTRIES
    assert added * 1990 >= BATCH_NAMES
    assert len(list(batch.flush())) == added and not batch.full()
