"""``grpc+unix:///sock`` / ``grpc+http(s)://host:port``: a BlobService talking to a remote daemon.

Reads (spec §2.4, decision 6): ``Stat{send_chunks}`` gives the chunk list; each chunk then comes
by its own ``Read``, is checked against its BLAKE3 digest, and lands in a bounded LRU cache shared
by all readers of this client. A reader fetches the chunk it needs and keeps the next few in
flight on a small thread pool, so sequential reads overlap the round trips. A blob the server does
not split (a single chunk, or a backend that never chunks) is read by one ``Read``, spooled to a
temporary file past a few MiB and verified before any byte is handed out: a large blob is never
held whole in memory.

Writes stream ≤ 1 MiB ``BlobChunk`` messages on one client-streaming ``Put`` from a feeder
thread; ``write`` blocks when a few MiB are queued. ``close`` returns the server's digest, checked
against the digest computed locally; ``abort`` cancels the call, and the server stores nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, final

import blake3
import grpc

from tvix.castore.protos import rpc_blobstore_pb2 as pb
from tvix.castore.protos import rpc_blobstore_pb2_grpc as pb_grpc
from tvix_castore.blobservice import BlobReader, BlobService, BlobWriter, ChunkMeta
from tvix_castore.blobservice.chunked_reader import BytesBlobReader, ChunkedReader, resolve_seek
from tvix_castore.digests import B3_LEN, B3Digest, blake3_digest
from tvix_castore.errors import ClosedError, DataCorruption, StorageError
from tvix_castore.grpc.channel import open_channel
from tvix_castore.grpc.status import error_of, rpc_code
from tvix_castore.url import ServiceUrl

__all__ = ["GrpcBlobService"]

log = logging.getLogger(__name__)

PUT_PIECE = 1024 * 1024
"""Largest BlobChunk message we send (the server's limit is 4 MiB per message)."""

_CACHE_BYTES = 64 * 1024 * 1024
_PREFETCH = 6
_SPOOL_IN_MEMORY = 8 * 1024 * 1024
_QUEUED_PIECES = 8


class _ChunkCache:
    """Verified chunk bytes by digest, least recently used dropped first; thread-safe."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._size = 0
        self._entries: OrderedDict[B3Digest, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: B3Digest) -> bytes | None:
        with self._lock:
            data = self._entries.get(digest)
            if data is not None:
                self._entries.move_to_end(digest)
            return data

    def put(self, digest: B3Digest, data: bytes) -> None:
        if len(data) > self._capacity // 4:
            return
        with self._lock:
            if digest in self._entries:
                return
            self._entries[digest] = data
            self._size += len(data)
            while self._size > self._capacity:
                _, old = self._entries.popitem(last=False)
                self._size -= len(old)


@final
class GrpcBlobService(BlobService):
    """A BlobService backed by a remote ``tvix.castore.v1.BlobService``; thread-safe."""

    def __init__(self, channel: grpc.Channel, name: str = "grpc") -> None:
        self._name = name
        self._channel = channel
        self._stub = pb_grpc.BlobServiceStub(channel)
        self._cache = _ChunkCache(_CACHE_BYTES)
        self._pool = ThreadPoolExecutor(max_workers=_PREFETCH + 2, thread_name_prefix="grpc-blob-fetch")
        self._inflight: dict[B3Digest, Future[bytes | None]] = {}
        self._inflight_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: ServiceUrl) -> GrpcBlobService:
        """Connect to ``grpc+unix:///sock`` or ``grpc+http(s)://host:port`` (lazily by default)."""
        return cls(open_channel(url), url.raw)

    def close(self) -> None:
        """Close the channel and the fetch threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._channel.close()

    # ---- Stat ----------------------------------------------------------------------------------

    def _stat(self, digest: B3Digest, send_chunks: bool) -> pb.StatBlobResponse | None:
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
            out.append(ChunkMeta(B3Digest(c.digest), c.size))
        return out

    # ---- Read ----------------------------------------------------------------------------------

    def _read_stream(self, digest: B3Digest) -> Iterator[bytes] | None:
        """The messages of one Read; None when the server says NOT_FOUND before any data."""
        call = self._stub.Read(pb.ReadBlobRequest(digest=digest))
        try:
            first = next(call, None)
        except grpc.RpcError as exc:
            if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_of(exc, f"{self._name}: read of blob {digest}") from exc

        def rest() -> Iterator[bytes]:
            try:
                if first is not None:
                    yield first.data
                for msg in call:
                    yield msg.data
            except grpc.RpcError as exc:
                raise error_of(exc, f"{self._name}: read of blob {digest}") from exc
            finally:
                call.cancel()

        return rest()

    def _fetch_chunk(self, digest: B3Digest) -> bytes | None:
        """One chunk by its own Read, verified; None if the server lacks it."""
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        stream = self._read_stream(digest)
        if stream is None:
            return None
        data = b"".join(stream)
        if blake3_digest(data) != digest:
            raise DataCorruption(f"{self._name}: chunk {digest} arrived with other contents")
        self._cache.put(digest, data)
        return data

    def _fetch_async(self, digest: B3Digest) -> Future[bytes | None]:
        """A future for the chunk, shared with any fetch of it already under way."""
        with self._inflight_lock:
            fut = self._inflight.get(digest)
            if fut is not None:
                return fut
            fut = self._pool.submit(self._fetch_chunk, digest)
            self._inflight[digest] = fut

        def done(_: Future[bytes | None]) -> None:
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
            return ChunkedReader(chunks, _Prefetcher(self, chunks).fetch)
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
            for data in stream:
                hasher.update(data)
                spool.write(data)
                length += len(data)
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

    def open_write(self) -> BlobWriter:
        """A writer streaming to one Put call."""
        return _GrpcBlobWriter(self._stub, self._name)


class _Prefetcher:
    """Per-reader fetch callable: returns the chunk asked for and keeps the next ones coming."""

    def __init__(self, service: GrpcBlobService, chunks: Sequence[ChunkMeta]) -> None:
        self._service = service
        self._digests = [c.digest for c in chunks]
        self._index = {d: i for i, d in reversed(list(enumerate(self._digests)))}
        self._ahead: dict[B3Digest, Future[bytes | None]] = {}

    def fetch(self, digest: B3Digest) -> bytes | None:
        i = self._index.get(digest, 0)
        wanted = self._digests[i + 1 : i + 1 + _PREFETCH]
        for d in wanted:
            if d not in self._ahead and self._service._cache.get(d) is None:
                self._ahead[d] = self._service._fetch_async(d)
        keep = set(wanted)
        fut = self._ahead.pop(digest, None)
        for d in [d for d in self._ahead if d not in keep]:
            del self._ahead[d]
        if fut is None:
            return self._service._fetch_chunk(digest)
        return fut.result()


class _SpooledReader(BlobReader):
    """A reader over a verified blob spooled to a temporary file."""

    def __init__(self, spool: IO[bytes], length: int) -> None:
        super().__init__()
        self._spool = spool
        self._length = length
        self._pos = 0

    def size(self) -> int:
        """Length of the blob."""
        return self._length

    def tell(self) -> int:
        """Current position."""
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move within [0, size]."""
        self._check_open()
        self._pos = resolve_seek(self._pos, offset, whence, self._length)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to size bytes; b"" at the end."""
        self._check_open()
        n = self._length - self._pos if size is None or size < 0 else min(size, self._length - self._pos)
        self._spool.seek(self._pos)
        data = self._spool.read(n)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        """Read into buffer."""
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        """Everything from the position on."""
        return self.read(-1)

    def close(self) -> None:
        """Delete the spool file."""
        if not self.closed:
            self._spool.close()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError("blob reader is closed")


@final
class _GrpcBlobWriter(BlobWriter):
    """Feeds ≤ 1 MiB messages to one client-streaming Put running in grpc's own thread."""

    def __init__(self, stub: pb_grpc.BlobServiceStub, name: str) -> None:
        self._stub = stub
        self._name = name
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_PIECES)
        self._buf = bytearray()
        self._hasher = blake3.blake3()
        self._call: Any = None
        self._digest: B3Digest | None = None
        self._dead = False

    def _requests(self) -> Iterator[pb.BlobChunk]:
        while True:
            piece = self._queue.get()
            if piece is None:
                return
            yield pb.BlobChunk(data=piece)

    def _send(self, piece: bytes) -> None:
        if self._call is None:
            self._call = self._stub.Put.future(self._requests())
        while True:
            try:
                self._queue.put(piece, timeout=0.5)
                return
            except queue.Full:
                if self._call.done():
                    # The call ended early (server error): surface it instead of blocking forever.
                    self._finish()

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

    def _finish(self) -> B3Digest:
        try:
            response: pb.PutBlobResponse = self._call.result()
        except grpc.RpcError as exc:
            self._dead = True
            raise error_of(exc, f"{self._name}: blob upload") from exc
        if len(response.digest) != B3_LEN:
            self._dead = True
            raise StorageError(f"{self._name}: invalid root digest length {len(response.digest)} in response")
        return B3Digest(response.digest)

    def close(self) -> B3Digest:
        """Finish the upload; returns the server's digest (checked against ours)."""
        if self._digest is not None:
            return self._digest
        if self._dead:
            raise ClosedError("blob writer was aborted")
        if self._buf or self._call is None:
            self._send(bytes(self._buf))
            self._buf.clear()
        self._queue.put(None)
        digest = self._finish()
        expected = B3Digest(self._hasher.digest())
        if digest != expected:
            self._dead = True
            raise DataCorruption(f"{self._name}: server stored blob as {digest}, expected {expected}")
        self._digest = digest
        return digest

    def abort(self) -> None:
        """Cancel the upload: the server stores nothing."""
        if self._digest is not None or self._dead:
            return
        self._dead = True
        if self._call is not None:
            self._call.cancel()
            # Unblock grpc's request thread, which may be waiting for the next piece.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def __del__(self) -> None:
        if self._digest is None and not self._dead:
            self.abort()
