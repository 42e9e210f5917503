"""A cache of NAR calculations: root node -> (nar_size, nar_sha256) (spec decision 8).

Rendering a NAR to hash it costs a full read of every blob below the node; the result depends
only on the node (its digest, size and, for files, the executable bit), so it can be kept.
The key is BLAKE3 of the node's anonymous canonical encoding (``tvix.castore.v1.Node`` with an
empty name), so the same content under another name hits the same entry.

``MemoryNarCache`` lives in a dict; ``LmdbNarCache`` in the ``narcache`` table of the shared
LMDB environment, as 8 bytes little-endian size followed by the 32-byte SHA-256. The memory and
LMDB path-info services each own one (``nar_cache()``); ``nar_cache_for`` picks it.
"""

from __future__ import annotations

import abc
import struct
import threading
from typing import cast, final

import lmdb

from tvix_castore._lmdb_env import StoreUse, explain
from tvix_castore.digests import blake3_digest
from tvix_castore.errors import ClosedError, DataCorruption, StorageError
from tvix_castore.nodes import Node
from tvix_castore.proto_conv import node_to_proto

__all__ = ["LmdbNarCache", "MemoryNarCache", "NarCache", "nar_cache_for", "nar_cache_key"]

_VALUE = struct.Struct("<Q32s")


def nar_cache_key(node: Node) -> bytes:
    """BLAKE3 of the node's anonymous canonical encoding."""
    return blake3_digest(node_to_proto(b"", node).SerializeToString(deterministic=True))


class NarCache(abc.ABC):
    """Remembers (nar_size, nar_sha256) per root node; thread-safe."""

    @abc.abstractmethod
    def get_nar_cache(self, node: Node) -> tuple[int, bytes] | None:
        """The cached (nar_size, nar_sha256) of node, or None."""

    @abc.abstractmethod
    def put_nar_cache(self, node: Node, nar_size: int, nar_sha256: bytes) -> None:
        """Remember the NAR size and SHA-256 of node."""

    def close(self) -> None:
        """Release resources."""


def _check(nar_size: int, nar_sha256: bytes) -> None:
    if len(nar_sha256) != 32:
        raise ValueError(f"nar_sha256 must be 32 bytes, got {len(nar_sha256)}")
    if not 0 <= nar_size < 1 << 64:
        raise ValueError(f"invalid nar_size {nar_size}")


@final
class MemoryNarCache(NarCache):
    """A dict guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[bytes, tuple[int, bytes]] = {}

    def get_nar_cache(self, node: Node) -> tuple[int, bytes] | None:
        """The cached (nar_size, nar_sha256) of node, or None."""
        key = nar_cache_key(node)
        with self._lock:
            return self._entries.get(key)

    def put_nar_cache(self, node: Node, nar_size: int, nar_sha256: bytes) -> None:
        """Remember the NAR size and SHA-256 of node."""
        _check(nar_size, nar_sha256)
        key = nar_cache_key(node)
        with self._lock:
            self._entries[key] = (nar_size, bytes(nar_sha256))


@final
class LmdbNarCache(StoreUse, NarCache):
    """The ``narcache`` table of the LMDB store in a directory."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        assert self._store is not None
        self._db = cast("lmdb._Database", self._store.table("narcache"))

    def get_nar_cache(self, node: Node) -> tuple[int, bytes] | None:
        """The cached (nar_size, nar_sha256) of node, or None."""
        key = nar_cache_key(node)
        try:
            with self._env.begin(db=self._db) as txn:
                value = txn.get(key)
        except lmdb.Error as exc:
            raise StorageError(f"LMDB NAR cache at {self._path}: get: {explain(self._path, exc)}") from exc
        if value is None:
            return None
        if len(value) != _VALUE.size:
            raise DataCorruption(f"NAR cache entry has a bad length {len(value)}")
        size, sha = _VALUE.unpack(value)
        return int(size), bytes(sha)

    def put_nar_cache(self, node: Node, nar_size: int, nar_sha256: bytes) -> None:
        """Remember the NAR size and SHA-256 of node."""
        _check(nar_size, nar_sha256)
        key = nar_cache_key(node)
        store = self._store
        if store is None:
            raise ClosedError("LMDB NAR cache is closed")
        try:
            store.put("narcache", [(key, _VALUE.pack(nar_size, nar_sha256))], overwrite=True)
        except lmdb.Error as exc:
            raise StorageError(f"LMDB NAR cache at {self._path}: put: {explain(self._path, exc)}") from exc


def nar_cache_for(path_info_service: object) -> NarCache:
    """The cache a path-info service keeps beside its PathInfos, else a fresh memory cache.

    The memory and LMDB path-info services have one (``nar_cache()``, owned and closed by the
    service); for any other service the caller owns the returned memory cache.
    """
    getter = getattr(path_info_service, "nar_cache", None)
    if callable(getter):
        cache = getter()
        if isinstance(cache, NarCache):
            return cache
    return MemoryNarCache()
