"""What a reader of chunks remembers in memory: bounded, least recently used first out, thread-safe.

- ``ChunkCache``: verified chunk bytes by digest, bounded in bytes (the FUSE layer's and the
  gRPC client's fetched chunks).
- ``VerifiedChunks``: which stored chunks were already checked against their digest, with their
  sizes, bounded in count (the FUSE layer and the daemon, reading LMDB chunks in place). A chunk
  is never rewritten under its digest, so a check holds while the store is open.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from tvix_castore.blobservice import ChunkData
from tvix_castore.digests import B3Digest

__all__ = ["VERIFIED_REMEMBERED", "ChunkCache", "VerifiedChunks"]

VERIFIED_REMEMBERED = 65536
"""How many checked chunks a ``VerifiedChunks`` remembers by default (~100 bytes each; ~16 GiB of
chunks of the average size)."""


class ChunkCache:
    """Chunk bytes by digest, least recently used evicted beyond ``max_bytes``.

    A chunk larger than ``largest`` (default: the whole cache) is not kept.
    """

    def __init__(self, max_bytes: int, largest: int | None = None) -> None:
        self._max = max_bytes
        self._largest = max_bytes if largest is None else largest
        self._lock = threading.Lock()
        self._data: OrderedDict[B3Digest, ChunkData] = OrderedDict()
        self._bytes = 0

    def get(self, digest: B3Digest) -> ChunkData | None:
        """The chunk, or None; a hit becomes the most recently used."""
        with self._lock:
            data = self._data.get(digest)
            if data is not None:
                self._data.move_to_end(digest)
            return data

    def __contains__(self, digest: object) -> bool:
        with self._lock:
            return digest in self._data

    def put(self, digest: B3Digest, data: ChunkData) -> None:
        """Add a chunk."""
        if len(data) > self._largest:
            return
        with self._lock:
            if digest in self._data:
                return
            self._data[digest] = data
            self._bytes += len(data)
            while self._bytes > self._max:
                _, old = self._data.popitem(last=False)
                self._bytes -= len(old)

    @property
    def size_bytes(self) -> int:
        """Bytes currently held."""
        return self._bytes


class VerifiedChunks:
    """Sizes of chunks checked against their digests, least recently used forgotten beyond max_count."""

    def __init__(self, max_count: int = VERIFIED_REMEMBERED) -> None:
        self._max = max_count
        self._lock = threading.Lock()
        self._sizes: OrderedDict[B3Digest, int] = OrderedDict()

    def size_of(self, digest: B3Digest) -> int | None:
        """The size the chunk had when it was checked, or None if it was not (or is forgotten)."""
        with self._lock:
            size = self._sizes.get(digest)
            if size is not None:
                self._sizes.move_to_end(digest)
            return size

    def __contains__(self, digest: object) -> bool:
        return self.size_of(digest) is not None  # type: ignore[arg-type]

    def add(self, digest: B3Digest, size: int) -> None:
        """Remember digest as checked, with the size it had."""
        with self._lock:
            self._sizes[digest] = size
            self._sizes.move_to_end(digest)
            if len(self._sizes) > self._max:
                self._sizes.popitem(last=False)
