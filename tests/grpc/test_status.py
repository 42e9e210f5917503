"""The StoreError <-> gRPC status table (``tvix_castore.grpc.status``), both directions, and the
clients' translation of what a real server answers."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from daemon_helpers import Served

from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_castore.errors import (
    ClosedError,
    DataCorruption,
    DirectoryError,
    InvalidRequest,
    NodeError,
    StorageError,
    StoreError,
    Unavailable,
)
from tvix_castore.grpc.status import error_of, status_of
from tvix_store.errors import NarRenderError, PathInfoError
from tvix_store.pathinfoservice import from_addr as path_info_from_addr

Code = grpc.StatusCode


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (InvalidRequest("bad"), Code.INVALID_ARGUMENT, "bad"),
        (StorageError("disk"), Code.DATA_LOSS, "storage error: disk"),
        (DataCorruption("rot"), Code.DATA_LOSS, "storage error: rot"),
        (Unavailable("down"), Code.UNAVAILABLE, "storage error: down"),
        (DirectoryError("'a' is not sorted"), Code.INVALID_ARGUMENT, "'a' is not sorted"),
        (NodeError("invalid digest length: 3"), Code.INVALID_ARGUMENT, "invalid digest length: 3"),
        (PathInfoError("No node present"), Code.INVALID_ARGUMENT, "No node present"),
        (ClosedError("closed"), Code.FAILED_PRECONDITION, "closed"),
        (NarRenderError("x"), Code.INTERNAL, "x"),
        (StoreError("other"), Code.INTERNAL, "other"),
    ],
)
def test_server_side(exc: StoreError, code: grpc.StatusCode, message: str) -> None:
    """Each error class maps to its status (tvix: InvalidRequest->INVALID_ARGUMENT, StorageError->
    DATA_LOSS "storage error: …")."""
    assert status_of(exc) == (code, message)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "klass"),
    [
        (Code.INVALID_ARGUMENT, InvalidRequest),
        (Code.UNIMPLEMENTED, InvalidRequest),
        (Code.DATA_LOSS, StorageError),
        (Code.UNAVAILABLE, Unavailable),
        (Code.INTERNAL, StorageError),
        (Code.RESOURCE_EXHAUSTED, StorageError),
        (Code.DEADLINE_EXCEEDED, Unavailable),
        (Code.UNKNOWN, StorageError),
    ],
)
def test_client_side(code: grpc.StatusCode, klass: type[StoreError]) -> None:
    """A received status becomes the matching error, naming the operation, code and details."""
    err = error_of(_FakeRpcError(code, "details here"), "stat of blob X")
    assert type(err) is klass
    assert str(err) == f"stat of blob X: {code.name}: details here"


def test_a_call_the_server_cancels_says_so() -> None:
    """A server that resets a call (a daemon ending its calls on a second stop signal) gives the
    client CANCELLED with the bare details "CANCELLED": the message says what happened instead."""
    from concurrent import futures

    def cancelled(_request: bytes, context: grpc.ServicerContext) -> bytes:
        context.cancel()
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Cancel", {"Call": grpc.unary_unary_rpc_method_handler(cancelled)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/test.Cancel/Call")(b"")
        assert info.value.code() is Code.CANCELLED  # type: ignore[attr-defined]
        err = error_of(info.value, "upload of blob X")
        assert str(err) == "upload of blob X: CANCELLED: the server cancelled the call (is it stopping?)"
    finally:
        server.stop(None)


def test_roundtrip_through_real_server(served: Served) -> None:
    """Real calls: NOT_FOUND is None, INVALID_ARGUMENT is InvalidRequest, a refused Put stream is
    a DirectoryError, and a server that is gone is a StorageError."""
    blobs = blob_from_addr(served.url)
    dirs = directory_from_addr(served.url)
    infos = path_info_from_addr(served.url, blobs, dirs)
    try:
        assert blobs.open_read(B3Digest.of(b"nothing")) is None
        assert dirs.get(B3Digest.of(b"nothing")) is None
        assert infos.get(bytes(20)) is None
        with pytest.raises(InvalidRequest):
            infos.get(bytes(19))
        from fixtures import DIRECTORY_B

        with pytest.raises(DirectoryError, match="unknown directory was referenced"):
            dirs.put(DIRECTORY_B)
    finally:
        infos.close()
        dirs.close()
        blobs.close()


def test_unreachable_server_is_storage_error(short_dir: object) -> None:
    """A socket nobody listens on: every call is a StorageError (UNAVAILABLE), never None."""
    url = f"grpc+unix://{short_dir}/none.sock"
    blobs = blob_from_addr(url)
    try:
        with pytest.raises(StorageError, match="UNAVAILABLE"):
            blobs.has(B3Digest.of(b"x"))
    finally:
        blobs.close()


def test_daemon_passes_on_a_backend_that_is_down_as_unavailable(short_dir: Path) -> None:
    """A daemon whose own backend (another daemon) is down answers UNAVAILABLE, worth a retry,
    naming that backend; not DATA_LOSS, which would say data was lost. It never acknowledges a
    blob its backend did not store."""
    from tvix.castore.protos import castore_pb2
    from tvix.castore.protos import rpc_blobstore_pb2 as bpb
    from tvix.castore.protos import rpc_blobstore_pb2_grpc as bgrpc
    from tvix.store.protos import rpc_pathinfo_pb2 as ppb
    from tvix.store.protos import rpc_pathinfo_pb2_grpc as pgrpc
    from tvix_store.server import Daemon
    from tvix_store.services import construct_services

    down = f"grpc+unix://{short_dir}/down.sock"
    services = construct_services(down, down, down)
    sock = str(short_dir / "front.sock")
    daemon = Daemon(services, sock, max_workers=8)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as ch:
            calls = [
                lambda: pgrpc.PathInfoServiceStub(ch).Get(ppb.GetPathInfoRequest(by_output_hash=bytes(20))),
                lambda: bgrpc.BlobServiceStub(ch).Stat(bpb.StatBlobRequest(digest=bytes(32))),
                lambda: pgrpc.PathInfoServiceStub(ch).CalculateNAR(
                    castore_pb2.Node(file=castore_pb2.FileNode(digest=bytes(32), size=1))
                ),
            ]
            # 40 MiB: more than the write-behind queue holds, so the failed upload stops the Put.
            pieces = [bpb.BlobChunk(data=bytes([i]) * (1 << 20)) for i in range(40)]
            calls.append(lambda: bgrpc.BlobServiceStub(ch).Put(iter(pieces)))
            # A small blob too: its upload runs behind the writer, but the answer waits for it.
            calls.append(lambda: bgrpc.BlobServiceStub(ch).Put(iter([bpb.BlobChunk(data=b"small")])))
            for call in calls:
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == Code.UNAVAILABLE
                assert down in (info.value.details() or "")
    finally:
        daemon.stop(grace=1.0)
        services.close()


def test_wait_connect_fails_fast(short_dir: object) -> None:
    """``?wait-connect=1`` connects at construction and fails there when nobody listens."""
    with pytest.raises(StorageError, match="cannot connect"):
        blob_from_addr(f"grpc+unix://{short_dir}/none.sock?wait-connect=1")


@pytest.mark.parametrize(
    "url",
    ["grpc+unix://host.example/sock", "grpc+http://localhost/some-path", "grpc+unix://", "grpc+ftp://x:1"],
)
def test_bad_urls(url: str) -> None:
    """Malformed gRPC URLs are refused (spec §9.3)."""
    with pytest.raises(InvalidRequest):
        blob_from_addr(url)


@pytest.mark.parametrize(
    ("url", "target", "tls"),
    [
        ("grpc+http://[::1]:12345", "[::1]:12345", False),
        ("grpc+http://localhost:8000", "localhost:8000", False),
        ("grpc+unix:///a/b.sock", "unix:/a/b.sock", False),
        ("grpc+https://example.org:443", "example.org:443", True),
    ],
)
def test_good_urls(url: str, target: str, tls: bool) -> None:
    """Well-formed gRPC URLs name the channel target grpcio dials (with TLS for https) and build
    a client without connecting: nothing listens at these addresses."""
    from tvix_castore.blobservice.grpc_client import GrpcBlobService
    from tvix_castore.grpc.channel import channel_target
    from tvix_castore.url import ServiceUrl

    assert channel_target(ServiceUrl.parse(url)) == (target, tls)
    client = blob_from_addr(url)
    try:
        assert isinstance(client, GrpcBlobService)
    finally:
        client.close()


def test_unix_url_without_authority(served: Served) -> None:
    """``grpc+unix:/path`` (no ``//``) names the same socket, as tvix's URL parser reads it."""
    url = served.url.replace("grpc+unix://", "grpc+unix:", 1)
    assert url.startswith("grpc+unix:/") and not url.startswith("grpc+unix://")
    blobs = blob_from_addr(url)
    try:
        assert blobs.put(b"x86_64-linux") == B3Digest.of(b"x86_64-linux")
    finally:
        blobs.close()


def test_wait_connect_succeeds(served: Served) -> None:
    """``?wait-connect=1`` to a running daemon connects and works."""
    blobs = blob_from_addr(served.url + "?wait-connect=1")
    try:
        assert blobs.put(b"x86_64-linux") == B3Digest.of(b"x86_64-linux")
    finally:
        blobs.close()


def test_daemon_passes_on_a_binary_cache_that_is_down_as_unavailable(short_dir: Path) -> None:
    """A daemon whose path-info backend is a binary cache nobody answers at (connection refused)
    answers UNAVAILABLE naming the cache URL, as for a gRPC backend that is down."""
    import socket

    from tvix.store.protos import rpc_pathinfo_pb2 as ppb
    from tvix.store.protos import rpc_pathinfo_pb2_grpc as pgrpc
    from tvix_store.server import Daemon
    from tvix_store.services import construct_services

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    services = construct_services("memory://", "memory://", f"nix+http://127.0.0.1:{port}")
    sock = str(short_dir / "front.sock")
    daemon = Daemon(services, sock, max_workers=8)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as ch, pytest.raises(grpc.RpcError) as info:
            pgrpc.PathInfoServiceStub(ch).Get(ppb.GetPathInfoRequest(by_output_hash=bytes(20)))
        assert info.value.code() == Code.UNAVAILABLE
        assert f"127.0.0.1:{port}" in (info.value.details() or "")
    finally:
        daemon.stop(grace=1.0)
        services.close()
