"""Seekable blob readers: one over an ordered chunk list, one over bytes already in memory.

``ChunkedReader`` maps positions to chunks by prefix sums and binary search, and fetches each
chunk through an injected ``fetch(digest)`` callable, so it serves every backend (LMDB, gRPC,
combined) without knowing how chunks are stored. The fetch callable is responsible for checking
each chunk against its digest; it returns None when the chunk is absent, and that becomes an
error only when a read actually reaches the chunk (tvix ``chunked_reader.rs``). Given the blob's
own digest too (a chunk list from a server we do not trust to have sent this blob's), it also
hashes the chunks it fetches in order from the first, and refuses the last one unless the whole
blob hashes to that digest.

``BytesBlobReader`` serves a blob held in memory (memory backend, single-chunk blobs, the gRPC
client's small-blob path). Neither reader is thread-safe; each has one user at a time.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Callable, Sequence
from typing import Any

from tvix_castore.blobservice import BlobReader, ChunkMeta
from tvix_castore.digests import B3Digest
from tvix_castore.errors import ClosedError, DataCorruption, InvalidRequest, StorageError

__all__ = ["BytesBlobReader", "ChunkFetcher", "ChunkedReader", "PositionedBlobReader", "resolve_seek"]

ChunkFetcher = Callable[[B3Digest], "bytes | memoryview | None"]
"""Returns a chunk's verified bytes, or None when the chunk is absent."""


def resolve_seek(pos: int, offset: int, whence: int, length: int) -> int:
    """The absolute position a seek lands on; pure so every reader shares the rules.

    Raises:
        InvalidRequest: negative target ("over/underflow while seeking"), a target beyond the
            end ("seeked beyond EOF"), or an unknown whence.

    """
    if whence == io.SEEK_SET:
        target = offset
    elif whence == io.SEEK_CUR:
        target = pos + offset
    elif whence == io.SEEK_END:
        target = length + offset
    else:
        raise InvalidRequest(f"invalid whence {whence} for seek")
    if target < 0:
        raise InvalidRequest(f"over/underflow while seeking to {target}")
    if target > length:
        raise InvalidRequest(f"seeked beyond EOF: {target} > {length}")
    return target


class PositionedBlobReader(BlobReader):
    """Position bookkeeping and io plumbing for readers that implement only ``read``.

    Subclasses set ``_length`` and ``_pos`` and provide ``read(size)``.
    """

    _pos: int
    _length: int

    def size(self) -> int:
        """Length of the blob in bytes."""
        return self._length

    def tell(self) -> int:
        """Current position."""
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to offset relative to whence; the target must lie within [0, size]."""
        self._check_open()
        self._pos = resolve_seek(self._pos, offset, whence, self._length)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        """Read up to len(buffer) bytes into buffer; 0 at the end."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        """All bytes from the current position to the end."""
        return self.read(-1)

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError("blob reader is closed")


class BytesBlobReader(PositionedBlobReader):
    """A reader over a blob already in memory (and already verified by whoever built it)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__()
        self._data = memoryview(data).cast("B")
        self._length = len(self._data)
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to size bytes (all remaining for -1/None); b"" at the end."""
        self._check_open()
        end = self._length if size is None or size < 0 else min(self._length, self._pos + size)
        out = bytes(self._data[self._pos : end])
        self._pos = end
        return out

    def close(self) -> None:
        """Release the buffer; closing twice is harmless."""
        if not self.closed:
            self._data.release()
        super().close()


class ChunkedReader(PositionedBlobReader):
    """A reader over an ordered, non-empty list of chunks fetched on demand.

    Random access costs one chunk fetch: the chunk holding a position is found by binary search
    over the chunk start offsets, nothing before it is read. The most recently fetched chunk is
    kept, so sequential small reads fetch each chunk once.

    whole: the blob's digest, to check the chunks against as a whole (see the module docstring).
    A reader that reads the blob from its start to its end gets a DataCorruption instead of the
    last chunk's bytes when the chunks are not that blob's; one that skips a chunk is not
    checked so.
    """

    def __init__(
        self, chunks: Sequence[ChunkMeta], fetch: ChunkFetcher, whole: B3Digest | None = None
    ) -> None:
        super().__init__()
        if not chunks:
            raise ValueError("ChunkedReader needs at least one chunk")
        self._chunks = tuple(chunks)
        starts: list[int] = []
        total = 0
        for c in self._chunks:
            starts.append(total)
            total += c.size
        self._starts = starts
        self._length = total
        self._pos = 0
        self._fetch = fetch
        self._cached_index = -1
        self._cached: bytes | memoryview = b""
        self._whole = whole
        self._hasher: Any = None  # hashes chunks 0.._hashed - 1 of the blob, while whole is checked
        self._hashed = 0
        self._not_whole: DataCorruption | None = None  # the chunks are not whole's: the last is refused

    @property
    def chunk_offsets(self) -> tuple[int, ...]:
        """The start offset of each chunk (prefix sums of the sizes)."""
        return tuple(self._starts)

    def chunk_index(self, pos: int) -> int | None:
        """Index of the chunk holding byte pos, or None when pos is at or past the end."""
        if pos < 0 or pos >= self._length:
            return None
        return bisect.bisect_right(self._starts, pos) - 1

    def _chunk(self, index: int) -> bytes | memoryview:
        if self._not_whole is not None and index == len(self._chunks) - 1:
            raise self._not_whole
        if index != self._cached_index:
            meta = self._chunks[index]
            data = self._fetch(meta.digest)
            if data is None:
                raise StorageError(f"chunk {meta.digest} (#{index}) not found")
            if len(data) != meta.size:
                raise StorageError(
                    f"chunk {meta.digest} (#{index}) has {len(data)} bytes, expected {meta.size}"
                )
            if self._whole is not None and index == self._hashed:
                self._hash_in_order(index, data)
            self._cached_index = index
            self._cached = data
        return self._cached

    def _hash_in_order(self, index: int, data: bytes | memoryview) -> None:
        """Add the next chunk to the hash of the whole; at the last, compare it with whole."""
        if self._hasher is None:
            import blake3

            self._hasher = blake3.blake3()
        self._hasher.update(data)
        self._hashed = index + 1
        if self._hashed == len(self._chunks) and self._hasher.digest() != self._whole:
            self._not_whole = DataCorruption(
                f"blob {self._whole}: its {len(self._chunks)} chunks make up other contents "
                f"({B3Digest(self._hasher.digest())})"
            )
            raise self._not_whole

    def read(self, size: int | None = -1) -> bytes:
        """Up to size bytes (all remaining for -1/None); b"" at the end.

        Bytes of chunks before a missing one are returned first; the error comes from the read
        that starts in the missing chunk.
        """
        self._check_open()
        want = self._length - self._pos if size is None or size < 0 else size
        parts: list[bytes | memoryview] = []
        got = 0
        while got < want:
            index = self.chunk_index(self._pos)
            if index is None:
                break
            try:
                data = self._chunk(index)
            except StorageError:
                if parts:
                    break
                raise
            inner = self._pos - self._starts[index]
            n = min(want - got, len(data) - inner)
            parts.append(memoryview(data)[inner : inner + n])
            got += n
            self._pos += n
        if len(parts) == 1:
            return bytes(parts[0])
        return b"".join(parts)

    def close(self) -> None:
        """Drop the cached chunk; closing twice is harmless."""
        self._cached = b""
        self._cached_index = -1
        super().close()
