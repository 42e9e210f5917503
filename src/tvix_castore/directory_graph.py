"""Order and size validation of Directory closures as they stream in (pure, no IO).

Two directions, as in tvix's ``order_validator.rs`` and ``directory_graph.rs``:

* ``LeavesToRootValidator`` checks an upload (Put): every child a Directory refers to must have
  been added before in the same session, with the recorded ``size`` equal to the child's
  ``size()``; repeats are dropped. ``finalize`` demands exactly one root and returns the
  Directories in an order that stores children before parents.
* ``RootToLeavesValidator`` checks a download (recursive Get): the root comes first, then only
  Directories some already received Directory refers to. ``finalize`` demands that everything
  referred to has arrived.

Error texts follow tvix (spec §3.3, §3.4); all failures are ``DirectoryError``.
"""

from __future__ import annotations

from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DirectoryError

__all__ = ["LeavesToRootValidator", "RootToLeavesValidator"]


def _show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


def _wrong_size(name: bytes, specified: int, recorded: int) -> DirectoryError:
    return DirectoryError(f"'{_show(name)}' has wrong size, specified {specified}, recorded {recorded}")


class LeavesToRootValidator:
    """Validates Directories arriving leaves first (the order of a Put stream)."""

    __slots__ = ("_dirs", "_has_parent")

    def __init__(self) -> None:
        # Insertion order is a valid leaves-to-root order: a Directory is only accepted once all
        # its children are in, so draining in this order never stores a parent before a child.
        self._dirs: dict[B3Digest, Directory] = {}
        self._has_parent: set[B3Digest] = set()

    def __len__(self) -> int:
        return len(self._dirs)

    def add(self, directory: Directory) -> bool:
        """Accept one Directory; False when it was added before (a harmless repeat).

        Raises:
            DirectoryError: a child was not added before, or its recorded size is wrong.

        """
        digest = directory.digest()
        if digest in self._dirs:
            return False
        for name, node in directory.directories():
            child = self._dirs.get(node.digest)
            if child is None:
                raise DirectoryError(f"unknown directory was referenced: '{_show(name)}' -> {node.digest}")
            if node.size != child.size():
                raise _wrong_size(name, node.size, child.size())
        for _, node in directory.directories():
            self._has_parent.add(node.digest)
        self._dirs[digest] = directory
        return True

    def finalize(self) -> tuple[B3Digest, list[Directory]]:
        """The root digest and every Directory, children before parents.

        Raises:
            DirectoryError: nothing was added ("got no directories"), or more than one
                Directory has no parent ("graph has disconnected roots").

        """
        if not self._dirs:
            raise DirectoryError("got no directories")
        roots = [d for d in self._dirs if d not in self._has_parent]
        if len(roots) != 1:
            raise DirectoryError("graph has disconnected roots")
        # The single root is necessarily the last one added: every other Directory has a parent,
        # and parents are added after their children.
        return roots[0], list(self._dirs.values())


class RootToLeavesValidator:
    """Validates Directories arriving root first (the order of a recursive Get stream)."""

    __slots__ = ("_expected", "_received", "_root")

    def __init__(self, root: B3Digest | None = None) -> None:
        """Expect root first; with None the first Directory received becomes the root."""
        self._root = root
        # digest -> (name, size) of the first reference seen, to check the child's size on arrival.
        self._expected: dict[B3Digest, tuple[bytes, int] | None] = {}
        if root is not None:
            self._expected[root] = None
        self._received: dict[B3Digest, Directory] = {}

    @property
    def root(self) -> B3Digest | None:
        """The root digest (known once the first Directory arrived, if not given)."""
        return self._root

    def __len__(self) -> int:
        return len(self._received)

    def add(self, directory: Directory) -> bool:
        """Accept one Directory; False when it was received before (a harmless repeat).

        Raises:
            DirectoryError: the Directory was not expected, or a size does not match.

        """
        digest = directory.digest()
        if self._root is None:
            self._root = digest
            self._expected[digest] = None
        if digest not in self._expected:
            raise DirectoryError(f"received unexpected directory {digest}")
        if digest in self._received:
            return False
        ref = self._expected[digest]
        if ref is not None and ref[1] != directory.size():
            raise _wrong_size(ref[0], ref[1], directory.size())
        for name, node in directory.directories():
            if node.digest in self._received:
                recorded = self._received[node.digest].size()
            elif (first := self._expected.get(node.digest)) is not None:
                recorded = first[1]
            elif node.digest not in self._expected:
                self._expected[node.digest] = (name, node.size)
                continue
            else:
                # Only the root is expected without a reference; referring to it is a cycle,
                # which honest digests cannot form.
                raise DirectoryError(f"directory {digest} refers to the root {node.digest}")
            if node.size != recorded:
                raise _wrong_size(name, node.size, recorded)
        self._received[digest] = directory
        return True

    def missing(self) -> int:
        """How many referenced Directories have not arrived yet."""
        return len(self._expected) - len(self._received)

    def finalize(self) -> list[Directory]:
        """Every Directory received, root first, each after one that refers to it.

        Raises:
            DirectoryError: a referenced Directory never arrived ("graph is incomplete").

        """
        if self.missing():
            raise DirectoryError(f"graph is incomplete: still expected {self.missing()} directories")
        return list(self._received.values())
