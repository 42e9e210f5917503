"""``lmdb:///abs/dir``: Directories in the ``directories`` table of the shared LMDB environment.

This module is an IO shell: validation lives in ``directory_graph.py`` and ``proto_conv.py``;
here are only the layout and its transactions.

Layout: ``directories`` maps a Directory digest (32 B) to its canonical encoding. A read
re-hashes the stored bytes and refuses them (``DataCorruption``) when they do not hash to the key.
A closure put through ``put_multiple_start`` is validated whole and written in one write
transaction on close, so it appears atomically or not at all. ``get_recursive`` reads the closure
breadth first, a batch of Directories per read transaction; no transaction stays open while the
generator is suspended.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from typing import cast, final

import lmdb

from tvix_castore._lmdb_env import LmdbStore, lmdb_errors, open_env, path_from_url, release_env
from tvix_castore.digests import B3Digest, blake3_digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.directoryservice.simple_putter import SimplePutter
from tvix_castore.errors import ClosedError, DataCorruption, DirectoryError, StorageError
from tvix_castore.proto_conv import decode_directory
from tvix_castore.url import ServiceUrl

__all__ = ["LmdbDirectoryService"]

# Directories fetched per read transaction in get_recursive: large enough that opening the
# transaction costs nothing, small enough that a reader never pins old pages for long.
_READ_BATCH = 512


@final
class LmdbDirectoryService(DirectoryService):
    """Directory storage in an LMDB environment; thread-safe."""

    def __init__(self, path: str) -> None:
        self._store: LmdbStore | None = open_env(path)
        self._env = self._store.env
        # _lmdb_env hands out table handles untyped; they are py-lmdb database handles.
        self._db = cast("lmdb._Database", self._store.table("directories"))
        self._close_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: ServiceUrl) -> LmdbDirectoryService:
        """Accept ``lmdb:///abs/dir``: no host, an absolute path other than ``/``, no options."""
        return cls(path_from_url(url))

    @property
    def path(self) -> str:
        """The environment's directory."""
        return self._store.path if self._store is not None else ""

    def close(self) -> None:
        """Release this service's use of the shared environment; idempotent."""
        with self._close_lock:
            if self._store is not None:
                release_env(self._store)
                self._store = None

    def get(self, digest: B3Digest) -> Directory | None:
        """The Directory with that digest, or None; raises DataCorruption for bad stored bytes."""
        with lmdb_errors(self.path, "directory", f"get {digest}"), self._env.begin(db=self._db) as txn:
            data = txn.get(digest)
        return None if data is None else self._decode(digest, data)

    def put(self, directory: Directory) -> B3Digest:
        """Store one Directory (its children are not checked) and return its digest."""
        self._write([directory])
        return directory.digest()

    def put_multiple_start(self) -> SimplePutter:
        """A putter that validates the closure and writes it in one transaction on close."""
        if self._store is None:
            raise ClosedError("LMDB directory service is closed")
        return SimplePutter(self._write)

    def get_recursive(self, root: B3Digest) -> Iterator[Directory]:
        """The closure of root, breadth first from the root, each digest once; empty if absent.

        Raises:
            StorageError: a Directory below the root is missing.
            DataCorruption: a stored Directory does not hash to its key.

        """
        queue: deque[B3Digest] = deque([root])
        seen = {root}
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), _READ_BATCH))]
            with (
                lmdb_errors(self.path, "directory", f"get closure of {root}"),
                self._env.begin(db=self._db) as txn,
            ):
                found = [txn.get(digest) for digest in batch]
            # The transaction is over: decode, verify and yield outside of it.
            for digest, data in zip(batch, found, strict=True):
                if data is None:
                    if digest == root:
                        return
                    raise StorageError(f"directory {digest} does not exist")
                directory = self._decode(digest, data)
                for _, child in directory.directories():
                    if child.digest not in seen:
                        seen.add(child.digest)
                        queue.append(child.digest)
                yield directory

    def _decode(self, digest: B3Digest, data: bytes) -> Directory:
        if blake3_digest(data) != digest:
            raise DataCorruption(
                f"directory {digest} is corrupt in {self.path}: its bytes hash to {B3Digest.of(data)}"
            )
        try:
            return decode_directory(data)
        except DirectoryError as exc:
            raise DataCorruption(f"directory {digest} in {self.path} does not decode: {exc}") from exc

    def _write(self, directories: list[Directory]) -> None:
        store = self._store
        if store is None:
            raise ClosedError("LMDB directory service is closed")
        items = [(bytes(directory.digest()), directory.encode()) for directory in directories]
        # In a group commit with the writes of other threads (a daemon, a copy's workers). A
        # present Directory has the same bytes: its pages are not rewritten.
        with lmdb_errors(self.path, "directory", "put"):
            store.put("directories", items, overwrite=False)
