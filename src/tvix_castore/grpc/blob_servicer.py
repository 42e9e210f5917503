"""``tvix.castore.v1.BlobService`` over any BlobService (spec §2.2, decision 6).

A thin adapter: Stat honours ``send_chunks``; Read streams the blob in ≤ 1 MiB messages (the
backend verified every byte); Put streams the client's messages into a backend writer and
answers the digest the backend computed. A Put whose client cancels or fails midway aborts
the writer: no blob appears, neither the whole nor the part received. Two leftovers are possible,
both correct under their own digests and referenced by nothing: the chunks a chunking backend
already committed (as tvix's chunking backends keep them), and, rarely, the first message of
an upload whose client process died right after sending it. grpcio can report a client's death
as a normal end of stream a moment before the cancellation (see ``stream_was_cancelled``), so a
Put of several messages waits those few milliseconds before it commits; one of a single message
(how our client sends every blob up to 1 MiB, and most blobs are) does not, as the wait would
cost each of them ~5 ms.

Read and Put carry every byte of every blob, so ``add_to_server`` registers them with the
BlobChunk codec of ``blob_chunk`` instead of protobuf objects. From a store whose chunks can be
checked where they lie (LMDB), Read verifies each chunk in the map and copies whole chunks, up
to 1 MiB, straight into a message behind its header: one copy, and few messages (grpcio's cost
is per message). A chunk is hashed every time it is read, except within a second of its last
check (``memo.VerifiedChunks``: several clients reading it at once cost one check). tvix's own
client does not re-hash what it receives, so for a tvix client this check is the only one.
Put hands the backend views into the received messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from tvix.castore.protos import rpc_blobstore_pb2 as pb
from tvix_castore.blobservice import BlobService, ChunkMeta
from tvix_castore.blobservice.memo import VerifiedChunks
from tvix_castore.digests import B3_LEN, B3Digest
from tvix_castore.errors import StorageError, StoreError
from tvix_castore.grpc import blob_chunk
from tvix_castore.grpc.status import (
    abort,
    abort_with,
    stream_was_cancelled,
    unless_unavailable,
    worth_a_warning,
)
from tvix_castore.lazy_logging import get_logger

__all__ = ["READ_PIECE", "BlobServicer"]

SERVICE = "tvix.castore.v1.BlobService"

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_castore.proto.grpc_blobservice_wrapper")

READ_PIECE = 1024 * 1024
"""Bytes per BlobChunk message sent by Read: far below the 4 MiB limit, large enough to be fast."""


def _digest(context: grpc.ServicerContext, raw: bytes) -> B3Digest:
    if len(raw) != B3_LEN:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid digest length")
    return B3Digest(raw)


def _serialized(message: bytes) -> bytes:
    """Read's responses leave the handler already serialized."""
    return message


def _message_pieces(chunks: list[ChunkMeta]) -> Iterator[list[tuple[ChunkMeta, int, int]]]:
    """(chunk, start, end) per message: whole chunks, up to READ_PIECE bytes together.

    A chunk larger than READ_PIECE (not cut by our chunker) is sent in pieces.
    """
    group: list[tuple[ChunkMeta, int, int]] = []
    total = 0
    for c in chunks:
        if not c.size:
            continue
        if group and total + c.size > READ_PIECE:
            yield group
            group, total = [], 0
        if c.size > READ_PIECE:
            for start in range(0, c.size, READ_PIECE):
                yield [(c, start, min(start + READ_PIECE, c.size))]
            continue
        group.append((c, 0, c.size))
        total += c.size
    if group:
        yield group


class BlobServicer:
    """Serves a BlobService; every method runs on a server worker thread."""

    def __init__(self, blob_service: BlobService) -> None:
        self._blobs = blob_service
        # A store whose chunks can be checked where they lie and joined in one copy (LMDB).
        verify = getattr(blob_service, "verify_chunk", None)
        join = getattr(blob_service, "join_chunk_ranges", None)
        self._in_place = (verify, join) if verify is not None and join is not None else None
        # Chunks Read already checked: a chunk is not hashed again for every client that reads it.
        self._verified = VerifiedChunks()

    def add_to_server(self, server: grpc.Server) -> None:
        """Register the three methods; Read and Put with the BlobChunk codec (module docstring)."""
        handlers = {
            "Stat": grpc.unary_unary_rpc_method_handler(
                self.Stat,
                request_deserializer=pb.StatBlobRequest.FromString,
                response_serializer=pb.StatBlobResponse.SerializeToString,
            ),
            "Read": grpc.unary_stream_rpc_method_handler(
                self.Read,
                request_deserializer=pb.ReadBlobRequest.FromString,
                response_serializer=_serialized,
            ),
            "Put": grpc.stream_unary_rpc_method_handler(
                self.Put,
                request_deserializer=blob_chunk.data_view,
                response_serializer=pb.PutBlobResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        server.add_registered_method_handlers(SERVICE, handlers)

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

    def Read(self, request: pb.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The blob's bytes as serialized BlobChunk messages of ≤ 1 MiB."""
        digest = _digest(context, request.digest)
        if self._in_place is not None:
            yield from self._read_in_place(digest, *self._in_place, context)
            return
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
                yield blob_chunk.encode(data)

    def _read_in_place(
        self,
        digest: B3Digest,
        verify: Callable[[B3Digest], int | None],
        join: Callable[..., bytes],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """Messages of whole chunks, each checked where it lies and copied once, with the header."""
        verified = None
        try:
            chunks = self._blobs.chunks(digest)
            if chunks == []:  # a single chunk: the blob is stored under its own digest
                size = self._checked_size(verify, digest)
                chunks = None if size is None else [ChunkMeta(digest, size)]
                verified = digest
        except StoreError as exc:
            abort_with(context, exc)
        if chunks is None:
            abort(context, grpc.StatusCode.NOT_FOUND, f"blob {digest} not found")
        for pieces in _message_pieces(chunks):
            try:
                for chunk, start, _ in pieces:
                    if start == 0 and chunk.digest != verified:
                        size = self._checked_size(verify, chunk.digest)
                        if size != chunk.size:
                            what = "missing" if size is None else f"{size} bytes, not {chunk.size}"
                            raise StorageError(f"chunk {chunk.digest} of blob {digest} is {what}")
                ranges = [(chunk.digest, start, end) for chunk, start, end in pieces]
                yield join(ranges, prefix=blob_chunk.header(sum(end - start for _, start, end in pieces)))
            except StoreError as exc:
                log.warning("reading blob %s failed: %s", digest, exc)
                abort_with(context, exc)

    def _checked_size(self, verify: Callable[[B3Digest], int | None], digest: B3Digest) -> int | None:
        """The chunk's size, hashing it in the store unless it was checked before; None if absent."""
        size = self._verified.size_of(digest)
        if size is None:
            size = verify(digest)
            if size is not None:
                self._verified.add(digest, size)
        return size

    def Put(
        self, request_iterator: Iterator[memoryview], context: grpc.ServicerContext
    ) -> pb.PutBlobResponse:
        """Store the concatenated messages (their data, see add_to_server); answer the digest."""
        try:
            writer = self._blobs.open_write()
        except StoreError as exc:
            abort_with(context, exc)
        messages = 0
        try:
            for data in request_iterator:
                writer.write(data)
                messages += 1
        except grpc.RpcError:
            # The client cancelled or vanished: drop what arrived.
            writer.abort()
            log.info("blob upload cancelled by the client; nothing stored")
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        except StoreError as exc:
            writer.abort()
            if worth_a_warning(exc):
                log.warning("storing a blob failed: %s", exc)
            abort(context, unless_unavailable(exc, grpc.StatusCode.INTERNAL), f"error copying: {exc}")
        except BaseException:
            writer.abort()
            raise
        # After more than one message, make sure the end was a real half-close before
        # committing; for a single one the wait would dominate the call (module docstring).
        if stream_was_cancelled(context, settle=messages > 1):
            writer.abort()
            abort(context, grpc.StatusCode.CANCELLED, "upload cancelled")
        try:
            digest = writer.close()
            # A backend that stores behind the writer (a remote daemon) must have the blob
            # before this answer says it is stored.
            self._blobs.flush(digest)
        except StoreError as exc:
            if worth_a_warning(exc):
                log.warning("storing a blob failed: %s", exc)
            abort(context, unless_unavailable(exc, grpc.StatusCode.INTERNAL), f"error closing stream: {exc}")
        log.debug("stored blob %s", digest)
        return pb.PutBlobResponse(digest=digest)
