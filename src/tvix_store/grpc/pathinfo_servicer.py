"""``tvix.store.v1.PathInfoService`` over any PathInfoService (spec §4.2, decision 8).

Get/Put/List adapt the service; Put validates per spec §4.3 (``proto_conv``). CalculateNAR
renders the NAR of an anonymous node from the blob and directory services and keeps the result
in the path-info service's NAR cache, so asking again costs a lookup.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tvix.castore.protos import castore_pb2
from tvix.store.protos import pathinfo_pb2 as pb
from tvix.store.protos import rpc_pathinfo_pb2 as rpc_pb
from tvix.store.protos import rpc_pathinfo_pb2_grpc as pb_grpc
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import NodeError, StoreError
from tvix_castore.grpc.status import abort, abort_with, unless_unavailable, worth_a_warning
from tvix_castore.lazy_logging import get_logger
from tvix_castore.proto_conv import anonymous_node_from_proto
from tvix_store.errors import Abandoned, PathInfoError
from tvix_store.pathinfoservice import NarCalculationService, PathInfoService
from tvix_store.proto_conv import path_info_from_proto, path_info_to_proto
from tvix_store.services import Services

__all__ = ["PathInfoServicer"]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_store.proto.grpc_pathinfoservice_wrapper")


class PathInfoServicer(pb_grpc.PathInfoServiceServicer):
    """Serves a PathInfoService plus NAR calculation; every method runs on a worker thread."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._infos = services.path_info_service
        self._nar_calc = self._nar_calculator(
            services.path_info_service, services.blob_service, services.directory_service
        )

    @staticmethod
    def _nar_calculator(
        infos: PathInfoService, blobs: BlobService, dirs: DirectoryService
    ) -> NarCalculationService:
        remote = infos.nar_calculation_service()
        if remote is not None:
            # A daemon in front of another daemon: that one renders and caches.
            return remote
        from tvix_store.nar.calculation import LocalNarCalculationService
        from tvix_store.nar_cache import nar_cache_for

        return LocalNarCalculationService(blobs, dirs, nar_cache_for(infos))

    def Get(self, request: rpc_pb.GetPathInfoRequest, context: grpc.ServicerContext) -> pb.PathInfo:
        """The PathInfo of a 20-byte store-path digest."""
        if request.WhichOneof("by_what") is None:
            abort(context, grpc.StatusCode.UNIMPLEMENTED, "by_what needs to be specified")
        if len(request.by_output_hash) != 20:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid output digest length")
        try:
            info = self._infos.get(request.by_output_hash)
        except StoreError as exc:
            abort_with(context, exc)
        if info is None:
            abort(context, grpc.StatusCode.NOT_FOUND, "PathInfo not found")
        return path_info_to_proto(info)

    def Put(self, request: pb.PathInfo, context: grpc.ServicerContext) -> pb.PathInfo:
        """Validate and store a PathInfo; answers what was stored."""
        try:
            info = path_info_from_proto(request)
        except PathInfoError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid path info: {exc}")
        try:
            # Blobs this daemon still forwards to another daemon arrive first.
            stored = self._services.put_path_info(info)
        except StoreError as exc:
            if worth_a_warning(exc):
                log.warning("storing the path info of %s failed: %s", info.store_path.absolute(), exc)
            abort_with(context, exc)
        log.debug("stored path info %s", stored.store_path.absolute())
        return path_info_to_proto(stored)

    def CalculateNAR(
        self, request: castore_pb2.Node, context: grpc.ServicerContext
    ) -> rpc_pb.CalculateNARResponse:
        """NAR size and SHA-256 of an anonymous root node (cached)."""
        try:
            node = anonymous_node_from_proto(request)
        except NodeError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid root node: {exc}")
        try:
            # A client that cancels or passes its deadline stops the rendering too: a NAR of
            # deduplicated blobs may be terabytes for a few megabytes stored.
            size, sha256 = self._nar_calc.calculate_nar(node, context.is_active)
        except Abandoned:
            abort(context, grpc.StatusCode.CANCELLED, "NAR calculation abandoned: the client went away")
        except StoreError as exc:
            # Whatever stopped the rendering (missing or corrupt data, a failing backend).
            code = unless_unavailable(exc, grpc.StatusCode.DATA_LOSS)
            abort(context, code, f"storage error: failed rendering nar: {exc}")
        return rpc_pb.CalculateNARResponse(nar_size=size, nar_sha256=sha256)

    def List(
        self, request: rpc_pb.ListPathInfoRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PathInfo]:
        """Every PathInfo."""
        try:
            for info in self._infos.list():
                yield path_info_to_proto(info)
        except StoreError as exc:
            abort(context, grpc.StatusCode.INTERNAL, str(exc))
