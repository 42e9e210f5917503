"""Push-style NAR encoder: the caller announces nodes, the writer emits NAR bytes.

Pure: the only effect is calling the ``write`` callable given at construction. Small syntax tokens
are collected in a buffer and flushed in large writes; file contents at least ``_PASSTHROUGH``
bytes long are handed to ``write`` as they are (no copy), after the buffer is flushed.

The writer checks the structure as it goes: exactly one root node, one node after each
``entry()``, entry names valid and strictly ascending, file contents exactly ``size`` bytes long.
After a NarError the writer is unusable (the output is already wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NoReturn

from nix_compat.errors import NarError
from nix_compat.nar import wire

__all__ = ["NarWriter"]

_FLUSH_AT = 256 * 1024
_PASSTHROUGH = 64 * 1024


class NarWriter:
    """Encode one NAR by calls mirroring its structure (see module docstring).

    Example: a directory with one file::

        w = NarWriter(out.write)
        w.begin_directory()
        w.entry(b"hello")
        w.file(False, 5, [b"hello"])
        w.end_directory()
        w.close()
    """

    __slots__ = ("_broken", "_buf", "_done", "_expect_node", "_last_names", "_write")

    def __init__(self, write: Callable[[bytes | memoryview], object]) -> None:
        self._write = write
        self._buf = bytearray(wire.TOK_NAR)
        # One element per open directory: the last entry name written in it (None before the first).
        self._last_names: list[bytes | None] = []
        self._expect_node = True
        self._done = False
        self._broken = False

    # -- nodes ---------------------------------------------------------------------------------

    def symlink(self, target: bytes) -> None:
        """Write a symlink node pointing to target."""
        self._start_node("symlink")
        problem = wire.target_problem(target)
        if problem is not None:
            self._fail(f"symlink target {target[:100]!r} {problem}")
        buf = self._buf
        buf += wire.TOK_SYM
        buf += wire.pack_u64(len(target))
        buf += target
        buf += wire.ZEROS[: -len(target) % 8]
        buf += wire.TOK_PAR
        self._end_node()

    def file(self, executable: bool, size: int, contents: Iterable[bytes | memoryview]) -> None:
        """Write a regular file node of exactly size bytes, streamed from contents.

        Raises:
            NarError: contents yield fewer or more than size bytes.

        """
        self._start_node("file")
        if size < 0:
            self._fail(f"negative file size {size}")
        buf = self._buf
        buf += wire.TOK_EXE if executable else wire.TOK_REG
        buf += wire.pack_u64(size)
        remaining = size
        write = self._write
        try:
            for chunk in contents:
                n = len(chunk)
                if n > remaining:
                    self._fail(f"file contents longer than the size {size} specified")
                remaining -= n
                if n >= _PASSTHROUGH:
                    if buf:
                        write(bytes(buf))
                        buf.clear()
                    write(chunk)
                else:
                    buf += chunk
                    if len(buf) >= _FLUSH_AT:
                        write(bytes(buf))
                        buf.clear()
        except BaseException:
            # A failing source or sink leaves a partial file in the output: nothing can follow.
            self._broken = True
            raise
        if remaining:
            self._fail(f"unexpected end of file contents: got {size - remaining} of {size} bytes")
        buf += wire.ZEROS[: -size % 8]
        buf += wire.TOK_PAR
        self._end_node()

    def begin_directory(self) -> None:
        """Start a directory node; follow with entry()/node pairs, then end_directory()."""
        self._start_node("directory")
        self._buf += wire.TOK_DIR
        self._last_names.append(None)

    def entry(self, name: bytes) -> None:
        """Announce the next child of the current directory; its node must follow.

        Raises:
            NarError: outside a directory, name invalid, or not after the previous name.

        """
        if self._broken or self._expect_node or not self._last_names:
            self._fail_state(f"entry {name[:100]!r}")
        problem = wire.name_problem(name)
        if problem is not None:
            self._fail(f"entry name {name[:300]!r} {problem}")
        last = self._last_names[-1]
        if last is not None and name <= last:
            what = "duplicate" if name == last else "unsorted"
            self._fail(f"{what} entry name {name!r} after {last!r}")
        self._last_names[-1] = name
        buf = self._buf
        buf += wire.TOK_ENT
        buf += wire.pack_u64(len(name))
        buf += name
        buf += wire.ZEROS[: -len(name) % 8]
        buf += wire.TOK_NOD
        self._expect_node = True

    def end_directory(self) -> None:
        """Close the current directory."""
        if self._broken or self._expect_node or not self._last_names:
            self._fail_state("end_directory")
        self._last_names.pop()
        self._buf += wire.TOK_PAR
        self._end_node()

    def close(self) -> None:
        """Flush the rest; checks that the root node is complete."""
        if self._broken or not self._done:
            self._fail_state("close")
        if self._buf:
            self._write(bytes(self._buf))
            self._buf.clear()

    # -- state ---------------------------------------------------------------------------------

    def _start_node(self, kind: str) -> None:
        if self._broken or not self._expect_node:
            self._fail_state(kind)
        self._expect_node = False

    def _end_node(self) -> None:
        if self._last_names:
            self._buf += wire.TOK_PAR  # closes the enclosing "entry" "(" … ")"
        else:
            self._done = True
        if len(self._buf) >= _FLUSH_AT:
            self._write(bytes(self._buf))
            self._buf.clear()

    def _fail_state(self, call: str) -> NoReturn:
        if self._broken:
            self._fail(f"{call}: writer unusable after an earlier error")
        if self._done:
            self._fail(f"{call}: the NAR's root node is already complete")
        if call == "close":
            self._fail("close: the NAR's root node is not complete")
        if self._expect_node:
            self._fail(f"{call}: a node is expected here")
        if not self._last_names:
            self._fail(f"{call}: not inside a directory")
        self._fail(f"{call}: a node was already written; call entry() or end_directory() first")

    def _fail(self, message: str) -> NoReturn:
        self._broken = True
        raise NarError(message)
