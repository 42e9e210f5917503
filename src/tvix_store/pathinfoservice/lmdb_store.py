"""``lmdb:///abs/dir``: PathInfos in the ``pathinfos`` table of the shared LMDB environment.

This module is an IO shell: validation lives in ``path_info.py`` and ``proto_conv.py``.

Layout: ``pathinfos`` maps the 20-byte store-path digest to a zero byte, the BLAKE3 digest of
the PathInfo's protobuf encoding, and that encoding. Chunks and Directories are checked against
the digests they are stored under; a PathInfo has none of its own, so it carries one: a damaged
byte in it (a NarHash, a reference, a node's size) is an error, not different metadata. A
value that is the bare encoding (stores written before the digest was added; a protobuf
message never starts with a zero byte) is read unchecked.

Crash safety: every commit flushes its pages, and with them all that earlier commits wrote,
before its meta page makes it current (see ``_lmdb_env``). A PathInfo is what makes a store
path visible, and it is committed after every blob and Directory it points to, so a crash at
any point leaves either no PathInfo or one whose data is all on disk. Blobs and Directories
kept in another LMDB directory are synced first (their last meta page is not flushed by our
commit). The write is ``durable``: a sync follows its commit, flushing the commit's own meta
page, so a PathInfo that ``put`` returned stays. ``put_many`` stores several in one commit and
one sync (a copy's closure, references first, becomes visible at once).

``list`` reads in batches, one short read transaction each, resuming after the last key seen;
no transaction stays open while the generator is suspended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast, final

import lmdb

from tvix_castore._lmdb_env import LmdbStore, lmdb_errors, open_env, path_from_url, release_env
from tvix_castore.blobservice import BlobService
from tvix_castore.digests import B3_LEN, blake3_digest
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import ClosedError, DataCorruption
from tvix_castore.url import ServiceUrl
from tvix_store.errors import PathInfoError
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import PathInfoService
from tvix_store.proto_conv import decode_path_info, encode_path_info

if TYPE_CHECKING:
    from tvix_store.nar_cache import LmdbNarCache

__all__ = ["LmdbPathInfoService"]

_LIST_BATCH = 256
# A checked value: this byte, the encoding's BLAKE3 digest, the encoding.
_CHECKED = b"\x00"


@final
class LmdbPathInfoService(PathInfoService):
    """PathInfo storage in an LMDB environment; a put overwrites; thread-safe."""

    def __init__(self, path: str) -> None:
        self._store: LmdbStore | None = open_env(path)
        self._env = self._store.env
        # _lmdb_env hands out table handles untyped; they are py-lmdb database handles.
        self._db = cast("lmdb._Database", self._store.table("pathinfos"))
        self._close_lock = threading.Lock()
        self._nar_cache: LmdbNarCache | None = None

    @classmethod
    def from_url(
        cls, url: ServiceUrl, blob_service: BlobService, directory_service: DirectoryService
    ) -> LmdbPathInfoService:
        """Accept ``lmdb:///abs/dir``: no host, an absolute path other than ``/``, no options."""
        return cls(path_from_url(url))

    @property
    def path(self) -> str:
        """The environment's directory."""
        return self._store.path if self._store is not None else ""

    def close(self) -> None:
        """Release this service's use of the shared environment; idempotent."""
        with self._close_lock:
            if self._nar_cache is not None:
                self._nar_cache.close()
                self._nar_cache = None
            if self._store is not None:
                release_env(self._store)
                self._store = None

    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo of the store path with this 20-byte digest, or None."""
        with lmdb_errors(self.path, "path info", "get"), self._env.begin(db=self._db) as txn:
            data = txn.get(bytes(digest))
        return None if data is None else self._decode(bytes(digest), data)

    def put(self, info: PathInfo) -> PathInfo:
        """Store info durably, replacing any old one (after its data, by commit order)."""
        return self.put_many([info])[0]

    def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """Store infos durably in one transaction: they become visible together, one flush."""
        store = self._store
        if store is None:
            raise ClosedError("LMDB path info service is closed")
        if not infos:
            return []
        items = []
        for info in infos:
            encoded = encode_path_info(info)
            items.append((info.store_path.digest, _CHECKED + blake3_digest(encoded) + encoded))
        what = f"put {infos[0].store_path.basename()}" if len(infos) == 1 else f"put {len(infos)} PathInfos"
        store.sync_others()
        with lmdb_errors(self.path, "path info", what):
            store.put("pathinfos", items, overwrite=True, durable=True)
        return list(infos)

    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo, in key order, read in batches."""
        after: bytes | None = None
        while True:
            batch: list[tuple[bytes, bytes]] = []
            with lmdb_errors(self.path, "path info", "list"), self._env.begin(db=self._db) as txn:
                cursor = txn.cursor()
                more = cursor.first() if after is None else cursor.set_range(after)
                while more and len(batch) < _LIST_BATCH:
                    key = cursor.key()
                    if key != after:
                        batch.append((key, cursor.value()))
                    more = cursor.next()
            # The transaction is over: decode and yield outside of it.
            for key, data in batch:
                yield self._decode(key, data)
            if not more:
                return
            after = batch[-1][0]

    def nar_cache(self) -> LmdbNarCache:
        """The NAR-calculation cache stored beside the PathInfos (``narcache`` table)."""
        with self._close_lock:
            if self._store is None:
                raise ClosedError("LMDB path info service is closed")
            if self._nar_cache is None:
                # Imported here: only NAR calculation (daemon, copy) needs it, not import or nar.
                from tvix_store.nar_cache import LmdbNarCache

                self._nar_cache = LmdbNarCache(self._store.path)
            return self._nar_cache

    def _decode(self, key: bytes, data: bytes) -> PathInfo:
        if data[:1] == _CHECKED:
            digest, data = data[1 : 1 + B3_LEN], data[1 + B3_LEN :]
            if blake3_digest(data) != digest:
                raise DataCorruption(
                    f"PathInfo {key.hex()} in {self.path} is corrupt: it does not match its digest"
                )
        try:
            info = decode_path_info(data)
        except PathInfoError as exc:
            raise DataCorruption(f"PathInfo {key.hex()} in {self.path} does not decode: {exc}") from exc
        if info.store_path.digest != key:
            raise DataCorruption(f"PathInfo under {key.hex()} in {self.path} is for {info.store_path}")
        return info
