"""Ingestion entries and ``ingest_entries``: turn a leaves-first stream of entries into Directories.

Producers (the filesystem walker in ``fs.py``, the NAR ingester in the store layer) describe a
tree as ``IngestionEntry`` values, children before their parent (post-order), each under its
path relative to the root: a tuple of name components, ``()`` being the root itself. Blobs are
already uploaded by the producer; entries carry only digests and sizes. ``ingest_entries``
builds each Directory once all its children are known, uploads them through ONE
``put_multiple_start`` session (leaves to root, as the DirectoryService contract asks) and
returns the root node. Nothing here touches the filesystem or knows about Nix.
"""

from __future__ import annotations

from collections.abc import Iterable

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.directoryservice import DirectoryPutter, DirectoryService
from tvix_castore.errors import InvalidRequest, ValidationError
from tvix_castore.frozen import Frozen
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode
from tvix_castore.path import EntryPath, format_path

__all__ = [
    "DirectoryEntry",
    "EntryPath",
    "IngestionEntry",
    "RegularEntry",
    "SymlinkEntry",
    "format_path",
    "ingest_entries",
]


class RegularEntry(Frozen):
    """A regular file whose contents are already stored as the blob ``digest``."""

    __slots__ = ("digest", "executable", "path", "size")
    path: EntryPath
    digest: B3Digest
    size: int
    executable: bool

    def __init__(self, path: EntryPath, digest: B3Digest, size: int, executable: bool) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "executable", executable)


class SymlinkEntry(Frozen):
    """A symbolic link and its target bytes."""

    __slots__ = ("path", "target")
    path: EntryPath
    target: bytes

    def __init__(self, path: EntryPath, target: bytes) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "target", target)


class DirectoryEntry(Frozen):
    """A directory; every entry below it has been produced before it."""

    __slots__ = ("path",)
    path: EntryPath

    def __init__(self, path: EntryPath) -> None:
        object.__setattr__(self, "path", path)


IngestionEntry = RegularEntry | SymlinkEntry | DirectoryEntry


def ingest_entries(directory_service: DirectoryService, entries: Iterable[IngestionEntry]) -> Node:
    """Build and upload the Directories described by entries (leaves first); return the root node.

    The last entry must be the root (path ``()``). Directories are put through one putter
    session, closed after the root, so they become visible together; an exception leaves
    nothing visible from this session. If the root is a file or symlink, no Directory is put.

    Raises:
        InvalidRequest: an entry comes after the root, the stream ends without a root, or a
            child arrives after its parent directory.
        DirectoryError / NodeError: a name or node the data model refuses.

    """
    # Children collected per parent path until the parent's DirectoryEntry arrives. In
    # post-order only the open directories on the current branch have pending children.
    pending: dict[EntryPath, list[tuple[bytes, Node]]] = {}
    putter: DirectoryPutter | None = None
    root: Node | None = None
    for entry in entries:
        if root is not None:
            raise InvalidRequest(f"entry {format_path(entry.path)!r} after the root entry")
        node: Node
        try:
            if isinstance(entry, RegularEntry):
                node = FileNode(entry.digest, entry.size, entry.executable)
            elif isinstance(entry, SymlinkEntry):
                node = SymlinkNode(entry.target)
            else:
                directory = Directory(pending.pop(entry.path, ()))
                if putter is None:
                    putter = directory_service.put_multiple_start()
                putter.put(directory)
                node = directory.as_node()
        except ValidationError as exc:
            raise type(exc)(f"{format_path(entry.path)!r}: {exc}") from exc
        if not entry.path:
            root = node
            continue
        parent = entry.path[:-1]
        pending.setdefault(parent, []).append((entry.path[-1], node))
    if root is None:
        raise InvalidRequest("ingestion ended without a root entry")
    if pending:
        orphan = next(iter(pending))
        raise InvalidRequest(f"entries below {format_path(orphan)!r} came after that directory")
    if putter is not None:
        assert isinstance(root, DirectoryNode)
        stored = putter.close()
        if stored != root.digest:
            raise InvalidRequest(f"directory putter stored root {stored}, expected {root.digest}")
    return root
