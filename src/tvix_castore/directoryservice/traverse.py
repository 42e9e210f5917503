"""Walking the Directory DAG through any DirectoryService: closure traversal and path lookup.

``traverse_directory`` is the reference order of a recursive get (spec §3.2): breadth first from
the root, children in name order, each digest once. ``descend_to`` resolves a relative path below
a node (spec §3.6).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import StorageError
from tvix_castore.nodes import DirectoryNode, Node

if TYPE_CHECKING:
    from tvix_castore.directoryservice import DirectoryService

__all__ = ["descend_to", "traverse_directory"]


def traverse_directory(service: DirectoryService, root: B3Digest) -> Iterator[Directory]:
    """The closure of root, root first, each Directory after one that refers to it.

    Yields nothing if the root is absent.

    Raises:
        StorageError: a Directory below the root is missing.

    """
    root_dir = service.get(root)
    if root_dir is None:
        return
    queue: deque[Directory] = deque([root_dir])
    seen = {root}
    while queue:
        directory = queue.popleft()
        yield directory
        for _, child in directory.directories():
            if child.digest in seen:
                continue
            seen.add(child.digest)
            found = service.get(child.digest)
            if found is None:
                raise StorageError(f"directory {child.digest} does not exist")
            queue.append(found)


def _components(path: bytes | Iterable[bytes]) -> list[bytes]:
    if isinstance(path, bytes):
        return [c for c in path.split(b"/") if c]
    return list(path)


def descend_to(service: DirectoryService, node: Node, path: bytes | Iterable[bytes]) -> Node | None:
    """The node at path (``b"a/b"`` or components) below node, or None if there is none.

    A file or symlink before the last component, or a missing entry, gives None.

    Raises:
        StorageError: a Directory on the way is missing from the service.

    """
    for component in _components(path):
        if not isinstance(node, DirectoryNode):
            return None
        directory = service.get(node.digest)
        if directory is None:
            raise StorageError(f"directory {node.digest} does not exist")
        child = directory.get(component)
        if child is None:
            return None
        node = child
    return node
