"""Importing into the store: a filesystem path, or a NAR stream, becomes a PathInfo (spec §5.5).

Filesystem paths are imported in one pass: while castore's walker uploads blobs and builds
Directories, an observer feeds the same nodes and bytes to a ``NarWriter`` whose output is
SHA-256-hashed in a second thread (hashlib releases the GIL, so hashing overlaps reading,
chunking and storing). Each file is read once. The store path is Nix's NAR-SHA-256 "source"
path of the basename, exactly as ``nix-store --add`` computes it.

Ordering is the crash-safety contract: the PathInfo is put last, after every blob and the
directory putter's close(), so a store path is never visible without its data, and an import
interrupted at any point can simply be run again.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO, cast

from nix_compat.errors import NarError
from nix_compat.nar import NarWriter
from nix_compat.nixhash import CAHash, NixHash
from nix_compat.store_path import build_nar_sha256_path, validate_name
from tvix_castore.ingest.entries import EntryPath
from tvix_castore.ingest.fs import IngestObserver, ingest_path
from tvix_castore.lazy_logging import get_logger
from tvix_castore.nodes import Node
from tvix_store.errors import ImportError_
from tvix_store.nar.ingest import ingest_nar
from tvix_store.path_info import PathInfo
from tvix_store.progress import Progress
from tvix_store.services import Services

__all__ = [
    "ThreadedSha256",
    "import_nar",
    "import_path",
    "nix_basename",
    "open_nar_stream",
]

# Named as tvix names the same code, so that RUST_LOG targets written for tvix apply.
log = get_logger("tvix_store.import")

_QUEUE_DEPTH = 16  # pieces in flight to the hashing thread; pieces are at most ~1 MiB


def nix_basename(path: str) -> str:
    """The store-path name ``nix-store --add`` derives from an argument (Nix ``baseNameOf``).

    One trailing slash is ignored; nothing else is normalised, so ``a/..`` gives ``..``.
    """
    end = len(path)
    if end > 1 and path.endswith("/"):
        end -= 1
    return path[path.rfind("/", 0, end) + 1 : end]


class ThreadedSha256:
    """A write callable that counts bytes and SHA-256-hashes them in a helper thread.

    Pieces must not be mutated after they are written (bytes are fine). ``finish()`` waits for
    the thread and returns (size, digest); ``abort()`` stops it without a result.
    """

    def __init__(self) -> None:
        self.size = 0
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(_QUEUE_DEPTH)
        self._thread = threading.Thread(target=self._run, name="nar-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        get = self._queue.get
        update = self._sha.update
        while (piece := get()) is not None:
            update(piece)

    def __call__(self, data: bytes | memoryview) -> None:
        """Queue data for hashing."""
        self.size += len(data)
        self._queue.put(data)

    def finish(self) -> tuple[int, bytes]:
        """Wait for the hashing to complete; (byte count, SHA-256)."""
        self._queue.put(None)
        self._thread.join()
        return self.size, self._sha.digest()

    def abort(self) -> None:
        """Stop the helper thread, discarding the hash."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


class _NarObserver(IngestObserver):
    """Feeds the walk to a NarWriter (pre-order, names ascending: exactly NAR order)."""

    def __init__(self, writer: NarWriter, progress: Progress | None) -> None:
        self._writer = writer
        self._progress = progress

    def directory_start(self, path: EntryPath) -> None:
        if path:
            self._writer.entry(path[-1])
        self._writer.begin_directory()

    def directory_end(self, path: EntryPath) -> None:
        self._writer.end_directory()

    def symlink(self, path: EntryPath, target: bytes) -> None:
        if path:
            self._writer.entry(path[-1])
        self._writer.symlink(target)
        if self._progress is not None:
            self._progress.add_file()

    def file(self, path: EntryPath, executable: bool, size: int, contents: Iterator[bytes]) -> None:
        if path:
            self._writer.entry(path[-1])
        progress = self._progress
        if progress is None:
            self._writer.file(executable, size, contents)
            return
        self._writer.file(executable, size, _counted(contents, progress.add_bytes))
        progress.add_file()


def _counted(contents: Iterator[bytes], count: Callable[[int], None]) -> Iterator[bytes]:
    for data in contents:
        count(len(data))
        yield data


def import_path(services: Services, path: str, progress: Progress | None = None) -> PathInfo:
    """Import the file, directory or symlink at path; return the PathInfo that was put.

    Raises:
        StorePathError: the basename is not a valid store path name.
        IngestionError: the tree cannot be read (missing, unsupported file type, unreadable).

    """
    name = validate_name(nix_basename(path))
    # Nix reads the path made absolute and lexically normalised, without resolving symlinks.
    fs_path = os.path.abspath(path)
    hasher = ThreadedSha256()
    try:
        writer = NarWriter(hasher)
        root = ingest_path(
            services.blob_service,
            services.directory_service,
            fs_path,
            _NarObserver(writer, progress),
        )
        writer.close()
    except BaseException:
        hasher.abort()
        raise
    nar_size, nar_sha256 = hasher.finish()
    return _put_path_info(services, name, root, nar_size, nar_sha256)


def import_nar(
    services: Services,
    stream: BinaryIO,
    name: str,
    progress: Progress | None = None,
    source: str = "NAR",
) -> PathInfo:
    """Ingest one (uncompressed) NAR from stream under name; return the PathInfo that was put.

    source names the input in error messages (a file name, or "stdin").

    Raises:
        StorePathError: name is not a valid store path name.
        NarError: the NAR is malformed or truncated (the message starts with source).
        ImportError_: the input cannot be read or decompressed, or data follows the NAR.

    """
    name = validate_name(name)
    inner = stream.read
    from tvix_store.binary_cache.compression import read_errors

    decompress_errors = read_errors()

    def read(n: int) -> bytes:
        try:
            data = inner(n)
        except decompress_errors as exc:
            raise ImportError_(f"{source}: cannot read or decompress: {exc}") from exc
        if progress is not None:
            progress.add_bytes(len(data))
        return data

    on_file = None if progress is None else (lambda _size: progress.add_file())
    try:
        root, nar_sha256, nar_size = ingest_nar(
            services.blob_service, services.directory_service, read, on_file
        )
    except NarError as exc:
        raise NarError(f"{source}: {exc}") from exc
    if read(1):
        raise ImportError_(f"{source}: unexpected data after the end of the NAR (offset {nar_size})")
    return _put_path_info(services, name, root, nar_size, nar_sha256)


def _put_path_info(services: Services, name: str, root: Node, nar_size: int, nar_sha256: bytes) -> PathInfo:
    # Last step on purpose: everything the PathInfo refers to is stored by now.
    log.debug("putting PathInfo for %s: root %s, NAR %d bytes", name, root, nar_size)
    info = PathInfo(
        store_path=build_nar_sha256_path(name, nar_sha256),
        node=root,
        nar_size=nar_size,
        nar_sha256=nar_sha256,
        ca=CAHash("nar", NixHash("sha256", nar_sha256)),
    )
    return services.put_path_info(info)


# -- NAR input streams -----------------------------------------------------------------------------

# Compressions an import detects by the stream's first bytes (``compression.MAGICS``).
# (A NAR starts with the length of "nix-archive-1": 0d 00 00 00, none of these.)
_DETECTED = ("xz", "zstd", "bzip2", "gzip", "lz4")


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read (for sniffing) and are served again."""

    def __init__(self, prefix: bytes, rest: BinaryIO) -> None:
        self._prefix = prefix
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_nar_stream(source: BinaryIO) -> BinaryIO:
    """Wrap source so that reading it yields the NAR, decompressed.

    xz, zstd, bzip2, gzip and lz4 are detected by their magic numbers (brotli has none).
    """
    from tvix_store.binary_cache.compression import MAGICS, decompress

    wanted = max(len(MAGICS[c]) for c in _DETECTED)
    head = b""
    while len(head) < wanted:
        more = source.read(wanted - len(head))
        if not more:
            break
        head += more
    raw = cast(BinaryIO, io.BufferedReader(_Prefixed(head, source), 1 << 20))
    for compression in _DETECTED:
        if head.startswith(MAGICS[compression]):
            return decompress(raw, compression, "the NAR")
    return raw


def open_nar_file(file: str) -> BinaryIO:
    """Open FILE (or stdin for ``-``) as a NAR stream, decompressing as needed."""
    if file == "-":
        if sys.stdin is None:  # closed at start (``<&-``)
            raise ImportError_("cannot read the NAR from stdin: it is closed")
        return open_nar_stream(sys.stdin.buffer)
    try:
        return open_nar_stream(open(file, "rb"))
    except FileNotFoundError:
        raise ImportError_(f"cannot read NAR {file!r}: no such file") from None
    except OSError as exc:
        raise ImportError_(f"cannot read NAR {file!r}: {exc.strerror}") from exc
