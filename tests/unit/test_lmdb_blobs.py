"""LMDB blob backend specifics: layout, dedup, corruption detection, multi-process, streaming."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from tvix_castore._lmdb_env import open_env, release_env
from tvix_castore.blobservice import from_addr
from tvix_castore.blobservice.lmdb_store import LmdbBlobService, LmdbBlobWriter
from tvix_castore.chunker import MAX_SIZE, MIN_SIZE
from tvix_castore.digests import B3Digest
from tvix_castore.errors import ClosedError, DataCorruption, StorageError

MiB = 1024 * 1024


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def service(store_dir: Path) -> Iterator[LmdbBlobService]:
    s = from_addr(f"lmdb://{store_dir}")
    assert isinstance(s, LmdbBlobService)
    yield s
    s.close()


def _table_items(store_dir: Path, table: str) -> dict[bytes, bytes]:
    store = open_env(str(store_dir))
    try:
        with store.env.begin() as txn:
            return dict(txn.cursor(db=store.table(table)).iternext())
    finally:
        release_env(store)


def _stored_chunk_bytes(store_dir: Path) -> int:
    return sum(len(v) for v in _table_items(store_dir, "chunks").values())


def _overwrite_chunk(store_dir: Path, digest: bytes, value: bytes) -> None:
    store = open_env(str(store_dir))
    try:
        with store.env.begin(write=True) as txn:
            txn.put(digest, value, db=store.table("chunks"))
    finally:
        release_env(store)


def test_layout_single_and_multi_chunk(service: LmdbBlobService, store_dir: Path) -> None:
    """A small blob is one chunk and has no index entry; a large one has a chunk list."""
    small = os.urandom(MIN_SIZE - 1)
    big = os.urandom(5 * MiB)
    small_d = service.put(small)
    big_d = service.put(big)
    assert service.chunks(small_d) == []
    chunks = service.chunks(big_d)
    assert chunks is not None and len(chunks) >= 5
    blobs = _table_items(store_dir, "blobs")
    assert set(blobs) == {big_d}
    stored = _table_items(store_dir, "chunks")
    assert stored[small_d] == small
    assert b"".join(stored[c.digest] for c in chunks) == big
    assert all(len(stored[c.digest]) <= MAX_SIZE for c in chunks)


def test_rewrite_stores_nothing_new(service: LmdbBlobService, store_dir: Path) -> None:
    """Writing a blob that is already present adds no chunk bytes."""
    data = os.urandom(3 * MiB)
    service.put(data)
    before = _stored_chunk_bytes(store_dir)
    assert before == len(data)
    service.put(data)
    assert _stored_chunk_bytes(store_dir) == before


@pytest.mark.slow
def test_dedup_near_identical_files(service: LmdbBlobService, store_dir: Path) -> None:
    """Two 64 MiB files differing by a 24-byte insert and a 16-byte overwrite cost <= 1.2x one."""
    a = os.urandom(64 * MiB)
    b = bytearray(a)
    b[1000:1000] = os.urandom(24)
    mid = len(b) // 2
    b[mid : mid + 16] = os.urandom(16)
    da = service.put(a)
    one_chunks = _stored_chunk_bytes(store_dir)
    one_file = os.path.getsize(store_dir / "data.mdb")
    db = service.put(bytes(b))
    assert da != db
    both_chunks = _stored_chunk_bytes(store_dir)
    both_file = os.path.getsize(store_dir / "data.mdb")
    assert one_chunks == len(a)
    assert both_chunks <= 1.2 * one_chunks, both_chunks / one_chunks
    assert both_file <= 1.2 * one_file, both_file / one_file
    r = service.open_read(db)
    assert r is not None
    with r:
        assert r.read() == b


def test_corrupted_chunk_detected(service: LmdbBlobService, store_dir: Path) -> None:
    """A flipped byte in a stored chunk is reported as DataCorruption naming the chunk digest,
    when (and only when) a read reaches that chunk."""
    data = os.urandom(4 * MiB)
    digest = service.put(data)
    chunks = service.chunks(digest)
    assert chunks is not None and len(chunks) >= 3
    victim = chunks[1]
    stored = bytearray(_table_items(store_dir, "chunks")[victim.digest])
    stored[len(stored) // 2] ^= 0x01
    _overwrite_chunk(store_dir, victim.digest, bytes(stored))

    r = service.open_read(digest)
    assert r is not None
    with r:
        assert r.read(chunks[0].size) == data[: chunks[0].size]
        with pytest.raises(DataCorruption, match=str(victim.digest).replace("+", r"\+")):
            r.read(10)
        # Chunks after the corrupt one are still reachable by seeking past it.
        start = chunks[0].size + chunks[1].size
        r.seek(start)
        assert r.read(100) == data[start : start + 100]
    with pytest.raises(DataCorruption):
        service.open_read(victim.digest)


def test_corrupted_single_chunk_blob(service: LmdbBlobService, store_dir: Path) -> None:
    """A corrupted single-chunk blob fails already at open_read."""
    digest = service.put(b"hello corrupt world")
    _overwrite_chunk(store_dir, digest, b"hello corrupt w0rld")
    with pytest.raises(DataCorruption, match="corrupt"):
        service.open_read(digest)


def test_writer_after_service_close_is_refused(store_dir: Path) -> None:
    """A closed service refuses new writers; closing it twice is harmless."""
    s = LmdbBlobService(str(store_dir))
    s.close()
    s.close()
    with pytest.raises(ClosedError):
        s.open_write()


def test_shared_env_between_services(store_dir: Path) -> None:
    """Two services on one directory share the environment and see each other's blobs."""
    a = LmdbBlobService(str(store_dir))
    b = LmdbBlobService(str(store_dir))
    try:
        digest = a.put(b"shared")
        assert b.has(digest)
        a.close()
        r = b.open_read(digest)
        assert r is not None and r.read() == b"shared"
    finally:
        a.close()
        b.close()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from tvix_castore.blobservice.lmdb_store import LmdbBlobService
    from tvix_castore.digests import B3Digest
    s = LmdbBlobService(sys.argv[1])
    known = B3Digest.parse(sys.argv[2])
    later = B3Digest.parse(sys.argv[3])
    print("ready", flush=True)
    reads = 0
    deadline = time.monotonic() + 60
    while not s.has(later):
        r = s.open_read(known)
        assert B3Digest.of(r.read()) == known
        reads += 1
        if time.monotonic() > deadline:
            sys.exit("never saw the later blob")
    r = s.open_read(later)
    assert B3Digest.of(r.read()) == later
    print("reads", reads, flush=True)
    s.close()
    """
)


def test_second_process_reads_while_writing(service: LmdbBlobService, store_dir: Path) -> None:
    """Another process reads a blob while this one writes others, and sees new commits."""
    known = os.urandom(3 * MiB)
    known_d = service.put(known)
    later = os.urandom(2 * MiB)
    later_d = B3Digest.of(later)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(store_dir), str(known_d), str(later_d)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
        for _ in range(8):
            service.put(os.urandom(4 * MiB))
        assert service.put(later) == later_d
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err.decode()
    assert out.startswith(b"reads ")
    assert int(out.split()[1]) >= 1


@pytest.mark.slow
def test_streaming_write_memory_bounded(service: LmdbBlobService) -> None:
    """Writing a 256 MiB blob keeps the writer's buffered bytes and Python allocations bounded."""
    hasher = blake3.blake3()
    writer = service.open_write()
    assert isinstance(writer, LmdbBlobWriter)
    worst = 0
    tracemalloc.start()
    try:
        for _ in range(256):
            piece = os.urandom(MiB)
            hasher.update(piece)
            writer.write(piece)
            worst = max(worst, writer.buffered)
        digest = writer.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest == B3Digest(hasher.digest())
    # Design bound: chunker tail (< 2 MiB batch + 512 KiB + one 1 MiB piece) plus one batch
    # filling up and one being committed (each ~4 MiB + one piece's chunks).
    assert worst <= 14 * MiB, worst
    assert peak <= 32 * MiB, peak
    print(f"writer buffered at most {worst / MiB:.1f} MiB, tracemalloc peak {peak / MiB:.1f} MiB")
    # Read back in pieces, verifying as we go, without holding the blob either.
    r = service.open_read(digest)
    assert r is not None
    check = blake3.blake3()
    with r:
        while piece := r.read(MiB):
            check.update(piece)
        assert r.seek(0, io.SEEK_END) == 256 * MiB
    assert check.digest() == digest


def test_closed_service_refuses_use(store_dir: Path) -> None:
    """Every operation on a closed service raises ClosedError (never a raw py-lmdb error)."""
    s = LmdbBlobService(str(store_dir))
    digest = s.put(b"x")
    s.close()
    for op in (s.has, s.chunks, s.open_read, s.read_chunk):
        with pytest.raises(ClosedError):
            op(digest)


def test_abort_midway_leaves_no_blob(service: LmdbBlobService, store_dir: Path) -> None:
    """Aborting after several committed batches leaves no blob, only unreferenced chunks."""
    data = os.urandom(20 * MiB)
    w = service.open_write()
    w.write(data)
    w.abort()
    digest = B3Digest.of(data)
    assert not service.has(digest)
    assert service.open_read(digest) is None
    assert _table_items(store_dir, "blobs") == {}
    with pytest.raises(ClosedError):
        w.write(b"more")


def test_service_closed_during_write(store_dir: Path) -> None:
    """A writer whose service was closed underneath it fails with ClosedError, storing no blob."""
    s = LmdbBlobService(str(store_dir))
    w = s.open_write()
    w.write(os.urandom(6 * MiB))
    s.close()
    with pytest.raises(ClosedError):
        w.write(os.urandom(6 * MiB))
        w.close()
    s2 = LmdbBlobService(str(store_dir))
    try:
        assert _table_items(store_dir, "blobs") == {}
    finally:
        s2.close()


def test_verify_chunk_in_place_and_join_ranges(service: LmdbBlobService, store_dir: Path) -> None:
    """verify_chunk checks a chunk where it lies; join_chunk_ranges copies ranges of several."""
    data = os.urandom(3 * MiB)
    digest = service.put(data)
    chunks = service.chunks(digest)
    assert chunks is not None and len(chunks) >= 3
    assert [service.verify_chunk(c.digest) for c in chunks] == [c.size for c in chunks]
    starts = [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
    ranges = [
        (chunks[0].digest, 7, chunks[0].size),
        (chunks[1].digest, 0, chunks[1].size),
        (chunks[2].digest, 0, 9),
    ]
    assert service.join_chunk_ranges(ranges) == data[7 : starts[2] + 9]
    assert service.verify_chunk(B3Digest(bytes(32))) is None
    with pytest.raises(StorageError, match="missing"):
        service.join_chunk_ranges([(B3Digest(bytes(32)), 0, 1)])
    rotten = bytearray(data[starts[1] : starts[1] + chunks[1].size])
    rotten[-1] ^= 0x80
    _overwrite_chunk(store_dir, chunks[1].digest, bytes(rotten))
    with pytest.raises(DataCorruption, match=re.escape(str(chunks[1].digest))):
        service.verify_chunk(chunks[1].digest)


def test_store_map_keeps_the_kernels_read_ahead(service: LmdbBlobService, store_dir: Path) -> None:
    """Chunks are read sequentially, so the map must not be marked random access (VmFlag ``rr``,
    what py-lmdb's ``readahead=False`` sets): then a chunk on disk came in 4 KiB per page fault,
    and a cold mount read ran ten times slower."""
    service.put(os.urandom(MiB))
    data_file = str(store_dir.resolve() / "data.mdb")
    flags = None
    mapping = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header line
            mapping = line.endswith(data_file)
        elif mapping and line.startswith("VmFlags:"):
            flags = line.split()[1:]
    assert flags is not None, f"{data_file} is not mapped"
    assert "rr" not in flags


def test_multi_chunk_writes_work_in_a_forked_child(store_dir: Path) -> None:
    """The writer's helper threads (commit, whole-blob hash) are per process: a child forked
    after the parent used them starts its own, and its multi-chunk blob gets the right digest."""
    parent = LmdbBlobService(str(store_dir / "parent"))
    data = os.urandom(3 * MiB)
    assert parent.put(data) == B3Digest(blake3.blake3(data).digest())
    parent.close()
    pid = os.fork()
    if pid == 0:  # the child: a store of its own (an LMDB environment must not cross a fork)
        code = 1
        try:
            child = LmdbBlobService(str(store_dir / "child"))
            other = os.urandom(3 * MiB)
            ok = child.put(other) == B3Digest(blake3.blake3(other).digest())
            child.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung writing a multi-chunk blob")
