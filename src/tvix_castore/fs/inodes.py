"""Inode numbers for castore nodes: pure bookkeeping, no IO (tvix ``fs/inode_tracker.rs``).

Files and symlinks with the same content share an inode across the whole mount, because
content never changes: regular files by (blob digest, executable bit), symlinks by target.
tvix keys files by digest alone, so a file's executable bit would depend on which copy was
seen first; keeping the bit in the key gives each copy its own correct mode instead.

Directories get one inode per place (parent inode, name), not one per Directory digest as in
tvix: Linux gives a directory inode a single dentry, so the kernel moves a shared directory
from one parent to the other whenever the other copy is looked up. A process inside
``<A>-pkg/bin`` would then find its working directory, ``..`` and ``$ORIGIN`` in ``<B>-pkg``
once anything touched ``<B>-pkg/bin``, an identical directory. Files and symlinks may have
several names (as hard links do), so sharing theirs is safe.

The root is inode 1; allocation starts at 2 and inodes are never freed (the store is immutable
and entries are cached by the kernel forever).

Not thread-safe: the caller serialises access (``vfs.Vfs`` holds one lock around it).
"""

from __future__ import annotations

import stat
from typing import NewType

from tvix_castore.digests import B3Digest
from tvix_castore.frozen import Frozen
from tvix_castore.nodes import DirectoryNode, FileNode, Node, SymlinkNode

__all__ = ["ROOT_INO", "Attr", "InodeT", "InodeTracker", "attr_of", "root_attr"]

InodeT = NewType("InodeT", int)
ROOT_INO = InodeT(1)

MTIME = 1
"""Every timestamp is 1 s after the epoch, as Nix stores show (spec decision 7)."""

MODE_FILE = stat.S_IFREG | 0o444
MODE_EXECUTABLE = stat.S_IFREG | 0o555
MODE_DIRECTORY = stat.S_IFDIR | 0o555
MODE_SYMLINK = stat.S_IFLNK | 0o444


class Attr(Frozen):
    """What ``stat`` shows for an inode (owner root, every time ``MTIME``)."""

    __slots__ = ("ino", "mode", "size")
    ino: InodeT
    mode: int
    size: int

    def __init__(self, ino: InodeT, mode: int, size: int) -> None:
        object.__setattr__(self, "ino", ino)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "size", size)

    @property
    def is_dir(self) -> bool:
        """Whether the inode is a directory."""
        return stat.S_ISDIR(self.mode)


def attr_of(ino: InodeT, node: Node) -> Attr:
    """The attributes of a node; a directory's size is its DirectoryNode ``size`` (decision 7)."""
    if isinstance(node, FileNode):
        return Attr(ino, MODE_EXECUTABLE if node.executable else MODE_FILE, node.size)
    if isinstance(node, DirectoryNode):
        return Attr(ino, MODE_DIRECTORY, node.size)
    return Attr(ino, MODE_SYMLINK, len(node.target))


def root_attr() -> Attr:
    """The attributes of the mount's root directory."""
    return Attr(ROOT_INO, MODE_DIRECTORY, 0)


_Key = tuple[str, B3Digest, bool] | tuple[str, bytes] | tuple[str, int, bytes]


def _key(node: Node, parent: int, name: bytes) -> _Key:
    if isinstance(node, FileNode):
        return ("f", node.digest, node.executable)
    if isinstance(node, DirectoryNode):
        return ("d", parent, name)
    assert isinstance(node, SymlinkNode)
    return ("l", node.target)


class InodeTracker:
    """Hands out inode numbers: by content for files and symlinks, by place for directories."""

    __slots__ = ("_by_ino", "_by_key", "_next")

    def __init__(self) -> None:
        self._by_ino: dict[int, Node] = {}
        self._by_key: dict[_Key, InodeT] = {}
        self._next = ROOT_INO + 1

    def put(self, node: Node, parent: int, name: bytes) -> InodeT:
        """The inode of node, entry name of directory inode parent (``ROOT_INO`` at the top).

        An existing one for a file or symlink of the same content, or for the directory that
        was handed out at that place before; else a new one.
        """
        key = _key(node, parent, name)
        ino = self._by_key.get(key)
        if ino is None:
            ino = InodeT(self._next)
            self._next += 1
            self._by_key[key] = ino
            self._by_ino[ino] = node
        return ino

    def get(self, ino: int) -> Node | None:
        """The node behind ino, or None (the root and unknown inodes have none)."""
        return self._by_ino.get(ino)

    def __len__(self) -> int:
        return len(self._by_ino)
