"""Properties of the content-defined chunker (chunker.py): FastCDC 2020 with tvix's parameters."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tvix_castore.chunker import AVG_SIZE, MAX_SIZE, MIN_SIZE, Chunker, chunk_bytes

# Each example cuts megabytes; a few dozen examples already cover many chunks per run.
# HYPOTHESIS_DEEP=1 raises the count for a thorough run.
_EXAMPLES = 200 if os.environ.get("HYPOTHESIS_DEEP") else 25
_settings = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("HYPOTHESIS_DEEP"),
    suppress_health_check=[HealthCheck.too_slow],
)


def _data(kind: str, seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    if kind == "random":
        return rng.randbytes(size)
    if kind == "zeros":
        return bytes(size)
    # Low-entropy text-like data: repeated words, so runs of equal content occur.
    words = [rng.randbytes(rng.randrange(1, 12)) for _ in range(50)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


_kinds = st.sampled_from(["random", "zeros", "text"])
_seeds = st.integers(0, 2**32)
_sizes = st.integers(0, 4 * 1024 * 1024)


def _push(data: bytes, pieces: list[int], batch: int) -> list[bytes]:
    c = Chunker(batch=batch)
    out: list[bytes] = []
    i = 0
    view = memoryview(data)
    for n in pieces:
        out += c.feed(view[i : i + n])
        i += n
        if i >= len(data):
            break
    if i < len(data):
        out += c.feed(view[i:])
    out += c.finish()
    return out


@_settings
@given(kind=_kinds, seed=_seeds, size=_sizes)
@example(kind="random", seed=1, size=0)
@example(kind="random", seed=1, size=MIN_SIZE - 1)
@example(kind="random", seed=1, size=MIN_SIZE)
@example(kind="zeros", seed=1, size=MAX_SIZE)
@example(kind="zeros", seed=1, size=MAX_SIZE + 1)
@example(kind="zeros", seed=1, size=3 * MAX_SIZE)
def test_chunks_concatenate_and_respect_bounds(kind: str, seed: int, size: int) -> None:
    """Chunks concatenate to the input; every chunk but the last is within [min, max]."""
    data = _data(kind, seed, size)
    chunks = chunk_bytes(data)
    assert b"".join(chunks) == data
    assert all(c for c in chunks)
    for c in chunks[:-1]:
        assert MIN_SIZE <= len(c) <= MAX_SIZE
    if chunks:
        assert 0 < len(chunks[-1]) <= MAX_SIZE
    assert (not chunks) == (size == 0)


@_settings
@given(
    kind=_kinds,
    seed=_seeds,
    size=_sizes,
    pieces=st.lists(st.integers(1, 1_500_000), min_size=1, max_size=40),
    batch=st.sampled_from([1, 100_000, MAX_SIZE, 2 * 1024 * 1024]),
)
@example(kind="random", seed=5, size=3_000_000, pieces=[1] * 40, batch=1)
@example(kind="zeros", seed=5, size=3 * MAX_SIZE, pieces=[MAX_SIZE], batch=MAX_SIZE)
def test_push_feeding_equals_whole_buffer(
    kind: str, seed: int, size: int, pieces: list[int], batch: int
) -> None:
    """Feeding the input in arbitrary pieces gives exactly the whole-buffer chunks."""
    data = _data(kind, seed, size)
    assert _push(data, pieces, batch) == chunk_bytes(data)


@_settings
@given(seed=_seeds, pieces=st.lists(st.integers(1, 700_000), min_size=1, max_size=20))
def test_chunks_survive_reuse_of_a_fed_buffer(seed: int, pieces: list[int]) -> None:
    """Chunks keep their bytes when the caller refills the bytearray it fed them from, or
    hands in views of bytes (shared, not copied) and bytes of its own, mixed."""
    data = random.Random(seed).randbytes(3 * 1024 * 1024)
    c = Chunker(batch=300_000)
    out: list[memoryview] = []
    reused = bytearray()
    i = 0
    for k, n in enumerate(pieces * 8):
        piece = data[i : i + n]
        if k % 3 == 0:
            reused[:] = piece
            out += c.feed(reused)
            reused[:] = bytes(len(reused))  # the caller reuses its buffer
        elif k % 3 == 1:
            out += c.feed(memoryview(data)[i : i + n])
        else:
            out += c.feed(piece)
        i += n
        if i >= len(data):
            break
    out += c.feed(data[i:])
    out += c.finish()
    assert all(chunk.readonly for chunk in out)
    assert [bytes(chunk) for chunk in out] == chunk_bytes(data)


def test_no_fed_buffer_is_kept_beyond_its_chunks() -> None:
    """Past a cut, the chunker keeps no reference to a fed bytes: once the chunks are dropped,
    the tail it holds back is its own copy. A slice fed after it is shared until the end."""
    big = random.Random(3).randbytes(8 * 1024 * 1024)
    base = sys.getrefcount(big)
    c = Chunker()
    chunks = c.feed(big)
    assert chunks
    del chunks
    assert 0 < c.pending <= MAX_SIZE
    assert sys.getrefcount(big) == base
    c.feed(memoryview(big)[:1000])
    tail = b"".join(c.finish())
    assert tail[-1000:] == big[:1000]
    assert sys.getrefcount(big) == base


def test_pending_is_bounded() -> None:
    """The chunker never holds back more than batch + max_size + one fed piece."""
    c = Chunker()
    rng = random.Random(9)
    worst = 0
    for _ in range(40):
        c.feed(rng.randbytes(1 << 20))
        worst = max(worst, c.pending)
    assert worst <= 2 * 1024 * 1024 + MAX_SIZE + (1 << 20)


@_settings
@given(
    seed=_seeds,
    where=st.floats(0.0, 1.0),
    edit=st.sampled_from(["insert", "overwrite", "delete"]),
    length=st.integers(1, 64),
)
def test_edit_keeps_prefix_and_resynchronises(seed: int, where: float, edit: str, length: int) -> None:
    """After an edit, chunks ending before it are unchanged and later chunks mostly come back."""
    rng = random.Random(seed)
    data = rng.randbytes(12 * 1024 * 1024)
    pos = int(where * (len(data) - length))
    if edit == "insert":
        edited = data[:pos] + rng.randbytes(length) + data[pos:]
    elif edit == "overwrite":
        edited = data[:pos] + bytes(b ^ 0xFF for b in data[pos : pos + length]) + data[pos + length :]
    else:
        edited = data[:pos] + data[pos + length :]
    before = chunk_bytes(data)
    after = chunk_bytes(edited)

    # A cut depends on the byte at the cut position, so only chunks ending before pos are safe.
    end = 0
    prefix = 0
    for c in before:
        end += len(c)
        if end >= pos:
            break
        prefix += 1
    assert after[:prefix] == before[:prefix]

    # Content-defined cuts resynchronise: all but a few chunks after the edit reappear.
    reused = set(before) & set(after)
    assert len(reused) >= len(before) - 4, (len(before), len(reused))


def test_fastcdc_crate_all_zeros_vector() -> None:
    """The Rust fastcdc crate's v2020 vector (tvix's chunker): 10 KiB of zeros with min/avg/max
    64/256/1024 gives ten 1024-byte chunks, also when fed byte-piecewise."""
    data = bytes(10240)
    assert [len(c) for c in chunk_bytes(data, 256, 64, 1024)] == [1024] * 10
    c = Chunker(256, 64, 1024, batch=300)
    out: list[bytes] = []
    for i in range(0, len(data), 77):
        out += c.feed(data[i : i + 77])
    out += c.finish()
    assert [len(x) for x in out] == [1024] * 10


# The Rust fastcdc crate's test image (test/fixtures/SekienAkashita.jpg, 109,466 bytes).
SEKIEN = Path(__file__).resolve().parents[1] / "data" / "SekienAkashita.jpg"


@pytest.mark.parametrize(
    ("sizes", "lengths"),
    [
        # The crate's v2020 vectors (normalisation level 1, as tvix uses it): min, avg, max.
        ((4096, 16384, 65535), [21325, 17140, 28084, 18217, 24700]),
        ((8192, 32768, 131072), [66549, 42917]),
        ((16384, 65536, 262144), [109466]),
    ],
)
def test_fastcdc_crate_sekien_vectors(sizes: tuple[int, int, int], lengths: list[int]) -> None:
    """Our cut points are the crate's on real data, whole and fed piecewise."""
    data = SEKIEN.read_bytes()
    min_size, avg_size, max_size = sizes
    assert [len(c) for c in chunk_bytes(data, avg_size, min_size, max_size)] == lengths
    c = Chunker(avg_size, min_size, max_size, batch=10_000)
    out: list[bytes] = []
    for i in range(0, len(data), 4099):
        out += c.feed(data[i : i + 4099])
    out += c.finish()
    assert [len(x) for x in out] == lengths


def test_fastcdc_crate_sekien_chunk_digests() -> None:
    """The crate checks the BLAKE3 of each 16 KiB-average chunk: so do we."""
    chunks = chunk_bytes(SEKIEN.read_bytes(), 16384, 4096, 65535)
    assert [blake3.blake3(c).hexdigest() for c in chunks] == [
        "261930e84e14c240210ae8c459acc4bb85dd52f1b91c868f2106dbc1ceb3acca",
        "a01747cf21202f0068b8897d2be92aa4479b7ac7207b3baa5057b8ec75fa1c10",
        "01e5305fb8f54d214ed2946843ea360fb9bb3f5df66ef3e34fb024d32ebcaee1",
        "fc28c67b6ef846a841452a215bf704058f65cba5c1d78160398d3c2e046642f9",
        "f6996300fce24d3da56c81ea52e5f4f461ce6adb4496f65252996e1082471aac",
    ]


def test_tvix_parameters_and_their_cut_points() -> None:
    """tvix's sizes (256 KiB average, half and twice that as bounds), and the cut points they give
    on fixed pseudo-random data: a change of parameters or normalisation level moves them (and
    with them every chunk digest a store shares with tvix). The lengths were cross-checked with
    an independent port of the crate's v2020 cut function."""
    assert (MIN_SIZE, AVG_SIZE, MAX_SIZE) == (128 * 1024, 256 * 1024, 512 * 1024)
    data = random.Random(1).randbytes(3 << 20)
    assert [len(c) for c in chunk_bytes(data)] == [
        204367,
        274040,
        398271,
        477575,
        167523,
        407678,
        291710,
        347199,
        524288,
        53077,
    ]
