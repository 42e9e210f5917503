"""``memory://``: Directories in a dict, for tests and throwaway stores (tvix ``memory.rs``).

Directories are kept as validated domain objects keyed by their digest, which is computed on the
way in, so a lookup can never return one that does not hash to its key.
"""

from __future__ import annotations

import threading
from typing import final

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.directoryservice.simple_putter import SimplePutter
from tvix_castore.url import ServiceUrl

__all__ = ["MemoryDirectoryService"]


@final
class MemoryDirectoryService(DirectoryService):
    """Directories in a dict guarded by a lock; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[B3Digest, Directory] = {}

    @classmethod
    def from_url(cls, url: ServiceUrl) -> MemoryDirectoryService:
        """Accept exactly ``memory://`` (no host, no path, no options)."""
        url.require_no_host()
        url.require_no_path()
        url.require_no_query()
        return cls()

    def get(self, digest: B3Digest) -> Directory | None:
        """The Directory with that digest, or None."""
        with self._lock:
            return self._dirs.get(digest)

    def put(self, directory: Directory) -> B3Digest:
        """Store one Directory (its children are not checked) and return its digest."""
        digest = directory.digest()
        with self._lock:
            self._dirs.setdefault(digest, directory)
        return digest

    def put_multiple_start(self) -> SimplePutter:
        """A putter that validates the closure and stores it on close."""
        return SimplePutter(self._put_all)

    def _put_all(self, directories: list[Directory]) -> None:
        # Under one lock, so readers see the closure appear at once.
        with self._lock:
            for directory in directories:
                self._dirs.setdefault(directory.digest(), directory)
