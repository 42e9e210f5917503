"""ChunkedReader against tvix's chunked_reader.rs vector (spec §2.5), plus BytesBlobReader."""

from __future__ import annotations

import io

import pytest

from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice.chunked_reader import BytesBlobReader, ChunkedReader
from tvix_castore.digests import B3Digest
from tvix_castore.errors import ClosedError, InvalidRequest, StorageError

CHUNK_1 = bytes([0x00, 0x01])
CHUNK_2 = bytes([0x02, 0x03, 0x04, 0x05])
CHUNK_3 = bytes([0x06])
CHUNK_4 = bytes([0x07, 0x08])
CHUNK_5 = bytes([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F])
ALL = [CHUNK_1, CHUNK_2, CHUNK_3, CHUNK_4, CHUNK_5]
BLOB = b"".join(ALL)


def _metas(chunks: list[bytes]) -> list[ChunkMeta]:
    return [ChunkMeta(B3Digest.of(c), len(c)) for c in chunks]


def _store(chunks: list[bytes]) -> dict[B3Digest, bytes]:
    return {B3Digest.of(c): c for c in chunks}


def _reader(present: list[bytes] | None = None) -> ChunkedReader:
    store = _store(ALL if present is None else present)
    return ChunkedReader(_metas(ALL), store.get)


def test_offsets_and_length() -> None:
    """Offsets are the prefix sums of the chunk sizes; the length is their total."""
    r = _reader()
    assert r.chunk_offsets == (0, 2, 6, 7, 9)
    assert r.size() == 16


@pytest.mark.parametrize(
    ("pos", "index"), [(0, 0), (1, 0), (2, 1), (6, 2), (7, 3), (9, 4), (15, 4), (16, None), (100, None)]
)
def test_chunk_index(pos: int, index: int | None) -> None:
    """A position maps to the chunk with start <= pos < start + size; past the end to none."""
    assert _reader().chunk_index(pos) == index


def test_read_all() -> None:
    """Reading everything yields the concatenated chunks."""
    assert _reader().read() == bytes(range(16))


def test_seek_sequence() -> None:
    """End(0) reads nothing, End(-1) gives the last byte, Current(-3) then 2 bytes gives 0d0e."""
    r = _reader()
    assert r.seek(0, io.SEEK_END) == 16
    assert r.read(1) == b""
    assert r.seek(-1, io.SEEK_END) == 15
    assert r.read(1) == b"\x0f"
    assert r.seek(-3, io.SEEK_CUR) == 13
    assert r.read(2) == b"\x0d\x0e"


def test_missing_chunk_errors_only_when_reached() -> None:
    """With chunks 3..5 missing, 5 bytes read fine; a read starting in a missing chunk fails."""
    r = _reader(present=[CHUNK_1, CHUNK_2])
    assert r.read(5) == bytes([0, 1, 2, 3, 4])
    r.seek(2, io.SEEK_CUR)
    with pytest.raises(StorageError, match="not found"):
        r.read(1)


def test_read_stops_before_missing_chunk() -> None:
    """A read spanning into a missing chunk returns the bytes before it; the next read fails."""
    r = _reader(present=[CHUNK_1, CHUNK_2])
    assert r.read(100) == bytes(range(6))
    with pytest.raises(StorageError, match="not found"):
        r.read(100)


def test_seek_rules() -> None:
    """Targets in [0, len] are allowed; negative or beyond-EOF targets are refused."""
    r = _reader()
    assert r.seek(16) == 16
    assert r.read() == b""
    with pytest.raises(InvalidRequest, match="beyond EOF"):
        r.seek(17)
    with pytest.raises(InvalidRequest, match="underflow"):
        r.seek(-1)
    with pytest.raises(InvalidRequest, match="underflow"):
        r.seek(-17, io.SEEK_END)
    assert r.tell() == 16


def test_every_offset_and_length_matches_slice() -> None:
    """seek(o) + read(n) equals BLOB[o:o+n] for every o and n."""
    r = _reader()
    for o in range(17):
        for n in range(18):
            r.seek(o)
            assert r.read(n) == BLOB[o : o + n], (o, n)


def test_readinto_and_closed() -> None:
    """readinto fills the buffer; using a closed reader raises ClosedError; close is idempotent."""
    r = _reader()
    buf = bytearray(5)
    assert r.readinto(buf) == 5
    assert bytes(buf) == bytes(range(5))
    r.close()
    r.close()
    with pytest.raises(ClosedError):
        r.read(1)


def test_wrong_size_chunk_is_an_error() -> None:
    """A fetched chunk whose length differs from its ChunkMeta is refused."""
    r = ChunkedReader([ChunkMeta(B3Digest.of(CHUNK_1), 3)], lambda d: CHUNK_1)
    with pytest.raises(StorageError, match="expected 3"):
        r.read()


def test_empty_chunk_list_refused() -> None:
    """An empty chunk list is a programming error."""
    with pytest.raises(ValueError):
        ChunkedReader([], lambda d: None)


def test_bytes_reader() -> None:
    """BytesBlobReader follows the same read/seek rules."""
    r = BytesBlobReader(BLOB)
    assert r.size() == 16
    assert r.read(3) == BLOB[:3]
    r.seek(-2, io.SEEK_END)
    assert r.read() == BLOB[-2:]
    with pytest.raises(InvalidRequest):
        r.seek(17)
    assert BytesBlobReader(b"").read() == b""
