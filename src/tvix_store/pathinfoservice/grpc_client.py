"""``grpc+unix:///sock`` / ``grpc+http(s)://host:port``: a PathInfoService on a remote daemon.

Put first waits for this process's blob uploads to the same server (they are write-behind).
Get maps NOT_FOUND to None; every PathInfo received is validated (spec §4.3) before it is
returned. ``nar_calculation_service()`` forwards to the daemon's ``CalculateNAR`` (sending the
anonymous node), which renders next to the data and caches the result (decision 8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import final

import grpc

from nix_compat import nixbase32
from tvix.store.protos import rpc_pathinfo_pb2 as rpc_pb
from tvix.store.protos import rpc_pathinfo_pb2_grpc as pb_grpc
from tvix_castore.blobservice import BlobService
from tvix_castore.blobservice.grpc_client import Uploads, uploads_for
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import InvalidRequest, StorageError
from tvix_castore.grpc.channel import channel_target, open_channel
from tvix_castore.grpc.status import error_of, rpc_code
from tvix_castore.lazy_logging import get_logger
from tvix_castore.nodes import Node
from tvix_castore.proto_conv import node_to_proto
from tvix_castore.url import ServiceUrl
from tvix_store.errors import Abandoned, PathInfoError
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import NarCalculationService, PathInfoService
from tvix_store.proto_conv import path_info_from_proto, path_info_to_proto

__all__ = ["GrpcNarCalculationService", "GrpcPathInfoService"]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_store.pathinfoservice.grpc")


@final
class GrpcPathInfoService(PathInfoService):
    """A PathInfoService backed by a remote ``tvix.store.v1.PathInfoService``; thread-safe."""

    def __init__(self, channel: grpc.Channel, name: str = "grpc", target: str | None = None) -> None:
        self._name = name
        self._channel = channel
        self._uploads = uploads_for(target or name)
        self._stub = pb_grpc.PathInfoServiceStub(channel)

    @classmethod
    def from_url(
        cls, url: ServiceUrl, blob_service: BlobService, directory_service: DirectoryService
    ) -> GrpcPathInfoService:
        """Connect to ``grpc+unix:///sock`` or ``grpc+http(s)://host:port``."""
        return cls(open_channel(url), url.raw, channel_target(url)[0])

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _validated(self, msg: object) -> PathInfo:
        try:
            return path_info_from_proto(msg)  # type: ignore[arg-type]
        except PathInfoError as exc:
            raise StorageError(f"{self._name}: server sent an invalid PathInfo: {exc}") from exc

    def get(self, digest: bytes) -> PathInfo | None:
        """The PathInfo of the store path with this 20-byte digest, or None."""
        if len(digest) != 20:
            raise InvalidRequest(f"invalid output digest length {len(digest)}")
        try:
            msg = self._stub.Get(rpc_pb.GetPathInfoRequest(by_output_hash=bytes(digest)))
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_of(exc, f"{self._name}: get of path info") from exc
        info = self._validated(msg)
        if info.store_path.digest != digest:
            # Served on (serve-cache, a daemon in front) it would stand for the path asked for.
            raise StorageError(
                f"{self._name}: asked for the path info of {nixbase32.encode(digest)}, "
                f"the server sent the one of {info.store_path.absolute()}"
            )
        return info

    def put(self, info: PathInfo) -> PathInfo:
        """Store info on the server; returns what the server stored.

        That may carry more signatures than info, and must be info otherwise: an import prints
        the store path it returns. First waits for the blob uploads to the same server still in
        flight (write-behind, see ``tvix_castore.blobservice.grpc_client``) and fails if one
        failed: a PathInfo is only stored once everything uploaded before it has arrived.
        """
        self._uploads.wait()
        try:
            msg = self._stub.Put(path_info_to_proto(info))
        except grpc.RpcError as exc:
            raise error_of(exc, f"{self._name}: put of {info.store_path.absolute()}") from exc
        stored = self._validated(msg)
        if stored.with_signatures(info.signatures) != info:
            raise StorageError(
                f"{self._name}: put of {info.store_path.absolute()}: the server answered a PathInfo "
                f"that differs from the one sent (store path {stored.store_path.absolute()})"
            )
        return stored

    def list(self) -> Iterator[PathInfo]:
        """Every PathInfo, streamed."""
        call = self._stub.List(rpc_pb.ListPathInfoRequest())
        try:
            for msg in call:
                yield self._validated(msg)
        except grpc.RpcError as exc:
            raise error_of(exc, f"{self._name}: list of path infos") from exc
        finally:
            call.cancel()

    def nar_calculation_service(self) -> NarCalculationService:
        """The daemon's CalculateNAR."""
        return GrpcNarCalculationService(self._stub, self._name, self._uploads)


@final
class GrpcNarCalculationService:
    """NAR size and SHA-256 computed by the daemon (``CalculateNAR``)."""

    def __init__(self, stub: pb_grpc.PathInfoServiceStub, name: str, uploads: Uploads) -> None:
        self._stub = stub
        self._name = name
        self._uploads = uploads

    def calculate_nar(self, node: Node, wanted: Callable[[], bool] | None = None) -> tuple[int, bytes]:
        """Ask the daemon to render and hash node's NAR (once this process's uploads arrived).

        With wanted, the call is cancelled once wanted answers False (asked every second), so
        that the daemon stops rendering too.
        """
        self._uploads.wait()
        request = node_to_proto(b"", node)
        try:
            if wanted is None:
                response: rpc_pb.CalculateNARResponse = self._stub.CalculateNAR(request)
            else:
                call = self._stub.CalculateNAR.future(request)
                while True:
                    try:
                        response = call.result(timeout=1.0)
                        break
                    except grpc.FutureTimeoutError:
                        if not wanted():
                            call.cancel()
                            message = f"{self._name}: NAR calculation abandoned by its caller"
                            raise Abandoned(message) from None
        except grpc.RpcError as exc:
            raise error_of(exc, f"{self._name}: NAR calculation") from exc
        if len(response.nar_sha256) != 32:
            raise StorageError(f"{self._name}: invalid nar_sha256 length {len(response.nar_sha256)}")
        return response.nar_size, bytes(response.nar_sha256)
