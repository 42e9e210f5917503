"""Pull-style NAR parser: validates untrusted NAR bytes and yields events in NAR order.

Pure: all input comes from the ``read(n)`` callable given at construction. The parser never
allocates by an unchecked length: syntax tokens are at most 16 bytes, names 255, symlink targets
4095; file contents are streamed in pieces (``file_contents``). It never reads past the end of the
NAR, so a NAR embedded in a longer stream leaves the rest unread.

Every violation raises NarError naming the problem and the byte offset where it starts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

from nix_compat.errors import NarError
from nix_compat.nar import wire
from nix_compat.nar.events import DirectoryEnd, DirectoryStart, Entry, File, NarEvent, Symlink

__all__ = ["NarReader"]

_MAX_TOKEN_LEN = 16  # longest syntax string is "nix-archive-1"
_SKIP_CHUNK = 1 << 20

_DIRECTORY_START = DirectoryStart()
_DIRECTORY_END = DirectoryEnd()


class NarReader:
    """Parse one NAR from ``read`` (which may return fewer bytes than asked; b"" is end of input).

    Iterate once to get the events. Right after a ``File`` event, ``file_contents()`` yields that
    file's bytes; whatever the consumer leaves unread is skipped when the next event is pulled.
    ``bytes_read`` counts every byte consumed so far.
    """

    __slots__ = ("_file_pad", "_file_remaining", "_in_file", "_read", "_started", "bytes_read")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.bytes_read = 0
        self._started = False
        self._in_file = False
        self._file_remaining = 0
        self._file_pad = 0

    def __iter__(self) -> Iterator[NarEvent]:
        if self._started:
            raise NarError("a NarReader can only be iterated once")
        self._started = True
        return self._events()

    def file_contents(self, max_chunk: int = 1 << 20) -> Iterator[bytes]:
        """The current file's bytes, in pieces of at most max_chunk bytes.

        Raises:
            NarError: not right after a File event, or the input ends inside the contents.

        """
        if not self._in_file:
            raise NarError("file_contents() is only valid right after a File event")
        if max_chunk <= 0:
            raise ValueError(f"max_chunk must be positive, not {max_chunk}")
        return self._contents(max_chunk)

    # -- grammar -------------------------------------------------------------------------------

    def _events(self) -> Iterator[NarEvent]:
        magic = self._read_exact(len(wire.MAGIC))
        if magic != wire.MAGIC:
            self._fail("bad magic: not a NAR (expected 'nix-archive-1')", 0)
        self._expect(wire.TOK_OPEN_TYPE, "'(' 'type'")
        # One element per open directory: the last entry name seen in it (None before the first).
        stack: list[bytes | None] = []
        while True:
            # Here we are right after "(" "type" of a node.
            offset = self.bytes_read
            tag = self._read_token()
            if tag == b"symlink":
                self._expect(wire.TOK_TARGET, "'target'")
                yield Symlink(self._read_target())
                self._expect(wire.TOK_PAR, "')'")
                node_done = True
            elif tag == b"regular":
                yield self._file_header()
                self._finish_file()
                self._expect(wire.TOK_PAR, "')'")
                node_done = True
            elif tag == b"directory":
                yield _DIRECTORY_START
                stack.append(None)
                node_done = False
            else:
                self._fail(f"unknown node type {tag!r}", offset)

            while True:
                if node_done:
                    if not stack:
                        return
                    self._expect(wire.TOK_PAR, "')' closing the entry")
                offset = self.bytes_read
                token = self._read_token()
                if token == b")":
                    stack.pop()
                    yield _DIRECTORY_END
                    node_done = True
                elif token == b"entry":
                    self._expect(wire.TOK_OPEN_NAME, "'(' 'name'")
                    name = self._read_name(stack[-1])
                    stack[-1] = name
                    self._expect(wire.TOK_NOD, f"'node' '(' 'type' after entry name {name!r}")
                    yield Entry(name)
                    break
                else:
                    self._fail(f"unknown token {token!r} in directory (expected 'entry' or ')')", offset)

    def _file_header(self) -> File:
        offset = self.bytes_read
        token = self._read_token()
        executable = False
        if token == b"executable":
            self._expect(wire.TOK_EMPTY_CONTENTS, "'' 'contents' after 'executable'")
            executable = True
        elif token != b"contents":
            self._fail(f"unknown token {token!r} in file (expected 'contents' or 'executable')", offset)
        (size,) = wire.unpack_u64(self._read_exact(8))
        self._in_file = True
        self._file_remaining = size
        self._file_pad = -size % 8
        return File(executable, size)

    def _contents(self, max_chunk: int) -> Iterator[bytes]:
        read = self._read
        while self._in_file and self._file_remaining:
            data = read(min(self._file_remaining, max_chunk))
            if not data:
                self._fail_eof(self.bytes_read)
            n = len(data)
            self._file_remaining -= n
            self.bytes_read += n
            yield data

    def _finish_file(self) -> None:
        # Skip what the consumer did not read, then check the padding.
        while self._file_remaining:
            data = self._read(min(self._file_remaining, _SKIP_CHUNK))
            if not data:
                self._fail_eof(self.bytes_read)
            self._file_remaining -= len(data)
            self.bytes_read += len(data)
        self._in_file = False
        if self._file_pad:
            offset = self.bytes_read
            if any(self._read_exact(self._file_pad)):
                self._fail("non-zero padding after file contents", offset)

    def _read_name(self, previous: bytes | None) -> bytes:
        offset = self.bytes_read
        name = self._read_str(wire.MAX_NAME_LEN, "entry name")
        problem = wire.name_problem(name)
        if problem is not None:
            self._fail(f"entry name {name!r} {problem}", offset)
        if previous is not None and name <= previous:
            what = "duplicate" if name == previous else "unsorted"
            self._fail(f"{what} entry name {name!r} after {previous!r}", offset)
        return name

    def _read_target(self) -> bytes:
        offset = self.bytes_read
        target = self._read_str(wire.MAX_TARGET_LEN, "symlink target")
        problem = wire.target_problem(target)
        if problem is not None:
            self._fail(f"symlink target {target!r} {problem}", offset)
        return target

    # -- strings -------------------------------------------------------------------------------

    def _read_token(self) -> bytes:
        """A syntax string (not longer than 16 bytes)."""
        offset = self.bytes_read
        # Every syntax string we expect here is non-empty, so it spans at least 16 bytes.
        head = self._read_exact(16)
        (length,) = wire.unpack_u64(head)
        if length > _MAX_TOKEN_LEN:
            self._fail(f"unknown token of length {length}", offset)
        data = head[8:] if length <= 8 else head[8:] + self._read_exact(8)
        if any(data[length:]):
            self._fail("non-zero padding", offset)
        return data[:length]

    def _read_str(self, max_len: int, what: str) -> bytes:
        offset = self.bytes_read
        (length,) = wire.unpack_u64(self._read_exact(8))
        if length > max_len:
            self._fail(f"{what} cannot be over {max_len} bytes long (length {length})", offset)
        data = self._read_exact(length + (-length % 8))
        if any(data[length:]):
            self._fail(f"non-zero padding in {what}", offset)
        return data[:length]

    def _expect(self, token: bytes, what: str) -> None:
        offset = self.bytes_read
        data = self._read_exact(len(token))
        if data != token:
            self._fail(_mismatch(data, token, what), offset)

    def _read_exact(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self._read(n - got)
                if not more:
                    self._fail_eof(self.bytes_read + got)
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.bytes_read += n
        return data

    def _fail_eof(self, offset: int) -> NoReturn:
        raise NarError(f"unexpected end of NAR at offset {offset}")

    def _fail(self, message: str, offset: int) -> NoReturn:
        raise NarError(f"{message} at offset {offset}")


def _mismatch(data: bytes, token: bytes, what: str) -> str:
    """Describe how data differs from the expected token run, naming bad padding if that is it."""
    pos = 0
    while pos + 8 <= len(token):
        (want,) = wire.unpack_u64(token, pos)
        (got,) = wire.unpack_u64(data, pos)
        padded = want + (-want % 8)
        if got != want or data[pos + 8 : pos + 8 + want] != token[pos + 8 : pos + 8 + want]:
            shown = data[pos + 8 : pos + 8 + min(got, 16)] if got <= 16 else b""
            return f"expected {what}, found {shown!r} (length {got})"
        if data[pos + 8 + want : pos + 8 + padded] != token[pos + 8 + want : pos + 8 + padded]:
            return f"non-zero padding in {what}"
        pos += 8 + padded
    return f"expected {what}"
