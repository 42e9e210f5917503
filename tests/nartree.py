"""Test helpers around NARs: an in-memory tree model, and filesystem trees dumped with our writer.

A tree is ``FileT(executable, contents)``, ``SymlinkT(target)`` or ``DirT({name: tree})``. These
helpers read the filesystem (tests may; the library does not).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from nix_compat.nar import DirectoryEnd, DirectoryStart, Entry, File, NarReader, NarWriter, Symlink


@dataclass(frozen=True)
class FileT:
    executable: bool
    contents: bytes


@dataclass(frozen=True)
class SymlinkT:
    target: bytes


@dataclass(frozen=True)
class DirT:
    entries: dict[bytes, FileT | SymlinkT | DirT] = field(default_factory=dict)


Tree = FileT | SymlinkT | DirT


def write_tree(w: NarWriter, tree: Tree) -> None:
    """Feed tree to w (names in sorted order, as NAR requires)."""
    if isinstance(tree, FileT):
        w.file(tree.executable, len(tree.contents), [tree.contents])
    elif isinstance(tree, SymlinkT):
        w.symlink(tree.target)
    else:
        w.begin_directory()
        for name in sorted(tree.entries):
            w.entry(name)
            write_tree(w, tree.entries[name])
        w.end_directory()


def tree_to_nar(tree: Tree) -> bytes:
    out = io.BytesIO()
    w = NarWriter(out.write)
    write_tree(w, tree)
    w.close()
    return out.getvalue()


def tree_events(tree: Tree) -> Iterator[object]:
    """The events NarReader should yield for tree, each File followed by its contents."""
    if isinstance(tree, FileT):
        yield File(tree.executable, len(tree.contents))
        yield tree.contents
    elif isinstance(tree, SymlinkT):
        yield Symlink(tree.target)
    else:
        yield DirectoryStart()
        for name in sorted(tree.entries):
            yield Entry(name)
            yield from tree_events(tree.entries[name])
        yield DirectoryEnd()


def read_events(read: Callable[[int], bytes], max_chunk: int = 1 << 20) -> tuple[list[object], int]:
    """All events of one NAR (each File followed by its joined contents) and the bytes consumed."""
    r = NarReader(read)
    out: list[object] = []
    for ev in r:
        out.append(ev)
        if isinstance(ev, File):
            out.append(b"".join(r.file_contents(max_chunk)))
    return out, r.bytes_read


def nar_to_tree(data: bytes) -> Tree:
    """Parse a NAR back into a tree (iteratively, like the reader)."""
    r = NarReader(io.BytesIO(data).read)
    root: list[Tree] = []
    stack: list[tuple[DirT, list[bytes]]] = []

    def place(node: Tree) -> None:
        if stack:
            d, names = stack[-1]
            d.entries[names.pop()] = node
        else:
            root.append(node)

    for ev in r:
        if isinstance(ev, File):
            place(FileT(ev.executable, b"".join(r.file_contents())))
        elif isinstance(ev, Symlink):
            place(SymlinkT(ev.target))
        elif isinstance(ev, DirectoryStart):
            d = DirT({})
            place(d)
            stack.append((d, []))
        elif isinstance(ev, Entry):
            stack[-1][1].append(ev.name)
        elif isinstance(ev, DirectoryEnd):
            stack.pop()
    assert len(root) == 1
    return root[0]


def materialize(tree: Tree, path: bytes) -> None:
    """Create tree on disk at path (which must not exist)."""
    if isinstance(tree, FileT):
        with open(path, "wb") as f:
            f.write(tree.contents)
        os.chmod(path, 0o755 if tree.executable else 0o644)
    elif isinstance(tree, SymlinkT):
        os.symlink(tree.target, path)
    else:
        os.mkdir(path)
        for name, child in tree.entries.items():
            materialize(child, os.path.join(path, name))


def dump_path(path: str | bytes, write: Callable[[bytes | memoryview], object]) -> None:
    """Write the NAR of a filesystem tree with our writer, as `nix-store --dump` would."""
    w = NarWriter(write)
    _dump(w, os.fsencode(path))
    w.close()


def nar_of_path(path: str | bytes) -> bytes:
    out = io.BytesIO()
    dump_path(path, out.write)
    return out.getvalue()


def _dump(w: NarWriter, path: bytes) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        w.symlink(os.readlink(path))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            w.file(bool(st.st_mode & stat.S_IXUSR), st.st_size, iter(lambda: f.read(1 << 20), b""))
    elif stat.S_ISDIR(st.st_mode):
        w.begin_directory()
        for name in sorted(os.listdir(path)):
            w.entry(name)
            _dump(w, os.path.join(path, name))
        w.end_directory()
    else:
        raise ValueError(f"unsupported file type at {path!r}")
