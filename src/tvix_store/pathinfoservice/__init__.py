"""PathInfoService: store-path digest (20 bytes) -> PathInfo.

Backends (chosen by URL through ``from_addr``): ``memory://``, ``lmdb:///abs/dir``,
``grpc+unix:///sock`` / ``grpc+http://host:port``, ``nix+http(s)://cache`` (read-only),
``cache://?near=URL&far=URL`` (near filled on demand from far).
Implementations validate on put (PathInfo objects are validated at construction).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Protocol

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import Node
from tvix_castore.url import Registry, ServiceUrl
from tvix_store.path_info import PathInfo


class NarCalculationService(Protocol):
    """Computes (nar_size, nar_sha256) of a root node."""

    def calculate_nar(self, node: Node) -> tuple[int, bytes]:
        """Render the NAR of node and return its size and SHA-256."""
        ...


class PathInfoService(abc.ABC):
    """PathInfo storage. Methods are blocking and thread-safe."""

    @abc.abstractmethod
    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo whose store path has this 20-byte digest, or None."""

    @abc.abstractmethod
    def put(self, info: PathInfo) -> PathInfo:
        """Store (or overwrite) info; returns what was stored (maybe with more signatures)."""

    @abc.abstractmethod
    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo, in no particular order."""

    def nar_calculation_service(self) -> NarCalculationService | None:
        """A remote NAR calculator if this backend has one (gRPC), else None."""
        return None

    def close(self) -> None:
        """Release resources."""


PathInfoFactory = Callable[[ServiceUrl, BlobService, DirectoryService], PathInfoService]
registry: Registry[Callable[[BlobService, DirectoryService], PathInfoService]] = Registry("path info service")


def from_addr(url: str, blob_service: BlobService, directory_service: DirectoryService) -> PathInfoService:
    """Build the PathInfoService a URL names; some backends (nix+http) need the castore services."""
    _register_all()
    return registry.from_addr(url)(blob_service, directory_service)


_registered = False


def _register_all() -> None:
    global _registered
    if _registered:
        return
    _registered = True

    def lazy(
        module: str, cls: str
    ) -> Callable[[ServiceUrl], Callable[[BlobService, DirectoryService], PathInfoService]]:
        def factory(url: ServiceUrl) -> Callable[[BlobService, DirectoryService], PathInfoService]:
            import importlib

            klass = getattr(importlib.import_module(module), cls)

            def build(blobs: BlobService, dirs: DirectoryService) -> PathInfoService:
                built: PathInfoService = klass.from_url(url, blobs, dirs)
                return built

            return build

        return factory

    registry.register("memory", lazy("tvix_store.pathinfoservice.memory", "MemoryPathInfoService"))
    registry.register("lmdb", lazy("tvix_store.pathinfoservice.lmdb_store", "LmdbPathInfoService"))
    registry.register("grpc", lazy("tvix_store.pathinfoservice.grpc_client", "GrpcPathInfoService"))
    registry.register("nix", lazy("tvix_store.pathinfoservice.nix_http", "NixHttpPathInfoService"))
    registry.register("cache", lazy("tvix_store.pathinfoservice.cache", "CachePathInfoService"))
