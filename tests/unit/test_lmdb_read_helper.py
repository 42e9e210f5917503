"""The LMDB read helper process (``tvix_castore.blobservice.lmdb_read_helper``), on a real store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tvix_castore._lmdb_env import open_env, release_env
from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice.lmdb_read_helper import FAILED, MAX_RANGES, ReadHelper
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.digests import B3Digest

MiB = 1024 * 1024
SLOT = MiB


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]]]:
    service = LmdbBlobService(str(tmp_path / "store"))
    data = os.urandom(4 * MiB)
    chunks = service.chunks(service.put(data))
    assert chunks is not None and len(chunks) >= 4
    starts = [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
    yield service, data, chunks, starts
    service.close()


def _whole(c: ChunkMeta) -> tuple[ChunkMeta, int, int]:
    return (c, 0, c.size)


def _until_done(
    helper: ReadHelper, windows: int, seconds: float = 20
) -> tuple[dict[B3Digest, int], dict[int, tuple[int, int]]]:
    checked: dict[B3Digest, int] = {}
    done: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + seconds
    while len(done) < windows and time.monotonic() < deadline:
        helper.wait(0.05)
        new_checked, new_done = helper.collect()
        checked.update(new_checked)
        done.update({slot: (seq, length) for slot, seq, length in new_done})
    return checked, done


def test_windows_are_filled_with_the_bytes_asked_for(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    service, data, chunks, starts = stored
    helper = service.start_read_helper(4, SLOT)
    try:
        # Slot 0: the tail of chunk 0 and the head of chunk 1; slot 3: all of chunk 2.
        c0, c1 = chunks[0], chunks[1]
        assert helper.request(0, 7, [(c0, 100, c0.size), (c1, 0, 5000)])
        assert helper.request(3, 8, [_whole(chunks[2])])
        checked, done = _until_done(helper, 2)
        first = chunks[0].size - 100 + 5000
        assert done == {0: (7, first), 3: (8, chunks[2].size)}
        assert bytes(helper.slot_view(0, first)) == data[100 : starts[1] + 5000]
        assert bytes(helper.slot_view(3, chunks[2].size)) == data[starts[2] : starts[3]]
        assert checked == {c.digest: c.size for c in chunks[:3]}
    finally:
        helper.close()


def test_a_window_with_a_bad_chunk_fails_and_vouches_for_nothing_bad(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    service, data, chunks, starts = stored
    rotten = bytearray(data[starts[1] : starts[2]])
    rotten[7] ^= 0x01
    raw = open_env(service.path)
    try:
        with raw.env.begin(write=True) as txn:
            txn.put(chunks[1].digest, bytes(rotten), db=raw.table("chunks"))
    finally:
        release_env(raw)
    absent = B3Digest(bytes(range(32)))
    c0, c2, c3 = chunks[0], chunks[2], chunks[3]
    helper = service.start_read_helper(8, SLOT)
    try:
        assert helper.request(0, 1, [(c0, 0, 10), (chunks[1], 0, 10)])
        assert helper.request(1, 2, [(ChunkMeta(absent, 10), 0, 10)])
        assert helper.request(2, 3, [(ChunkMeta(c2.digest, c2.size + 1), 0, c2.size + 1)])  # past its end
        assert helper.request(3, 4, [(ChunkMeta(c3.digest, c3.size - 1), 0, 10)])  # not the size we know
        assert helper.request(4, 5, [(c3, 0, 10)])
        checked, done = _until_done(helper, 5)
        assert done == {0: (1, FAILED), 1: (2, FAILED), 2: (3, FAILED), 3: (4, FAILED), 4: (5, 10)}
        assert chunks[1].digest not in checked and absent not in checked
        assert checked[c0.digest] == c0.size
    finally:
        helper.close()


def test_cancelled_requests_are_skipped(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    """A request cancelled before the child gets to it is reported failed, its chunks unread."""
    service, _, chunks, _ = stored
    helper = service.start_read_helper(4, SLOT)
    proc = helper._proc
    assert proc is not None
    try:
        assert helper.request(0, 1, [_whole(chunks[0])])
        _until_done(helper, 1)  # the child is up and idle
        os.kill(proc.pid, signal.SIGSTOP)
        assert helper.request(1, 2, [_whole(chunks[1])])
        assert helper.request(2, 3, [_whole(chunks[2])])
        helper.cancel(1, 2)
        os.kill(proc.pid, signal.SIGCONT)
        checked, done = _until_done(helper, 2)
        assert done == {1: (2, FAILED), 2: (3, chunks[2].size)}
        assert chunks[1].digest not in checked
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        helper.close()


def test_requests_it_cannot_take_are_refused(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    service, _, chunks, _ = stored
    helper = service.start_read_helper(2, SLOT)
    try:
        one = (chunks[0], 0, 1)
        assert not helper.request(2, 1, [one])  # no such slot
        assert not helper.request(0, 1, [])
        assert not helper.request(0, FAILED, [one])  # not a sequence number
        assert not helper.request(0, 1, [one] * (MAX_RANGES + 1))  # would not fit in PIPE_BUF
        assert helper.request(0, 1, [one] * MAX_RANGES)
        _, done = _until_done(helper, 1)
        assert done == {0: (1, MAX_RANGES)}
    finally:
        helper.close()


def test_modules_in_the_working_directory_cannot_stand_in(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child must not import a ``tvix_castore`` found where the mount was started."""
    service, data, chunks, _ = stored
    fake = tmp_path / "cwd" / "tvix_castore"
    fake.mkdir(parents=True)
    marker = tmp_path / "imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(fake.parent)
    helper = service.start_read_helper(2, SLOT)
    try:
        assert helper.request(0, 1, [_whole(chunks[0])])
        _, done = _until_done(helper, 1)
        assert done == {0: (1, chunks[0].size)}
        assert bytes(helper.slot_view(0, chunks[0].size)) == data[: chunks[0].size]
        assert not marker.exists()
    finally:
        helper.close()


def test_a_dead_child_is_harmless_and_close_ends_the_child(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    service, _, chunks, _ = stored
    helper = service.start_read_helper(2, SLOT)
    proc = helper._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for _ in range(3):  # the parent notices on its next call and carries on without it
        helper.request(0, 1, [(chunks[0], 0, 1)])
        assert helper.collect() == ([], [])
    assert not helper.alive
    assert not helper.wait(0.01)
    helper.close()

    second = service.start_read_helper(2, SLOT)
    child = second._proc
    assert child is not None
    second.close()
    assert child.returncode == 0  # it saw its stdin close and exited on its own
    second.close()  # idempotent


def test_child_exits_when_its_parent_goes_away(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta], list[int]],
) -> None:
    """Closing the request pipe, as the kernel does when the parent dies, ends the child."""
    service, _, _, _ = stored
    helper = service.start_read_helper(2, SLOT)
    proc = helper._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(10) == 0
    helper.close()
