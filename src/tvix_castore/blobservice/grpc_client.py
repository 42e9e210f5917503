"""``grpc+unix:///sock`` / ``grpc+http(s)://host:port``: a BlobService talking to a remote daemon.

Reads (spec §2.4, decision 6): ``Stat{send_chunks}`` gives the chunk list; each chunk then comes
by its own ``Read``, is checked against its BLAKE3 digest, and lands in a bounded LRU cache shared
by all readers of this client. A reader fetches the chunk it needs and keeps the next few in
flight on a small thread pool, so sequential reads overlap the round trips. A blob the server does
not split (a single chunk, or a backend that never chunks) is read by one ``Read``, spooled to a
temporary file past a few MiB and verified before any byte is handed out: a large blob is never
held whole in memory.

Writes stream ≤ 1 MiB ``BlobChunk`` messages on one client-streaming ``Put``; ``write`` blocks
when a few MiB are queued. A blob that fits in one message (most files) goes as a ``Put`` call
made through a unary stub: on the wire a client stream of one message and a unary request are
the same HTTP/2 frames, and grpcio's sync stream calls start a thread per call to feed their
requests, which its unary calls do not. Uploads are write-behind: ``close`` ends the stream
and returns the digest computed locally without waiting for the answer, so many files can be
in flight at once (one round trip per blob would make importing many small files ten times
slower than local).
The answers are collected by ``Uploads``, one per server: each must name the digest computed
locally. A single-message blob whose bytes this process already sent to the server (the upload
is in flight or was answered with its digest) is not sent again: Put is idempotent, and trees
repeat files (empty ``__init__.py``, licences), each repeat otherwise costing a whole call.
Every operation of this client on a digest waits for that digest's upload first, and
``GrpcPathInfoService.put`` (the commit point of an import) waits for all uploads to the same
server and fails if any failed, so a PathInfo never refers to a blob that did not arrive.
``abort`` cancels the call, and the server stores nothing.
"""

from __future__ import annotations

import contextlib
import queue
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, final

import blake3
import grpc

from tvix.castore.protos import rpc_blobstore_pb2 as pb
from tvix.castore.protos import rpc_blobstore_pb2_grpc as pb_grpc
from tvix_castore.blobservice import BlobReader, BlobService, BlobWriter, ChunkData, ChunkMeta
from tvix_castore.blobservice.chunked_reader import BytesBlobReader, ChunkedReader, PositionedBlobReader
from tvix_castore.blobservice.memo import ChunkCache
from tvix_castore.digests import B3_LEN, B3Digest, blake3_digest
from tvix_castore.errors import ClosedError, DataCorruption, StorageError, StoreError
from tvix_castore.grpc import blob_chunk
from tvix_castore.grpc.channel import channel_target, open_channel
from tvix_castore.grpc.status import error_of, rpc_code
from tvix_castore.lazy_logging import get_logger
from tvix_castore.url import ServiceUrl

__all__ = ["GrpcBlobService", "Uploads", "uploads_for"]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_castore.blobservice.grpc")

PUT_PIECE = 1024 * 1024
"""Largest BlobChunk message we send (the server's limit is 4 MiB per message)."""

_CACHE_BYTES = 64 * 1024 * 1024
_PREFETCH = 6
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_QUEUED_PIECES = 8
_UPLOADS_IN_FLIGHT = 64
# How many digests of answered uploads each server's tracker remembers (~100 bytes each).
_STORED_REMEMBERED = 100_000
_STREAM_WINDOW = 16
_KNOWN_BLOBS = 8
_STREAM_IDLE = 30.0


@final
class GrpcBlobService(BlobService):
    """A BlobService backed by a remote ``tvix.castore.v1.BlobService``; thread-safe."""

    def __init__(self, channel: grpc.Channel, name: str = "grpc", target: str | None = None) -> None:
        self._name = name
        self._channel = channel
        self._uploads = uploads_for(target or name)
        self._known: OrderedDict[B3Digest, _Prefetcher] = OrderedDict()
        self._chunk_owner: dict[B3Digest, B3Digest] = {}
        self._known_lock = threading.Lock()
        self._stub = pb_grpc.BlobServiceStub(channel)
        # Read with the data of each message as a view of it.
        self._read = channel.unary_stream(
            "/tvix.castore.v1.BlobService/Read",
            request_serializer=pb.ReadBlobRequest.SerializeToString,
            response_deserializer=blob_chunk.data_view,
        )
        # Put with the BlobChunk codec: streamed, and for a blob that fits in one message
        # through a unary stub (see the module docstring).
        self._put_stream = channel.stream_unary(
            "/tvix.castore.v1.BlobService/Put",
            request_serializer=blob_chunk.encode,
            response_deserializer=pb.PutBlobResponse.FromString,
        )
        self._put_one = channel.unary_unary(
            "/tvix.castore.v1.BlobService/Put",
            request_serializer=blob_chunk.encode,
            response_deserializer=pb.PutBlobResponse.FromString,
        )
        self._cache = ChunkCache(_CACHE_BYTES, largest=_CACHE_BYTES // 4)
        self._pool = ThreadPoolExecutor(max_workers=_PREFETCH + 2, thread_name_prefix="grpc-blob-fetch")
        self._inflight: dict[B3Digest, Future[ChunkData | None]] = {}
        self._inflight_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: ServiceUrl) -> GrpcBlobService:
        """Connect to ``grpc+unix:///sock`` or ``grpc+http(s)://host:port`` (lazily by default)."""
        target, _ = channel_target(url)
        return cls(open_channel(url), url.raw, target)

    def flush(self, digest: B3Digest | None = None) -> None:
        """Wait for every upload to this server (or digest's); raises if one failed."""
        self._uploads.wait(digest)

    def close(self) -> None:
        """Finish the uploads in flight, then close the channel and the fetch threads."""
        try:
            self._uploads.wait()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._channel.close()

    # ---- Stat ----------------------------------------------------------------------------------

    def _stat(self, digest: B3Digest, send_chunks: bool) -> pb.StatBlobResponse | None:
        self._uploads.wait(digest)
        try:
            response: pb.StatBlobResponse = self._stub.Stat(
                pb.StatBlobRequest(digest=digest, send_chunks=send_chunks)
            )
            return response
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_of(exc, f"{self._name}: stat of blob {digest}") from exc

    def has(self, digest: B3Digest) -> bool:
        """Whether the server has the blob (or a chunk of that digest)."""
        return self._stat(digest, send_chunks=False) is not None

    def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        """The server's chunk list: None if absent, [] if the blob is not split."""
        response = self._stat(digest, send_chunks=True)
        if response is None:
            return None
        out = []
        for i, c in enumerate(response.chunks):
            if len(c.digest) != B3_LEN:
                raise StorageError(
                    f"{self._name}: blob {digest}: Invalid digest length {len(c.digest)} for chunk #{i}"
                )
            if c.size == 0:
                # No chunker makes one, and no read would ever fetch it (nor check the blob
                # as a whole past it): a list holding one is not this blob's.
                raise StorageError(f"{self._name}: blob {digest}: chunk #{i} is empty")
            out.append(ChunkMeta(B3Digest(c.digest), c.size))
        if len(out) > 2:
            self._remember(digest, out)
        return out

    # ---- Read ----------------------------------------------------------------------------------

    def _read_stream(self, digest: B3Digest) -> Iterator[memoryview] | None:
        """The data of one Read's messages; None when the server says NOT_FOUND before any."""
        call = self._read(pb.ReadBlobRequest(digest=digest))
        try:
            first = next(call, None)
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_of(exc, f"{self._name}: read of blob {digest}") from exc

        def rest() -> Iterator[memoryview]:
            try:
                if first is not None:
                    yield first
                yield from call
            except grpc.RpcError as exc:
                raise error_of(exc, f"{self._name}: read of blob {digest}") from exc
            finally:
                call.cancel()

        return rest()

    def _fetch_chunk(self, digest: B3Digest) -> ChunkData | None:
        """One chunk by its own Read, verified; None if the server lacks it."""
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        stream = self._read_stream(digest)
        if stream is None:
            return None
        pieces = list(stream)
        data: ChunkData = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if blake3_digest(data) != digest:
            raise DataCorruption(f"{self._name}: chunk {digest} arrived with other contents")
        self._cache.put(digest, data)
        return data

    def read_chunk(self, digest: B3Digest) -> ChunkData | None:
        """One chunk's verified bytes by a single Read (no Stat); None if the server lacks it.

        For callers that already know the chunk list (the FUSE layer reads chunks this way).
        """
        self._uploads.wait(digest)
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        with self._known_lock:
            blob = self._chunk_owner.get(digest)
            prefetcher = self._known.get(blob) if blob is not None else None
        if prefetcher is not None:
            with prefetcher.lock:
                return prefetcher.fetch(digest)
        return self._fetch_chunk(digest)

    def _remember(self, digest: B3Digest, chunks: list[ChunkMeta]) -> None:
        """Keep a prefetcher for a blob whose chunk list was asked for.

        ``read_chunk`` calls for its chunks (the FUSE layer's) are then streamed and read ahead
        like a reader's.
        """
        with self._known_lock:
            if digest in self._known:
                self._known.move_to_end(digest)
                return
            self._known[digest] = _Prefetcher(self, digest, chunks)
            for c in chunks:
                self._chunk_owner[c.digest] = digest
            while len(self._known) > _KNOWN_BLOBS:
                old_digest, old = self._known.popitem(last=False)
                for c in old.chunks:
                    if self._chunk_owner.get(c.digest) == old_digest:
                        del self._chunk_owner[c.digest]
                old.stop()

    def _fetch_async(self, digest: B3Digest) -> Future[ChunkData | None]:
        """A future for the chunk, shared with any fetch of it already under way."""
        with self._inflight_lock:
            fut = self._inflight.get(digest)
            if fut is not None:
                return fut
            fut = self._pool.submit(self._fetch_chunk, digest)
            self._inflight[digest] = fut

        def done(_: Future[ChunkData | None]) -> None:
            with self._inflight_lock:
                if self._inflight.get(digest) is fut:
                    del self._inflight[digest]

        fut.add_done_callback(done)
        return fut

    def open_read(self, digest: B3Digest) -> BlobReader | None:
        """A seekable reader; chunks are fetched on demand, verified, cached and prefetched."""
        chunks = self.chunks(digest)
        if chunks is None:
            return None
        if chunks:
            # The chunk list is the server's word: the chunks are checked as the blob too.
            return ChunkedReader(chunks, _Prefetcher(self, digest, chunks).fetch, whole=digest)
        return self._read_whole(digest)

    def _read_whole(self, digest: B3Digest) -> BlobReader | None:
        cached = self._cache.get(digest)
        if cached is not None:
            return BytesBlobReader(cached)
        stream = self._read_stream(digest)
        if stream is None:
            return None
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            hasher = blake3.blake3()
            length = 0
            for piece in stream:
                hasher.update(piece)
                spool.write(piece)
                length += len(piece)
            if hasher.digest() != digest:
                raise DataCorruption(f"{self._name}: blob {digest} arrived with other contents")
        except BaseException:
            spool.close()
            raise
        if length <= _SPOOL_IN_MEMORY:
            spool.seek(0)
            data = spool.read()
            spool.close()
            self._cache.put(digest, data)
            return BytesBlobReader(data)
        return _SpooledReader(spool, length)

    # ---- Put -----------------------------------------------------------------------------------

    def put(self, data: bytes) -> B3Digest:
        """Upload data as one blob, write-behind (as a writer's close); its digest, computed here.

        A blob that fits in one message goes straight to a unary Put: no writer, no request
        queue, no copy (per small file that is about a third of this client's work).
        """
        if len(data) > PUT_PIECE:
            return super().put(data)
        digest = B3Digest(blake3_digest(data))
        self._uploads.send_whole(self._put_one, digest, data, self._name)
        return digest

    def put_many(self, blobs: Sequence[bytes]) -> list[B3Digest]:
        """Upload several blobs, write-behind like ``put``: all go in flight, none is waited for.

        Readable through this client at once (its every operation on a digest waits for that
        digest's upload); the next PathInfo put to the server waits for them all. Waiting here
        stalled an import for a round trip at every batch of small files.
        """
        return [self.put(data) for data in blobs]

    def open_write(self) -> BlobWriter:
        """A writer streaming to one Put call."""
        return _GrpcBlobWriter(self._put_stream, self._put_one, self._name, self._uploads)


class _BlobStream:
    """One ``Read`` of a whole blob, cut at its chunk boundaries, each chunk verified on arrival.

    Sequential reads from the start use this instead of one call per chunk: a single server
    stream of 1 MiB messages runs far faster than hundreds of short calls. It runs at most
    ``_STREAM_WINDOW`` chunks ahead of the reader (gRPC flow control then holds the server
    back), and gives up when the reader stops asking for ``_STREAM_IDLE`` seconds.
    """

    def __init__(self, service: GrpcBlobService, blob: B3Digest, chunks: Sequence[ChunkMeta]) -> None:
        self._service = service
        self._blob = blob
        self._chunks = chunks
        self._cond = threading.Condition()
        self._ready: dict[int, ChunkData] = {}
        self._next = 0  # index of the next chunk to arrive
        self._wanted = 0  # highest index the reader asked for
        self._error: BaseException | None = None
        self._stopped = False
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="grpc-blob-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._call = self._service._read(pb.ReadBlobRequest(digest=self._blob))
            # The chunk being assembled from the end of one message and the start of the next.
            partial: list[memoryview] = []
            partial_size = 0
            for data in self._call:
                pos = 0
                while self._next < len(self._chunks):
                    meta = self._chunks[self._next]
                    need = meta.size - partial_size
                    if len(data) - pos < need:
                        if len(data) > pos:
                            partial.append(data[pos:])
                            partial_size += len(data) - pos
                        break
                    # A chunk inside one message stays a view of it (the cache's views keep
                    # their messages alive); one that spans messages is joined.
                    part = data[pos : pos + need]
                    piece = b"".join([*partial, part]) if partial else part
                    pos += need
                    partial = []
                    partial_size = 0
                    if blake3_digest(piece) != meta.digest:
                        raise DataCorruption(
                            f"{self._service._name}: chunk {meta.digest} of blob {self._blob} "
                            "arrived with other contents"
                        )
                    self._service._cache.put(meta.digest, piece)
                    with self._cond:
                        self._ready[self._next] = piece
                        self._next += 1
                        self._cond.notify_all()
                        idle_since = time.monotonic()
                        while self._next - self._wanted > _STREAM_WINDOW and not self._stopped:
                            if time.monotonic() - idle_since > _STREAM_IDLE:
                                self._stopped = True
                            self._cond.wait(1.0)
                        if self._stopped:
                            return
        except grpc.RpcError as exc:
            with self._cond:
                if not self._stopped:
                    self._error = error_of(exc, f"{self._service._name}: read of blob {self._blob}")
        except BaseException as exc:
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
            if self._call is not None:
                self._call.cancel()

    def get(self, index: int) -> ChunkData | None:
        """Chunk index from the stream; None if the stream cannot deliver it (fetch it singly)."""
        with self._cond:
            self._wanted = max(self._wanted, index)
            self._cond.notify_all()
            # Readers may ask slightly out of order (several threads): keep a window behind too.
            for old in [i for i in self._ready if i < index - _STREAM_WINDOW]:
                del self._ready[old]
            while index not in self._ready:
                if self._stopped or index < self._next or index > self._next + _STREAM_WINDOW:
                    # The stream stopped at the chunk that arrived corrupt (its index is _next):
                    # that one is the reader's error; the others are fetched singly.
                    if isinstance(self._error, DataCorruption) and index == self._next:
                        raise self._error
                    return None
                self._cond.wait()
            return self._ready[index]

    def behind(self, index: int) -> bool:
        """Whether the stream already passed index (and is still running)."""
        with self._cond:
            return not self._stopped and index < self._next

    def stop(self) -> None:
        """End the stream (the reader went elsewhere)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


class _Prefetcher:
    """Per-reader fetch callable: returns the chunk asked for and keeps the next ones coming.

    Reading from the first chunk on streams the whole blob in one call (``_BlobStream``);
    other chunks come by their own Read, the next few fetched ahead on the client's pool.
    """

    def __init__(self, service: GrpcBlobService, blob: B3Digest, chunks: Sequence[ChunkMeta]) -> None:
        self._service = service
        self._blob = blob
        self._chunks = chunks
        self._digests = [c.digest for c in chunks]
        self._index = {d: i for i, d in reversed(list(enumerate(self._digests)))}
        self._ahead: dict[B3Digest, Future[ChunkData | None]] = {}
        self._last = -1
        self._stream: _BlobStream | None = None
        self.chunks = chunks
        self.lock = threading.Lock()

    def _position(self, digest: B3Digest) -> int:
        # The same digest may occur twice in a blob; prefer the position a sequential read is at.
        for i in (self._last + 1, self._last):
            if 0 <= i < len(self._digests) and self._digests[i] == digest:
                return i
        return self._index.get(digest, 0)

    def fetch(self, digest: B3Digest) -> ChunkData | None:
        i = self._position(digest)
        self._last = i
        if i == 0 and self._stream is None and len(self._digests) > 2:
            self._stream = _BlobStream(self._service, self._blob, self._chunks)
        if self._stream is not None:
            data = self._stream.get(i)
            if data is not None:
                return data
            if not self._stream.behind(i):
                # A jump ahead or a broken stream: go on chunk by chunk.
                self._stream.stop()
                self._stream = None
        cached = self._service._cache.get(digest)
        wanted = self._digests[i + 1 : i + 1 + _PREFETCH]
        for d in wanted:
            if d not in self._ahead and self._service._cache.get(d) is None:
                self._ahead[d] = self._service._fetch_async(d)
        keep = set(wanted)
        fut = self._ahead.pop(digest, None)
        for d in [d for d in self._ahead if d not in keep]:
            del self._ahead[d]
        if cached is not None:
            return cached
        if fut is None:
            return self._service._fetch_chunk(digest)
        return fut.result()

    def stop(self) -> None:
        """End a running stream."""
        if self._stream is not None:
            self._stream.stop()
            self._stream = None

    def __del__(self) -> None:
        if self._stream is not None:
            self._stream.stop()


class _SpooledReader(PositionedBlobReader):
    """A reader over a verified blob spooled to a temporary file."""

    def __init__(self, spool: IO[bytes], length: int) -> None:
        super().__init__()
        self._spool = spool
        self._length = length
        self._pos = 0

    def read(self, size: int | None = -1) -> bytes:
        """Up to size bytes; b"" at the end."""
        self._check_open()
        n = self._length - self._pos if size is None or size < 0 else min(size, self._length - self._pos)
        self._spool.seek(self._pos)
        data = self._spool.read(n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        """Delete the spool file."""
        if not self.closed:
            self._spool.close()
        super().close()


class Uploads:
    """Blob uploads still in flight to one server, and the failures not yet reported; thread-safe.

    At most ``limit`` uploads run at once (``begin`` blocks beyond that).
    """

    def __init__(self, limit: int = _UPLOADS_IN_FLIGHT) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._pending: dict[B3Digest, list[Future[Any]]] = {}
        # Failures not yet reported, by digest, oldest first.
        self._failures: dict[B3Digest, StoreError] = {}
        # Digests the server answered for, oldest first (a dict keeps insertion order).
        self._stored: dict[B3Digest, None] = {}

    def sent(self, digest: B3Digest) -> bool:
        """Whether an upload of digest is in flight, or was answered with digest (not failed).

        A failed upload is forgotten here once it ends, so the blob is sent again next time.
        """
        with self._lock:
            return digest in self._pending or digest in self._stored

    def begin(self) -> None:
        """Take a slot for a new upload (waits while ``limit`` are running)."""
        self._slots.acquire()

    def cancel_begun(self) -> None:
        """Give back a slot taken by ``begin`` for an upload that was aborted."""
        self._slots.release()

    def send_whole(
        self, put_one: grpc.UnaryUnaryMultiCallable, digest: B3Digest, data: bytes | bytearray, name: str
    ) -> None:
        """Upload a blob that fits in one message as a unary Put, followed like ``track``.

        Nothing is sent when ``sent(digest)``: the same bytes already went to this server (or are
        on their way), so the Put would store nothing new, and a failure of the first one is
        reported anyway.
        """
        if self.sent(digest):
            return
        self.begin()
        try:
            call = put_one.future(data)
        except BaseException:
            self.cancel_begun()
            raise
        self.track(digest, call, name)

    def track(self, digest: B3Digest, call: Future[Any], name: str) -> None:
        """Follow an upload whose answer must be digest; releases the slot when it ends."""
        with self._lock:
            self._pending.setdefault(digest, []).append(call)

        def done(f: Future[Any]) -> None:
            failure: StoreError | None = None
            try:
                response = f.result()
                if bytes(response.digest) != digest:
                    failure = DataCorruption(
                        f"{name}: server stored blob {digest} as {B3Digest(response.digest)}"
                        if len(response.digest) == B3_LEN
                        else f"{name}: invalid root digest length {len(response.digest)} in response"
                    )
            except grpc.RpcError as exc:
                failure = error_of(exc, f"{name}: upload of blob {digest}")
            except BaseException as exc:  # cancelled future, or anything else: report, don't lose
                failure = StorageError(f"{name}: upload of blob {digest} failed: {exc!r}")
            with self._lock:
                calls = self._pending.get(digest, [])
                if f in calls:
                    calls.remove(f)
                if not calls:
                    self._pending.pop(digest, None)
                if failure is not None:
                    self._failures.setdefault(digest, failure)
                else:
                    self._stored[digest] = None
                    if len(self._stored) > _STORED_REMEMBERED:
                        del self._stored[next(iter(self._stored))]
            self._slots.release()

        call.add_done_callback(done)

    def wait(self, digest: B3Digest | None = None) -> None:
        """Wait for the uploads of digest (or all); raise its failure (or the first) not yet reported.

        Waiting for all (a PathInfo put, the commit point of an import) also ends the record of
        answered uploads that ``sent`` consults: a long-lived process sends each blob again after
        that, so a server that lost data meanwhile (a restarted memory store) gets it back.

        Raises:
            StoreError: an upload failed (the error names the blob and the server's status).

        """
        while True:
            with self._lock:
                if digest is None:
                    calls = [c for cs in self._pending.values() for c in cs]
                else:
                    calls = list(self._pending.get(digest, ()))
            if not calls:
                break
            for c in calls:
                # A failure is reported through _failures by the done callback.
                with contextlib.suppress(BaseException):
                    c.result()
            # Done callbacks run after result() returns; give them the lock.
            with self._lock:
                remaining = [c for c in calls if any(c in cs for cs in self._pending.values())]
            if remaining:
                time.sleep(0.001)
        with self._lock:
            if digest is None:
                self._stored.clear()
                if self._failures:
                    first = next(iter(self._failures.values()))
                    self._failures.clear()
                    raise first
            elif digest in self._failures:
                raise self._failures.pop(digest)


_uploads_lock = threading.Lock()
_uploads: dict[str, Uploads] = {}


def uploads_for(target: str) -> Uploads:
    """The upload tracker of the server at a channel target (shared by every client of it)."""
    with _uploads_lock:
        tracker = _uploads.get(target)
        if tracker is None:
            tracker = _uploads[target] = Uploads()
        return tracker


@final
class _GrpcBlobWriter(BlobWriter):
    """Feeds ≤ 1 MiB messages to one client-streaming Put running in grpc's own thread."""

    def __init__(
        self,
        put_stream: grpc.StreamUnaryMultiCallable,
        put_one: grpc.UnaryUnaryMultiCallable,
        name: str,
        uploads: Uploads,
    ) -> None:
        self._put_stream = put_stream
        self._put_one = put_one
        self._name = name
        self._uploads = uploads
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_PIECES)
        self._buf = bytearray()
        self._hasher = blake3.blake3()
        self._call: Any = None
        self._digest: B3Digest | None = None
        self._dead = False

    def _requests(self) -> Iterator[bytes]:
        while True:
            piece = self._queue.get()
            if piece is None:
                return
            yield piece

    def _start(self) -> None:
        self._uploads.begin()
        self._call = self._put_stream.future(self._requests())

    def _send(self, piece: bytes) -> None:
        if self._call is None:
            self._start()
        while True:
            try:
                self._queue.put(piece, timeout=0.5)
                return
            except queue.Full:
                if self._call.done():
                    # The call ended early (a server error): surface it instead of blocking.
                    self._dead = True
                    self._uploads.cancel_begun()
                    try:
                        self._call.result()
                    except grpc.RpcError as exc:
                        raise error_of(exc, f"{self._name}: blob upload") from exc
                    raise StorageError(f"{self._name}: blob upload ended early") from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; sends a message for every full MiB."""
        if self._digest is not None or self._dead:
            raise ClosedError("blob writer is already closed")
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._buf += view
        while len(self._buf) >= PUT_PIECE:
            piece = bytes(self._buf[:PUT_PIECE])
            del self._buf[:PUT_PIECE]
            self._send(piece)
        return len(view)

    def close(self) -> B3Digest:
        """End the upload and return the blob's digest, computed here.

        The server's answer is checked later: by any use of the digest through this client, and
        by the next PathInfo put to the same server.
        """
        if self._digest is not None:
            return self._digest
        if self._dead:
            raise ClosedError("blob writer was aborted")
        digest = B3Digest(self._hasher.digest())
        if self._call is None:
            # The whole blob is at hand and fits in one message: no request thread needed.
            self._uploads.send_whole(self._put_one, digest, self._buf, self._name)
        else:
            if self._buf:
                self._send(bytes(self._buf))
            self._queue.put(None)
            self._uploads.track(digest, self._call, self._name)
        self._buf = bytearray()
        self._digest = digest
        return digest

    def abort(self) -> None:
        """Cancel the upload: the server stores nothing."""
        if self._digest is not None or self._dead:
            return
        self._dead = True
        if self._call is not None:
            self._call.cancel()
            self._uploads.cancel_begun()
            # Unblock grpc's request thread, which may be waiting for the next piece.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def __del__(self) -> None:
        if self._digest is None and not self._dead:
            self.abort()
