"""Events produced by the NAR reader, in NAR (pre-order) order.

A directory is ``DirectoryStart``, then for each child ``Entry(name)`` followed by the child's own
events, then ``DirectoryEnd``. A file is one ``File`` event; its bytes are pulled separately with
``NarReader.file_contents``.
"""

from __future__ import annotations

from nix_compat.frozen import Frozen

__all__ = ["DirectoryEnd", "DirectoryStart", "Entry", "File", "NarEvent", "Symlink"]


class Symlink(Frozen):
    """A symlink node with its (validated) target."""

    __slots__ = ("target",)
    target: bytes

    def __init__(self, target: bytes) -> None:
        object.__setattr__(self, "target", target)


class File(Frozen):
    """A regular file node; its ``size`` bytes of contents follow."""

    __slots__ = ("executable", "size")
    executable: bool
    size: int

    def __init__(self, executable: bool, size: int) -> None:
        object.__setattr__(self, "executable", executable)
        object.__setattr__(self, "size", size)


class DirectoryStart(Frozen):
    """A directory node begins; its entries follow in strictly ascending name order."""

    __slots__ = ()


class Entry(Frozen):
    """The next child of the current directory is called ``name``; its node follows."""

    __slots__ = ("name",)
    name: bytes

    def __init__(self, name: bytes) -> None:
        object.__setattr__(self, "name", name)


class DirectoryEnd(Frozen):
    """The current directory has no more entries."""

    __slots__ = ()


NarEvent = Symlink | File | DirectoryStart | Entry | DirectoryEnd
