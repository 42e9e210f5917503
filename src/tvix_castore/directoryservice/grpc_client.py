"""``grpc+unix:///sock`` / ``grpc+http(s)://host:port``: a DirectoryService on a remote daemon.

``get`` fetches by a recursive Get: the Directory asked for and (up to ``_GET_AHEAD``) the ones
below it, checked root to leaves (``RootToLeavesValidator``) and kept in a bounded cache, so a
walk down the tree (``find`` on a mount) costs one call per subtree instead of one per
Directory. Every Directory is keyed by the digest computed from its bytes, so the cache only
holds what hashes right. ``get_recursive`` streams the closure, checked the same way.
The putter validates leaves to root locally (so a bad Directory fails at ``put``, as with every
backend) and sends the whole closure as one client-streaming ``Put`` on ``close``; until then
nothing reaches the server, so an aborted putter stores nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator
from typing import final

import grpc

from tvix.castore.protos import rpc_directory_pb2 as pb
from tvix.castore.protos import rpc_directory_pb2_grpc as pb_grpc
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directory_graph import RootToLeavesValidator
from tvix_castore.directoryservice import DirectoryPutter, DirectoryService
from tvix_castore.directoryservice.simple_putter import SimplePutter
from tvix_castore.errors import (
    DataCorruption,
    DirectoryError,
    StorageError,
    StoreError,
    ValidationError,
)
from tvix_castore.grpc.channel import open_channel
from tvix_castore.grpc.status import error_of, rpc_code
from tvix_castore.lazy_logging import get_logger
from tvix_castore.proto_conv import directory_from_proto, directory_to_proto
from tvix_castore.url import ServiceUrl

__all__ = ["GrpcDirectoryService"]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_castore.directoryservice.grpc")

_GET_AHEAD = 2048
"""At most this many Directories of a subtree are fetched by one ``get``."""
_CACHE_DIRS = 65536


@final
class GrpcDirectoryService(DirectoryService):
    """A DirectoryService backed by a remote ``tvix.castore.v1.DirectoryService``; thread-safe."""

    def __init__(self, channel: grpc.Channel, name: str = "grpc") -> None:
        self._name = name
        self._channel = channel
        self._stub = pb_grpc.DirectoryServiceStub(channel)
        self._cache: OrderedDict[B3Digest, Directory] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: ServiceUrl) -> GrpcDirectoryService:
        """Connect to ``grpc+unix:///sock`` or ``grpc+http(s)://host:port``."""
        return cls(open_channel(url), url.raw)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _decode(self, msg: object) -> Directory:
        try:
            return directory_from_proto(msg)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise StorageError(f"{self._name}: server sent an invalid Directory: {exc}") from exc

    def get(self, digest: B3Digest) -> Directory | None:
        """The Directory, verified against digest, or None; its subtree is fetched ahead."""
        with self._cache_lock:
            hit = self._cache.get(digest)
            if hit is not None:
                self._cache.move_to_end(digest)
                return hit
        first: Directory | None = None
        fetched: list[Directory] = []
        stream = self._stream(digest)
        try:
            for directory in stream:
                if first is None:
                    first = directory
                fetched.append(directory)
                if len(fetched) >= _GET_AHEAD:
                    break
        except StoreError:
            if first is None:
                raise
            # Something below is missing on the server; what arrived is verified and usable.
            log.debug("read-ahead below %s stopped early", digest, exc_info=True)
        finally:
            stream.close()
        with self._cache_lock:
            for d in fetched:
                self._cache[d.digest()] = d
                self._cache.move_to_end(d.digest())
            while len(self._cache) > _CACHE_DIRS:
                self._cache.popitem(last=False)
        return first

    def _get_single(self, digest: B3Digest) -> Directory | None:
        """One non-recursive Get (unused by ``get``; kept for servers that only serve roots)."""
        try:
            msgs = list(self._stub.Get(pb.GetDirectoryRequest(digest=digest, recursive=False)))
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_of(exc, f"{self._name}: get of directory {digest}") from exc
        if not msgs:
            return None
        if len(msgs) > 1:
            raise StorageError(f"{self._name}: got {len(msgs)} directories for a non-recursive get")
        directory = self._decode(msgs[0])
        if directory.digest() != digest:
            raise DataCorruption(f"requested directory with digest {digest}, but got {directory.digest()}")
        return directory

    def get_recursive(self, root: B3Digest) -> Iterator[Directory]:
        """The closure of root from one streaming Get, validated root to leaves; empty if absent."""
        return self._stream(root)

    def _stream(self, root: B3Digest) -> Generator[Directory, None, None]:
        call = self._stub.Get(pb.GetDirectoryRequest(digest=root, recursive=True))
        validator = RootToLeavesValidator(root)
        try:
            for msg in call:
                directory = self._decode(msg)
                try:
                    fresh = validator.add(directory)
                except DirectoryError as exc:
                    raise StorageError(f"{self._name}: recursive get of {root}: {exc}") from exc
                if fresh:
                    yield directory
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND and not len(validator):
                return
            raise error_of(exc, f"{self._name}: recursive get of directory {root}") from exc
        finally:
            call.cancel()
        if len(validator) and validator.missing():
            raise StorageError(
                f"{self._name}: still expected {validator.missing()} directories, "
                "but got premature end of stream"
            )

    def put(self, directory: Directory) -> B3Digest:
        """Store one Directory; the server accepts it only if it has no subdirectories.

        A Directory with children goes through a putter with its closure (the server checks
        every Put stream leaves to root).
        """
        return self._put_stream([directory])

    def _put_stream(self, directories: list[Directory]) -> B3Digest:
        try:
            response: pb.PutDirectoryResponse = self._stub.Put(directory_to_proto(d) for d in directories)
        except grpc.RpcError as exc:
            code = rpc_code(exc)
            if code == grpc.StatusCode.INTERNAL:
                # Our servers (and tvix's) answer INTERNAL for a stream that fails validation.
                raise DirectoryError(f"{self._name}: directory upload refused: {exc.details()}") from exc
            error = error_of(exc, f"{self._name}: directory upload")
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                # The status names only sizes; say which Directory is too big for one message.
                # (A Directory's canonical encoding is its message, and digest() keeps it.)
                largest = max(directories, key=lambda d: len(d.encode()))
                raise type(error)(
                    f"{error} (directory {largest.digest()} with {len(largest)} entries is "
                    f"{len(largest.encode())} bytes as one message)"
                ) from exc
            raise error from exc
        if len(response.root_digest) != B3_LEN:
            raise StorageError(f"{self._name}: invalid root digest length {len(response.root_digest)}")
        return B3Digest(response.root_digest)

    def put_multiple_start(self) -> DirectoryPutter:
        """A putter that checks the closure locally and sends it in one Put on close."""
        return SimplePutter(self._put_closure)

    def _put_closure(self, directories: list[Directory]) -> None:
        # directories come children first, so the last one is the root the server must answer.
        stored = self._put_stream(directories)
        root = directories[-1].digest()
        if stored != root:
            raise DataCorruption(f"{self._name}: server answered root {stored}, expected {root}")
