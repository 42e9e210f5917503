"""Our HTTP/2 layer: HPACK against RFC 7541's examples, our client against grpcio's server (a
foreign implementation: other windows, dynamic-table headers), and our server against frames a
grpcio client never sends (padding, CONTINUATION, PING, deadlines)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from daemon_helpers import Served
from fixtures import DIRECTORY_A, DIRECTORY_B, DIRECTORY_C, DIRECTORY_D, PATH_INFO

from tvix.castore.protos import rpc_blobstore_pb2_grpc as blob_grpc
from tvix.castore.protos import rpc_directory_pb2_grpc as directory_grpc
from tvix.store.protos import rpc_pathinfo_pb2_grpc as pathinfo_grpc
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import DirectoryError
from tvix_castore.grpc import http2 as h2
from tvix_castore.grpc.blob_servicer import BlobServicer
from tvix_castore.grpc.directory_servicer import DirectoryServicer
from tvix_castore.grpc.h2client import CallError, UnaryCaller, bytes_field
from tvix_castore.grpc.hpack import Decoder, HpackError, encode, huffman_decode
from tvix_castore.proto_conv import encode_directory, length_delimited
from tvix_store.grpc.pathinfo_servicer import PathInfoServicer
from tvix_store.pathinfoservice import from_addr as path_info_from_addr
from tvix_store.pathinfoservice.memory import MemoryPathInfoService

# ---- HPACK ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coded", "text"),
    [
        ("f1e3c2e5f23a6ba0ab90f4ff", b"www.example.com"),
        ("a8eb10649cbf", b"no-cache"),
        ("25a849e95ba97d7f", b"custom-key"),
        ("25a849e95bb8e8b4bf", b"custom-value"),
        ("6402", b"302"),
        ("aec3771a4b", b"private"),
        ("d07abe941054d444a8200595040b8166e082a62d1bff", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        ("9d29ad171863c78f0b97c8e9ae82ae43d3", b"https://www.example.com"),
    ],
)
def test_huffman_rfc7541_examples(coded: str, text: bytes) -> None:
    """RFC 7541 C.4 and C.6: Huffman-coded strings decode to the text."""
    assert huffman_decode(bytes.fromhex(coded)) == text


def test_dynamic_table_rfc7541_c3() -> None:
    """RFC 7541 C.3: three requests on one connection share the dynamic table."""
    d = Decoder()
    first = d.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"))
    assert first == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
    ]
    second = d.decode(bytes.fromhex("828684be58086e6f2d6361636865"))
    assert second[-2:] == [(b":authority", b"www.example.com"), (b"cache-control", b"no-cache")]
    third = d.decode(bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"))
    assert third == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ]


@pytest.mark.parametrize(
    "block",
    [
        "82bf",  # dynamic index beyond an empty table
        "80",  # index 0
        "410f7777",  # literal cut short
        "3fe21f",  # table size update to 4097, over the 4096 limit
        "008100",  # Huffman name '0' followed by padding bits 000 (must be all ones)
        "ff8080808080",  # integer overflow
    ],
)
def test_bad_header_blocks(block: str) -> None:
    """Malformed blocks raise HpackError (the connection then ends with COMPRESSION_ERROR)."""
    with pytest.raises(HpackError):
        Decoder().decode(bytes.fromhex(block))


def test_encode_decodes_back() -> None:
    """Our table-less encoding decodes to the same list, from any decoder state."""
    headers = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"3"),
        (b"grpc-message", b"x" * 300),
    ]
    d = Decoder()
    d.decode(bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"))  # table not empty
    assert d.decode(encode(headers)) == headers
    assert d.decode(encode(headers)) == headers  # second time from the block cache


def test_grpc_message_percent_coding() -> None:
    """grpc-message: non-printable bytes and '%' are escaped, and come back."""
    text = "bad 'x' 100% \u00fc\n"
    coded = h2.grpc_message_encode(text)
    assert all(0x20 <= b <= 0x7E for b in coded)
    assert h2.grpc_message_decode(coded) == text


def test_bytes_field() -> None:
    """A bytes field is found among others (varint, fixed, other lengths); malformed raises."""
    msg = bytes([0x08, 0x96, 0x01]) + length_delimited(2, b"other") + length_delimited(1, b"digest")
    msg += bytes([0x1D, 1, 2, 3, 4])
    assert bytes_field(msg, 1) == b"digest"
    assert bytes_field(msg, 7) == b""
    with pytest.raises(ValueError):
        bytes_field(length_delimited(1, b"digest")[:-1], 1)


# ---- our client against grpcio's server ----------------------------------------------------------


@pytest.fixture
def grpcio_served(short_dir: Path) -> Iterator[tuple[str, MemoryBlobService, MemoryDirectoryService]]:
    """grpcio's own server with our servicers over memory services, on a unix socket."""
    blobs, dirs, infos = MemoryBlobService(), MemoryDirectoryService(), MemoryPathInfoService()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    blob_grpc.add_BlobServiceServicer_to_server(BlobServicer(blobs), server)
    directory_grpc.add_DirectoryServiceServicer_to_server(DirectoryServicer(dirs), server)
    pathinfo_grpc.add_PathInfoServiceServicer_to_server(PathInfoServicer(infos, blobs, dirs), server)
    sock = str(short_dir / "g.sock")
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    try:
        yield f"grpc+unix://{sock}", blobs, dirs
    finally:
        server.stop(1).wait()


def test_client_puts_to_grpcio_server(
    grpcio_served: tuple[str, MemoryBlobService, MemoryDirectoryService],
) -> None:
    """Small and streamed blobs (past grpcio's 64 KiB windows), a Directory closure and a
    PathInfo reach a grpcio server through our HTTP/2 client."""
    url, blobs, dirs = grpcio_served
    blob_client = blob_from_addr(url)
    dir_client = directory_from_addr(url)
    info_client = path_info_from_addr(url, blob_client, dir_client)
    try:
        small = [os.urandom(n) for n in (0, 1, 1000, 100_000)]
        digests = blob_client.put_many(small)
        big = os.urandom(3 * 1024 * 1024 + 17)
        with blob_client.open_write() as w:
            for i in range(0, len(big), 300_000):
                w.write(big[i : i + 300_000])
            big_digest = w.close()
        blob_client.flush()
        for data, digest in [*zip(small, digests, strict=True), (big, big_digest)]:
            assert digest == B3Digest.of(data)
            assert blobs.has(digest)
        with dir_client.put_multiple_start() as putter:
            for d in (DIRECTORY_A, DIRECTORY_B, DIRECTORY_D):
                putter.put(d)
            root = putter.close()
        assert root == DIRECTORY_D.digest()
        assert dirs.get(root) == DIRECTORY_D
        assert info_client.put(PATH_INFO) == PATH_INFO
        assert info_client.get(PATH_INFO.store_path.digest) == PATH_INFO
    finally:
        info_client.close()
        dir_client.close()
        blob_client.close()


def test_client_sees_grpcio_statuses(
    grpcio_served: tuple[str, MemoryBlobService, MemoryDirectoryService],
) -> None:
    """A refused Directory stream and an unknown method come back as their status and message."""
    url, _, _ = grpcio_served
    dir_client = directory_from_addr(url)
    try:
        with pytest.raises(DirectoryError, match="directory upload refused"):
            dir_client._put_stream([DIRECTORY_C])  # its child is neither sent nor stored
    finally:
        dir_client.close()
    caller = UnaryCaller(url.replace("grpc+unix://", "unix:"))
    try:
        with pytest.raises(CallError) as info:
            caller.call("/tvix.castore.v1.BlobService/NoSuchMethod", [[b""]]).result(timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        caller.close()


# ---- our server, raw frames ----------------------------------------------------------------------


class _RawClient:
    """Frames by hand over a unix socket; reads back what the server sends."""

    def __init__(self, sock_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(sock_path)
        self.sock.sendall(h2.PREFACE + h2.settings_frame({}))
        self.reader = h2.FrameReader(h2.MAX_FRAME_LIMIT)
        self.decoder = Decoder()

    def frames(self, until: float) -> Iterator[tuple[int, int, int, bytes]]:
        while time.monotonic() < until:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            if not data:
                return
            for kind, flags, sid, payload, _ in self.reader.feed(data):
                yield kind, flags, sid, bytes(payload)

    def answer(self, sid: int, timeout: float = 10) -> tuple[dict[bytes, bytes], bytes]:
        """Headers and trailers (merged) and the DATA of stream sid, until it ends."""
        headers: dict[bytes, bytes] = {}
        data = b""
        for kind, flags, stream, payload in self.frames(time.monotonic() + timeout):
            if kind == h2.HEADERS:
                fields = self.decoder.decode(payload)
                if stream == sid:
                    headers.update(fields)
            elif kind == h2.DATA and stream == sid:
                data += payload
            if stream == sid and flags & h2.END_STREAM and kind in (h2.HEADERS, h2.DATA):
                return headers, data
        raise AssertionError(f"stream {sid} did not end")

    def close(self) -> None:
        self.sock.close()


def _request_block(path: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    return encode(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", b"x"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *extra,
        ]
    )


def test_server_padding_priority_continuation(served: Served) -> None:
    """A Put whose HEADERS is padded, carries a priority and continues in CONTINUATION frames,
    and whose DATA is padded and split, is stored and answered."""
    client = _RawClient(served.sock)
    try:
        blob = os.urandom(5000)
        message = length_delimited(1, blob)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        block = _request_block(b"/tvix.castore.v1.BlobService/Put", (b"x-filler", b"f" * 100))
        pad = 7
        first = bytes([pad]) + bytes(5) + block[:20] + bytes(pad)
        frames = h2.frame(h2.HEADERS, h2.PADDED | h2.PRIORITY_FLAG, 1, first)
        frames += h2.frame(h2.CONTINUATION, 0, 1, block[20:60])
        frames += h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, block[60:])
        frames += h2.frame(h2.DATA, h2.PADDED, 1, bytes([3]) + body[:1000] + bytes(3))
        frames += h2.frame(h2.DATA, h2.END_STREAM, 1, body[1000:])
        client.sock.sendall(frames)
        headers, data = client.answer(1)
        assert headers[b"grpc-status"] == b"0", headers
        assert bytes_field(data[5:], 1) == B3Digest.of(blob)
        assert served.services.blob_service.has(B3Digest.of(blob))
    finally:
        client.close()


def test_server_answers_ping(served: Served) -> None:
    """PING is acknowledged with the same payload."""
    client = _RawClient(served.sock)
    try:
        client.sock.sendall(h2.frame(h2.PING, 0, 0, b"12345678"))
        acks = [
            p
            for kind, flags, _, p in client.frames(time.monotonic() + 5)
            if kind == h2.PING and flags & h2.ACK
        ]
        assert acks[:1] == [b"12345678"]
    finally:
        client.close()


def test_server_deadline_exceeded(served: Served) -> None:
    """A Put whose client neither finishes nor cancels ends with DEADLINE_EXCEEDED at its
    grpc-timeout, and nothing of it is stored."""
    client = _RawClient(served.sock)
    try:
        data = os.urandom(2 * 1024 * 1024)
        message = length_delimited(1, data[: 1024 * 1024])
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        block = _request_block(b"/tvix.castore.v1.BlobService/Put", (b"grpc-timeout", b"300m"))
        client.sock.sendall(h2.headers_frames(1, block, 16384, end_stream=False))
        for piece in h2.data_frames(1, body, 16384, end=False):
            client.sock.sendall(piece)
        t0 = time.monotonic()
        headers, _ = client.answer(1)
        assert headers[b"grpc-status"] == b"4"
        assert time.monotonic() - t0 < 5
        assert not served.services.blob_service.has(B3Digest.of(data[: 1024 * 1024]))
    finally:
        client.close()


def test_server_closed_stream_data_is_dropped(served: Served) -> None:
    """Data for a stream the server already ended (its message over the limit) is dropped;
    the connection goes on serving."""
    client = _RawClient(served.sock)
    try:
        block = _request_block(b"/tvix.castore.v1.BlobService/Put")
        client.sock.sendall(h2.headers_frames(1, block, 16384, end_stream=False))
        client.sock.sendall(h2.frame(h2.DATA, 0, 1, b"\x00" + (5 * 1024 * 1024).to_bytes(4, "big")))
        headers, _ = client.answer(1)
        assert headers[b"grpc-status"] == b"8"  # RESOURCE_EXHAUSTED
        client.sock.sendall(h2.frame(h2.DATA, h2.END_STREAM, 1, b"late"))
        message = encode_directory(DIRECTORY_A)
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        block = _request_block(b"/tvix.castore.v1.DirectoryService/Put")
        client.sock.sendall(h2.headers_frames(3, block, 16384, end_stream=False))
        client.sock.sendall(h2.frame(h2.DATA, h2.END_STREAM, 3, body))
        headers, data = client.answer(3)
        assert headers[b"grpc-status"] == b"0", headers
        assert bytes_field(data[5:], 1) == DIRECTORY_A.digest()
    finally:
        client.close()
