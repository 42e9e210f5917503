"""``memory://``: PathInfos in a dict keyed by store-path digest (tvix ``pathinfoservice/memory.rs``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import final

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.url import ServiceUrl
from tvix_store.nar_cache import MemoryNarCache
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import PathInfoService

__all__ = ["MemoryPathInfoService"]


@final
class MemoryPathInfoService(PathInfoService):
    """PathInfos in a dict guarded by a lock; a put overwrites; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._infos: dict[bytes, PathInfo] = {}
        self._nar_cache = MemoryNarCache()

    @classmethod
    def from_url(
        cls, url: ServiceUrl, blob_service: BlobService, directory_service: DirectoryService
    ) -> MemoryPathInfoService:
        """Accept exactly ``memory://`` (no host, no path, no options)."""
        url.require_no_host()
        url.require_no_path()
        url.require_no_query()
        return cls()

    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo of the store path with this 20-byte digest, or None."""
        with self._lock:
            return self._infos.get(bytes(digest))

    def put(self, info: PathInfo) -> PathInfo:
        """Store info (PathInfo objects are validated at construction), replacing any old one."""
        with self._lock:
            self._infos[info.store_path.digest] = info
        return info

    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo (a snapshot taken when called)."""
        with self._lock:
            snapshot = list(self._infos.values())
        return iter(snapshot)

    def nar_cache(self) -> MemoryNarCache:
        """The NAR-calculation cache that lives as long as this service."""
        return self._nar_cache
