"""NarWriter: byte-exact output for the spec §12.4 vectors, streaming, and structure checks."""

from __future__ import annotations

import hashlib
import io

import pytest
from fixtures import NAR_CONTENTS_COMPLICATED, NAR_CONTENTS_HELLOWORLD, NAR_CONTENTS_SYMLINK, nar

from nix_compat import nixbase32
from nix_compat.errors import NarError
from nix_compat.nar import NarWriter


def _render(build) -> bytes:
    out = io.BytesIO()
    w = NarWriter(out.write)
    build(w)
    w.close()
    return out.getvalue()


def _complicated(w: NarWriter) -> None:
    w.begin_directory()
    w.entry(b".keep")
    w.file(False, 0, [])
    w.entry(b"aa")
    w.symlink(b"/nix/store/somewhereelse")
    w.entry(b"keep")
    w.begin_directory()
    w.entry(b".keep")
    w.file(False, 0, [b""])
    w.end_directory()
    w.end_directory()


def _empty_dir(w: NarWriter) -> None:
    w.begin_directory()
    w.end_directory()


# name, builder, size, sha256 hex, sha256 nixbase32 — spec §12.4
VECTORS = [
    (
        "symlink",
        lambda w: w.symlink(b"/nix/store/somewhereelse"),
        136,
        "097d397e9b5826384eaa16c457715d1c1a51670313ead0f58566e0b232539cf1",
        "1wcwacrb5q36hpsx1shk0dkm26hwbmqmgi0nm973h9jqkdz3jz89",
    ),
    (
        "helloworld",
        lambda w: w.file(False, 12, [b"Hello World!"]),
        128,
        "03e7f63be30b065d78bcf615f5473545fdb4eb69aa416f43495b4e05cdfb8040",
        "0h40zg6hakjv951nyhdad7mv9za56m3za5gnpiw5s1hbwcxzdrq3",
    ),
    (
        "helloworld-exec",
        lambda w: w.file(True, 12, [b"Hello ", memoryview(b"World!")]),
        160,
        "3b63b97bae149b3e6650437b9077c3d75b130192145792ec94ea3af96a8c567a",
        "0yjniimgjfpajkn94mqlj80i6nypqdvr0ys3a1k3x6qlmrxvjqrv",
    ),
    (
        "complicated",
        _complicated,
        840,
        "ebd52279a8df024c9fd5718de4103bf5e760dc7f2cf49044ee7dea87ab16911a",
        "06li2smqgskxxr291x1cgzf61rzm7c8f93bisnglq0nzm1wj5mgb",
    ),
    (
        "emptydirectory",
        _empty_dir,
        96,
        "a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a",
        "0sjjj9z1dhilhpc8pq4154czrb79z9cm044jvn75kxcjv6v5l2m5",
    ),
    (
        "onebyteregular",
        lambda w: w.file(False, 1, [b"\x01"]),
        120,
        "730850a811259dbf3a68dc2ee87a79aa6cae9f71375edf396f9d7a91fbe9134d",
        "0k8kx7xr2ylxdwwxypipf6gswv5ag5xfhbnwd0xbz79526l5023k",
    ),
]


@pytest.mark.parametrize(
    ("build", "size", "hexdigest", "nb32"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_vectors(build, size, hexdigest, nb32):
    """The writer reproduces the NAR sizes and hashes of spec §12.4."""
    data = _render(build)
    assert len(data) == size
    digest = hashlib.sha256(data).digest()
    assert digest.hex() == hexdigest
    assert nixbase32.encode(digest) == nb32


def test_fixture_bytes():
    """Byte-for-byte equal to the hand-assembled fixtures (tests/fixtures.py)."""
    assert _render(lambda w: w.symlink(b"/nix/store/somewhereelse")) == NAR_CONTENTS_SYMLINK
    assert _render(lambda w: w.file(False, 12, [b"Hello World!"])) == NAR_CONTENTS_HELLOWORLD
    assert _render(_complicated) == NAR_CONTENTS_COMPLICATED


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 15, 16, 17, 65535, 65536, 65537, 300_000])
def test_file_sizes_and_padding(size):
    """Contents of every length get zero padding to 8; any split of them yields the same bytes."""
    contents = bytes(i % 251 for i in range(size))
    expected = nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")")
    assert _render(lambda w: w.file(False, size, [contents])) == expected
    pieces = [contents[i : i + 1000] for i in range(0, size, 1000)]
    assert _render(lambda w: w.file(False, size, pieces)) == expected
    assert _render(lambda w: w.file(False, size, iter([memoryview(contents)]))) == expected


def test_big_contents_passed_through_uncopied():
    """A large chunk reaches write() as the very object that was given, not a copy."""
    big = memoryview(bytes(1 << 20))
    seen: list[object] = []
    w = NarWriter(seen.append)
    w.file(False, len(big), [big])
    w.close()
    assert any(x is big for x in seen)
    assert b"".join(bytes(x) for x in seen) == nar(
        b"nix-archive-1", b"(", b"type", b"regular", b"contents", bytes(big), b")"
    )


def test_small_tokens_are_buffered():
    """Thousands of small nodes produce few, large writes, and nothing is lost."""
    writes: list[bytes] = []
    w = NarWriter(writes.append)
    w.begin_directory()
    names = sorted(f"f{i}".encode() for i in range(5000))
    for name in names:
        w.entry(name)
        w.file(False, 3, [b"abc"])
    w.end_directory()
    w.close()
    assert len(writes) < 20
    assert max(len(x) for x in writes) < 1 << 20
    data = b"".join(writes)
    # each entry: entry ( name <name> node ( type regular contents <abc> ) )
    per_entry = [
        nar(b"entry", b"(", b"name", n, b"node", b"(", b"type", b"regular", b"contents", b"abc", b")", b")")
        for n in names
    ]
    assert data == nar(b"nix-archive-1", b"(", b"type", b"directory") + b"".join(per_entry) + nar(b")")


def test_nothing_written_before_needed_flush():
    """Output is held until close() for small NARs; close() flushes it all."""
    writes: list[bytes] = []
    w = NarWriter(writes.append)
    w.symlink(b"x")
    assert writes == []
    w.close()
    assert b"".join(writes) == nar(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"x", b")")


def test_contents_too_short():
    w = NarWriter(io.BytesIO().write)
    with pytest.raises(NarError, match="unexpected end of file contents"):
        w.file(False, 13, [b"Hello World!"])


def test_contents_too_long():
    w = NarWriter(io.BytesIO().write)
    with pytest.raises(NarError, match="file contents longer than the size 2 specified"):
        w.file(False, 2, [b"Hello World!"])


def test_contents_too_long_detected_before_writing_excess():
    """The chunk that overflows the declared size is never written."""
    writes: list[object] = []
    big = bytes(1 << 20)
    w = NarWriter(writes.append)
    with pytest.raises(NarError, match="longer"):
        w.file(False, 10, [big])
    assert all(x is not big for x in writes)


def test_writer_unusable_after_error():
    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    with pytest.raises(NarError):
        w.entry(b"a/b")
    with pytest.raises(NarError, match="earlier error"):
        w.entry(b"ab")
    with pytest.raises(NarError, match="earlier error"):
        w.close()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"", "cannot be empty"),
        (b".", "cannot be '.'"),
        (b"..", "cannot be '..'"),
        (b"a/b", "cannot contain slashes"),
        (b"/", "cannot contain slashes"),
        (b"a\0b", "cannot contain null bytes"),
        (b"x" * 256, "cannot be over 255 bytes long"),
    ],
)
def test_invalid_names(name, problem):
    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    with pytest.raises(NarError, match=problem):
        w.entry(name)


def test_valid_unusual_names():
    """255 bytes, non-UTF-8, '...', and names starting with '.' are fine."""
    names = sorted([b"x" * 255, b"\xff\xfe", b"...", b".a", b"a b", b"\n"])

    def build(w: NarWriter) -> None:
        w.begin_directory()
        for n in names:
            w.entry(n)
            w.symlink(b"t")
        w.end_directory()

    assert len(_render(build)) > 0


@pytest.mark.parametrize(
    ("target", "problem"),
    [(b"", "cannot be empty"), (b"a\0", "cannot contain null bytes"), (b"a" * 4096, "over 4095")],
)
def test_invalid_symlink_targets(target, problem):
    w = NarWriter(io.BytesIO().write)
    with pytest.raises(NarError, match=problem):
        w.symlink(target)


def _symlink_tokens(target: bytes) -> tuple[bytes, ...]:
    return (b"(", b"type", b"symlink", b"target", target, b")")


def test_symlink_target_limits_ok():
    """The longest target Linux allows, and one of any bytes, are written as given."""
    for target in (b"a" * 4095, b"../.././\xc5\xc4\xd6"):
        assert _render(lambda w, t=target: w.symlink(t)) == nar(b"nix-archive-1", *_symlink_tokens(target))


@pytest.mark.parametrize(
    ("first", "second", "what"),
    [(b"b", b"a", "unsorted"), (b"a", b"a", "duplicate"), (b"ab", b"a", "unsorted")],
)
def test_names_must_ascend(first, second, what):
    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    w.entry(first)
    w.symlink(b"t")
    with pytest.raises(NarError, match=what):
        w.entry(second)


def test_names_compared_bytewise():
    """Ordering is by bytes: 'B' < 'a' and 'a' < 'a\\x00'-free 'aa' < 'b'."""

    names = [b"B", b"Z", b"a", b"aa", b"b", b"\xc3\xa9"]

    def build(w: NarWriter) -> None:
        w.begin_directory()
        for n in names:
            w.entry(n)
            w.symlink(b"t")
        w.end_directory()

    entries = [t for n in names for t in (b"entry", b"(", b"name", n, b"node", *_symlink_tokens(b"t"), b")")]
    assert _render(build) == nar(b"nix-archive-1", b"(", b"type", b"directory", *entries, b")")


def test_sibling_directories_have_own_order():
    """Name order is per directory: a child directory may restart at any name."""

    def build(w: NarWriter) -> None:
        w.begin_directory()
        w.entry(b"m")
        w.begin_directory()
        w.entry(b"z")
        w.symlink(b"t")
        w.end_directory()
        w.entry(b"n")
        w.begin_directory()
        w.entry(b"a")
        w.symlink(b"t")
        w.end_directory()
        w.end_directory()

    def directory(*entries: tuple[bytes, tuple[bytes, ...]]) -> tuple[bytes, ...]:
        inner = [t for name, node in entries for t in (b"entry", b"(", b"name", name, b"node", *node, b")")]
        return (b"(", b"type", b"directory", *inner, b")")

    link = _symlink_tokens(b"t")
    expected = directory((b"m", directory((b"z", link))), (b"n", directory((b"a", link))))
    assert _render(build) == nar(b"nix-archive-1", *expected)


def test_structure_errors():
    """Calls out of order are refused with a message saying what was expected."""
    w = NarWriter(io.BytesIO().write)
    with pytest.raises(NarError, match="not complete"):
        w.close()

    w = NarWriter(io.BytesIO().write)
    w.symlink(b"t")
    with pytest.raises(NarError, match="already complete"):
        w.symlink(b"t")

    w = NarWriter(io.BytesIO().write)
    with pytest.raises(NarError, match="a node is expected"):
        w.entry(b"a")

    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    with pytest.raises(NarError, match="call entry"):
        w.symlink(b"t")

    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    w.entry(b"a")
    with pytest.raises(NarError, match="a node is expected"):
        w.end_directory()

    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    w.entry(b"a")
    with pytest.raises(NarError, match="a node is expected"):
        w.entry(b"b")

    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    with pytest.raises(NarError, match="not complete"):
        w.close()

    w = NarWriter(io.BytesIO().write)
    w.file(False, 0, [])
    with pytest.raises(NarError, match="already complete"):
        w.end_directory()


def test_negative_size():
    with pytest.raises(NarError, match="negative"):
        NarWriter(io.BytesIO().write).file(False, -1, [])


def test_failing_contents_source_breaks_writer():
    """An exception from the contents iterator propagates and the writer refuses to go on."""

    def contents():
        yield b"abc"
        raise OSError("disk gone")

    w = NarWriter(io.BytesIO().write)
    w.begin_directory()
    w.entry(b"a")
    with pytest.raises(OSError, match="disk gone"):
        w.file(False, 10, contents())
    with pytest.raises(NarError, match="earlier error"):
        w.end_directory()
