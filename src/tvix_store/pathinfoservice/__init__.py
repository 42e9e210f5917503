"""PathInfoService: store-path digest (20 bytes) -> PathInfo.

Backends (chosen by URL through ``from_addr``): ``memory://``, ``lmdb:///abs/dir``,
``grpc+unix:///sock`` / ``grpc+http://host:port``, ``nix+http(s)://cache`` (read-only),
``cache://?near=URL&far=URL`` (near filled on demand from far).
Implementations validate on put (PathInfo objects are validated at construction).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import Node
from tvix_castore.url import Registry
from tvix_store.path_info import PathInfo


class NarCalculationService(Protocol):
    """Computes (nar_size, nar_sha256) of a root node."""

    def calculate_nar(self, node: Node, wanted: Callable[[], bool] | None = None) -> tuple[int, bytes]:
        """Render the NAR of node and return its size and SHA-256.

        wanted, when given, is asked now and then while the work goes on; once it answers False
        the work stops with ``Abandoned`` (a gRPC client that cancelled: a NAR may take hours).
        """
        ...


class PathInfoService(abc.ABC):
    """PathInfo storage. Methods are blocking and thread-safe."""

    @abc.abstractmethod
    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo whose store path has this 20-byte digest, or None."""

    def get_held(self, digest: bytes) -> PathInfo | None:
        """Like ``get``, but only what this service holds itself.

        Nothing is fetched from elsewhere (a ``cache://`` far side, a binary cache), as with
        Nix's NoSubstitute queries: for asking whether a path is in a store before copying it.
        """
        return self.get(digest)

    @abc.abstractmethod
    def put(self, info: PathInfo) -> PathInfo:
        """Store (or overwrite) info; returns what was stored (maybe with more signatures)."""

    def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """Store infos in order, each as ``put`` would; what was stored, in the same order.

        None becomes visible before those ahead of it (a closure goes references first). A
        backend may store them all at once (LMDB: one transaction); this one puts them singly.
        """
        return [self.put(info) for info in infos]

    @abc.abstractmethod
    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo, in no particular order."""

    def nar_calculation_service(self) -> NarCalculationService | None:
        """A remote NAR calculator if this backend has one (gRPC), else None."""
        return None

    def close(self) -> None:
        """Release resources."""


registry: Registry[PathInfoService] = Registry(
    "path info service",
    {
        "memory": "tvix_store.pathinfoservice.memory:MemoryPathInfoService",
        "lmdb": "tvix_store.pathinfoservice.lmdb_store:LmdbPathInfoService",
        "grpc": "tvix_store.pathinfoservice.grpc_client:GrpcPathInfoService",
        "nix": "tvix_store.pathinfoservice.nix_http:NixHttpPathInfoService",
        "cache": "tvix_store.pathinfoservice.cache:CachePathInfoService",
    },
)


def from_addr(url: str, blob_service: BlobService, directory_service: DirectoryService) -> PathInfoService:
    """Build the PathInfoService a URL names; some backends (nix+http) need the castore services."""
    return registry.from_addr(url, blob_service, directory_service)
