"""Blob reads through the gRPC client: the streamed sequential path, random access, and that no
byte a lying server sends is ever handed out (decision 6)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Served

from tvix_castore.blobservice import BlobReader, BlobService, BlobWriter, ChunkMeta
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.blobservice.chunked_reader import BytesBlobReader
from tvix_castore.blobservice.lmdb_store import LmdbBlobService, encode_chunk_list
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import DataCorruption, StorageError
from tvix_store.pathinfoservice.memory import MemoryPathInfoService
from tvix_store.server import Daemon
from tvix_store.services import Services

MiB = 1024 * 1024


def test_sequential_and_random_reads(served: Served) -> None:
    """A 24 MiB blob read in odd-sized pieces, then after seeks, comes back exact."""
    data = os.urandom(24 * MiB + 3)
    blobs = blob_from_addr(served.url)
    try:
        digest = blobs.put(data)
        chunks = blobs.chunks(digest)
        assert chunks is not None and len(chunks) > 20
        rng = random.Random(4)
        with blobs.open_read(digest) as r:  # type: ignore[union-attr]
            out = bytearray()
            while piece := r.read(rng.randrange(1, 400_000)):
                out += piece
            assert out == data
        with blobs.open_read(digest) as r:  # type: ignore[union-attr]
            assert r.read(10) == data[:10]
            for _ in range(30):
                o = rng.randrange(len(data))
                r.seek(o)
                assert r.read(70_000) == data[o : o + 70_000]
            r.seek(0)
            assert r.read() == data
    finally:
        blobs.close()


class _LyingBlobs(BlobService):
    """Claims a blob of three chunks; serves every read with one byte flipped."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = B3Digest.of(data)
        third = len(data) // 3
        parts = [data[:third], data[third : 2 * third], data[2 * third :]]
        self.parts = {B3Digest.of(p): p for p in parts}
        self.meta = [ChunkMeta(B3Digest.of(p), len(p)) for p in parts]

    def _bad(self, b: bytes) -> bytes:
        return b[:-1] + bytes([b[-1] ^ 1])

    def has(self, digest: B3Digest) -> bool:
        return digest == self.digest or digest in self.parts

    def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        if digest == self.digest:
            return self.meta
        return [] if digest in self.parts else None

    def open_read(self, digest: B3Digest) -> BlobReader | None:
        if digest == self.digest:
            return BytesBlobReader(self._bad(self.data))
        if digest in self.parts:
            return BytesBlobReader(self._bad(self.parts[digest]))
        return None

    def open_write(self) -> BlobWriter:
        return MemoryBlobService().open_write()


@pytest.fixture
def liar(short_dir: Path) -> Iterator[tuple[str, _LyingBlobs]]:
    blobs = _LyingBlobs(os.urandom(3 * MiB))
    services = Services(blobs, MemoryDirectoryService(), MemoryPathInfoService())
    sock = str(short_dir / "l.sock")
    daemon = Daemon(services, sock, max_workers=8)
    try:
        yield f"grpc+unix://{sock}", blobs
    finally:
        daemon.stop(grace=1.0)


def test_lying_server_is_caught(liar: tuple[str, _LyingBlobs]) -> None:
    """Streamed, per-chunk and single-chunk reads of tampered bytes all raise; none are returned."""
    url, blobs = liar
    client = blob_from_addr(url)
    try:
        r = client.open_read(blobs.digest)
        assert r is not None
        got = bytearray()
        with pytest.raises(StorageError):
            while piece := r.read(MiB // 2):
                got += piece
        # What came out before the failure is the verified prefix (the good chunks), no more.
        assert len(got) == 2 * (len(blobs.data) // 3)
        assert blobs.data.startswith(got)
        r2 = client.open_read(blobs.digest)
        assert r2 is not None
        r2.seek(2 * len(blobs.data) // 3 + 1)
        with pytest.raises(DataCorruption):
            r2.read(10)
        # Chunk 1 came verified through the stream above and is served from the cache; a fresh
        # client has to ask the server and is refused the tampered bytes.
        r3 = client.open_read(blobs.meta[1].digest)
        assert r3 is not None and r3.read() == blobs.parts[blobs.meta[1].digest]
    finally:
        client.close()
    fresh = blob_from_addr(url)
    try:
        with pytest.raises(DataCorruption):
            fresh.open_read(blobs.meta[1].digest)
    finally:
        fresh.close()


class _MiddleLiar(_LyingBlobs):
    """Streams the whole blob with its middle chunk altered; serves each chunk alone honestly."""

    def open_read(self, digest: B3Digest) -> BlobReader | None:
        if digest == self.digest:
            first, middle, last = (self.parts[m.digest] for m in self.meta)
            return BytesBlobReader(first + self._bad(middle) + last)
        if digest in self.parts:
            return BytesBlobReader(self.parts[digest])
        return None


def test_chunks_after_a_corrupt_one_in_a_stream_are_still_read(short_dir: Path) -> None:
    """A whole-blob stream that delivers its middle chunk altered fails that chunk only (as the
    FUSE layer reads, chunk by chunk); the chunk after it is fetched on its own and is good."""
    blobs = _MiddleLiar(os.urandom(3 * MiB))
    services = Services(blobs, MemoryDirectoryService(), MemoryPathInfoService())
    sock = str(short_dir / "m.sock")
    daemon = Daemon(services, sock, max_workers=8)
    client = blob_from_addr(f"grpc+unix://{sock}")
    try:
        metas = client.chunks(blobs.digest)
        assert metas == blobs.meta
        assert client.read_chunk(metas[0].digest) == blobs.parts[metas[0].digest]
        with pytest.raises(DataCorruption):
            client.read_chunk(metas[1].digest)
        assert client.read_chunk(metas[2].digest) == blobs.parts[metas[2].digest]
    finally:
        client.close()
        daemon.stop(grace=1.0)


def _raw_read(served: Served, digest: B3Digest) -> list[bytes]:
    """The data of each BlobService/Read message, parsed by protobuf itself."""
    from tvix.castore.protos import rpc_blobstore_pb2 as pb

    with served.channel() as channel:
        read = channel.unary_stream(
            "/tvix.castore.v1.BlobService/Read",
            request_serializer=pb.ReadBlobRequest.SerializeToString,
            response_deserializer=pb.BlobChunk.FromString,
        )
        return [m.data for m in read(pb.ReadBlobRequest(digest=digest))]


def test_read_sends_whole_chunks_in_messages_up_to_1_mib(served: Served) -> None:
    """From LMDB, Read packs whole chunks into messages of at most 1 MiB (boundaries fall on
    chunk boundaries); a single-chunk blob is one message and the empty blob has no data."""
    from tvix_castore.grpc.blob_servicer import READ_PIECE

    blobs = served.services.blob_service
    data = os.urandom(5 * MiB + 7)
    digest = blobs.put(data)
    chunks = blobs.chunks(digest)
    assert chunks is not None and len(chunks) > 8
    messages = _raw_read(served, digest)
    assert b"".join(messages) == data
    assert all(0 < len(m) <= READ_PIECE for m in messages)
    chunk_ends = set()
    pos = 0
    for c in chunks:
        pos += c.size
        chunk_ends.add(pos)
    ends = []
    pos = 0
    for m in messages:
        pos += len(m)
        ends.append(pos)
    assert set(ends) <= chunk_ends
    assert len(messages) < len(chunks)  # several chunks per message

    small = os.urandom(1000)
    assert _raw_read(served, blobs.put(small)) == [small]
    assert b"".join(_raw_read(served, blobs.put(b""))) == b""


def test_read_of_corrupt_chunk_is_data_loss_and_daemon_keeps_serving(served: Served) -> None:
    """A stored chunk whose bytes were altered is never sent: Read fails with DATA_LOSS after
    the good messages before it, and the daemon still answers other reads."""
    import grpc

    from tvix_castore.blobservice.lmdb_store import LmdbBlobService

    blobs = served.services.blob_service
    assert isinstance(blobs, LmdbBlobService)
    data = os.urandom(4 * MiB)
    digest = blobs.put(data)
    chunks = blobs.chunks(digest)
    assert chunks is not None and len(chunks) > 6
    victim = chunks[-1]
    env: Any = blobs._env
    table: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with env.begin(write=True, db=table) as txn:
        stored = bytearray(txn.get(victim.digest))
        stored[0] ^= 1
        txn.put(victim.digest, bytes(stored))
    with pytest.raises(grpc.RpcError) as info:
        _raw_read(served, digest)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    # tvix's mapping of a storage error, the corruption named after it.
    assert (info.value.details() or "").startswith("storage error: chunk ")
    assert str(victim.digest) in (info.value.details() or "")
    # CalculateNAR over the same blob fails as tvix says a render failure does.
    from tvix.store.protos import rpc_pathinfo_pb2_grpc as pgrpc
    from tvix_castore.nodes import FileNode
    from tvix_castore.proto_conv import node_to_proto

    with served.channel() as ch, pytest.raises(grpc.RpcError) as info:
        pgrpc.PathInfoServiceStub(ch).CalculateNAR(node_to_proto(b"", FileNode(digest, len(data))))
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert (info.value.details() or "").startswith("storage error: failed rendering nar: ")
    assert str(victim.digest) in (info.value.details() or "")
    other = os.urandom(2 * MiB)
    assert b"".join(_raw_read(served, blobs.put(other))) == other


class _CountingLmdbBlobs(LmdbBlobService):
    """A real LMDB blob store that notes each chunk it hashes in place."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hashed: list[B3Digest] = []

    def verify_chunk(self, digest: B3Digest) -> int | None:
        self.hashed.append(digest)
        return super().verify_chunk(digest)


def test_daemon_hashes_each_chunk_once_across_reads(short_dir: Path, tmp_path: Path) -> None:
    """The daemon checks a stored chunk the first time any client reads it, not on every Read;
    a chunk list that claims another size for a checked chunk is still refused."""
    import grpc

    blobs = _CountingLmdbBlobs(str(tmp_path / "store"))
    services = Services(blobs, MemoryDirectoryService(), MemoryPathInfoService())
    sock = str(short_dir / "c.sock")
    daemon = Daemon(services, sock, max_workers=8)
    served = Served(f"grpc+unix://{sock}", sock, services)
    try:
        data = os.urandom(3 * MiB)
        digest = blobs.put(data)
        chunks = blobs.chunks(digest)
        assert chunks is not None and len(chunks) > 3
        assert b"".join(_raw_read(served, digest)) == data
        assert sorted(blobs.hashed) == sorted(c.digest for c in chunks)
        blobs.hashed.clear()
        assert b"".join(_raw_read(served, digest)) == data
        assert blobs.hashed == []
        # Another blob index over the same chunks, with one size misstated.
        lie = [chunks[0], ChunkMeta(chunks[1].digest, chunks[1].size + 1)]
        fake = B3Digest(bytes(32))
        env: Any = blobs._env
        with env.begin(write=True, db=blobs._blobs_db) as txn:
            txn.put(fake, encode_chunk_list(lie))
        with pytest.raises(grpc.RpcError) as info:
            _raw_read(served, fake)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert f"chunk {chunks[1].digest} of blob {fake} is {chunks[1].size} bytes" in (
            info.value.details() or ""
        )
    finally:
        daemon.stop(grace=1.0)
        blobs.close()


def test_stalled_readers_do_not_freeze_the_daemon(served: Served) -> None:
    """Read streams whose clients stop reading hold the daemon's call threads; a call beyond
    them, once every thread has been held for REFUSE_AFTER with no call ending, is refused with
    RESOURCE_EXHAUSTED instead of waiting behind them for ever, and the daemon serves again
    once those clients go away."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tvix.castore.protos import rpc_blobstore_pb2 as bpb
    from tvix.castore.protos import rpc_blobstore_pb2_grpc as bgrpc

    digest = served.services.blob_service.put(os.urandom(32 * MiB))
    workers = 16  # the served fixture's daemon
    channels = [served.channel() for _ in range(workers)]
    streams = []  # kept: a dropped stream object cancels its call
    try:
        for ch in channels:
            stream = bgrpc.BlobServiceStub(ch).Read(bpb.ReadBlobRequest(digest=bytes(digest)))
            next(stream)  # started, then never read again: the server blocks sending
            streams.append(stream)
        with served.channel() as ch, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "daemon overloaded: all 16 call threads have been busy" in (info.value.details() or "")
    finally:
        for ch in channels:
            ch.close()
    deadline = time.monotonic() + 20
    with served.channel() as ch:
        while True:
            try:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the daemon did not recover"
                time.sleep(0.1)


def test_chunk_rotting_after_a_good_read_is_data_loss(served: Served) -> None:
    """Each Read checks what it sends: a chunk read fine once and damaged on disk afterwards is
    refused on a later Read (tvix's client does not re-hash, so a daemon that trusted its first
    check for ever would hand rot on)."""
    import time

    import grpc

    from tvix_castore.blobservice.lmdb_store import LmdbBlobService
    from tvix_castore.blobservice.memo import CHECK_HOLDS

    blobs = served.services.blob_service
    assert isinstance(blobs, LmdbBlobService)
    data = os.urandom(100_000)
    digest = blobs.put(data)
    assert b"".join(_raw_read(served, digest)) == data
    env: Any = blobs._env
    table: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with env.begin(write=True, db=table) as txn:
        stored = bytearray(txn.get(digest))
        stored[5000] ^= 0xFF
        txn.put(digest, bytes(stored))
    time.sleep(CHECK_HOLDS + 0.2)
    with pytest.raises(grpc.RpcError) as info:
        _raw_read(served, digest)
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
