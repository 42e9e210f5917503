"""What a castore looks like as a read-only filesystem: synchronous semantics over the services.

``fuse.py`` is only a protocol adapter; every decision about inodes, errno values, listings and
file contents is made here, in plain blocking code that unit tests drive without a kernel.
Methods are thread-safe: the adapter calls them from worker threads, several at a time.

Errors are ``VfsError(errno)``. The errno choices (spec §7.3 and decision 7):
  - an absent name -> ``lookup`` returns None (the adapter caches the negative answer);
  - listing the root without ``list_root`` -> EPERM;
  - a directory whose Directory is missing, a file whose blob or chunk is missing, or any
    StoreError from a service -> EIO, with one log line naming the digest;
  - ``open`` of a directory or symlink -> EISDIR, for writing -> EROFS; ``readlink`` of a
    non-symlink -> EINVAL; xattrs when turned off -> ENOSYS, absent names -> ENODATA,
    ``security.*``/``system.*`` names (labels, ACLs) -> ENOTSUP.
Anything else that escapes is a bug; the adapter logs it and answers EIO.

File contents are read chunk by chunk. An open file keeps its blob's chunk index (offsets by
prefix sums), so a random read fetches only the chunks it touches. Sequential reads fetch the
next chunks ahead on a small thread pool, so the kernel's next READ usually finds them ready
(``read_nowait``, which never waits for a fetch, lets the adapter answer it without a thread
hop). Two ways to hold what was fetched:
  - any backend: decoded chunks sit in one bounded LRU cache shared by all open files;
  - a backend whose chunks can be checked in place (LMDB: ``verify_chunk`` and
    ``join_chunk_ranges``): a READ copies its bytes out of the map once, straight into its
    reply, and a bounded LRU set remembers which chunks were verified. ``read_nowait`` verifies
    a chunk itself, on the event loop: in memory, BLAKE3 of a chunk takes less than handing it
    to another thread, and prefetch threads fell behind the READs (the FUSE thread holds the
    GIL while it replies). Better still, sequential reads have their next READs prepared by a
    helper process with a GIL of its own (``start_read_helper``; see ``windows.py``), and are
    answered from its shared memory. A check slow enough to have read the chunk from disk
    switches the file to prefetching for a while: the prefetch threads verify the next chunks,
    reading them in side by side, and the event loop serves only what they verified.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from tvix_castore.blobservice import BlobReader, BlobService, ChunkData, ChunkMeta
from tvix_castore.blobservice.memo import ChunkCache, VerifiedChunks
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import StoreError
from tvix_castore.frozen import Frozen
from tvix_castore.fs.inodes import ROOT_INO, Attr, InodeT, InodeTracker, attr_of, root_attr
from tvix_castore.fs.root_nodes import RootNodes
from tvix_castore.fs.windows import Helper, ReadWindows, chunk_ranges
from tvix_castore.lazy_logging import get_logger
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode

__all__ = [
    "XATTR_BLOB_DIGEST",
    "XATTR_DIRECTORY_DIGEST",
    "DirEntry",
    "Listing",
    "StatFs",
    "Vfs",
    "VfsError",
]

log = get_logger(__name__)

XATTR_DIRECTORY_DIGEST = b"user.tvix.castore.directory.digest"
XATTR_BLOB_DIGEST = b"user.tvix.castore.blob.digest"

# A blob the backend does not split (memory backend, single-chunk blobs) is read whole into
# the chunk cache when it is at most this big; larger ones are served through a seekable reader.
_WHOLE_BLOB_MAX = 8 * 1024 * 1024
_DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# How far past a sequential read the prefetchers fetch: several 1 MiB kernel READs, so that
# fetching and verifying the next chunks overlaps with serving this one.
_READAHEAD_BYTES = 4 * 1024 * 1024
# A chunk check that took longer read the chunk from disk (from memory, BLAKE3 of the largest
# chunk takes ~0.1 ms). The file's READs then leave the checks to the prefetch threads, for the
# next this many bytes, before the event loop tries again.
_SLOW_CHECK_SECONDS = 0.002
_PREFETCH_SPELL_BYTES = 64 * 1024 * 1024
# The read helper's shared memory: one slot per READ prepared ahead (windows.py), each as big
# as the largest READ (1 MiB, with our readahead).
_HELPER_SLOTS = 32
_HELPER_SLOT_BYTES = 1024 * 1024
# Fetching a chunk is mostly BLAKE3 verification (without the GIL). Two fetchers beside the
# FUSE thread keep both cores busy; four lost ~25% on the two-core machine to handing the GIL
# around.
_PREFETCH_THREADS = 2


def _size_mismatch(node: FileNode, ino: int, stored: int) -> VfsError:
    """EIO for a file whose blob is not as long as its FileNode says, which nar refuses too.

    Served, it would read short, or end before its st_size.
    """
    log.warning("blob %s (inode %d) is %d bytes, its FileNode says %d", node.digest, ino, stored, node.size)
    return VfsError(errno.EIO, f"blob {node.digest} is {stored} bytes, not {node.size}")


class VfsError(Exception):
    """A filesystem operation failed with errno ``errno``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or os.strerror(code))
        self.errno = code


class DirEntry(Frozen):
    """One entry of a directory listing."""

    __slots__ = ("attr", "name")
    name: bytes
    attr: Attr

    def __init__(self, name: bytes, attr: Attr) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attr", attr)


class Listing:
    """The entries of one directory, in the order readdir reports them; immutable.

    A readdir offset is the index of the next entry (index + 1 of the last one reported), which
    is stable because castore directories never change.
    """

    __slots__ = ("_index", "entries")

    def __init__(self, entries: tuple[DirEntry, ...]) -> None:
        self.entries = entries
        self._index = {e.name: e for e in entries}

    def get(self, name: bytes) -> DirEntry | None:
        """The entry called name, or None."""
        return self._index.get(name)

    def __len__(self) -> int:
        return len(self.entries)


class StatFs(Frozen):
    """What ``statfs`` reports: a read-only filesystem with no free space."""

    __slots__ = ("block_size", "files", "name_max")
    block_size: int
    files: int
    name_max: int

    def __init__(self, block_size: int, files: int, name_max: int) -> None:
        object.__setattr__(self, "block_size", block_size)
        object.__setattr__(self, "files", files)
        object.__setattr__(self, "name_max", name_max)


class _OpenFile:
    """One open file: its chunk index, or a seekable reader for blobs read as one stream."""

    __slots__ = (
        "chunks",
        "digest",
        "inline_from",
        "lock",
        "next_offset",
        "prefetching",
        "reader",
        "size",
        "starts",
    )

    def __init__(
        self,
        node: FileNode,
        chunks: tuple[ChunkMeta, ...] | None,
        reader: BlobReader | None,
        prefetching: bool,
    ) -> None:
        self.digest = node.digest
        self.size = node.size
        self.chunks = chunks
        self.starts: list[int] = list(itertools.accumulate((c.size for c in chunks or ()), initial=0))[:-1]
        self.reader = reader
        # Readers are not thread-safe; the chunk path needs no lock (the cache is shared).
        self.lock = threading.Lock()
        self.next_offset = 0
        # Whether sequential READs fetch ahead on the prefetch threads; with chunks checked in
        # place, only for a spell after a slow check, until READs reach inline_from.
        self.prefetching = prefetching
        self.inline_from = 0


class Vfs:
    """Read-only filesystem semantics over a BlobService, a DirectoryService and root nodes."""

    def __init__(
        self,
        root_nodes: RootNodes,
        blob_service: BlobService,
        directory_service: DirectoryService,
        *,
        list_root: bool = False,
        show_xattr: bool = True,
        cache_bytes: int = _DEFAULT_CACHE_BYTES,
    ) -> None:
        self._root_nodes = root_nodes
        self._blobs = blob_service
        self._dirs = directory_service
        self.list_root_enabled = list_root
        self.show_xattr = show_xattr
        self._lock = threading.Lock()
        self._tracker = InodeTracker()
        self._root_entries: dict[bytes, DirEntry] = {}
        self._listings: dict[int, Listing] = {}
        self._files: dict[int, _OpenFile] = {}
        self._fh_counter = itertools.count(1)
        self._cache = ChunkCache(cache_bytes)
        # Prefetched chunks must survive in the cache until the reader gets to them.
        self._readahead_bytes = cache_bytes // 4
        self._inflight: dict[B3Digest, Future[ChunkData]] = {}
        self._inflight_lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="tvix-fs-prefetch")
        # LMDB offers chunk reads without building a reader; other backends read chunks as blobs.
        self._read_chunk = getattr(blob_service, "read_chunk", None)
        # LMDB can also check chunks where they lie and copy ranges of several in one go.
        verify = getattr(blob_service, "verify_chunk", None)
        join = getattr(blob_service, "join_chunk_ranges", None)
        self._verify_chunk = verify if join is not None else None
        self._join_ranges = join if verify is not None else None
        self._verified = VerifiedChunks()
        self._slow_check = _SLOW_CHECK_SECONDS
        # LMDB can also prepare the next READs of sequential readers in a helper process.
        start_helper = getattr(blob_service, "start_read_helper", None)
        self._start_helper = start_helper if self._join_ranges is not None else None
        self._windows: ReadWindows | None = None

    def close(self) -> None:
        """Stop the prefetch threads and the read helper, and drop open files."""
        self._prefetcher.shutdown(wait=True, cancel_futures=True)
        windows, self._windows, self._start_helper = self._windows, None, None
        if windows is not None:
            windows.close()
        with self._lock:
            files, self._files = self._files, {}
        for of in files.values():
            if of.reader is not None:
                of.reader.close()

    # -- names and attributes -------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        """The attributes of ino; ENOENT for an inode never handed out. Never does IO."""
        if ino == ROOT_INO:
            return root_attr()
        with self._lock:
            node = self._tracker.get(ino)
        if node is None:
            raise VfsError(errno.ENOENT)
        return attr_of(InodeT(ino), node)

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        """The attributes of name in directory parent, or None when there is no such entry."""
        entry = self.lookup_root(name) if parent == ROOT_INO else self.children(parent).get(name)
        return None if entry is None else entry.attr

    def lookup_root(self, name: bytes) -> DirEntry | None:
        """A top-level entry by its whole name, or None; found entries are remembered."""
        entry = self._root_entries.get(name)
        if entry is not None:
            return entry
        with self._service("root lookup", name):
            node = self._root_nodes.get_by_basename(name)
        if node is None:
            return None
        with self._lock:
            entry = DirEntry(name, attr_of(self._tracker.put(node, ROOT_INO, name), node))
            return self._root_entries.setdefault(name, entry)

    def children(self, ino: int) -> Listing:
        """The listing of a (non-root) directory, fetched once and kept.

        Raises:
            VfsError: ENOTDIR for a non-directory, ENOENT for an unknown inode, EIO when the
                Directory is missing or the directory service fails.

        """
        listing = self._listings.get(ino)
        if listing is not None:
            return listing
        if ino == ROOT_INO:
            return self.list_root()
        with self._lock:
            node = self._tracker.get(ino)
        if node is None:
            raise VfsError(errno.ENOENT)
        if not isinstance(node, DirectoryNode):
            raise VfsError(errno.ENOTDIR)
        with self._service("get directory", node.digest):
            directory = self._dirs.get(node.digest)
        if directory is None:
            log.warning("directory %s (inode %d) is missing from the directory service", node.digest, ino)
            raise VfsError(errno.EIO, f"directory {node.digest} not found")
        with self._lock:
            entries = tuple(DirEntry(n, attr_of(self._tracker.put(c, ino, n), c)) for n, c in directory)
            return self._listings.setdefault(ino, Listing(entries))

    def cached_children(self, ino: int) -> Listing | None:
        """The listing of ino if it was fetched before, else None; never does IO."""
        return self._listings.get(ino)

    def list_root(self) -> Listing:
        """Every top-level entry, sorted by name (a fresh snapshot each call).

        Raises:
            VfsError: EPERM unless root listing is enabled (tvix: "same error as ipfs/kubo").

        """
        if not self.list_root_enabled:
            raise VfsError(errno.EPERM)
        with self._service("list root nodes"):
            found = sorted(self._root_nodes.list(), key=lambda kv: kv[0])
        entries = []
        with self._lock:
            for name, node in found:
                entry = DirEntry(name, attr_of(self._tracker.put(node, ROOT_INO, name), node))
                entries.append(self._root_entries.setdefault(name, entry))
        return Listing(tuple(entries))

    def opendir(self, ino: int) -> None:
        """Check that ino may be listed: EPERM for the root without root listing."""
        if ino == ROOT_INO:
            if not self.list_root_enabled:
                raise VfsError(errno.EPERM)
            return
        if not self.getattr(ino).is_dir:
            raise VfsError(errno.ENOTDIR)

    def readlink(self, ino: int) -> bytes:
        """A symlink's target; EINVAL for anything else (the root included)."""
        if ino == ROOT_INO:
            raise VfsError(errno.EINVAL)
        node = self._node(ino)
        if not isinstance(node, SymlinkNode):
            raise VfsError(errno.EINVAL)
        return node.target

    # -- extended attributes --------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The digest xattr of a directory or file (``b3:<base64>``); ENODATA for the rest.

        ``security.*`` and ``system.*`` names (SELinux labels, POSIX ACLs) get ENOTSUP instead:
        ``ls -l`` asks for both on every file and the kernel caches no answer, but ls stops
        asking on a device that says they are unsupported. That saves two round trips per
        file, and it is true: no labels or ACLs live here.
        """
        value = self._xattrs(ino).get(name)
        if value is not None:
            return value
        unsupported = name.startswith((b"security.", b"system."))
        raise VfsError(errno.ENOTSUP if unsupported else errno.ENODATA)

    def listxattr(self, ino: int) -> list[bytes]:
        """The names of the xattrs ino has (none for symlinks and the root)."""
        return list(self._xattrs(ino))

    def _xattrs(self, ino: int) -> dict[bytes, bytes]:
        if not self.show_xattr:
            raise VfsError(errno.ENOSYS)
        with self._lock:
            node = self._tracker.get(ino)
        if isinstance(node, DirectoryNode):
            return {XATTR_DIRECTORY_DIGEST: str(node.digest).encode()}
        if isinstance(node, FileNode):
            return {XATTR_BLOB_DIGEST: str(node.digest).encode()}
        return {}

    def statfs(self) -> StatFs:
        """Filesystem statistics: nothing free, the inodes handed out so far."""
        with self._lock:
            files = len(self._tracker) + 1
        return StatFs(block_size=4096, files=files, name_max=255)

    # -- file contents --------------------------------------------------------------------

    def open(self, ino: int, flags: int = os.O_RDONLY) -> int:
        """Open a regular file for reading and return a file handle.

        Raises:
            VfsError: EROFS when opened for writing; EISDIR for a directory, symlink or the
                root; EIO when the blob is missing.

        """
        # O_APPEND alone writes nothing: a read-only open with it succeeds, as on any
        # read-only filesystem.
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise VfsError(errno.EROFS)
        if ino == ROOT_INO:
            raise VfsError(errno.EISDIR)
        node = self._node(ino)
        if not isinstance(node, FileNode):
            raise VfsError(errno.EISDIR)
        with self._service("chunks of", node.digest):
            chunks = self._blobs.chunks(node.digest)
        if chunks is None:
            log.warning("blob %s (inode %d) is missing from the blob service", node.digest, ino)
            raise VfsError(errno.EIO, f"blob {node.digest} not found")
        reader = None
        if chunks:
            index: tuple[ChunkMeta, ...] | None = tuple(chunks)
            stored = sum(c.size for c in chunks)
            if stored != node.size:
                raise _size_mismatch(node, ino, stored)
        elif node.size <= _WHOLE_BLOB_MAX:
            index = (ChunkMeta(node.digest, node.size),)
        else:
            index = None
            with self._service("open", node.digest):
                reader = self._blobs.open_read(node.digest)
            if reader is None:
                log.warning("blob %s (inode %d) is missing from the blob service", node.digest, ino)
                raise VfsError(errno.EIO, f"blob {node.digest} not found")
            if reader.size() != node.size:
                reader.close()
                raise _size_mismatch(node, ino, reader.size())
        of = _OpenFile(node, index, reader, prefetching=self._join_ranges is None)
        with self._lock:
            fh = next(self._fh_counter)
            self._files[fh] = of
        return fh

    def release(self, fh: int) -> None:
        """Close a file handle; unknown handles are ignored."""
        with self._lock:
            of = self._files.pop(fh, None)
        if self._windows is not None:
            self._windows.forget(fh)
        if of is not None and of.reader is not None:
            with of.lock:
                of.reader.close()

    def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Up to size bytes at offset (short only at the end); EIO if a chunk is missing."""
        of = self._file(fh)
        if of.chunks is None:
            return self._read_stream(of, offset, size)
        data = self._read_chunks(of, offset, size, wait=True)
        assert data is not None
        return data

    def read_nowait(self, fh: int, offset: int, size: int) -> bytes | memoryview | None:
        """Like ``read`` when its bytes are at hand, else None.

        At hand: in the read helper's window for this READ (waited for briefly if it is being
        filled), or in chunks fetched already; with chunks checked in place, also in chunks
        verified here and now, unless the file is prefetching. Never waits for a fetch: the
        adapter calls it on its event-loop thread.
        """
        of = self._file(fh)
        if of.chunks is None:
            return None
        windows = self._windows
        if windows is not None:
            for digest, checked_size in windows.collect(wait_for=(fh, offset)):
                self._verified.add(digest, checked_size)
            end = min(offset + size, of.size)
            if offset < end:
                sequential = offset in (of.next_offset, 0)
                view = windows.serve(fh, of, offset, size, sequential)
                if view is not None:
                    of.next_offset = end
                    return view
        return self._read_chunks(of, offset, size, wait=False)

    def _read_stream(self, of: _OpenFile, offset: int, size: int) -> bytes:
        assert of.reader is not None
        if offset >= of.size:
            return b""
        with of.lock, self._service("read", of.digest):
            of.reader.seek(offset)
            return of.reader.read(size)

    def _read_chunks(self, of: _OpenFile, offset: int, size: int, wait: bool) -> bytes | memoryview | None:
        assert of.chunks is not None
        end = min(offset + size, of.size)
        if offset >= end:
            return b""
        chunks, starts = of.chunks, of.starts
        first = bisect.bisect_right(starts, offset) - 1
        last = bisect.bisect_right(starts, end - 1) - 1
        if of.prefetching and self._join_ranges is not None and offset >= of.inline_from:
            of.prefetching = False  # the spell is over: try checking chunks here again
        if offset in (of.next_offset, 0) and of.prefetching:
            # Sequential: the prefetchers fetch this read's missing chunks side by side and
            # keep going well past its end, so the next READs find their bytes in memory.
            self._prefetch(of, first, last, end + _READAHEAD_BYTES)
        if self._join_ranges is not None:
            return self._read_in_place(of, offset, end, wait)
        parts: list[memoryview] = []
        for i in range(first, last + 1):
            meta = chunks[i]
            data = self._cache.get(meta.digest)
            if data is None:
                if not wait:
                    return None
                data = self._load(meta)
            start = starts[i]
            parts.append(memoryview(data)[max(offset - start, 0) : min(end - start, meta.size)])
        of.next_offset = end
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def _read_in_place(self, of: _OpenFile, offset: int, end: int, wait: bool) -> bytes | None:
        """Bytes offset..end from chunks verified in the backend's map, copied out once."""
        assert of.chunks is not None and self._join_ranges is not None
        pieces = chunk_ranges(of.chunks, of.starts, offset, end)
        for meta, _, _ in pieces:
            if self._verified.size_of(meta.digest) != meta.size:
                if wait:
                    self._load(meta)
                elif of.prefetching:
                    return None
                else:
                    self._check_here(of, meta, end)
        with self._service("read", of.digest):
            data: bytes = self._join_ranges([(meta.digest, start, stop) for meta, start, stop in pieces])
        of.next_offset = end
        return data

    def _check_here(self, of: _OpenFile, meta: ChunkMeta, end: int) -> None:
        """Verify a chunk on this thread; if that was slow, start a prefetching spell."""
        started = time.perf_counter()
        self._fetch(meta)
        self._verified.add(meta.digest, meta.size)
        if time.perf_counter() - started > self._slow_check:
            # It came from disk: let the prefetch threads read the next ones in side by side.
            of.prefetching = True
            of.inline_from = end + _PREFETCH_SPELL_BYTES

    def start_helpers(self) -> None:
        """Start the read helper, when the backend has one, for ``read_nowait`` to use.

        Only ``read_nowait``'s caller may call this, from the thread that calls that.
        """
        start_helper, self._start_helper = self._start_helper, None
        if start_helper is None:
            return
        try:
            helper: Helper = start_helper(_HELPER_SLOTS, _HELPER_SLOT_BYTES)
        except (OSError, StoreError) as exc:
            log.info("no read helper process (%s): READs are prepared in process", exc)
            return
        self._windows = ReadWindows(helper)

    def _is_fetched(self, digest: B3Digest) -> bool:
        if self._join_ranges is not None:
            return digest in self._verified
        return digest in self._cache

    def _prefetch(self, of: _OpenFile, first: int, last: int, until: int) -> None:
        """Fetch chunks first..last (this read's), then on up to offset until, in the background.

        Only the chunks after last count against the readahead budget: this read needs the
        others anyway.
        """
        assert of.chunks is not None
        budget = self._readahead_bytes
        for i in range(first, len(of.chunks)):
            if of.starts[i] >= until:
                return
            meta = of.chunks[i]
            if i > last:
                budget -= meta.size
                if budget < 0:
                    return
            if self._is_fetched(meta.digest):
                continue
            with self._inflight_lock:
                if meta.digest in self._inflight:
                    continue
                fut: Future[ChunkData] = Future()
                self._inflight[meta.digest] = fut
            try:
                self._prefetcher.submit(self._fill, meta, fut)
            except RuntimeError:  # shutting down
                self._finish(meta.digest, fut, None, VfsError(errno.EIO))
                return

    def _load(self, meta: ChunkMeta) -> ChunkData:
        """A chunk's bytes: from the cache, from a fetch in flight, or fetched now.

        When chunks are checked in place, only the check is waited for and b"" returned.
        """
        if self._join_ranges is not None:
            if self._verified.size_of(meta.digest) == meta.size:
                return b""
        else:
            data = self._cache.get(meta.digest)
            if data is not None:
                return data
        with self._inflight_lock:
            fut = self._inflight.get(meta.digest)
            owner = fut is None
            if fut is None:
                fut = Future()
                self._inflight[meta.digest] = fut
        if owner:
            self._fill(meta, fut)
        return fut.result()

    def _fill(self, meta: ChunkMeta, fut: Future[ChunkData]) -> None:
        """Fetch one chunk into the cache and resolve fut with it (or with the error)."""
        try:
            data = self._fetch(meta)
        except BaseException as exc:
            self._finish(meta.digest, fut, None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if self._join_ranges is not None:
                self._verified.add(meta.digest, meta.size)
            else:
                self._cache.put(meta.digest, data)
            self._finish(meta.digest, fut, data, None)

    def _finish(
        self, digest: B3Digest, fut: Future[ChunkData], data: ChunkData | None, exc: BaseException | None
    ) -> None:
        with self._inflight_lock:
            self._inflight.pop(digest, None)
        if exc is not None:
            fut.set_exception(exc)
        else:
            assert data is not None
            fut.set_result(data)

    def _fetch(self, meta: ChunkMeta) -> ChunkData:
        if self._verify_chunk is not None:
            with self._service("verify chunk", meta.digest):
                size: int | None = self._verify_chunk(meta.digest)
            if size is None:
                log.warning("chunk %s is missing from the blob service", meta.digest)
                raise VfsError(errno.EIO, f"chunk {meta.digest} not found")
            if size != meta.size:
                log.warning("chunk %s has %d bytes, expected %d", meta.digest, size, meta.size)
                raise VfsError(errno.EIO, f"chunk {meta.digest} has the wrong size")
            return b""
        with self._service("read chunk", meta.digest):
            if self._read_chunk is not None:
                data: ChunkData | None = self._read_chunk(meta.digest)
            else:
                reader = self._blobs.open_read(meta.digest)
                data = None
                if reader is not None:
                    with reader:
                        data = reader.read()
        if data is None:
            log.warning("chunk %s is missing from the blob service", meta.digest)
            raise VfsError(errno.EIO, f"chunk {meta.digest} not found")
        if len(data) != meta.size:
            log.warning("chunk %s has %d bytes, expected %d", meta.digest, len(data), meta.size)
            raise VfsError(errno.EIO, f"chunk {meta.digest} has the wrong size")
        return data

    # -- helpers --------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        with self._lock:
            node = self._tracker.get(ino)
        if node is None:
            raise VfsError(errno.ENOENT)
        return node

    def _file(self, fh: int) -> _OpenFile:
        of = self._files.get(fh)
        if of is None:
            raise VfsError(errno.EBADF)
        return of

    @contextmanager
    def _service(self, what: str, subject: object = None) -> Iterator[None]:
        """Turn a StoreError from a service call into EIO, with one log line."""
        try:
            yield
        except StoreError as exc:
            target = _describe(subject)
            log.warning("%s%s failed: %s", what, target, exc)
            raise VfsError(errno.EIO, f"{what}{target}: {exc}") from exc


def _describe(subject: object) -> str:
    if subject is None:
        return ""
    return f" {subject!r}" if isinstance(subject, bytes) else f" {subject}"
