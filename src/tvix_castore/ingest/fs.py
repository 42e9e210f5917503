"""Filesystem ingestion: walk a path into castore (tvix ``castore/src/import/fs.rs``).

Shell over the OS: ``walk_path`` lstat()s its way through a tree without following symlinks,
visiting directory entries in bytewise name order (the order NAR uses), streams each regular
file into ``BlobService.open_write()`` in 1 MiB reads and yields ``IngestionEntry`` values
leaves first, ready for ``ingest_entries``. Names are bytes end to end, so any name the kernel
allows (everything but ``/`` and NUL) survives. Sockets, FIFOs and devices are refused.

castore knows nothing of Nix; a caller that needs more than the entries (the store layer
renders a NAR while the tree is read, so every file is read once) passes an ``IngestObserver``,
which sees every node in pre-order and every file's bytes as they stream by.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

from tvix_castore.blobservice import BlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import IngestionError
from tvix_castore.ingest.batch import SMALL_FILE, SmallFileBatch
from tvix_castore.ingest.entries import (
    DirectoryEntry,
    EntryPath,
    IngestionEntry,
    RegularEntry,
    SymlinkEntry,
    ingest_entries,
)
from tvix_castore.nodes import Node

__all__ = ["READ_CHUNK", "SMALL_FILE", "IngestObserver", "ingest_path", "walk_path"]

READ_CHUNK = 1 << 20
# A file below SMALL_FILE (batch.py) is read whole in one read, into its batch.
assert SMALL_FILE <= READ_CHUNK
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_KIND_NAMES = {
    stat.S_IFSOCK: "socket",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


_Sink = Callable[[bytes], object]


class IngestObserver:
    """Sees the tree in pre-order (a directory, then its entries by name), as a NAR lists it.

    ``path`` is relative to the root (``()`` for the root itself). The base class does nothing;
    subclasses override what they need. Exceptions raised here abort the ingestion.
    """

    def directory_start(self, path: EntryPath) -> None:
        """A directory begins; its children follow in bytewise name order."""

    def directory_end(self, path: EntryPath) -> None:
        """The directory at path has no more children."""

    def symlink(self, path: EntryPath, target: bytes) -> None:
        """A symlink."""

    def file(self, path: EntryPath, executable: bool, size: int, contents: Iterator[bytes]) -> None:
        """A regular file of size bytes. Iterating contents reads the file (once) and uploads it.

        Whatever the observer leaves unread is read and uploaded afterwards by the walker.
        """


def _show(path: bytes) -> str:
    # repr() keeps the message on one line even for names with newlines or odd bytes.
    return repr(os.fsdecode(path))


def walk_path(
    blob_service: BlobService, root: str | bytes, observer: IngestObserver | None = None
) -> Iterator[IngestionEntry]:
    """Walk root (not following symlinks) and yield its entries leaves first.

    File contents are uploaded to blob_service before their entry is yielded. Small files are
    uploaded in batches (``BlobService.put_many``), so entries are held back until their batch
    is stored; the order of the entries is unchanged.

    Raises:
        IngestionError: root does not exist, a file type other than regular file, directory or
            symlink, an unreadable file or directory, or a file that changed while being read.

    """
    observer = observer or IngestObserver()
    batch = SmallFileBatch(blob_service)
    root_b = os.fsencode(root)
    st = _lstat(root_b)
    # Each frame: the directory's entry path, its filesystem path, its remaining child names.
    stack: list[tuple[EntryPath, bytes, Iterator[bytes]]] = []
    _visit((), root_b, st, blob_service, observer, stack, batch)
    while stack:
        path, fs_path, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            observer.directory_end(path)
            batch.add_entry(DirectoryEntry(path))
        else:
            child_fs = fs_path + b"/" + name
            _visit((*path, name), child_fs, _lstat(child_fs), blob_service, observer, stack, batch)
        if batch.full():
            yield from batch.flush()
    yield from batch.flush()


def ingest_path(
    blob_service: BlobService,
    directory_service: DirectoryService,
    root: str | bytes,
    observer: IngestObserver | None = None,
) -> Node:
    """Ingest the tree at root into castore and return its root node."""
    return ingest_entries(directory_service, walk_path(blob_service, root, observer))


def _lstat(fs_path: bytes) -> os.stat_result:
    try:
        return os.lstat(fs_path)
    except FileNotFoundError:
        raise IngestionError(f"cannot import {_show(fs_path)}: no such file or directory") from None
    except OSError as exc:
        raise IngestionError(f"cannot import {_show(fs_path)}: {exc.strerror}") from exc


def _visit(
    path: EntryPath,
    fs_path: bytes,
    st: os.stat_result,
    blob_service: BlobService,
    observer: IngestObserver,
    stack: list[tuple[EntryPath, bytes, Iterator[bytes]]],
    batch: SmallFileBatch,
) -> None:
    """Handle one node: a leaf's entry goes to batch, a directory is pushed onto stack."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        executable = bool(mode & stat.S_IXUSR)
        size = st.st_size
        if size < SMALL_FILE:
            contents = _read_small_file(path, fs_path, size, executable, observer)
            batch.add_file(path, size, executable, contents)
            return
        digest = _upload_file(path, fs_path, size, executable, blob_service, observer)
        batch.add_entry(RegularEntry(path, digest, size, executable))
        return
    if stat.S_ISDIR(mode):
        try:
            names = sorted(os.listdir(fs_path))
        except OSError as exc:
            raise IngestionError(f"cannot read directory {_show(fs_path)}: {exc.strerror}") from exc
        observer.directory_start(path)
        stack.append((path, fs_path, iter(names)))
        return
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(fs_path)
        except OSError as exc:
            raise IngestionError(f"cannot read symlink {_show(fs_path)}: {exc.strerror}") from exc
        observer.symlink(path, target)
        batch.add_entry(SymlinkEntry(path, target))
        return
    kind = _KIND_NAMES.get(stat.S_IFMT(mode), f"mode {stat.S_IFMT(mode):o}")
    raise IngestionError(f"cannot import {_show(fs_path)}: unsupported file type ({kind})")


def _open_regular(fs_path: bytes) -> int:
    try:
        fd = os.open(fs_path, _OPEN_FLAGS)
    except OSError as exc:
        raise IngestionError(f"cannot read file {_show(fs_path)}: {exc.strerror}") from exc
    # The path may have been swapped for something else since lstat(); only read a regular file.
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IngestionError(f"cannot import {_show(fs_path)}: changed type while being imported")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_small_file(
    path: EntryPath, fs_path: bytes, size: int, executable: bool, observer: IngestObserver
) -> bytes:
    """Read a small file whole (it is stored later, with its batch); the observer sees it."""
    fd = _open_regular(fs_path)
    try:
        pieces: list[bytes] = []
        contents = _read_contents(fd, fs_path, size, pieces.append)
        observer.file(path, executable, size, contents)
        for _ in contents:  # whatever the observer left unread
            pass
    finally:
        os.close(fd)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _upload_file(
    path: EntryPath,
    fs_path: bytes,
    size: int,
    executable: bool,
    blob_service: BlobService,
    observer: IngestObserver,
) -> B3Digest:
    fd = _open_regular(fs_path)
    try:
        with blob_service.open_write() as writer:
            contents = _read_contents(fd, fs_path, size, writer.write)
            observer.file(path, executable, size, contents)
            for _ in contents:  # whatever the observer left unread
                pass
            return writer.close()
    finally:
        os.close(fd)


def _read_contents(fd: int, fs_path: bytes, size: int, sink: _Sink) -> Iterator[bytes]:
    """Read exactly size bytes from fd, pass each piece to sink, and yield it."""
    remaining = size
    while True:
        # Ask for one byte more than expected at the end, so growth shows without another read.
        want = remaining + 1 if remaining < READ_CHUNK else READ_CHUNK
        try:
            data = os.read(fd, want)
        except OSError as exc:
            raise IngestionError(f"cannot read file {_show(fs_path)}: {exc.strerror}") from exc
        n = len(data)
        if n > remaining:
            raise IngestionError(f"file {_show(fs_path)} grew while being imported (expected {size} bytes)")
        if n == 0:
            if remaining:
                raise IngestionError(
                    f"file {_show(fs_path)} shrank while being imported (expected {size} bytes)"
                )
            return
        remaining -= n
        sink(data)
        yield data
        if remaining == 0 and n < want:
            # A short read of a regular file means end of file: no need to ask again.
            return
