"""``tvix.castore.v1.BlobService`` over any BlobService (spec §2.2, decision 6).

A thin adapter: Stat honours ``send_chunks``; Read streams the blob in ≤ 1 MiB messages (the
backend's reader verified every byte); Put streams the client's messages into a backend writer
and answers the digest the backend computed. A Put whose client goes away or fails midway
aborts the writer, so nothing of it becomes visible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from tvix.castore.protos import rpc_blobstore_pb2 as pb
from tvix.castore.protos import rpc_blobstore_pb2_grpc as pb_grpc
from tvix_castore.blobservice import BlobService
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.errors import StoreError
from tvix_castore.grpc.status import abort, abort_with, stream_was_cancelled

__all__ = ["READ_PIECE", "BlobServicer"]

log = logging.getLogger(__name__)

READ_PIECE = 1024 * 1024
"""Bytes per BlobChunk message sent by Read: far below the 4 MiB limit, large enough to be fast."""


def _digest(context: grpc.ServicerContext, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid digest length")
    return B3Digest(raw)


class BlobServicer(pb_grpc.BlobServiceServicer):
    """Serves a BlobService; every method runs on a server worker thread."""

    def __init__(self, blob_service: BlobService) -> None:
        self._blobs = blob_service

    def Stat(self, request: pb.StatBlobRequest, context: grpc.ServicerContext) -> pb.StatBlobResponse:
        """Existence, and the chunk list when asked for (empty for a single-chunk blob)."""
        digest = _digest(context, request.digest)
        try:
            chunks = self._blobs.chunks(digest)
        except StoreError as exc:
            abort_with(context, exc)
        if chunks is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
        response = pb.StatBlobResponse()
        if request.send_chunks:
            for c in chunks:
                response.chunks.add(digest=c.digest, size=c.size)
        return response

    def Read(self, request: pb.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[pb.BlobChunk]:
        """The blob's bytes in ≤ 1 MiB messages."""
        digest = _digest(context, request.digest)
        try:
            reader = self._blobs.open_read(digest)
        except StoreError as exc:
            abort_with(context, exc)
        if reader is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
        with reader:
            while True:
                try:
                    data = reader.read(READ_PIECE)
                except StoreError as exc:
                    log.warning("reading blob %s failed: %s", digest, exc)
                    abort_with(context, exc)
                if not data:
                    return
                yield pb.BlobChunk(data=data)

    def Put(
        self, request_iterator: Iterator[pb.BlobChunk], context: grpc.ServicerContext
    ) -> pb.PutBlobResponse:
        """Store the concatenated messages; answers the digest computed here."""
        try:
            writer = self._blobs.open_write()
        except StoreError as exc:
            abort_with(context, exc)
        received = 0
        try:
            for chunk in request_iterator:
                writer.write(chunk.data)
                received += len(chunk.data)
        except grpc.RpcError:
            # The client cancelled or vanished: drop what arrived.
            writer.abort()
            log.info("blob upload cancelled by the client; nothing stored")
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        except StoreError as exc:
            writer.abort()
            abort(context, grpc.StatusCode.INTERNAL, f"error copying: {exc}")
        except BaseException:
            writer.abort()
            raise
        # A stream of one small message cannot have been cut short in a way that matters; for
        # anything larger, make sure the end was a real half-close before committing.
        if stream_was_cancelled(context, settle=received >= READ_PIECE):
            writer.abort()
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        try:
            digest = writer.close()
        except StoreError as exc:
            abort(context, grpc.StatusCode.INTERNAL, f"error closing stream: {exc}")
        log.debug("stored blob %s", digest)
        return pb.PutBlobResponse(digest=digest)
