"""Bad input to the daemon (issue 4 point 5): the spec's status code, nothing stored, still serving.

Every test talks to an in-process daemon over LMDB through raw generated stubs (so it can send
what our clients never would), then checks through the LMDB services themselves that nothing of
the rejected request was stored, and that the daemon still answers a good call.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import grpc
import pytest
from daemon_helpers import Served, daemon_serving
from fixtures import (
    BLOB_A,
    BLOB_A_DIGEST,
    CASTORE_NODE_COMPLICATED,
    DIRECTORY_A,
    DIRECTORY_B,
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    PATH_INFO,
)

from tvix.castore.protos import castore_pb2 as cpb
from tvix.castore.protos import rpc_blobstore_pb2 as bpb
from tvix.castore.protos import rpc_blobstore_pb2_grpc as bgrpc
from tvix.castore.protos import rpc_directory_pb2 as dpb
from tvix.castore.protos import rpc_directory_pb2_grpc as dgrpc
from tvix.store.protos import pathinfo_pb2 as ppb
from tvix.store.protos import rpc_pathinfo_pb2 as rpb
from tvix.store.protos import rpc_pathinfo_pb2_grpc as pgrpc
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.nodes import DirectoryNode, FileNode
from tvix_castore.proto_conv import directory_to_proto, node_to_proto
from tvix_store.proto_conv import path_info_to_proto
from tvix_store.services import construct_services

MiB = 1024 * 1024
Code = grpc.StatusCode


def _status(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        result = fn()
        if isinstance(result, Iterator):
            list(result)
    err = info.value
    return err.code(), err.details() or ""  # type: ignore[attr-defined]


def _still_serving(served: Served) -> None:
    """A good call right after: the daemon keeps serving."""
    with served.channel() as ch:
        digest = bgrpc.BlobServiceStub(ch).Put(iter([bpb.BlobChunk(data=BLOB_A)]), timeout=10).digest
    assert digest == BLOB_A_DIGEST


def _put_dirs(served: Served, *msgs: cpb.Directory) -> tuple[grpc.StatusCode, str]:
    with served.channel() as ch:
        stub = dgrpc.DirectoryServiceStub(ch)
        return _status(lambda: stub.Put(iter(msgs), timeout=10))


def _none_stored(served: Served, *dirs: Directory) -> None:
    for d in dirs:
        assert served.services.directory_service.get(d.digest()) is None, d


# ---- DirectoryService/Put ------------------------------------------------------------------------


def test_directory_out_of_order(served: Served) -> None:
    """A parent sent before its child: INTERNAL "unknown directory was referenced", nothing stored."""
    code, msg = _put_dirs(served, directory_to_proto(DIRECTORY_B), directory_to_proto(DIRECTORY_A))
    assert code == Code.INTERNAL
    assert "unknown directory was referenced" in msg
    _none_stored(served, DIRECTORY_A, DIRECTORY_B)
    _still_serving(served)


def test_directory_dangling_even_if_stored(served: Served) -> None:
    """A child that exists in the store but was not sent in the stream is still dangling."""
    served.services.directory_service.put(DIRECTORY_A)
    code, msg = _put_dirs(served, directory_to_proto(DIRECTORY_B))
    assert code == Code.INTERNAL
    assert "unknown directory was referenced" in msg
    _none_stored(served, DIRECTORY_B)
    _still_serving(served)


def test_directory_wrong_size(served: Served) -> None:
    """A DirectoryNode whose size differs from the child's size: INTERNAL "has wrong size"."""
    wrong = Directory({b"a": DirectoryNode(DIRECTORY_A.digest(), 42)})
    code, msg = _put_dirs(served, directory_to_proto(DIRECTORY_A), directory_to_proto(wrong))
    assert code == Code.INTERNAL
    assert msg == "'a' has wrong size, specified 42, recorded 0"
    _none_stored(served, DIRECTORY_A, wrong)
    _still_serving(served)


def test_directory_disconnected_roots(served: Served) -> None:
    """Two unrelated Directories in one stream: INTERNAL "graph has disconnected roots"."""
    code, msg = _put_dirs(served, directory_to_proto(DIRECTORY_A), directory_to_proto(DIRECTORY_WITH_KEEP))
    assert code == Code.INTERNAL
    assert "disconnected roots" in msg
    _none_stored(served, DIRECTORY_A, DIRECTORY_WITH_KEEP)


def test_directory_empty_stream(served: Served) -> None:
    """A Put with no messages: INVALID_ARGUMENT "got no directories"."""
    code, msg = _put_dirs(served)
    assert code == Code.INVALID_ARGUMENT
    assert "got no directories" in msg


def _raw_dir(**lists: list[tuple[bytes, bytes]]) -> cpb.Directory:
    msg = cpb.Directory()
    for name, digest in lists.get("files", []):
        msg.files.add(name=name, digest=digest, size=1)
    for name, digest in lists.get("directories", []):
        msg.directories.add(name=name, digest=digest, size=0)
    for name, target in lists.get("symlinks", []):
        msg.symlinks.add(name=name, target=target)
    return msg


D32 = bytes(32)


@pytest.mark.parametrize(
    ("msg", "needle"),
    [
        (_raw_dir(files=[(b"b", D32), (b"a", D32)]), "is not sorted"),
        (_raw_dir(files=[(b"a", D32), (b"a", D32)]), "duplicate name"),
        (_raw_dir(files=[(b"a", D32)], symlinks=[(b"a", b"x")]), "duplicate name"),
        (_raw_dir(files=[(b"a", bytes(31))]), "invalid digest length: 31"),
        (_raw_dir(files=[(b"a", bytes(33))]), "invalid digest length: 33"),
        (_raw_dir(files=[(b"a", b"")]), "invalid digest length: 0"),
        (_raw_dir(directories=[(b"a", bytes(5))]), "invalid digest length: 5"),
        (_raw_dir(files=[(b"a/b", D32)]), "slash"),
        (_raw_dir(files=[(b"..", D32)]), "'..'"),
        (_raw_dir(files=[(b"", D32)]), "empty"),
        (_raw_dir(symlinks=[(b"l", b"")]), "invalid node with name"),
    ],
    ids=[
        "unsorted",
        "duplicate",
        "duplicate-across-lists",
        "digest-31",
        "digest-33",
        "digest-0",
        "dirnode-digest-5",
        "slash",
        "dotdot",
        "empty-name",
        "empty-target",
    ],
)
def test_directory_invalid_message(served: Served, msg: cpb.Directory, needle: str) -> None:
    """Invalid Directories (spec §1.6) are refused with INTERNAL and the rule's text."""
    code, text = _put_dirs(served, directory_to_proto(DIRECTORY_A), msg)
    assert code == Code.INTERNAL
    assert needle in text, text
    _none_stored(served, DIRECTORY_A)
    _still_serving(served)


# ---- DirectoryService/Get, BlobService digests --------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_bad_digest_lengths_on_gets(served: Served, length: int) -> None:
    """Digests of the wrong length: INVALID_ARGUMENT on every lookup RPC."""
    bad = bytes(length)
    with served.channel() as ch:
        blobs = bgrpc.BlobServiceStub(ch)
        dirs = dgrpc.DirectoryServiceStub(ch)
        infos = pgrpc.PathInfoServiceStub(ch)
        assert _status(lambda: blobs.Stat(bpb.StatBlobRequest(digest=bad))) == (
            Code.INVALID_ARGUMENT,
            "invalid digest length",
        )
        assert _status(lambda: blobs.Read(bpb.ReadBlobRequest(digest=bad))) == (
            Code.INVALID_ARGUMENT,
            "invalid digest length",
        )
        for recursive in (False, True):
            req = dpb.GetDirectoryRequest(digest=bad, recursive=recursive)
            assert _status(lambda r=req: dirs.Get(r)) == (Code.INVALID_ARGUMENT, "invalid digest length")
        req20 = rpb.GetPathInfoRequest(by_output_hash=bytes(length if length != 20 else 19))
        assert _status(lambda: infos.Get(req20)) == (Code.INVALID_ARGUMENT, "invalid output digest length")
    _still_serving(served)


def test_unset_by_what(served: Served) -> None:
    """A Get without by_what: INVALID_ARGUMENT for directories, UNIMPLEMENTED for PathInfos."""
    with served.channel() as ch:
        dirs = dgrpc.DirectoryServiceStub(ch)
        infos = pgrpc.PathInfoServiceStub(ch)
        assert _status(lambda: dirs.Get(dpb.GetDirectoryRequest())) == (
            Code.INVALID_ARGUMENT,
            "invalid by_what",
        )
        assert _status(lambda: infos.Get(rpb.GetPathInfoRequest())) == (
            Code.UNIMPLEMENTED,
            "by_what needs to be specified",
        )


def test_not_found_texts(served: Served) -> None:
    """Absent objects: NOT_FOUND with tvix's texts; an absent recursive root is an empty stream."""
    digest = B3Digest.of(b"absent")
    with served.channel() as ch:
        blobs = bgrpc.BlobServiceStub(ch)
        dirs = dgrpc.DirectoryServiceStub(ch)
        infos = pgrpc.PathInfoServiceStub(ch)
        assert _status(lambda: blobs.Stat(bpb.StatBlobRequest(digest=digest))) == (
            Code.NOT_FOUND,
            f"blob {digest} not found",
        )
        assert _status(lambda: blobs.Read(bpb.ReadBlobRequest(digest=digest))) == (
            Code.NOT_FOUND,
            f"blob {digest} not found",
        )
        assert _status(lambda: dirs.Get(dpb.GetDirectoryRequest(digest=digest))) == (
            Code.NOT_FOUND,
            f"directory {digest} not found",
        )
        assert list(dirs.Get(dpb.GetDirectoryRequest(digest=digest, recursive=True))) == []
        req = rpb.GetPathInfoRequest(by_output_hash=bytes(20))
        assert _status(lambda: infos.Get(req)) == (Code.NOT_FOUND, "PathInfo not found")


def test_recursive_get_missing_child(served: Served) -> None:
    """A closure with a missing Directory: the root arrives, then INTERNAL naming the child."""
    served.services.directory_service.put(DIRECTORY_COMPLICATED)
    with served.channel() as ch:
        call = dgrpc.DirectoryServiceStub(ch).Get(
            dpb.GetDirectoryRequest(digest=DIRECTORY_COMPLICATED.digest(), recursive=True)
        )
        first = next(call)
        assert first == directory_to_proto(DIRECTORY_COMPLICATED)
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == Code.INTERNAL  # type: ignore[attr-defined]
        assert str(DIRECTORY_WITH_KEEP.digest()) in (info.value.details() or "")  # type: ignore[attr-defined]


# ---- PathInfoService/Put: every rule of spec §4.3 -----------------------------------------------


def _good_pathinfo() -> ppb.PathInfo:
    return path_info_to_proto(PATH_INFO)


def _mutate(fn: Callable[[ppb.PathInfo], None]) -> ppb.PathInfo:
    msg = _good_pathinfo()
    fn(msg)
    return msg


PATHINFO_CASES: list[tuple[str, Callable[[ppb.PathInfo], None], str]] = [
    ("no-narinfo", lambda m: m.ClearField("narinfo"), "The narinfo field is missing"),
    (
        "reference-length",
        lambda m: m.references.__setitem__(0, bytes(19)),
        "Invalid length of digest at position 0, expected 20, got 19",
    ),
    (
        "reference-count",
        lambda m: m.narinfo.reference_names.append("00000000000000000000000000000000-dummy"),
        "Inconsistent Number of References: 1 (references) vs 2 (narinfo)",
    ),
    (
        "reference-name-invalid",
        lambda m: m.narinfo.reference_names.__setitem__(
            0, "/nix/store/00000000000000000000000000000000-dummy"
        ),
        "Invalid reference_name at position 0",
    ),
    (
        "reference-name-digest",
        lambda m: m.narinfo.reference_names.__setitem__(0, "11111111111111111111111111111111-dummy"),
        "digest in reference_name at position 0 does not match",
    ),
    ("no-node", lambda m: m.ClearField("node"), "No node present"),
    ("node-unset", lambda m: m.node.Clear(), "Invalid root node"),
    (
        "node-digest-length",
        lambda m: setattr(m.node.directory, "digest", b""),
        "Invalid root node",
    ),
    (
        "node-name-not-store-path",
        lambda m: setattr(m.node.directory, "name", b"invalid"),
        "as StorePath",
    ),
    (
        "nar-sha256-length",
        lambda m: setattr(m.narinfo, "nar_sha256", bytes(31)),
        "Invalid narinfo.nar_sha256 length: expected 32, got 31",
    ),
    (
        "deriver-digest",
        lambda m: (setattr(m.narinfo.deriver, "name", "foo"), setattr(m.narinfo.deriver, "digest", bytes(3))),
        "deriver field is invalid",
    ),
    (
        "deriver-name",
        lambda m: (
            setattr(m.narinfo.deriver, "name", "a/b"),
            setattr(m.narinfo.deriver, "digest", bytes(20)),
        ),
        "deriver field is invalid",
    ),
    (
        "signature-length",
        lambda m: m.narinfo.signatures.add(name="k", data=bytes(63)),
        "The signature at position 0 is invalid",
    ),
    (
        "ca-digest-length",
        lambda m: setattr(m.narinfo.ca, "digest", bytes(20)),
        "The ca field is invalid",
    ),
    (
        "ca-unknown-type",
        lambda m: setattr(m.narinfo.ca, "type", 42),
        "The ca field is invalid: Unknown hash type: 42",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "needle"), [c[1:] for c in PATHINFO_CASES], ids=[c[0] for c in PATHINFO_CASES]
)
def test_pathinfo_rules(served: Served, mutate: Callable[[ppb.PathInfo], None], needle: str) -> None:
    """A PathInfo breaking a rule of spec §4.3: INVALID_ARGUMENT "Invalid path info: …", not stored."""
    msg = _mutate(mutate)
    with served.channel() as ch:
        stub = pgrpc.PathInfoServiceStub(ch)
        code, text = _status(lambda: stub.Put(msg))
    assert code == Code.INVALID_ARGUMENT
    assert text.startswith("Invalid path info: "), text
    assert needle in text, text
    assert list(served.services.path_info_service.list()) == []
    _still_serving(served)


def test_pathinfo_good_put_roundtrip(served: Served) -> None:
    """The unmutated PathInfo is accepted and returned byte-identical (the cases above are minimal)."""
    with served.channel() as ch:
        stub = pgrpc.PathInfoServiceStub(ch)
        assert stub.Put(_good_pathinfo()) == _good_pathinfo()
        assert (
            stub.Get(rpb.GetPathInfoRequest(by_output_hash=PATH_INFO.store_path.digest)) == _good_pathinfo()
        )
        assert list(stub.List(rpb.ListPathInfoRequest())) == [_good_pathinfo()]


def test_calculate_nar_bad_nodes(served: Served) -> None:
    """CalculateNAR: a named node is INVALID_ARGUMENT; a node whose data is missing is DATA_LOSS."""
    with served.channel() as ch:
        stub = pgrpc.PathInfoServiceStub(ch)
        code, text = _status(lambda: stub.CalculateNAR(node_to_proto(b"name", CASTORE_NODE_COMPLICATED)))
        assert code == Code.INVALID_ARGUMENT
        assert text.startswith("invalid root node")
        code, text = _status(lambda: stub.CalculateNAR(cpb.Node()))
        assert code == Code.INVALID_ARGUMENT
        code, text = _status(lambda: stub.CalculateNAR(node_to_proto(b"", CASTORE_NODE_COMPLICATED)))
        assert code == Code.DATA_LOSS
        assert text.startswith("storage error: failed rendering nar: ")
    _still_serving(served)


def _terabyte_nar(served: Served) -> cpb.Node:
    """A directory of 2,000 entries sharing one 64 MiB blob of zeros: its NAR is 128 GiB, stored
    in about 1 MiB (the blob's chunks are all one)."""
    writer = served.services.blob_service.open_write()
    for _ in range(64):
        writer.write(bytes(MiB))
    blob = writer.close()
    directory = Directory((f"f{i:04}".encode(), FileNode(blob, 64 * MiB)) for i in range(2000))
    served.services.directory_service.put(directory)
    return node_to_proto(b"", directory.as_node())


def _cpu_while(seconds: float) -> float:
    """CPU seconds this process (its daemons included) uses over the next seconds."""
    before = time.process_time()
    time.sleep(seconds)
    return time.process_time() - before


def test_calculate_nar_stops_when_the_client_gives_up(served: Served, short_dir: Path) -> None:
    """A CalculateNAR whose client passes its deadline stops rendering, also through a second
    daemon in front of the first (that one cancels its own call): found by review, a 2 TB NAR
    went on burning a core for hours after its client had gone."""
    root = _terabyte_nar(served)
    front = construct_services(served.url, served.url, served.url)
    with daemon_serving(front, str(short_dir / "front.sock")) as front_url:
        for url in (served.url, front_url):
            with grpc.insecure_channel(f"unix:{url.removeprefix('grpc+unix://')}") as ch:
                stub = pgrpc.PathInfoServiceStub(ch)
                code, _ = _status(lambda stub=stub: stub.CalculateNAR(root, timeout=1.0))
                assert code == Code.DEADLINE_EXCEEDED
                # Rendering goes at well over a core's worth of hashing; stopped, nearly nothing.
                time.sleep(1.5)  # the front daemon asks its caller once a second
                assert _cpu_while(2.0) < 0.5, url
    _still_serving(served)


# ---- disconnects, sizes, garbage -----------------------------------------------------------------


def test_blob_put_cancelled_midway(served: Served) -> None:
    """A blob Put cancelled after some messages stores nothing (no prefix, not the whole)."""
    rng = random.Random(5)
    pieces = [rng.randbytes(MiB) for _ in range(8)]
    sent = threading.Event()
    hasher = blake3.blake3()
    prefixes = []

    def gen() -> Iterator[bpb.BlobChunk]:
        for i, p in enumerate(pieces):
            if i == 4:
                sent.set()
                time.sleep(30)  # never resumes: the call is cancelled meanwhile
            hasher.update(p)
            prefixes.append(B3Digest(hasher.copy().digest()))
            yield bpb.BlobChunk(data=p)

    with served.channel() as ch:
        fut = bgrpc.BlobServiceStub(ch).Put.future(gen())
        assert sent.wait(10)
        time.sleep(0.3)
        fut.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            fut.result()
    time.sleep(0.5)
    full = B3Digest.of(b"".join(pieces))
    for i, d in enumerate([*prefixes, full]):
        assert not served.services.blob_service.has(d), (i, len(prefixes))
    _still_serving(served)


def test_directory_put_cancelled_midway(served: Served) -> None:
    """A Directory Put cancelled after its first message stores nothing."""
    sent = threading.Event()

    def gen() -> Iterator[cpb.Directory]:
        yield directory_to_proto(DIRECTORY_A)
        sent.set()
        time.sleep(30)
        yield directory_to_proto(DIRECTORY_B)

    with served.channel() as ch:
        fut = dgrpc.DirectoryServiceStub(ch).Put.future(gen())
        assert sent.wait(10)
        time.sleep(0.3)
        fut.cancel()
    time.sleep(0.5)
    _none_stored(served, DIRECTORY_A, DIRECTORY_B)
    _still_serving(served)


_KILLED_CLIENT = r"""
import random, sys, grpc
from tvix.castore.protos import rpc_blobstore_pb2 as bpb, rpc_blobstore_pb2_grpc as bgrpc
rng = random.Random(int(sys.argv[2]))
piece = int(sys.argv[3])
def gen():
    for _ in range(64):
        yield bpb.BlobChunk(data=rng.randbytes(piece))
        print("sent", flush=True)
    import time; time.sleep(60)
ch = grpc.insecure_channel("unix:" + sys.argv[1])
bgrpc.BlobServiceStub(ch).Put(gen())
"""


@pytest.mark.parametrize("piece", [MiB, 8 * 1024], ids=["1MiB-messages", "8KiB-messages"])
def test_client_killed_midway(served: Served, piece: int) -> None:
    """A client process SIGKILLed in the middle of a blob Put: nothing of it is stored.

    Also when what arrived is small (tvix's clients send blobs in small messages): grpcio shows
    the server a killed client's stream first as a normal end, the cancellation only after.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, served.sock, "11", str(piece)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        for _ in range(6):
            assert proc.stdout.readline() == b"sent\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)
    rng = random.Random(11)
    hasher = blake3.blake3()
    for _ in range(64):
        hasher.update(rng.randbytes(piece))
        assert not served.services.blob_service.has(B3Digest(hasher.copy().digest()))
    _still_serving(served)


@pytest.mark.slow
def test_100mb_blob_in_1mib_messages(served: Served) -> None:
    """A 100 MB blob sent as 1 MiB messages is stored whole, chunked, and reads back verified."""
    size = 100 * 1000 * 1000
    rng = random.Random(9)
    data = rng.randbytes(size)

    def gen() -> Iterator[bpb.BlobChunk]:
        for i in range(0, size, MiB):
            yield bpb.BlobChunk(data=data[i : i + MiB])

    with served.channel() as ch:
        stub = bgrpc.BlobServiceStub(ch)
        digest = stub.Put(gen(), timeout=300).digest
        assert digest == B3Digest.of(data)
        stat = stub.Stat(bpb.StatBlobRequest(digest=digest, send_chunks=True))
        assert sum(c.size for c in stat.chunks) == size
        assert len(stat.chunks) > 100
        got = hashlib.sha256()
        total = 0
        for msg in stub.Read(bpb.ReadBlobRequest(digest=digest)):
            assert len(msg.data) <= MiB
            got.update(msg.data)
            total += len(msg.data)
        assert total == size
        assert got.digest() == hashlib.sha256(data).digest()


def test_message_over_limit(served: Served) -> None:
    """Messages over 4 MiB: RESOURCE_EXHAUSTED, nothing stored, the daemon keeps serving."""
    big = os.urandom(5 * MiB)
    before = list(served.services.path_info_service.list())
    with served.channel() as ch:
        blobs = bgrpc.BlobServiceStub(ch)
        code, _ = _status(lambda: blobs.Put(iter([bpb.BlobChunk(data=big)])))
        assert code == Code.RESOURCE_EXHAUSTED
        code, _ = _status(lambda: blobs.Put(iter([bpb.BlobChunk(data=b"x" * MiB), bpb.BlobChunk(data=big)])))
        assert code == Code.RESOURCE_EXHAUSTED
        assert not blobs_has(served, big)
        huge_dir = cpb.Directory()
        for i in range(70_000):
            huge_dir.symlinks.add(name=b"%08d" % i, target=b"t" * 50)
        assert huge_dir.ByteSize() > 4 * MiB
        code, _ = _status(lambda: dgrpc.DirectoryServiceStub(ch).Put(iter([huge_dir])))
        assert code == Code.RESOURCE_EXHAUSTED
        info = _good_pathinfo()
        for _ in range(30):
            info.narinfo.signatures.add(name="k" * 200_000, data=bytes(64))
        code, _ = _status(lambda: pgrpc.PathInfoServiceStub(ch).Put(info))
        assert code == Code.RESOURCE_EXHAUSTED
    assert list(served.services.path_info_service.list()) == before
    _still_serving(served)


def blobs_has(served: Served, data: bytes) -> bool:
    return served.services.blob_service.has(B3Digest.of(data))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_to_the_socket(served: Served, seed: int) -> None:
    """Random bytes (and a valid preface followed by garbage) sent to the socket: the connection
    is dropped, the daemon keeps serving."""
    rng = random.Random(seed)
    payloads = [
        rng.randbytes(100_000),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(50_000),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for payload in payloads:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(served.sock)
            try:
                s.sendall(payload)
                while s.recv(65536):
                    pass
            except OSError:
                pass  # a reset is a clean connection error
        _still_serving(served)


def test_good_client_unaffected_by_bad_ones(served: Served) -> None:
    """A client doing good calls in a loop sees no error while others send bad input."""
    stop = threading.Event()
    errors: list[BaseException] = []
    served.services.path_info_service.put(PATH_INFO)
    req = rpb.GetPathInfoRequest(by_output_hash=PATH_INFO.store_path.digest)
    count = 0

    def good() -> None:
        nonlocal count
        with served.channel() as ch:
            stub = pgrpc.PathInfoServiceStub(ch)
            while not stop.is_set():
                try:
                    stub.Get(req, timeout=10)
                    count += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    t = threading.Thread(target=good)
    t.start()
    try:
        for seed in range(3):
            test_random_bytes_to_the_socket(served, seed)
        _put_dirs(served, directory_to_proto(DIRECTORY_B))
        test_message_over_limit(served)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert count > 0
