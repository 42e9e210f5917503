"""What a reader of chunks remembers in memory: bounded, least recently used first out, thread-safe.

- ``ChunkCache``: verified chunk bytes by digest, bounded in bytes (the FUSE layer's and the
  gRPC client's fetched chunks).
- ``VerifiedChunks``: which stored chunks were just checked against their digest, with their
  sizes, bounded in count (the FUSE layer, its read helper and the daemon, reading LMDB chunks
  in place). A chunk is never rewritten under its digest, but the disk under it can rot once
  its pages are read again: a check holds for ``CHECK_HOLDS`` seconds only. That spares a chunk
  read in pieces (READs and messages that start or end inside it) or by several readers at once
  a check per piece, and keeps every read of it later checked again (decision 6).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from tvix_castore.blobservice import ChunkData
from tvix_castore.digests import B3Digest

__all__ = ["CHECK_HOLDS", "VERIFIED_REMEMBERED", "ChunkCache", "VerifiedChunks"]

VERIFIED_REMEMBERED = 65536
"""How many checked chunks a ``VerifiedChunks`` remembers at most (~100 bytes each)."""

CHECK_HOLDS = 1.0
"""Seconds for which a chunk's check counts for further reads of it."""


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
    """Sizes of chunks checked against their digests in the last ``holds`` seconds.

    Beyond max_count the least recently used are forgotten too.
    """

    def __init__(self, max_count: int = VERIFIED_REMEMBERED, holds: float = CHECK_HOLDS) -> None:
        self._max = max_count
        self._holds = holds
        self._lock = threading.Lock()
        self._checked: OrderedDict[B3Digest, tuple[int, float]] = OrderedDict()

    def size_of(self, digest: B3Digest) -> int | None:
        """The size the chunk had when it was checked, or None if it was not lately."""
        with self._lock:
            entry = self._checked.get(digest)
            if entry is None:
                return None
            size, when = entry
            if time.monotonic() - when > self._holds:
                del self._checked[digest]
                return None
            self._checked.move_to_end(digest)
            return size

    def __contains__(self, digest: object) -> bool:
        return self.size_of(digest) is not None  # type: ignore[arg-type]

    def add(self, digest: B3Digest, size: int) -> None:
        """Remember digest as checked just now, with the size it had."""
        with self._lock:
            self._checked[digest] = (size, time.monotonic())
            self._checked.move_to_end(digest)
            if len(self._checked) > self._max:
                self._checked.popitem(last=False)
