"""NarReader: events for the spec §12.4 vectors, streaming, and every kind of malformed input."""

from __future__ import annotations

import io
import struct

import pytest
from fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_SYMLINK, nar

from nix_compat.errors import NarError
from nix_compat.nar import DirectoryEnd, DirectoryStart, Entry, File, NarReader, Symlink

HEAD = (b"nix-archive-1", b"(", b"type")


def _events(data: bytes, read_size: int | None = None) -> list[object]:
    """All events, with each File followed by its contents as one bytes object."""
    stream = io.BytesIO(data)
    if read_size is None:
        read = stream.read
    else:

        def read(n: int) -> bytes:
            return stream.read(min(n, read_size))

    r = NarReader(read)
    out: list[object] = []
    for ev in r:
        out.append(ev)
        if isinstance(ev, File):
            out.append(b"".join(r.file_contents()))
    assert r.bytes_read == len(data)
    return out


def _error(data: bytes) -> str:
    with pytest.raises(NarError) as info:
        _events(data)
    return str(info.value)


COMPLICATED_EVENTS = [
    DirectoryStart(),
    Entry(b".keep"),
    File(False, 0),
    b"",
    Entry(b"aa"),
    Symlink(b"/nix/store/somewhereelse"),
    Entry(b"keep"),
    DirectoryStart(),
    Entry(b".keep"),
    File(False, 0),
    b"",
    DirectoryEnd(),
    DirectoryEnd(),
]

EXEC_HELLO = nar(*HEAD, b"regular", b"executable", b"", b"contents", b"Hello World!", b")")
EMPTY_DIR = nar(*HEAD, b"directory", b")")
ONE_BYTE = nar(*HEAD, b"regular", b"contents", b"\x01", b")")


@pytest.mark.parametrize("read_size", [None, 1, 3, 8, 17])
def test_vectors(read_size):
    """The §12.4 NARs parse to the expected events, however the input is split."""
    assert _events(NAR_CONTENTS_SYMLINK, read_size) == [Symlink(b"/nix/store/somewhereelse")]
    assert _events(NAR_CONTENTS_HELLOWORLD, read_size) == [File(False, 12), b"Hello World!"]
    assert _events(EXEC_HELLO, read_size) == [File(True, 12), b"Hello World!"]
    assert _events(NAR_CONTENTS_COMPLICATED, read_size) == COMPLICATED_EVENTS
    assert _events(EMPTY_DIR, read_size) == [DirectoryStart(), DirectoryEnd()]
    assert _events(ONE_BYTE, read_size) == [File(False, 1), b"\x01"]


def test_sizes_match_spec():
    assert [len(x) for x in (NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, EXEC_HELLO)] == [136, 128, 160]
    assert [len(x) for x in (NAR_CONTENTS_COMPLICATED, EMPTY_DIR, ONE_BYTE)] == [840, 96, 120]


def test_file_contents_in_pieces():
    """file_contents honours max_chunk and returns the bytes in order."""
    contents = bytes(range(256)) * 40
    data = nar(*HEAD, b"regular", b"contents", contents, b")")
    r = NarReader(io.BytesIO(data).read)
    it = iter(r)
    assert next(it) == File(False, len(contents))
    pieces = list(r.file_contents(max_chunk=1000))
    assert all(len(p) <= 1000 for p in pieces)
    assert b"".join(pieces) == contents
    assert list(it) == []
    assert r.bytes_read == len(data)


def test_unread_contents_are_skipped():
    """Contents the consumer leaves unread (fully or partly) are skipped, padding still checked."""
    inner = nar(b"regular", b"contents", b"x" * 1001, b")")
    data = nar(*HEAD, b"directory", b"entry", b"(", b"name", b"a", b"node", b"(", b"type") + inner
    data += nar(b")", b"entry", b"(", b"name", b"b", b"node", b"(", b"type") + inner + nar(b")", b")")
    r = NarReader(io.BytesIO(data).read)
    seen = []
    first = True
    for ev in r:
        seen.append(ev)
        if isinstance(ev, File) and first:
            first = False
            next(r.file_contents(max_chunk=10))
    assert seen == [
        DirectoryStart(),
        Entry(b"a"),
        File(False, 1001),
        Entry(b"b"),
        File(False, 1001),
        DirectoryEnd(),
    ]
    assert r.bytes_read == len(data)


def test_file_contents_misuse():
    r = NarReader(io.BytesIO(NAR_CONTENTS_COMPLICATED).read)
    with pytest.raises(NarError, match="only valid right after a File"):
        r.file_contents()
    it = iter(r)
    next(it)
    with pytest.raises(NarError, match="only valid right after a File"):
        r.file_contents()
    with pytest.raises(NarError, match="only be iterated once"):
        iter(r)


def test_stops_at_end_of_nar():
    """Trailing bytes after the root node are not read (the NAR may be embedded in a stream)."""
    for valid in (NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_COMPLICATED, EMPTY_DIR):
        stream = io.BytesIO(valid + nar(b")", b"entry") + b"garbage")
        r = NarReader(stream.read)
        list(r)
        assert r.bytes_read == len(valid)
        assert stream.tell() == len(valid)


@pytest.mark.parametrize(
    "valid",
    [
        NAR_CONTENTS_SYMLINK,
        NAR_CONTENTS_HELLOWORLD,
        EXEC_HELLO,
        NAR_CONTENTS_COMPLICATED,
        EMPTY_DIR,
        ONE_BYTE,
    ],
    ids=["symlink", "hello", "exec", "complicated", "emptydir", "onebyte"],
)
def test_truncated_everywhere(valid):
    """Every proper prefix fails with 'unexpected end of NAR at offset <prefix length>'."""
    for cut in range(len(valid)):
        msg = _error(valid[:cut])
        assert msg == f"unexpected end of NAR at offset {cut}", (cut, msg)


def _padding_offsets(data: bytes) -> list[int]:
    """Offsets of all padding bytes, treating the NAR as the string sequence it is."""
    out = []
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.extend(range(pos + 8 + n, pos + 8 + n + (-n % 8)))
        pos += 8 + n + (-n % 8)
    return out


@pytest.mark.parametrize(
    "valid",
    [NAR_CONTENTS_SYMLINK, NAR_CONTENTS_HELLOWORLD, EXEC_HELLO, NAR_CONTENTS_COMPLICATED, ONE_BYTE],
    ids=["symlink", "hello", "exec", "complicated", "onebyte"],
)
def test_nonzero_padding_everywhere(valid):
    """A non-zero byte in any padding (tokens, names, targets, contents) is refused."""
    offsets = _padding_offsets(valid)
    assert offsets
    for off in offsets:
        for value in (1, 0x80):
            bad = bytearray(valid)
            bad[off] = value
            msg = _error(bytes(bad))
            if off < 24:
                assert "bad magic" in msg
            else:
                assert "padding" in msg, (off, msg)


def test_bad_magic():
    assert _error(nar(b"nix-archive-2", b"(", b"type", b"symlink", b"target", b"x", b")")).startswith(
        "bad magic"
    )
    assert _error(b"\x00" * 56).startswith("bad magic")
    assert _error(b"GET / HTTP/1.1\r\n" + bytes(100)).startswith("bad magic")
    assert _error(nar(b"nix-archive-1", b"[", b"type", b"symlink")).startswith("expected '(' 'type'")


def _dir(*entries: tuple[bytes, tuple[bytes, ...]]) -> bytes:
    parts = [*HEAD, b"directory"]
    for name, node in entries:
        parts += [b"entry", b"(", b"name", name, b"node", b"(", b"type", *node, b")", b")"]
    return nar(*parts, b")")


SYM = (b"symlink", b"target", b"t")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"", "cannot be empty"),
        (b".", "cannot be '.'"),
        (b"..", "cannot be '..'"),
        (b"a/b", "cannot contain slashes"),
        (b"/", "cannot contain slashes"),
        (b"a\0", "cannot contain null bytes"),
        (b"x" * 256, "cannot be over 255 bytes long"),
    ],
)
def test_invalid_names(name, problem):
    msg = _error(_dir((name, SYM)))
    assert problem in msg
    assert "entry name" in msg and msg.endswith("at offset 128")


def test_valid_unusual_names():
    names = sorted([b"x" * 255, b"\xff\xfe", b"...", b".a", b"a b", b"\n"])
    events = _events(_dir(*[(n, SYM) for n in names]))
    assert [e.name for e in events if isinstance(e, Entry)] == names


@pytest.mark.parametrize(
    ("names", "what"),
    [
        ([b"b", b"a"], "unsorted"),
        ([b"a", b"a"], "duplicate"),
        ([b"a", b"c", b"b"], "unsorted"),
        ([b"ab", b"a"], "unsorted"),
    ],
)
def test_names_must_ascend(names, what):
    msg = _error(_dir(*[(n, SYM) for n in names]))
    assert msg.startswith(f"{what} entry name {names[-1]!r} after")


def test_order_is_per_directory():
    inner_z = (b"directory", b"entry", b"(", b"name", b"z", b"node", b"(", b"type", *SYM, b")", b")")
    inner_a = (b"directory", b"entry", b"(", b"name", b"a", b"node", b"(", b"type", *SYM, b")", b")")
    events = _events(_dir((b"m", inner_z), (b"n", inner_a)))
    assert [e.name for e in events if isinstance(e, Entry)] == [b"m", b"z", b"n", b"a"]


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        (b"", "cannot be empty"),
        (b"a\0b", "cannot contain null bytes"),
        (b"a" * 4096, "cannot be over 4095 bytes long"),
    ],
)
def test_invalid_targets(target, problem):
    msg = _error(nar(*HEAD, b"symlink", b"target", target, b")"))
    assert problem in msg and "symlink target" in msg


def test_longest_target_ok():
    assert _events(nar(*HEAD, b"symlink", b"target", b"a" * 4095, b")")) == [Symlink(b"a" * 4095)]


def test_huge_lengths_rejected_without_allocation():
    """Lengths near 2**64 in names, targets and tokens are refused before any read of that size."""
    asked = []

    def check(data: bytes) -> str:
        stream = io.BytesIO(data)

        def read(n: int) -> bytes:
            asked.append(n)
            return stream.read(n)

        with pytest.raises(NarError) as info:
            list(NarReader(read))
        assert max(asked) <= 1 << 20
        return str(info.value)

    big = struct.pack("<Q", 2**64 - 1)
    assert "over 255" in check(nar(*HEAD, b"directory", b"entry", b"(", b"name") + big + bytes(64))
    assert "over 4095" in check(nar(*HEAD, b"symlink", b"target") + big + bytes(64))
    assert "unknown token of length" in check(nar(*HEAD) + big + bytes(64))
    # a file claiming 2**64-1 bytes: streamed in bounded pieces until the input runs out
    assert "unexpected end of NAR" in check(nar(*HEAD, b"regular", b"contents") + big + bytes(5000))


def test_unknown_tokens():
    assert "unknown node type b'fifo'" in _error(nar(*HEAD, b"fifo", b")"))
    assert "unknown token b'file' in directory" in _error(nar(*HEAD, b"directory", b"file", b")"))
    assert "unknown token b'size' in file" in _error(nar(*HEAD, b"regular", b"size", b"x", b")"))
    # A regular file must have contents: ')' right after 'regular' says so, also at the very end.
    no_contents = "expected 'contents' or 'executable' in a regular file, found ')' at offset 72"
    assert _error(nar(*HEAD, b"regular", b")")) == no_contents
    assert "unknown token b')' in file" in _error(nar(*HEAD, b"regular", b")", b")"))
    assert "expected ')'" in _error(nar(*HEAD, b"symlink", b"target", b"x", b"extra"))
    assert "expected ')'" in _error(nar(*HEAD, b"regular", b"contents", b"x", b"target"))
    assert "expected '' 'contents'" in _error(
        nar(*HEAD, b"regular", b"executable", b"x", b"contents", b"", b")")
    )
    assert "expected 'target'" in _error(nar(*HEAD, b"symlink", b"targes", b"x", b")"))
    assert "expected '(' 'name'" in _error(nar(*HEAD, b"directory", b"entry", b"(", b"nome", b"a"))
    assert "expected 'node' '(' 'type'" in _error(
        nar(*HEAD, b"directory", b"entry", b"(", b"name", b"a", b"nodes") + bytes(64)
    )
    # an entry not closed by ')' before the next one
    inner = nar(b"entry", b"(", b"name", b"a", b"node", b"(", b"type", *SYM, b")")
    assert _error(nar(*HEAD, b"directory") + inner + inner) == (
        "expected ')' ')' closing the node and the entry, found b'entry' (length 5) at offset 256"
    )
    # a directory entry not closed by ')' after its directory node
    inner_dir = nar(b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory", b")")
    assert _error(nar(*HEAD, b"directory") + inner_dir + inner_dir).startswith(
        "expected ')' closing the entry"
    )


def test_error_offsets_point_at_culprit():
    data = nar(*HEAD, b"symlink", b"target", b"x", b")")
    assert _error(nar(*HEAD, b"fifo")) == "unknown node type b'fifo' at offset 56"
    assert _error(data[:-16] + nar(b"]")) == "expected ')', found b']' (length 1) at offset 104"


def test_deep_nesting_is_not_recursive():
    """A NAR nested as deep as a NAR may (2048 directories: well past Python's recursion limit)
    parses; the reader does not recurse."""
    depth = 2047  # below the root
    opening = (
        nar(*HEAD, b"directory")
        + nar(b"entry", b"(", b"name", b"d", b"node", b"(", b"type", b"directory") * depth
    )
    closing = nar(b")") + nar(b")", b")") * depth
    events = _events(opening + closing)
    assert events.count(DirectoryStart()) == depth + 1
    assert events.count(DirectoryEnd()) == depth + 1


def test_read_callable_returning_too_much_is_refused():
    """A read(n) that returns more than n bytes would desynchronise the parser: refuse it."""

    def greedy(n: int) -> bytes:
        return bytes(n + 1)

    with pytest.raises(NarError, match="read callable is broken"):
        list(NarReader(greedy))
    stream = io.BytesIO(NAR_CONTENTS_HELLOWORLD)
    broken = []

    def read(n: int) -> bytes:
        return b"x" * (n + 1) if broken else stream.read(n)

    r = NarReader(read)
    it = iter(r)
    next(it)
    broken.append(True)  # the source goes wrong in the middle of the file contents
    with pytest.raises(NarError, match="read callable is broken"):
        list(r.file_contents())
