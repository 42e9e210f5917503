"""``tvix.castore.v1.DirectoryService`` over any DirectoryService (spec §3.2, §3.3).

Get streams one Directory, or the closure root first. Put validates each stream on its own with
a ``LeavesToRootValidator`` (order, sizes, one root) and only then hands the whole closure to the
backend's putter: a rejected, cancelled or broken stream stores nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tvix.castore.protos import castore_pb2
from tvix.castore.protos import rpc_directory_pb2 as pb
from tvix.castore.protos import rpc_directory_pb2_grpc as pb_grpc
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.directory_graph import LeavesToRootValidator
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import DirectoryError, NodeError, StoreError
from tvix_castore.grpc.status import abort, abort_with, stream_was_cancelled, worth_a_warning
from tvix_castore.lazy_logging import get_logger
from tvix_castore.proto_conv import directory_from_proto, directory_to_proto

__all__ = ["DirectoryServicer"]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_castore.proto.grpc_directoryservice_wrapper")


class DirectoryServicer(pb_grpc.DirectoryServiceServicer):
    """Serves a DirectoryService; every method runs on a server worker thread."""

    def __init__(self, directory_service: DirectoryService) -> None:
        self._dirs = directory_service

    def Get(
        self, request: pb.GetDirectoryRequest, context: grpc.ServicerContext
    ) -> Iterator[castore_pb2.Directory]:
        """One Directory, or with ``recursive`` its closure root first (empty if absent)."""
        if request.WhichOneof("by_what") is None:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid by_what")
        if len(request.digest) != B3_LEN:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid digest length")
        digest = B3Digest(request.digest)
        if not request.recursive:
            try:
                directory = self._dirs.get(digest)
            except StoreError as exc:
                abort(context, grpc.StatusCode.INTERNAL, str(exc))
            if directory is None:
                abort(context, grpc.StatusCode.NOT_FOUND, f"directory {digest} not found")
            yield directory_to_proto(directory)
            return
        try:
            for directory in self._dirs.get_recursive(digest):
                yield directory_to_proto(directory)
        except StoreError as exc:
            log.warning("recursive get of %s failed: %s", digest, exc)
            abort(context, grpc.StatusCode.INTERNAL, str(exc))

    def Put(
        self, request_iterator: Iterator[castore_pb2.Directory], context: grpc.ServicerContext
    ) -> pb.PutDirectoryResponse:
        """Validate the stream leaves to root, then store the closure; answers the root digest."""
        validator = LeavesToRootValidator()
        try:
            for msg in request_iterator:
                validator.add(directory_from_proto(msg))
        except grpc.RpcError:
            log.info("directory upload cancelled by the client; nothing stored")
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        except (DirectoryError, NodeError) as exc:
            abort(context, grpc.StatusCode.INTERNAL, str(exc))
        if stream_was_cancelled(context, settle=True):
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        if not len(validator):
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "got no directories")
        try:
            root, directories = validator.finalize()
        except DirectoryError as exc:
            abort(context, grpc.StatusCode.INTERNAL, str(exc))
        try:
            with self._dirs.put_multiple_start() as putter:
                for directory in directories:
                    putter.put(directory)
                stored = putter.close()
        except StoreError as exc:
            if worth_a_warning(exc):
                log.warning("storing directories under %s failed: %s", root, exc)
            abort_with(context, exc)
        if stored != root:
            abort(context, grpc.StatusCode.INTERNAL, f"backend stored root {stored}, expected {root}")
        log.debug("stored %d directories under %s", len(directories), root)
        return pb.PutDirectoryResponse(root_digest=root)
