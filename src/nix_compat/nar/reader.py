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

_TOK_CONTENTS = wire.encode_str(b"contents")
_TOK_EXECUTABLE = wire.encode_str(b"executable")
_CLOSE_IN_DIRECTORY = wire.TOK_PAR + wire.TOK_PAR
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
    #
    # Reads are merged where the grammar guarantees the bytes exist in every valid NAR (e.g. the
    # "node" "(" "type" run together with the node type), so a small file costs about seven read()
    # calls; nothing is ever read beyond the end of a valid NAR.

    def _events(self) -> Iterator[NarEvent]:
        magic = self._read_exact(len(wire.MAGIC))
        if magic != wire.MAGIC:
            self._fail("bad magic: not a NAR (expected 'nix-archive-1')", 0)
        tag, offset = self._read_token(wire.TOK_OPEN_TYPE, "'(' 'type'")
        # One element per open directory: the last entry name seen in it (None before the first).
        stack: list[bytes | None] = []
        while True:
            # tag is the type of the node starting here; offset is where the type string starts.
            if tag == b"symlink":
                yield Symlink(self._read_target())
                self._close_node(0, bool(stack))
                node_done = True
            elif tag == b"regular":
                yield self._file_header()
                self._finish_file(bool(stack))
                node_done = True
            elif tag == b"directory":
                if len(stack) == wire.MAX_DEPTH:
                    self._fail(f"directories nested more than {wire.MAX_DEPTH} deep", offset)
                yield _DIRECTORY_START
                stack.append(None)
                node_done = False
            else:
                self._fail(f"unknown node type {tag!r}", offset)

            while True:
                if node_done and not stack:
                    return
                token, offset = self._read_token()
                if token == b")":
                    stack.pop()
                    yield _DIRECTORY_END
                    if stack:
                        self._expect(wire.TOK_PAR, "')' closing the entry")
                    node_done = True
                elif token == b"entry":
                    name = self._read_name(stack[-1])
                    stack[-1] = name
                    tag, offset = self._read_token(
                        wire.TOK_NOD, f"'node' '(' 'type' after entry name {name!r}"
                    )
                    yield Entry(name)
                    break
                else:
                    self._fail(f"unknown token {token!r} in directory (expected 'entry' or ')')", offset)

    def _file_header(self) -> File:
        offset = self.bytes_read
        # Both alternatives ("contents" <size>, or "executable" …) span at least 24 bytes.
        head = self._read_exact(24, partial_ok=True)
        if len(head) < 24:
            if head[:16] == wire.TOK_PAR:
                self._fail("expected 'contents' or 'executable' in a regular file, found ')'", offset)
            self._fail_eof(offset + len(head))
        if head[:16] == _TOK_CONTENTS:
            executable = False
            (size,) = wire.unpack_u64(head, 16)
        elif head == _TOK_EXECUTABLE:
            tail = self._read_exact(len(wire.TOK_EMPTY_CONTENTS) + 8)
            if tail[:-8] != wire.TOK_EMPTY_CONTENTS:
                self._fail_mismatch(
                    tail[:-8], wire.TOK_EMPTY_CONTENTS, "'' 'contents' after 'executable'", offset + 24
                )
            executable = True
            (size,) = wire.unpack_u64(tail, len(tail) - 8)
        else:
            (length,) = wire.unpack_u64(head)
            if length > _MAX_TOKEN_LEN:
                self._fail(f"unknown token of length {length}", offset)
            token = head[8 : 8 + length]
            if token in (b"contents", b"executable"):
                self._fail("non-zero padding", offset)
            self._fail(f"unknown token {token!r} in file (expected 'contents' or 'executable')", offset)
        self._in_file = True
        self._file_remaining = size
        self._file_pad = -size % 8
        return File(executable, size)

    def _contents(self, max_chunk: int) -> Iterator[bytes]:
        read = self._read
        while self._in_file and self._file_remaining:
            want = min(self._file_remaining, max_chunk)
            data = read(want)
            n = len(data)
            if not n:
                self._fail_eof(self.bytes_read)
            if n > want:
                raise NarError(f"read({want}) returned {n} bytes: the read callable is broken")
            self._file_remaining -= n
            self.bytes_read += n
            yield data

    def _finish_file(self, in_directory: bool) -> None:
        # Skip what the consumer did not read, then check the padding and the closing tokens.
        while self._file_remaining:
            want = min(self._file_remaining, _SKIP_CHUNK)
            n = len(self._read(want))
            if not n:
                self._fail_eof(self.bytes_read)
            if n > want:
                raise NarError(f"read({want}) returned {n} bytes: the read callable is broken")
            self._file_remaining -= n
            self.bytes_read += n
        self._in_file = False
        self._close_node(self._file_pad, in_directory)

    def _close_node(self, pad: int, in_directory: bool) -> None:
        """Read pad zero bytes, the node's ')' and, inside a directory, the entry's ')'."""
        offset = self.bytes_read
        expected = _CLOSE_IN_DIRECTORY if in_directory else wire.TOK_PAR
        data = self._read_exact(pad + len(expected))
        if pad and any(data[:pad]):
            self._fail("non-zero padding after file contents", offset)
        if data[pad:] != expected:
            what = "')' ')' closing the node and the entry" if in_directory else "')'"
            self._fail_mismatch(data[pad:], expected, what, offset + pad)

    def _read_name(self, previous: bytes | None) -> bytes:
        offset = self.bytes_read + len(wire.TOK_OPEN_NAME)
        name = self._read_str(wire.MAX_NAME_LEN, "entry name", wire.TOK_OPEN_NAME, "'(' 'name'")
        problem = wire.name_problem(name)
        if problem is not None:
            self._fail(f"entry name {name!r} {problem}", offset)
        if previous is not None and name <= previous:
            what = "duplicate" if name == previous else "unsorted"
            self._fail(f"{what} entry name {name!r} after {previous!r}", offset)
        return name

    def _read_target(self) -> bytes:
        offset = self.bytes_read + len(wire.TOK_TARGET)
        target = self._read_str(wire.MAX_TARGET_LEN, "symlink target", wire.TOK_TARGET, "'target'")
        problem = wire.target_problem(target)
        if problem is not None:
            self._fail(f"symlink target {target!r} {problem}", offset)
        return target

    # -- strings -------------------------------------------------------------------------------

    def _read_token(self, prefix: bytes = b"", what: str = "") -> tuple[bytes, int]:
        """Expect the token run prefix, then read a syntax string (at most 16 bytes).

        Returns the string and the offset where it starts.
        """
        offset = self.bytes_read
        p = len(prefix)
        # Every syntax string we expect here is non-empty, so it spans at least 16 bytes.
        head = self._read_exact(p + 16)
        if p and head[:p] != prefix:
            self._fail_mismatch(head[:p], prefix, what, offset)
        offset += p
        (length,) = wire.unpack_u64(head, p)
        if length > _MAX_TOKEN_LEN:
            self._fail(f"unknown token of length {length}", offset)
        data = head[p + 8 :] if length <= 8 else head[p + 8 :] + self._read_exact(8)
        if any(data[length:]):
            self._fail("non-zero padding", offset)
        return data[:length], offset

    def _read_str(self, max_len: int, what: str, prefix: bytes, prefix_what: str) -> bytes:
        """Expect the token run prefix, then read a string of at most max_len bytes."""
        offset = self.bytes_read
        p = len(prefix)
        head = self._read_exact(p + 8)
        if head[:p] != prefix:
            self._fail_mismatch(head[:p], prefix, prefix_what, offset)
        offset += p
        (length,) = wire.unpack_u64(head, p)
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
            self._fail_mismatch(data, token, what, offset)

    def _read_exact(self, n: int, partial_ok: bool = False) -> bytes:
        """The next n bytes; fewer at the end of the input when partial_ok, else an error."""
        data = self._read(n)
        if len(data) != n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self._read(n - got)
                if not more:
                    if partial_ok:
                        self.bytes_read += got
                        return b"".join(parts)
                    self._fail_eof(self.bytes_read + got)
                parts.append(more)
                got += len(more)
            if got > n:
                raise NarError(f"read({n}) returned {got} bytes: the read callable is broken")
            data = b"".join(parts)
        self.bytes_read += n
        return data

    def _fail_eof(self, offset: int) -> NoReturn:
        raise NarError(f"unexpected end of NAR at offset {offset}")

    def _fail_mismatch(self, data: bytes, token: bytes, what: str, offset: int) -> NoReturn:
        message, pos = _mismatch(data, token, what)
        self._fail(message, offset + pos)

    def _fail(self, message: str, offset: int) -> NoReturn:
        raise NarError(f"{message} at offset {offset}")


def _mismatch(data: bytes, token: bytes, what: str) -> tuple[str, int]:
    """Describe how data differs from the expected token run, and where (relative offset).

    Names bad padding when that is the only difference.
    """
    pos = 0
    while pos + 8 <= len(token):
        (want,) = wire.unpack_u64(token, pos)
        (got,) = wire.unpack_u64(data, pos)
        padded = want + (-want % 8)
        if got != want or data[pos + 8 : pos + 8 + want] != token[pos + 8 : pos + 8 + want]:
            shown = data[pos + 8 : pos + 8 + min(got, 16)] if got <= 16 else b""
            return f"expected {what}, found {shown!r} (length {got})", pos
        if data[pos + 8 + want : pos + 8 + padded] != token[pos + 8 + want : pos + 8 + padded]:
            return f"non-zero padding in {what}", pos
        pos += 8 + padded
    return f"expected {what}", 0
