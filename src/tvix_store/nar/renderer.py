"""NAR rendering: a castore root node -> NAR bytes (tvix ``store/src/nar/renderer.rs``).

Shell between the services and the pure ``NarWriter``: directories come from the
DirectoryService, file contents are streamed from the BlobService in 1 MiB reads, so memory
stays flat however big the files are. The FileNode ``size`` is authoritative for the NAR
header: a blob of another length is an error, as is a missing blob or directory (each
message names the digest and the entry). The root node's name plays no part.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from nix_compat.errors import NarError
from nix_compat.nar import NarWriter
from nix_compat.nar.wire import MAX_DEPTH
from tvix_castore.blobservice import BlobReader, BlobService
from tvix_castore.blobservice.chunked_reader import ChunkedReader
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.path import EntryPath, format_path
from tvix_store.errors import NarRenderError

__all__ = ["READ_CHUNK", "write_nar"]

READ_CHUNK = 1 << 20

Write = Callable[[bytes | memoryview], object]
# A blob service's optional zero-copy read: (size, verified views) or None when absent.
_OpenViews = Callable[[B3Digest], "tuple[int, Generator[memoryview, None, None]] | None"]


def write_nar(
    write: Write,
    root: Node,
    blob_service: BlobService,
    directory_service: DirectoryService,
    *,
    zero_copy: bool = False,
) -> None:
    """Write the NAR of root through write, streaming file contents.

    zero_copy promises that write consumes each piece before it returns and keeps no reference
    (a file's or a hasher's write does; a queue to another thread does not). Then a blob
    service that can (the LMDB store's ``open_views``) hands out views into its map, verified
    but never copied.

    Raises:
        NarRenderError: a blob or directory is missing, a blob's length is not the size its
            FileNode records, or directories nest deeper than ``MAX_DEPTH``.

    """
    writer = NarWriter(write)
    open_views: _OpenViews | None = getattr(blob_service, "open_views", None) if zero_copy else None
    # Each frame: an open directory's entry path and its remaining (name, node) pairs.
    stack: list[tuple[EntryPath, Iterator[tuple[bytes, Node]]]] = []
    _node(writer, (), root, blob_service, directory_service, stack, open_views)
    while stack:
        path, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            writer.end_directory()
            continue
        name, node = child
        writer.entry(name)
        _node(writer, (*path, name), node, blob_service, directory_service, stack, open_views)
    writer.close()


def _node(
    writer: NarWriter,
    path: EntryPath,
    node: Node,
    blob_service: BlobService,
    directory_service: DirectoryService,
    stack: list[tuple[EntryPath, Iterator[tuple[bytes, Node]]]],
    open_views: _OpenViews | None,
) -> None:
    if isinstance(node, SymlinkNode):
        writer.symlink(node.target)
    elif isinstance(node, FileNode):
        if open_views is not None:
            _file_views(writer, path, node, open_views)
        else:
            _file(writer, path, node, blob_service)
    elif isinstance(node, DirectoryNode):
        if len(stack) == MAX_DEPTH:
            # Nix could neither have dumped such a tree nor unpack its NAR (see MAX_DEPTH).
            raise NarRenderError(
                f"directory {node.digest} is nested more than {MAX_DEPTH} directories deep, "
                f"deeper than a NAR may go (entry {format_path(path[:8])!r}…)"
            )
        directory = directory_service.get(node.digest)
        if directory is None:
            raise NarRenderError(f"directory {node.digest} not found (entry {format_path(path)!r})")
        writer.begin_directory()
        stack.append((path, iter(directory.entries())))
    else:  # pragma: no cover - Node is a closed union
        raise TypeError(f"not a node: {node!r}")


def _size_error(node: FileNode, path: EntryPath, actual: int) -> NarRenderError:
    relation = "shorter" if actual < node.size else "longer"
    return NarRenderError(
        f"blob {node.digest} is {actual} bytes, {relation} than the size {node.size} "
        f"recorded for entry {format_path(path)!r}"
    )


def _file_views(writer: NarWriter, path: EntryPath, node: FileNode, open_views: _OpenViews) -> None:
    opened = open_views(node.digest)
    if opened is None:
        raise NarRenderError(f"blob {node.digest} not found (entry {format_path(path)!r})")
    size, views = opened
    try:
        if size != node.size:
            raise _size_error(node, path, size)
        try:
            writer.file(node.executable, node.size, views)
        except NarError as exc:
            raise NarRenderError(f"blob {node.digest} (entry {format_path(path)!r}): {exc}") from exc
    finally:
        # A view lives in a read transaction that the store's close() waits for: end it now,
        # also when writing failed (a full disk, a closed pipe), not when the traceback goes.
        views.close()


def _file(writer: NarWriter, path: EntryPath, node: FileNode, blob_service: BlobService) -> None:
    reader = blob_service.open_read(node.digest)
    if reader is None:
        raise NarRenderError(f"blob {node.digest} not found (entry {format_path(path)!r})")
    with reader:
        actual = reader.size()
        if actual != node.size:
            raise _size_error(node, path, actual)
        try:
            writer.file(node.executable, node.size, _contents(reader))
        except NarError as exc:
            # The blob yielded another length than it announced.
            raise NarRenderError(f"blob {node.digest} (entry {format_path(path)!r}): {exc}") from exc


def _contents(reader: BlobReader) -> Iterator[bytes]:
    read = reader.read
    size = reader.size()
    if size <= READ_CHUNK and not isinstance(reader, ChunkedReader):
        pieces: Iterator[int] = iter((size,))
    else:
        pieces = _piece_sizes(reader)
    data = b""
    for want in pieces:
        data = read(want)
        if not data:
            return
        yield data
    # Whatever a reader yields beyond its announced size reaches the writer, which refuses it.
    while data := read(READ_CHUNK):
        yield data


def _piece_sizes(reader: BlobReader) -> Iterator[int]:
    """Read sizes following the blob's chunk boundaries when it has them.

    A read that spans chunks must join pieces (a copy); one that stays inside a chunk does not.
    """
    size = reader.size()
    offsets = reader.chunk_offsets if isinstance(reader, ChunkedReader) else (0,)
    for start, end in zip(offsets, (*offsets[1:], size), strict=True):
        pos = start
        while pos < end:
            n = min(READ_CHUNK, end - pos)
            yield n
            pos += n
