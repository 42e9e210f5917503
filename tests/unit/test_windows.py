"""Read windows (``tvix_castore.fs.windows``) over a real LMDB store and its read helper."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice.lmdb_read_helper import ReadHelper
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.digests import B3Digest
from tvix_castore.fs.windows import ReadWindows, chunk_ranges

KiB = 1024
MiB = 1024 * KiB


def test_chunk_ranges_follow_the_chunk_offsets() -> None:
    """The chunked-reader vector of spec §2.5: chunk sizes 2, 4, 1, 2, 7."""
    chunks = tuple(ChunkMeta(B3Digest(bytes([i]) * 32), n) for i, n in enumerate([2, 4, 1, 2, 7]))
    starts = [0, 2, 6, 7, 9]
    d = chunks
    assert chunk_ranges(chunks, starts, 0, 16) == [
        (d[0], 0, 2),
        (d[1], 0, 4),
        (d[2], 0, 1),
        (d[3], 0, 2),
        (d[4], 0, 7),
    ]
    assert chunk_ranges(chunks, starts, 1, 8) == [(d[0], 1, 2), (d[1], 0, 4), (d[2], 0, 1), (d[3], 0, 1)]
    assert chunk_ranges(chunks, starts, 15, 16) == [(d[4], 6, 7)]
    assert chunk_ranges(chunks, starts, 6, 7) == [(d[2], 0, 1)]


class File:
    def __init__(self, service: LmdbBlobService, data: bytes) -> None:
        chunks = service.chunks(service.put(data))
        assert chunks and len(chunks) > 4
        self.data = data
        self.chunks: tuple[ChunkMeta, ...] | None = tuple(chunks)
        self.starts = [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
        self.size = len(data)

    def serve(
        self, windows: ReadWindows, fh: int, offset: int, size: int, sequential: bool = True
    ) -> bytes | None:
        """A READ, once its window (if any) is ready: the helper may still be starting up."""
        _ready(windows, fh, offset)
        got = windows.serve(fh, self, offset, size, sequential)
        return None if got is None else bytes(got)


def _ready(windows: ReadWindows, fh: int, offset: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        windows.collect(wait_for=(fh, offset))
        slot = windows._files.get(fh, {}).get(offset)
        window = None if slot is None else windows._slots.get(slot)
        if window is None or window.ready:
            return
        assert time.monotonic() < deadline, "the helper never filled the window"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[LmdbBlobService, File]]:
    service = LmdbBlobService(str(tmp_path / "store"))
    yield service, File(service, os.urandom(6 * MiB + 5))
    service.close()


def _settle(windows: ReadWindows, helper: ReadHelper) -> None:
    """Collect until no window is being filled any more."""
    deadline = time.monotonic() + 20
    while any(w is None or not w.ready for w in windows._slots.values()):
        assert time.monotonic() < deadline
        helper.wait(0.05)
        windows.collect()


def test_sequential_reads_come_from_windows_and_slots_come_back(setup: tuple[LmdbBlobService, File]) -> None:
    service, f = setup
    helper = service.start_read_helper(8, MiB)
    windows = ReadWindows(helper)
    try:
        size = 256 * KiB
        assert f.serve(windows, 1, 0, size) is None  # nothing planned yet: this plans
        for offset in range(size, len(f.data), size):
            got = f.serve(windows, 1, offset, size)
            assert got == f.data[offset : offset + size]  # the last one short: the file's end
        windows.forget(1)
        _settle(windows, helper)
        assert sorted(windows._free) == list(range(8)) and windows._slots == {}
    finally:
        helper.close()


def test_other_geometry_or_random_reads_are_not_served(setup: tuple[LmdbBlobService, File]) -> None:
    service, f = setup
    helper = service.start_read_helper(8, MiB)
    windows = ReadWindows(helper)
    try:
        size = 128 * KiB
        f.serve(windows, 1, 0, size)
        assert f.serve(windows, 1, size, size) == f.data[size : 2 * size]
        # The next READ asks for more than planned: not served, but planned afresh from it.
        assert f.serve(windows, 1, 2 * size, 2 * size) is None
        assert f.serve(windows, 1, 4 * size, 2 * size) == f.data[4 * size : 6 * size]
        # A random READ plans nothing.
        before = dict(windows._files[2]) if 2 in windows._files else {}
        assert f.serve(windows, 2, 3 * MiB, size, sequential=False) is None
        assert windows._files.get(2, {}) == before == {}
    finally:
        helper.close()


def test_a_served_slot_is_not_asked_for_again_in_the_same_call(setup: tuple[LmdbBlobService, File]) -> None:
    """With one slot: the READ served from it must not have it refilled before the reply."""
    service, f = setup
    helper = service.start_read_helper(1, MiB)
    windows = ReadWindows(helper)
    try:
        size = 256 * KiB
        assert f.serve(windows, 1, 0, size) is None  # plans window [size, 2 size) into slot 0
        _ready(windows, 1, size)
        view = windows.serve(1, f, size, size, True)
        assert view is not None
        time.sleep(0.3)  # were slot 0 asked for again, the helper would overwrite it now
        assert bytes(view) == f.data[size : 2 * size]
        view.release()
        # The next call plans into the slot again.
        assert f.serve(windows, 1, 2 * size, size) is None
        assert list(windows._files[1]) == [3 * size]
    finally:
        helper.close()


def test_sequence_numbers_wrap_at_32_bits(setup: tuple[LmdbBlobService, File]) -> None:
    service, f = setup
    helper = service.start_read_helper(8, MiB)
    windows = ReadWindows(helper)
    windows._order = itertools.count(0xFFFFFFFF - 3)  # the wire's u32 runs out within this file
    try:
        size = 256 * KiB
        f.serve(windows, 1, 0, size)
        for offset in range(size, 4 * MiB, size):
            assert f.serve(windows, 1, offset, size) == f.data[offset : offset + size]
    finally:
        helper.close()


def test_an_idle_file_gives_its_slots_to_a_reading_one(setup: tuple[LmdbBlobService, File]) -> None:
    """A file left open after a few READs must not keep the helper from other files."""
    service, f = setup
    helper = service.start_read_helper(8, MiB)
    windows = ReadWindows(helper)
    try:
        size = 256 * KiB
        f.serve(windows, 1, 0, size)  # file 1 plans 8 windows: every slot
        _settle(windows, helper)
        assert not windows._free
        f.serve(windows, 2, 0, size)  # file 2 takes them back from file 1, which sits idle
        assert f.serve(windows, 2, size, size) == f.data[size : 2 * size]
        assert windows._files[1] == {}
    finally:
        helper.close()
