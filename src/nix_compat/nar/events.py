"""Events produced by the NAR reader, in NAR (pre-order) order.

A directory is ``DirectoryStart``, then for each child ``Entry(name)`` followed by the child's own
events, then ``DirectoryEnd``. A file is one ``File`` event; its bytes are pulled separately with
``NarReader.file_contents``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DirectoryEnd", "DirectoryStart", "Entry", "File", "NarEvent", "Symlink"]


@dataclass(frozen=True, slots=True)
class Symlink:
    """A symlink node with its (validated) target."""

    target: bytes


@dataclass(frozen=True, slots=True)
class File:
    """A regular file node; its ``size`` bytes of contents follow."""

    executable: bool
    size: int


@dataclass(frozen=True, slots=True)
class DirectoryStart:
    """A directory node begins; its entries follow in strictly ascending name order."""


@dataclass(frozen=True, slots=True)
class Entry:
    """The next child of the current directory is called ``name``; its node follows."""

    name: bytes


@dataclass(frozen=True, slots=True)
class DirectoryEnd:
    """The current directory has no more entries."""


NarEvent = Symlink | File | DirectoryStart | Entry | DirectoryEnd
