"""``lmdb:///abs/dir``: blobs cut into FastCDC chunks, stored once each in the shared LMDB env.

This module is an IO shell: chunking lives in ``chunker.py``, seeking in ``chunked_reader.py``;
here are only the disk layout and its transactions.

Layout (two tables of the environment from ``_lmdb_env.py``):
  ``chunks``  chunk digest (32 B) -> the chunk's raw bytes
  ``blobs``   blob digest (32 B)  -> its chunk list, ``(digest 32 B, size u32 LE)`` repeated

A blob that is a single chunk (every blob up to the minimum chunk size, the empty blob too) has
the same digest as that chunk and is stored only in ``chunks``; ``blobs`` holds only blobs of two
or more chunks. So ``chunks()`` answers ``[]`` for single-chunk blobs and for chunk digests.

Writes stream: the writer collects finished chunks and commits each ~4 MiB batch in one write
transaction (an LMDB commit costs about a millisecond, a chunk ~100 µs to hash) on a background
thread while it chunks the next batch; at most one batch is in flight, so a writer holds about
10 MiB whatever the blob size (``LmdbBlobWriter.buffered``). A chunk already present is not
written again. The blob's index entry is committed last, after all its chunks, so a reader
never sees a blob with missing chunks; an aborted writer leaves only unreferenced chunks behind
(dedup fodder for later writes).

Reads verify every chunk against its BLAKE3 digest before handing out a byte (decision 6), and
random access fetches only the chunk holding the position. Every transaction opens and ends
inside one call; none is held while control returns to the caller.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Generator, Sequence
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, final

import blake3
import lmdb

from tvix_castore._lmdb_env import LmdbStore, explain, open_env, path_from_url, release_env
from tvix_castore.blobservice import BlobReader, BlobService, BlobWriter, ChunkData, ChunkMeta
from tvix_castore.blobservice.chunked_reader import BytesBlobReader, ChunkedReader
from tvix_castore.chunker import MIN_SIZE, Chunker, chunk_bytes
from tvix_castore.digests import B3_LEN, EMPTY_BLOB_DIGEST, B3Digest, blake3_digest
from tvix_castore.errors import ClosedError, DataCorruption, StorageError, StoreError
from tvix_castore.url import ServiceUrl

if TYPE_CHECKING:
    import mmap
    from concurrent.futures import Future, ThreadPoolExecutor

    from tvix_castore.blobservice.lmdb_read_helper import ReadHelper

__all__ = ["LmdbBlobService"]

_T = TypeVar("_T")

_ENTRY = struct.Struct(f"<{B3_LEN}sI")

# Finished chunks are committed once this many bytes are pending: large enough that the commit
# cost vanishes, small enough to keep a writer's memory at a few MiB whatever the blob size.
_FLUSH_BYTES = 4 * 1024 * 1024
# Large writes are fed to the chunker in pieces of this size, so the chunks one write() call
# produces never pile up beyond a flush.
_FEED_PIECE = 1024 * 1024
# open_views copies single-chunk blobs shorter than this out of their lookup transaction instead
# of opening a second one: small pieces are copied by a NAR writer anyway.
_COPY_SMALL = 64 * 1024


class _Worker:
    """One background thread per process running tasks in submission order (made on first use).

    A forked child has no copy of the parent's thread: it starts its own.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._unfinished = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool = None
        self._unfinished = 0

    def submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        with self._lock:
            future = self._submit(fn, *args)
        # Outside the lock: a task already done runs the callback right here.
        future.add_done_callback(self._finished)
        return future

    def submit_if_idle(self, fn: Callable[..., _T], *args: object) -> Future[_T] | None:
        """Like submit, but None (nothing submitted) while earlier tasks are unfinished."""
        with self._lock:
            if self._unfinished:
                return None
            future = self._submit(fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        """Queue fn (lock held)."""
        if self._pool is None:
            # Imported here: commands that only read never write large blobs.
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._unfinished += 1
        return self._pool.submit(fn, *args)

    def _finished(self, _: Future[Any]) -> None:
        with self._lock:
            self._unfinished -= 1


# Commits the chunk batches of large blobs. A writer hands a full batch to it and goes on
# chunking the next one meanwhile (py-lmdb releases the GIL while it copies and writes pages).
# LMDB admits one write transaction at a time anyway, so one thread for all writers loses nothing.
_COMMITTER = _Worker("lmdb-blob-commit")
# Feeds the whole-blob BLAKE3 of multi-chunk blobs, off the writer's thread: chunks are at least
# MIN_SIZE, and for inputs that large blake3 releases the GIL. (A Python thread, not blake3's
# own pool: that one hangs a forked child that hashes again.)
_HASHER = _Worker("lmdb-blob-hash")


# Checks the later half of each batch of chunks a NAR is written from (``_check_batch``).
_VERIFIER = _Worker("lmdb-blob-verify")
# Chunks read and checked together by open_views: about 4 MiB, in one read transaction.
_VERIFY_BATCH = 16


def _digests_of(views: Sequence[ChunkData]) -> list[bytes]:
    return [blake3_digest(view) for view in views]


def _update_all(hasher: Any, chunks: list[ChunkData]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


def encode_chunk_list(chunks: list[ChunkMeta]) -> bytes:
    """The ``blobs`` table value for a chunk list."""
    return b"".join(_ENTRY.pack(c.digest, c.size) for c in chunks)


def decode_chunk_list(digest: B3Digest, value: bytes | memoryview) -> list[ChunkMeta]:
    """Parse a ``blobs`` table value; raises DataCorruption when it is malformed."""
    if len(value) % _ENTRY.size or not value:
        raise DataCorruption(f"chunk list of blob {digest} has a bad length {len(value)}")
    return [ChunkMeta(B3Digest(d), size) for d, size in _ENTRY.iter_unpack(value)]


@final
class LmdbBlobService(BlobService):
    """Chunked, deduplicating blob storage in an LMDB environment; thread-safe."""

    def __init__(self, path: str) -> None:
        self._store: LmdbStore | None = open_env(path)
        self._env = self._store.env
        # _lmdb_env hands out table handles untyped; they are py-lmdb database handles.
        self._chunks_db = cast("lmdb._Database", self._store.table("chunks"))
        self._blobs_db = cast("lmdb._Database", self._store.table("blobs"))
        # Operations in progress; close() waits for them so that no transaction (a background
        # commit included) ever runs against an environment that is being closed.
        self._gate = threading.Condition()
        self._active = 0
        self._closed = False

    @classmethod
    def from_url(cls, url: ServiceUrl) -> LmdbBlobService:
        """Accept ``lmdb:///abs/dir``: no host, an absolute path other than ``/``, no options."""
        return cls(path_from_url(url))

    @property
    def path(self) -> str:
        """The environment's directory."""
        return self._store.path if self._store is not None else ""

    def close(self) -> None:
        """Wait for running operations, then release the shared environment; idempotent."""
        with self._gate:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._gate.wait()
            store, self._store = self._store, None
        if store is not None:
            release_env(store)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("LMDB blob service is closed")

    def _op(self, what: str, digest: B3Digest | None = None) -> _Operation:
        """Run one operation: refused after close(), py-lmdb errors translated."""
        return _Operation(self, what, digest)

    def has(self, digest: B3Digest) -> bool:
        """Whether a blob or a chunk of that digest is stored."""
        with self._op("has", digest), self._env.begin(buffers=True) as txn:
            return (
                txn.get(digest, db=self._blobs_db) is not None
                or txn.get(digest, db=self._chunks_db) is not None
            )

    def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        """The chunk list of a multi-chunk blob; [] for a single chunk; None when absent."""
        with self._op("chunks of", digest), self._env.begin(buffers=True) as txn:
            value = txn.get(digest, db=self._blobs_db)
            if value is not None:
                return decode_chunk_list(digest, value)
            return [] if txn.get(digest, db=self._chunks_db) is not None else None

    def open_read(self, digest: B3Digest) -> BlobReader | None:
        """A seekable reader over a blob or a chunk, or None when absent."""
        with self._op("open", digest), self._env.begin(buffers=True) as txn:
            value = txn.get(digest, db=self._blobs_db)
            chunk_list = None if value is None else decode_chunk_list(digest, value)
        if chunk_list is not None:
            return ChunkedReader(chunk_list, self.read_chunk)
        data = self.read_chunk(digest)
        return None if data is None else BytesBlobReader(data)

    def read_chunk(self, digest: B3Digest) -> bytes | None:
        """A chunk's bytes after checking them against digest; None when absent.

        Raises:
            DataCorruption: the stored bytes do not hash to digest.

        """
        with self._op("read chunk", digest), self._env.begin(buffers=True) as txn:
            view = txn.get(digest, db=self._chunks_db)
            # The view points into the map and is valid only inside the txn: copy it out.
            data = None if view is None else bytes(view)
        if data is None:
            return None
        self._check_chunk(digest, data)
        return data

    def verify_chunk(self, digest: B3Digest) -> int | None:
        """Check a stored chunk against digest where it lies in the map, without copying it.

        Returns its size, or None when absent. With ``join_chunk_ranges`` this lets a reader
        verify chunks ahead on other threads (BLAKE3 runs without the GIL) and copy the bytes
        once, later, straight into the buffer it hands out.

        Raises:
            DataCorruption: the stored bytes do not hash to digest.

        """
        with self._op("verify chunk", digest), self._env.begin(buffers=True) as txn:
            view = txn.get(digest, db=self._chunks_db)
            if view is None:
                return None
            self._check_chunk(digest, view)
            return len(view)

    def _check_chunk(self, digest: B3Digest, data: ChunkData) -> None:
        """Raise DataCorruption unless data hashes to digest."""
        actual = blake3_digest(data)
        if actual != digest:
            raise self._corrupt(digest, actual)

    def _corrupt(self, digest: B3Digest, actual: bytes) -> DataCorruption:
        """The error for a chunk stored under digest whose bytes hash to actual."""
        return DataCorruption(
            f"chunk {digest} is corrupt in {self.path}: its bytes hash to {B3Digest(actual)}"
        )

    def start_read_helper(self, slots: int, slot_bytes: int) -> ReadHelper:
        """A helper process that prepares a reader's next bytes (``lmdb_read_helper``)."""
        from tvix_castore.blobservice.lmdb_read_helper import ReadHelper

        self._check_open()
        return ReadHelper(self.path, slots, slot_bytes)

    def copy_chunk_range(
        self, digest: B3Digest, start: int, end: int, dest: mmap.mmap, at: int, *, check: bool
    ) -> int | None:
        """Copy bytes [start, end) of a stored chunk to dest[at:]; its size, or None when absent.

        With check, the chunk is checked against digest first (a caller that checked it before
        passes False). Nothing is copied when end is past the chunk's end.

        Raises:
            DataCorruption: check, and the stored bytes do not hash to digest.

        """
        with self._op("read chunk", digest), self._env.begin(buffers=True) as txn:
            view = txn.get(digest, db=self._chunks_db)
            if view is None:
                return None
            if check:
                self._check_chunk(digest, view)
            if end <= len(view):
                dest[at : at + end - start] = memoryview(view)[start:end]
            return len(view)

    def join_chunk_ranges(self, ranges: Sequence[tuple[B3Digest, int, int]], prefix: bytes = b"") -> bytes:
        """Bytes ``[start, end)`` of each chunk, concatenated: one copy out of one read txn.

        prefix goes in front (a message header, say) in the same copy.

        Nothing is hashed here: this is for callers that passed each chunk through
        ``verify_chunk`` first. That check stays valid, because a stored chunk is never rewritten
        under its digest (puts do not overwrite, and nothing deletes chunks).

        Raises:
            StorageError: a chunk is absent.

        """
        with self._op("read chunks"), self._env.begin(buffers=True) as txn:
            parts: list[bytes | memoryview] = [prefix]
            for digest, start, end in ranges:
                view = txn.get(digest, db=self._chunks_db)
                if view is None:
                    raise StorageError(f"chunk {digest} is missing in {self.path}")
                parts.append(memoryview(view)[start:end])
            return b"".join(parts)

    def put_many(self, blobs: Sequence[bytes]) -> list[B3Digest]:
        """Store several blobs in one write transaction, so one disk flush for them all.

        A blob shorter than the chunker's minimum size is exactly one chunk, keyed by its own
        digest; a longer one is cut as a streamed write would cut it, and its chunk list goes
        in the same transaction. Committing files of an import together saves the
        per-transaction cost (a flush each) that dominates small files.
        """
        digests: list[B3Digest] = []
        chunks: list[tuple[B3Digest, ChunkData]] = []
        indexes: list[tuple[B3Digest, bytes]] = []
        for data in blobs:
            if len(data) < MIN_SIZE:
                digest = B3Digest(blake3_digest(data))
                chunks.append((digest, data))
            else:
                digest = self._cut(data, chunks, indexes)
            digests.append(digest)
        if chunks:
            self._commit(chunks, indexes)
        return digests

    @staticmethod
    def _cut(
        data: bytes, chunks: list[tuple[B3Digest, ChunkData]], indexes: list[tuple[B3Digest, bytes]]
    ) -> B3Digest:
        """Add data's chunks (and, for several, its chunk list) to those to commit; its digest."""
        metas = []
        for piece in chunk_bytes(data):
            meta = ChunkMeta(B3Digest(blake3_digest(piece)), len(piece))
            chunks.append((meta.digest, piece))
            metas.append(meta)
        if len(metas) == 1:
            return metas[0].digest  # the single chunk is the blob, as in LmdbBlobWriter.close
        digest = B3Digest(blake3_digest(data))
        indexes.append((digest, encode_chunk_list(metas)))
        return digest

    def open_views(self, digest: B3Digest) -> tuple[int, Generator[memoryview, None, None]] | None:
        """The blob's size and its bytes as zero-copy views into the map; None when absent.

        Each view is checked against its chunk's BLAKE3 digest before it is yielded. Views come
        in batches of up to 16 chunks (about 4 MiB), read and checked together in one read
        transaction that ends when the batch's last view has been consumed: the iterating
        thread must consume each view (write, hash or copy it) before asking for the next one,
        and never keep it, and must close the generator when it stops early (an error while
        writing, say): ``close()`` of this service waits for its open transaction. A
        single-chunk blob under 64 KiB is copied instead (checked as well), saving its second
        transaction.

        Raises (while iterating):
            DataCorruption: a chunk's bytes do not hash to its digest.
            StorageError: a chunk of the blob's chunk list is missing.

        """
        with self._op("open", digest), self._env.begin(buffers=True) as txn:
            # Most blobs are one chunk, stored under their own digest: look there first.
            view = txn.get(digest, db=self._chunks_db)
            if view is not None:
                if len(view) < _COPY_SMALL:
                    # A small blob is copied out of this transaction rather than read again in
                    # a second one (a NAR writer copies small pieces into its buffer anyway).
                    return len(view), self._checked_copy(digest, bytes(view))
                chunk_list = [ChunkMeta(digest, len(view))]
            else:
                value = txn.get(digest, db=self._blobs_db)
                if value is None:
                    return None
                chunk_list = decode_chunk_list(digest, value)
        return sum(c.size for c in chunk_list), self._views(digest, chunk_list)

    def _checked_copy(self, digest: B3Digest, data: bytes) -> Generator[memoryview, None, None]:
        self._check_chunk(digest, data)
        yield memoryview(data)

    def _views(self, blob: B3Digest, chunk_list: list[ChunkMeta]) -> Generator[memoryview, None, None]:
        for first in range(0, len(chunk_list), _VERIFY_BATCH):
            batch = chunk_list[first : first + _VERIFY_BATCH]
            with self._op("read chunks"), self._env.begin(buffers=True) as txn:
                views: list[memoryview] = []
                for chunk in batch:
                    view = txn.get(chunk.digest, db=self._chunks_db)
                    if view is None:
                        raise StorageError(f"chunk {chunk.digest} of blob {blob} is missing in {self.path}")
                    views.append(view)
                self._check_batch(batch, views)
                yield from views

    def _check_batch(self, chunks: list[ChunkMeta], views: list[memoryview]) -> None:
        """Check views against their chunks' digests, the later half on the verifier thread.

        With nothing else hashing beside it (a NAR being written), a second Python thread makes
        use of the spare core; blake3's own thread pool, woken for every chunk, often lost more
        than it gained here.
        """
        half = len(views) // 2
        later: Future[list[bytes]] | None = None
        # Only an idle verifier takes work: several readers at once (a daemon's CalculateNAR
        # calls) keep the cores busy by themselves and should not queue behind each other.
        if half:
            later = _VERIFIER.submit_if_idle(_digests_of, views[half:])
        if later is None:
            half = len(views)
        try:
            actual = _digests_of(views[:half])
        finally:
            # Also after a failure here: the verifier reads the views until it is done.
            rest = later.result() if later is not None else []
        for chunk, digest in zip(chunks, actual + rest, strict=True):
            if digest != chunk.digest:
                raise self._corrupt(chunk.digest, digest)

    def open_write(self) -> LmdbBlobWriter:
        """A streaming writer; the blob becomes readable when it is closed."""
        self._check_open()
        return LmdbBlobWriter(self)

    def _commit(
        self, chunks: list[tuple[B3Digest, ChunkData]], indexes: Sequence[tuple[B3Digest, bytes]] = ()
    ) -> None:
        """Store chunks (skipping present ones), then the chunk lists of multi-chunk blobs.

        In a group commit with the writes of other threads (a daemon takes many blobs at once).
        """
        chunks_db, blobs_db = self._chunks_db, self._blobs_db

        def work(txn: lmdb.Transaction) -> None:
            for digest, data in chunks:
                # NOOVERWRITE: a present chunk is neither copied nor rewritten (dedup).
                txn.put(digest, data, db=chunks_db, overwrite=False)
            for digest, chunk_list in indexes:
                txn.put(digest, chunk_list, db=blobs_db, overwrite=False)

        with self._op("write"):
            store = self._store
            assert store is not None  # an operation runs only while the service is open
            store.writes.write(self._env, work, sum(len(data) for _, data in chunks))


@final
class _Operation:
    """The context of one LmdbBlobService operation (see ``_op``).

    A plain class rather than a generator-based context manager: it wraps every chunk read, and
    at tens of thousands of reads per command the generator machinery was a visible cost.
    """

    __slots__ = ("_digest", "_service", "_what")

    def __init__(self, service: LmdbBlobService, what: str, digest: B3Digest | None) -> None:
        self._service = service
        self._what = what
        self._digest = digest

    def __enter__(self) -> None:
        service = self._service
        with service._gate:
            service._check_open()
            service._active += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        service = self._service
        with service._gate:
            service._active -= 1
            # Only close() ever waits on the gate, and only after setting _closed.
            if not service._active and service._closed:
                service._gate.notify_all()
        if isinstance(exc, lmdb.Error):
            target = f" {self._digest}" if self._digest is not None else ""
            reason = explain(service.path, exc)
            raise StorageError(f"LMDB blob store: {self._what}{target}: {reason}") from exc


@final
class LmdbBlobWriter(BlobWriter):
    """Chunks what is written, hashes it incrementally and commits chunks in batches."""

    def __init__(self, service: LmdbBlobService) -> None:
        self._service = service
        self._chunker: Chunker | None = Chunker()
        # The blob hash is fed from the chunks, and only once a second chunk shows up: for a
        # single-chunk blob (most files) the chunk digest already is the blob digest. It is fed
        # on the _HASHER thread; _hashed is the last update handed to it.
        self._hasher = blake3.blake3()
        self._hashed: Future[None] | None = None
        self._first_chunk: ChunkData | None = None
        self._chunk_list: list[ChunkMeta] = []
        self._pending: list[tuple[B3Digest, ChunkData]] = []
        self._pending_bytes = 0
        # At most one batch is being committed in the background while the next one fills up.
        self._inflight: Future[None] | None = None
        self._inflight_bytes = 0
        self._digest: B3Digest | None = None

    @property
    def buffered(self) -> int:
        """Bytes this writer holds in memory right now (chunker tail plus uncommitted chunks)."""
        held = self._chunker.pending if self._chunker is not None else 0
        return held + self._pending_bytes + self._inflight_bytes

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; finished chunks are committed in batches of a few MiB."""
        chunker = self._chunker
        if chunker is None:
            raise ClosedError("blob writer is already closed")
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _FEED_PIECE):
            self._add(chunker.feed(view[start : start + _FEED_PIECE]))
            if self._pending_bytes >= _FLUSH_BYTES:
                self._flush_in_background()
        return len(view)

    def _flush_in_background(self) -> None:
        self._wait_inflight()
        self._inflight = _COMMITTER.submit(self._service._commit, self._pending)
        self._inflight_bytes = self._pending_bytes
        self._pending = []
        self._pending_bytes = 0

    def _wait_inflight(self) -> None:
        """Wait for the background batch; its failure is raised here, in the writer's thread."""
        inflight = self._inflight
        if inflight is None:
            return
        self._inflight = None
        self._inflight_bytes = 0
        inflight.result()

    def _add(self, chunks: list[memoryview]) -> None:
        to_hash: list[ChunkData] = []
        for chunk in chunks:
            digest = B3Digest(blake3_digest(chunk))
            if not self._chunk_list:
                self._first_chunk = chunk
            else:
                if self._first_chunk is not None:
                    to_hash.append(self._first_chunk)
                    self._first_chunk = None
                to_hash.append(chunk)
            self._chunk_list.append(ChunkMeta(digest, len(chunk)))
            self._pending.append((digest, chunk))
            self._pending_bytes += len(chunk)
        if to_hash:
            # One worker, tasks in order: this writer's updates stay in chunk order.
            self._hashed = _HASHER.submit(_update_all, self._hasher, to_hash)

    def close(self) -> B3Digest:
        """Commit the rest and the chunk list; return the blob's digest (again on a 2nd call)."""
        if self._digest is not None:
            return self._digest
        chunker = self._chunker
        if chunker is None:
            raise ClosedError("blob writer was aborted")
        self._add(chunker.finish())
        self._chunker = None
        # The index goes in only after every earlier batch is committed.
        self._wait_inflight()
        if not self._chunk_list:
            digest = EMPTY_BLOB_DIGEST
            self._pending = [(EMPTY_BLOB_DIGEST, b"")]
            index = None
        elif len(self._chunk_list) == 1:
            # The single chunk is the blob: same bytes, same digest, no index entry needed.
            digest = self._chunk_list[0].digest
            index = None
        else:
            if self._hashed is not None:
                self._hashed.result()
            digest = B3Digest(self._hasher.digest())
            index = (digest, encode_chunk_list(self._chunk_list))
        self._first_chunk = None
        self._service._commit(self._pending, () if index is None else (index,))
        self._pending = []
        self._pending_bytes = 0
        self._digest = digest
        return digest

    def abort(self) -> None:
        """Drop uncommitted chunks; chunks committed so far stay as unreferenced data."""
        self._chunker = None
        self._first_chunk = None
        self._pending = []
        self._pending_bytes = 0
        # Let a batch in flight finish (its chunks become unreferenced data); its error no
        # longer matters to anyone.
        with suppress(StoreError):
            self._wait_inflight()
