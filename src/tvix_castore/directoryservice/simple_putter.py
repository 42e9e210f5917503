"""A DirectoryPutter that validates a closure in memory and hands it to a store function on close.

Used by the memory backend (one ``put`` per Directory) and the LMDB backend (one write
transaction for the whole closure). Nothing reaches the store unless the whole closure is valid:
a failed ``put`` poisons the putter, and leaving its ``with`` block on an exception drops it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import final

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directory_graph import LeavesToRootValidator
from tvix_castore.directoryservice import DirectoryPutter
from tvix_castore.errors import ClosedError, DirectoryError, InvalidRequest

__all__ = ["SimplePutter"]

StoreAll = Callable[[list[Directory]], None]
"""Stores Directories given children before parents; raises on failure."""


@final
class SimplePutter(DirectoryPutter):
    """Collects Directories leaves first; ``close`` validates and calls ``store_all`` once."""

    def __init__(self, store_all: StoreAll) -> None:
        self._store_all = store_all
        self._validator: LeavesToRootValidator | None = LeavesToRootValidator()
        self._failure: DirectoryError | None = None
        self._root: B3Digest | None = None
        # A putter may be fed from one thread and closed from another; keep its state coherent.
        self._lock = threading.Lock()

    def put(self, directory: Directory) -> None:
        """Add one Directory; its children must have been put before (else DirectoryError)."""
        with self._lock:
            validator = self._live()
            try:
                validator.add(directory)
            except DirectoryError as exc:
                self._failure = exc
                raise

    def close(self) -> B3Digest:
        """Validate the whole closure, store it, and return the root digest.

        A second call returns the same digest.

        Raises:
            InvalidRequest: nothing was put ("got no directories").
            DirectoryError: the closure is invalid (an earlier put failed, or disconnected roots).
            ClosedError: the putter was aborted.

        """
        with self._lock:
            if self._root is not None:
                return self._root
            validator = self._live()
            if not len(validator):
                self._validator = None
                raise InvalidRequest("got no directories")
            try:
                root, directories = validator.finalize()
            except DirectoryError as exc:
                self._failure = exc
                raise
            self._validator = None
            self._store_all(directories)
            self._root = root
            return root

    def abort(self) -> None:
        """Drop everything put so far; nothing is stored."""
        with self._lock:
            self._validator = None

    def _live(self) -> LeavesToRootValidator:
        if self._failure is not None:
            raise DirectoryError(f"directory putter failed earlier: {self._failure}")
        if self._validator is None:
            raise ClosedError("directory putter is closed")
        return self._validator

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving on an exception drops everything that was put."""
        if exc_type is not None:
            self.abort()
