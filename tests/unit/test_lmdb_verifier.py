"""The chunk verifier process (``tvix_castore.blobservice.lmdb_verifier``) on a real LMDB store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tvix_castore._lmdb_env import open_env, release_env
from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.blobservice.lmdb_verifier import ChunkVerifier
from tvix_castore.digests import B3Digest

MiB = 1024 * 1024


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[LmdbBlobService, bytes, list[ChunkMeta]]]:
    service = LmdbBlobService(str(tmp_path / "store"))
    data = os.urandom(4 * MiB)
    chunks = service.chunks(service.put(data))
    assert chunks is not None and len(chunks) >= 4
    yield service, data, chunks
    service.close()


def _collect_until(verifier: ChunkVerifier, want: int, seconds: float = 20) -> dict[B3Digest, int]:
    got: dict[B3Digest, int] = {}
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        got.update(verifier.collect())
        time.sleep(0.01)
    return got


def test_reports_exactly_the_chunks_that_hash_right(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta]],
) -> None:
    service, data, chunks = stored
    # Rot chunk 1 in place: the verifier must not vouch for it.
    start = chunks[0].size
    rotten = bytearray(data[start : start + chunks[1].size])
    rotten[7] ^= 0x01
    raw = open_env(service.path)
    try:
        with raw.env.begin(write=True) as txn:
            txn.put(chunks[1].digest, bytes(rotten), db=raw.table("chunks"))
    finally:
        release_env(raw)
    absent = B3Digest(bytes(range(32)))
    verifier = service.start_verifier()
    try:
        verifier.submit([c.digest for c in chunks] + [absent])
        good = {c.digest: c.size for i, c in enumerate(chunks) if i != 1}
        got = _collect_until(verifier, len(good))
        # Anything still due would have to come after the good ones, which the child sends in order.
        time.sleep(0.2)
        got.update(verifier.collect())
        assert got == good
    finally:
        verifier.close()


def test_close_stops_the_child_and_a_dead_child_is_harmless(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta]],
) -> None:
    service, _, chunks = stored
    verifier = service.start_verifier()
    proc = verifier._proc
    assert proc is not None
    verifier.submit([chunks[0].digest])
    assert _collect_until(verifier, 1) == {chunks[0].digest: chunks[0].size}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # The parent notices on its next call and carries on without it.
    for _ in range(3):
        verifier.submit([c.digest for c in chunks])
        assert verifier.collect() == []
    assert verifier._proc is None
    verifier.close()

    second = service.start_verifier()
    child = second._proc
    assert child is not None
    second.close()
    assert child.returncode == 0  # it saw its stdin close and exited on its own
    second.close()  # idempotent


def test_child_exits_when_its_parent_goes_away(
    stored: tuple[LmdbBlobService, bytes, list[ChunkMeta]],
) -> None:
    """Closing the request pipe, as the kernel does when the parent dies, ends the child."""
    service, _, _ = stored
    verifier = service.start_verifier()
    proc = verifier._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(10) == 0
    verifier.close()
