"""DirectoryService: Directories keyed by BLAKE3 of their canonical encoding, a Merkle DAG.

Backends (chosen by URL through ``from_addr``): ``memory://``, ``lmdb:///abs/dir``,
``grpc+unix:///sock`` / ``grpc+http://host:port``. Puts go leaves to root; ``get_recursive``
yields root first, each Directory after one that refers to it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from types import TracebackType

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.url import Registry


class DirectoryPutter(abc.ABC):
    """Collects the Directories of one closure, leaves first, and stores them on close().

    ``put`` validates ordering (every child must already have been put in this session) and
    sizes; ``close`` checks there is exactly one root and returns its digest. Nothing is
    visible in the service before ``close`` succeeds.
    """

    @abc.abstractmethod
    def put(self, directory: Directory) -> None:
        """Add one Directory; its children must have been put before."""

    @abc.abstractmethod
    def close(self) -> B3Digest:
        """Store everything and return the root digest; raises if the graph is incomplete."""

    def __enter__(self) -> DirectoryPutter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving on an exception stores nothing; a clean exit does not close implicitly."""


class DirectoryService(abc.ABC):
    """Directory storage. Methods are blocking and thread-safe."""

    @abc.abstractmethod
    def get(self, digest: B3Digest) -> Directory | None:
        """The Directory with that digest, or None. Backends verify the stored bytes' digest."""

    @abc.abstractmethod
    def put(self, directory: Directory) -> B3Digest:
        """Store one Directory (children are not checked) and return its digest."""

    def get_recursive(self, root: B3Digest) -> Iterator[Directory]:
        """The closure of root, root first (BFS), each digest once; empty if root is absent.

        Raises StorageError if a Directory below the root is missing.
        """
        from tvix_castore.directoryservice.traverse import traverse_directory

        return traverse_directory(self, root)

    @abc.abstractmethod
    def put_multiple_start(self) -> DirectoryPutter:
        """A putter that validates a whole closure and stores it on close()."""

    def close(self) -> None:
        """Release resources."""


registry: Registry[DirectoryService] = Registry(
    "directory service",
    {
        "memory": "tvix_castore.directoryservice.memory:MemoryDirectoryService",
        "lmdb": "tvix_castore.directoryservice.lmdb_store:LmdbDirectoryService",
        "grpc": "tvix_castore.directoryservice.grpc_client:GrpcDirectoryService",
    },
)


def from_addr(url: str) -> DirectoryService:
    """Build the DirectoryService a URL names."""
    return registry.from_addr(url)
