"""The binary cache server in-process over memory services: chunked uploads, HEAD, zstd, IPv6.

No Nix needed: the NAR is written with our NarWriter (checked against Nix elsewhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import zstandard

from nix_compat import nixbase32
from nix_compat.nar import NarWriter
from nix_compat.narinfo import NarInfo
from nix_compat.signing import SigningKey
from nix_compat.store_path import build_nar_sha256_path
from tvix_store.binary_cache.compression import decompressed_pieces
from tvix_store.binary_cache.copy import _references_first
from tvix_store.binary_cache.server import (
    IDLE_TIMEOUT,
    BinaryCacheServer,
    RenderedNarCache,
    parse_listen_address,
)
from tvix_store.services import Services, construct_services


def _nar() -> bytes:
    out = bytearray()
    w = NarWriter(out.extend)
    w.begin_directory()
    w.entry(b"a")
    w.file(True, 3, [b"abc"])
    w.entry(b"big")
    data = bytes(range(256)) * 4000
    w.file(False, len(data), [data])
    w.entry(b"l")
    w.symlink(b"a")
    w.end_directory()
    w.close()
    return bytes(out)


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[BinaryCacheServer, Services]]:
    with _running_server(tmp_path) as running:
        yield running


@contextmanager
def _running_server(
    tmp_path, idle_timeout: float = IDLE_TIMEOUT, max_connections: int = 256
) -> Iterator[tuple[BinaryCacheServer, Services]]:
    services = construct_services("memory://", "memory://", "memory://")
    srv = BinaryCacheServer(
        ("127.0.0.1", 0), services, sign_key=SigningKey.parse(_secret()),
        nar_cache=RenderedNarCache(str(tmp_path), 1 << 20), idle_timeout=idle_timeout,
        max_connections=max_connections,
    )  # fmt: skip
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, services
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
        services.close()


def _secret() -> str:
    import base64

    from nacl.signing import SigningKey as NaclKey

    key = NaclKey(b"\x01" * 32)
    return "test-1:" + base64.b64encode(bytes(key) + bytes(key.verify_key)).decode()


def _request(srv: BinaryCacheServer, method: str, path: str, body=None, headers=None, chunked=False):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_chunked_upload_then_serve(server):
    """A chunked zstd NAR upload and its narinfo are stored; GET/HEAD/zstd serve them back signed."""
    srv, services = server
    nar = _nar()
    sha = hashlib.sha256(nar).digest()
    compressed = zstandard.ZstdCompressor().compress(nar)
    file_name = nixbase32.encode(hashlib.sha256(compressed).digest())
    pieces = (compressed[i : i + 1000] for i in range(0, len(compressed), 1000))
    resp, text = _request(srv, "PUT", f"/nar/{file_name}.nar.zst", body=pieces, chunked=True)
    assert resp.status == 200, text
    path = build_nar_sha256_path("unit", sha)
    narinfo = NarInfo(path, f"nar/{file_name}.nar.zst", sha, len(nar), compression="zstd")
    resp, text = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
    assert resp.status == 200, text
    assert services.path_info_service.get(path.digest) is not None

    resp, body = _request(srv, "HEAD", f"/{path.encoded_digest}.narinfo")
    assert resp.status == 200 and body == b"" and int(resp.headers["Content-Length"]) > 0
    resp, body = _request(srv, "GET", f"/{path.encoded_digest}.narinfo")
    served = NarInfo.parse(body)
    assert served.nar_hash == sha and served.nar_size == len(nar)
    assert served.verify([SigningKey.parse(_secret()).verifying_key()])
    for _ in range(2):  # rendered, then from the NAR cache
        resp, got = _request(srv, "GET", "/" + served.url)
        assert resp.status == 200 and got == nar
    zurl = "/" + served.url + "&compression=zstd"
    resp, got = _request(srv, "GET", zurl)
    assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(got) == nar
    resp, info = _request(srv, "GET", "/nix-cache-info")
    assert info == b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 39\n"
    assert resp.headers["Content-Type"] == "text/x-nix-cache-info"


def test_bad_chunked_body_is_400_and_server_lives(server):
    srv, services = server
    conn = socket.create_connection(("127.0.0.1", srv.server_address[1]))
    head = b"HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn.sendall(b"PUT /nar/" + b"0" * 52 + b".nar " + head + b"zz\r\n")
    reply = conn.recv(4096)
    conn.close()
    assert reply.startswith(b"HTTP/1.1 400")
    resp, _ = _request(srv, "GET", "/nix-cache-info")
    assert resp.status == 200
    assert list(services.path_info_service.list()) == []


def _raw_reply(srv: BinaryCacheServer, request: bytes, then: bytes = b"") -> bytes:
    """Send request (and then, after a moment), read the reply until the server closes or 4 KiB."""
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) as conn:
        conn.sendall(request)
        if then:
            time.sleep(0.1)
            with contextlib.suppress(OSError):  # the server answered and closed already
                conn.sendall(then)
        return conn.recv(4096)


@pytest.mark.parametrize("size", [b"-1", b"0x3", b"+3", b"1_0", b" "])
def test_chunk_sizes_are_hex_digits_only(server, size):
    """A chunk size of anything but hex digits is refused at once: int() took "-1", which made
    the server read (and hold) the whole body until the client closed."""
    srv, services = server
    head = b"PUT /nar/" + b"0" * 52 + b".nar HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    # A client that keeps sending: the 400 must come without waiting for the end of the body.
    reply = _raw_reply(srv, head + size + b"\r\n", then=b"x" * 65536)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"malformed chunked body" in reply
    assert _request(srv, "GET", "/nix-cache-info")[0].status == 200
    assert list(services.path_info_service.list()) == []


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: \xb2\r\n",  # a digit to str.isdigit(), not to int()
        b"Content-Length: 3\r\nContent-Length: 5\r\n",  # two framings (RFC 9112 6.3)
    ],
)
def test_bad_content_length_is_400(server, headers):
    srv, _ = server
    request = b"PUT /nar/" + b"0" * 52 + b".nar HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nabcde"
    reply = _raw_reply(srv, request)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"Content-Length" in reply
    assert _request(srv, "GET", "/nix-cache-info")[0].status == 200


def _upload_and_serve(srv: BinaryCacheServer, nar: bytes) -> str:
    """Upload nar (uncompressed) and a narinfo for it; the NAR URL the server then names."""
    sha = hashlib.sha256(nar).digest()
    file_name = nixbase32.encode(sha)
    assert _request(srv, "PUT", f"/nar/{file_name}.nar", body=nar)[0].status == 200
    path = build_nar_sha256_path("unit", sha)
    narinfo = NarInfo(path, f"nar/{file_name}.nar", sha, len(nar))
    resp, _ = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
    assert resp.status == 200
    return "/" + NarInfo.parse(_request(srv, "GET", f"/{path.encoded_digest}.narinfo")[1]).url


def test_a_wrong_narsize_is_400_with_or_without_a_range(server):
    """narsize is the length the response announces: one that is not the NAR's size is refused,
    not answered with a NAR cut short (or a longer promise and a dropped connection)."""
    srv, _ = server
    nar = _nar()
    good = _upload_and_serve(srv, nar)
    assert f"narsize={len(nar)}" in good
    for wrong in (50, len(nar) + 8, 10**20):
        bad = good.replace(f"narsize={len(nar)}", f"narsize={wrong}")
        for headers in ({}, {"Range": "bytes=0-9"}):
            resp, text = _request(srv, "GET", bad, headers=headers)
            assert resp.status == 400 and b"but the NAR is" in text, (wrong, headers, resp.status)
    resp, got = _request(srv, "GET", good)
    assert resp.status == 200 and got == nar
    resp, got = _request(srv, "GET", good)  # now from the rendered-NAR cache
    assert resp.status == 200 and got == nar
    # zstd URLs too: a wrong narsize is refused before a chunked 200 begins.
    resp, text = _request(srv, "GET", good.replace(f"narsize={len(nar)}", "narsize=50") + "&compression=zstd")
    assert resp.status == 400 and b"but the NAR is" in text
    # A range whose first byte comes after its last is invalid: ignored (RFC 9110), not a 416.
    resp, got = _request(srv, "GET", good, headers={"Range": "bytes=5-3"})
    assert resp.status == 200 and got == nar


def test_a_nar_tree_is_read_once_and_its_size_checked_once(tmp_path):
    """Serving a NAR reads its Directories once (the size check's fetch serves the rendering),
    and a URL found right is not walked again: a HEAD, a Range, the cache turned off."""
    from tvix_castore.directoryservice import DirectoryService
    from tvix_store.services import Services

    class CountingDirectories(DirectoryService):
        def __init__(self, inner: DirectoryService) -> None:
            self.inner = inner
            self.gets = 0
            self.walks = 0

        def get(self, digest):  # type: ignore[no-untyped-def]
            self.gets += 1
            return self.inner.get(digest)

        def get_recursive(self, root):  # type: ignore[no-untyped-def]
            self.walks += 1
            return self.inner.get_recursive(root)

        def put(self, directory):  # type: ignore[no-untyped-def]
            return self.inner.put(directory)

        def put_multiple_start(self):  # type: ignore[no-untyped-def]
            return self.inner.put_multiple_start()

    inner = construct_services("memory://", "memory://", "memory://")
    counting = CountingDirectories(inner.directory_service)
    services = Services(inner.blob_service, counting, inner.path_info_service)
    srv = BinaryCacheServer(("127.0.0.1", 0), services, sign_key=SigningKey.parse(_secret()))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        nar = _nar()
        url = _upload_and_serve(srv, nar)
        counting.gets = counting.walks = 0
        resp, got = _request(srv, "GET", url)  # no rendered-NAR cache here
        assert resp.status == 200 and got == nar
        # The root's existence, then one walk of the tree: the size check's, rendered from.
        assert (counting.gets, counting.walks) == (1, 1)
        resp, got = _request(srv, "HEAD", url)
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(nar)
        resp, got = _request(srv, "GET", url, headers={"Range": "bytes=10-19"})
        assert resp.status == 206 and got == nar[10:20]
        assert counting.walks == 1  # the size was found right once: no walk for it again
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
        inner.close()


def test_an_upload_whose_path_does_not_follow_from_its_ca_is_400(server):
    """A narinfo whose CA line (true for the content) does not give its store path, with its
    name and references, is refused: signed, it would be served to Nix, which refuses such a
    path ("claims to be content-addressed but isn't"). The true one is taken."""
    from nix_compat.nixhash import CAHash, NixHash
    from nix_compat.store_path import StorePath

    srv, services = server
    nar = _nar()
    sha = hashlib.sha256(nar).digest()
    file_name = nixbase32.encode(sha)
    assert _request(srv, "PUT", f"/nar/{file_name}.nar", body=nar)[0].status == 200
    ca = CAHash("nar", NixHash("sha256", sha))
    path = build_nar_sha256_path("unit", sha)
    renamed = StorePath(path.digest, "unit-renamed")
    other = build_nar_sha256_path("other", hashlib.sha256(b"other").digest())
    for store_path, references in ((renamed, ()), (path, (other,)), (path, (path,))):
        narinfo = NarInfo(store_path, f"nar/{file_name}.nar", sha, len(nar), references, ca=ca)
        body = narinfo.render().encode()
        resp, text = _request(srv, "PUT", f"/{store_path.encoded_digest}.narinfo", body=body)
        assert resp.status == 400 and b"but with its name and references that address is" in text, text
    assert list(services.path_info_service.list()) == []
    narinfo = NarInfo(path, f"nar/{file_name}.nar", sha, len(nar), ca=ca)
    resp, text = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
    assert resp.status == 200, text
    assert [i.store_path for i in services.path_info_service.list()] == [path]


def test_ipv6_loopback(tmp_path):
    family, host, port = parse_listen_address("[::1]:0")
    services = construct_services("memory://", "memory://", "memory://")
    try:
        srv = BinaryCacheServer((host, port), services, family)
    except OSError as exc:
        services.close()
        pytest.skip(f"no IPv6 loopback: {exc}")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        assert srv.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", srv.server_address[1], timeout=10)
        conn.request("GET", "/nix-cache-info")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
        services.close()


@pytest.mark.parametrize("text", ["9000", "::1:9000", "host:", "[::1]:99999"])
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError):
        parse_listen_address(text)


@pytest.mark.parametrize("comp", ["gzip", "bzip2", "xz", "zstd"])
def test_decompressed_pieces_detect_truncation(comp):
    import bz2
    import gzip
    import io
    import lzma

    data = bytes(range(256)) * 20000
    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress,
              "zstd": zstandard.ZstdCompressor().compress}[comp](data)  # fmt: skip
    assert b"".join(decompressed_pieces(io.BytesIO(packed).read, comp, "u")) == data
    if comp == "zstd":
        # zstd frames carry no end marker check in streaming mode: truncation shows as a short NAR
        assert b"".join(decompressed_pieces(io.BytesIO(packed[:-20]).read, comp, "u")) != data
        return
    with pytest.raises(EOFError):
        b"".join(decompressed_pieces(io.BytesIO(packed[: len(packed) // 2]).read, comp, "u"))


@pytest.mark.parametrize("comp", ["gzip", "bzip2", "xz", "zstd", "br", "lz4"])
def test_decompressed_pieces_stay_small(comp):
    """A highly compressible input (a file of zeros in a NAR) comes out in pieces of a few MiB,
    never as what a whole input piece expands to (zstd's decompressobj gave 1 GiB at once)."""
    import bz2
    import gzip
    import io
    import lzma

    size = 256 * 1024 * 1024
    import brotli
    import lz4.frame

    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress,
              "zstd": zstandard.ZstdCompressor().compress, "br": lambda d: brotli.compress(d, quality=1),
              "lz4": lz4.frame.compress}[comp](bytes(size))  # fmt: skip
    largest = total = 0
    for piece in decompressed_pieces(io.BytesIO(packed).read, comp, "u"):
        largest = max(largest, len(piece))
        total += len(piece)
    assert total == size
    assert largest <= 2 * 1024 * 1024


@pytest.mark.parametrize("comp", ["gzip", "bzip2", "xz", "br", "lz4"])
def test_decompressed_pieces_refuse_trailing_data(comp):
    """Bytes after the end of the compressed stream are an error, not silently dropped; for
    brotli (no magic number), a second whole stream too, arriving in a later read."""
    import bz2
    import gzip
    import io
    import lzma

    import brotli
    import lz4.frame

    compress = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress,
                "br": brotli.compress, "lz4": lz4.frame.compress}[comp]  # fmt: skip
    packed = compress(b"x" * 1000)
    # brotli's decoder refuses input past its stream's end itself (read_errors has its error).
    with pytest.raises(brotli.error if comp == "br" else EOFError, match=r"decoder failed|after the end"):
        b"".join(decompressed_pieces(io.BytesIO(packed + b"junk").read, comp, "u"))
    if comp == "br":
        reads = iter([packed, packed, b""])
        with pytest.raises(EOFError, match="after the end"):
            b"".join(decompressed_pieces(lambda n: next(reads), comp, "u"))


@pytest.mark.parametrize("comp", ["xz", "bzip2", "gzip", "zstd", "br", "lz4"])
def test_compressors_make_one_stream_of_many_pieces(comp):
    """What a compressor writes, piece by piece, decompresses to the pieces joined."""
    import io
    import os

    from tvix_store.binary_cache.compression import compressor, decompress

    pieces = [os.urandom(70_000), bytes(300_000), b"tail"]
    c = compressor(comp)
    packed = b"".join(c.compress(p) for p in pieces) + c.flush()
    assert decompress(io.BytesIO(packed), comp, "u").read() == b"".join(pieces)


def test_references_first_orders_closure():
    from tvix_castore.nodes import SymlinkNode
    from tvix_store.path_info import PathInfo

    def info(name: str, refs: list) -> PathInfo:
        sp = build_nar_sha256_path(name, hashlib.sha256(name.encode()).digest())
        return PathInfo(sp, SymlinkNode(b"x"), 1, b"\0" * 32, tuple(refs))

    a = info("a", [])
    b = info("b", [a.store_path])
    c = info("c", [b.store_path, a.store_path])
    c = PathInfo(c.store_path, c.node, 1, b"\0" * 32, (c.store_path, b.store_path, a.store_path))  # self-ref
    ordered = _references_first({i.store_path.digest: i for i in (c, b, a)})
    names = [i.store_path.name for i in ordered]
    assert names.index("a") < names.index("b") < names.index("c")


def test_the_root_greets_as_nar_bridge(server):
    """``GET /`` answers as nar-bridge does (spec §10); HEAD the same without a body."""
    srv, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"Hello from nar-bridge")
        assert resp.getheader("Content-Type") == "text/plain; charset=utf-8"
        conn.request("HEAD", "/")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("Content-Length"), resp.read()) == (200, "21", b"")
    finally:
        conn.close()


def test_kept_alive_small_responses_are_not_delayed(server):
    """Small responses on one kept-alive connection come back at once.

    Headers and body leave in two writes; without TCP_NODELAY the body waits for the client's
    delayed ACK of the headers, about 40 ms per response on Linux loopback (2 s for these 50).
    """
    import time

    srv, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=30)
    try:
        t0 = time.perf_counter()
        for _ in range(50):
            conn.request("GET", "/nix-cache-info")
            resp = conn.getresponse()
            assert resp.status == 200 and b"StoreDir: /nix/store" in resp.read()
        elapsed = time.perf_counter() - t0
    finally:
        conn.close()
    assert elapsed < 1.0, f"50 kept-alive requests took {elapsed:.2f} s"


def test_nar_of_a_root_not_in_the_store_is_404(server):
    """A well-formed NAR URL whose root directory or file blob the store lacks answers 404 (GET,
    HEAD and zstd) rather than headers followed by a cut-off body; the server keeps serving."""
    import base64

    from tvix_castore.digests import B3Digest
    from tvix_castore.nodes import DirectoryNode, FileNode
    from tvix_castore.proto_conv import node_to_proto

    srv, services = server
    missing = B3Digest.of(b"not stored anywhere")
    for node in (DirectoryNode(missing, 1), FileNode(missing, 19, False)):
        b64 = base64.urlsafe_b64encode(node_to_proto(b"", node).SerializeToString()).rstrip(b"=").decode()
        for method, suffix in (("GET", ""), ("HEAD", ""), ("GET", "&compression=zstd")):
            resp, body = _request(srv, method, f"/nar/tvix-castore/{b64}?narsize=120{suffix}")
            assert resp.status == 404, (node, method, suffix, body)
    present = FileNode(services.blob_service.put(b"x" * 19), 19, False)
    b64 = base64.urlsafe_b64encode(node_to_proto(b"", present).SerializeToString()).rstrip(b"=").decode()
    resp, body = _request(srv, "GET", f"/nar/tvix-castore/{b64}?narsize=136")
    assert resp.status == 200 and len(body) == 136


def test_served_narinfo_lists_references_sorted() -> None:
    """Whatever order a PathInfo keeps its references in, the narinfo lists them sorted, as Nix
    writes them, so that our signature verifies in Nix (sorted) and in tvix (as listed)."""
    from nix_compat.store_path import StorePath
    from tvix_castore.nodes import SymlinkNode
    from tvix_store.binary_cache.server import path_info_to_narinfo
    from tvix_store.path_info import PathInfo

    a = StorePath.from_bytes("00000000000000000000000000000000-a")
    b = StorePath.from_bytes("11111111111111111111111111111111-b")
    info = PathInfo(store_path=a, node=SymlinkNode(b"x"), nar_size=8, nar_sha256=bytes(32), references=(b, a))
    key = SigningKey.parse(
        "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTaeA6lR3A=="
    )
    narinfo = path_info_to_narinfo(info, key=key)
    assert narinfo.references == (a, b)
    assert f"References: {a.basename()} {b.basename()}\n" in narinfo.render()
    # Verified over the listed (sorted) order, which is also the order Nix verifies over.
    assert narinfo.fingerprint().endswith(f";{a.absolute()},{b.absolute()}".encode())
    assert narinfo.valid_signatures([key.verifying_key()]) == narinfo.signatures


def test_idle_connection_is_dropped(tmp_path):
    """A connection whose request never completes is closed after the idle timeout, so a
    client that goes silent does not hold a server thread for ever; the server serves on."""
    import time

    with _running_server(tmp_path, idle_timeout=0.5) as (srv, _):
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=30) as conn:
            conn.sendall(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n")  # no blank line
            t0 = time.monotonic()
            assert conn.recv(100) == b""  # closed by the server, nothing answered
            assert 0.4 < time.monotonic() - t0 < 10
        resp, body = _request(srv, "GET", "/nix-cache-info")
        assert resp.status == 200 and body.startswith(b"StoreDir: /nix/store")


def test_an_alias_cannot_be_forged_and_needs_its_nar(server):
    """A narinfo is taken on an alias only for a NAR name the server recorded at an upload: not
    on a record a client stored as a cache file, nor on one whose NAR is gone."""
    import struct

    from tvix_castore.digests import B3Digest, blake3_digest
    from tvix_castore.nodes import FileNode
    from tvix_castore.proto_conv import node_to_proto
    from tvix_store.binary_cache.cache_files import NAR_ALIAS_TYPE, nar_alias

    srv, services = server
    fake_sha = hashlib.sha256(b"never uploaded").digest()
    node = FileNode(B3Digest(blake3_digest(b"evil content\n")), 13)
    record = struct.pack("<B32sQ", 0, fake_sha, 4242) + node_to_proto(b"", node).SerializeToString()
    log = "/log/00000000000000000000000000000000-x.drv"
    resp, text = _request(srv, "PUT", log, body=record, headers={"Content-Type": NAR_ALIAS_TYPE})
    assert resp.status == 400 and NAR_ALIAS_TYPE.encode() in text
    path = build_nar_sha256_path("victim", fake_sha)
    for url in (log[1:], f"nar/{nixbase32.encode(fake_sha)}.nar"):
        narinfo = NarInfo(path, url, fake_sha, 4242)
        resp, text = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
        assert resp.status == 400 and b"unknown NarHash" in text, (url, text)
    # A record the server made, whose NAR is not in the store (say, the blobs were elsewhere).
    name = f"nar/{nixbase32.encode(fake_sha)}.nar"
    srv.cache_files.put(nar_alias(name, "none", node, 4242, fake_sha))
    assert _request(srv, "GET", f"/{name}")[0].status == 404
    narinfo = NarInfo(path, name, fake_sha, 4242)
    resp, text = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
    assert resp.status == 400 and b"unknown NarHash" in text
    assert services.path_info_service.get(path.digest) is None


def test_cache_files_are_served_as_data_and_uploads_are_bounded(server):
    """An uploaded file is served back as data (not as a page: its type if Nix's, else
    application/octet-stream, never sniffed); uploads beyond a few at once get 503 (Nix tries
    again); a name too long for the store is a 400, not a 500."""
    srv, _ = server
    name = "/log/00000000000000000000000000000000-x.drv"
    resp, _ = _request(srv, "PUT", name, body=b"<script>1</script>", headers={"Content-Type": "text/html"})
    assert resp.status == 200
    resp, got = _request(srv, "GET", name)
    assert (resp.status, got) == (200, b"<script>1</script>")
    assert resp.getheader("Content-Type") == "application/octet-stream"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    for _ in range(2):  # the uploads at once the server takes, all busy
        assert srv.cache_file_uploads.acquire(blocking=False)
    try:
        resp, _ = _request(srv, "PUT", name, body=b"later")
        assert resp.status == 503 and resp.getheader("Retry-After") == "1"
    finally:
        srv.cache_file_uploads.release()
        srv.cache_file_uploads.release()
    assert _request(srv, "GET", name)[1] == b"<script>1</script>"  # the refused one stored nothing
    assert _request(srv, "PUT", name, body=b"later")[0].status == 200
    long_name = "/realisations/sha256:" + "a" * 600 + "!out.doi"
    resp, text = _request(srv, "PUT", long_name, body=b"{}")
    assert resp.status == 400 and b"cannot upload" in text


def _alias_setup(srv):
    """A NAR uploaded, then forgotten as a restart forgets it: only its alias knows it."""
    from tvix_store.binary_cache.cache_files import read_nar_alias

    nar = _nar()
    sha = hashlib.sha256(nar).digest()
    name = f"nar/{nixbase32.encode(sha)}.nar"
    assert _request(srv, "PUT", f"/{name}", body=nar)[0].status == 200
    srv._pending.clear()
    alias = read_nar_alias(srv.cache_files.get(name))
    assert alias is not None
    return nar, sha, name, alias[1]


def _put_narinfo(srv, name: str, url: str, sha: bytes, size: int):
    path = build_nar_sha256_path(name, sha)
    narinfo = NarInfo(path, url, sha, size)
    resp, text = _request(srv, "PUT", f"/{path.encoded_digest}.narinfo", body=narinfo.render().encode())
    return resp.status, text, path


def test_a_narinfo_on_an_alias_must_have_its_nar_hash_and_name(server):
    """On an alias alone (after a restart), a narinfo is taken only with the NAR's own hash, and
    only at a nar/ name: a record at another name is no alias, whatever it holds."""
    from tvix_store.binary_cache.cache_files import nar_alias

    srv, services = server
    nar, sha, name, node = _alias_setup(srv)
    other = hashlib.sha256(b"other contents").digest()
    status, text, path = _put_narinfo(srv, "liar", name, other, len(nar))
    assert status == 400 and b"unknown NarHash" in text, text
    assert services.path_info_service.get(path.digest) is None
    log = "log/00000000000000000000000000000000-x.drv"
    srv.cache_files.put(nar_alias(log, "none", node, len(nar), sha))  # its NAR is here
    status, text, _ = _put_narinfo(srv, "victim", log, sha, len(nar))
    assert status == 400 and b"unknown NarHash" in text, text
    status, text, path = _put_narinfo(srv, "honest", name, sha, len(nar))
    assert status == 200, text
    assert services.path_info_service.get(path.digest) is not None


def test_refused_cache_file_uploads_cannot_smuggle_requests(server):
    """A 503 for a busy server still reads the body (it is not taken for a second request), the
    alias Content-Type is refused in any case, and a body over the limit is refused by its
    Content-Length before it is sent."""
    import socket

    from tvix_store.binary_cache.cache_files import MAX_FILE_BYTES, NAR_ALIAS_TYPE

    srv, _ = server
    log = "/log/00000000000000000000000000000000-x.drv"
    for _ in range(2):
        assert srv.cache_file_uploads.acquire(blocking=False)
    try:
        smuggled = b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=2) as s:
            head = b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            s.sendall(head % (log.encode(), len(smuggled)))
            s.sendall(smuggled)
            got = b""
            with contextlib.suppress(TimeoutError):
                while chunk := s.recv(4096):
                    got += chunk
        assert got.startswith(b"HTTP/1.1 503") and got.count(b"HTTP/1.1 ") == 1, got
    finally:
        srv.cache_file_uploads.release()
        srv.cache_file_uploads.release()
    resp, _ = _request(srv, "PUT", log, body=b"x", headers={"Content-Type": NAR_ALIAS_TYPE.upper()})
    assert resp.status == 400
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) as s:
        head = b"PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        s.sendall(head % (log.encode(), MAX_FILE_BYTES + 1))
        assert s.recv(200).startswith(b"HTTP/1.1 400")


def test_large_incompressible_nars_are_served_compressed_whole(server):
    """A NAR of several MiB that does not compress comes out of every compression whole (the
    compressed pieces are sent in chunks of about a MiB as they fill up)."""
    import io
    import os

    from tvix_store.binary_cache.compression import decompress

    srv, _ = server
    out = bytearray()
    w = NarWriter(out.extend)
    w.file(False, 3 * 1024 * 1024, [os.urandom(3 * 1024 * 1024)])
    w.close()
    nar = bytes(out)
    url = _upload_and_serve(srv, nar)
    for comp in ("xz", "zstd"):
        resp, body = _request(srv, "GET", f"{url}&compression={comp}")
        assert resp.status == 200
        assert decompress(io.BytesIO(body), comp, "u").read() == nar, comp


def _held_connections(port: int, n: int, opening: bytes) -> list[socket.socket]:
    held = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(opening)
        held.append(sock)
    time.sleep(0.3)  # their handlers are reading now
    return held


def test_at_the_connection_cap_an_idle_connection_makes_room(tmp_path):
    """Connections that hold a slot without a request (trickled headers, or kept alive between
    requests) give it up, oldest first, to a new connection when the cap is reached."""
    with _running_server(tmp_path, max_connections=4) as (srv, _):
        held = _held_connections(srv.server_address[1], 4, b"GET / HTTP/1.1\r\nHost: x\r\n")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
            conn.request("GET", "/nix-cache-info")
            assert conn.getresponse().status == 200
            conn.close()
            assert held[0].recv(100) == b""  # the oldest was hung up on
        finally:
            for sock in held:
                sock.close()


def test_with_every_connection_answering_a_new_one_gets_503(tmp_path):
    """When every connection at the cap is in the middle of a request, a new one is told to come
    back (503, Retry-After) at once, and is served once there is room."""
    with _running_server(tmp_path, max_connections=3, idle_timeout=30) as (srv, _):
        port = srv.server_address[1]
        upload = b"PUT /nar/" + b"1" * 52 + b".nar HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
        held = _held_connections(port, 3, upload)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/nix-cache-info")
            resp = conn.getresponse()
            assert (resp.status, resp.getheader("Retry-After")) == (503, "1")
            conn.close()
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/nix-cache-info")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                break
            assert time.monotonic() < deadline, "no room after the uploads ended"
            time.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_server_waits_instead_of_spinning(tmp_path):
    """serve-cache lifts its soft open-files limit to the hard one; where that is reached, it
    pauses between failed accepts (it used to spin a core on EMFILE) and serves again once
    connections close."""
    from cache_helpers import _URL_RE
    from tvix_cli import TVIX_STORE, cli_env

    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["prlimit", "--nofile=40:64", TVIX_STORE, "serve-cache", "-l", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=cli_env(tmp_path / "store"),
        )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not (m := _URL_RE.search(log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        port = int(m.group(1).rsplit(":", 1)[1])
        with open(f"/proc/{proc.pid}/limits") as f:
            limits = next(line for line in f if line.startswith("Max open files")).split()
        assert limits[3:5] == ["64", "64"], limits
        for _ in range(80):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(0.5)
        before = _cpu_seconds(proc.pid)
        time.sleep(2.0)
        assert _cpu_seconds(proc.pid) - before < 0.5
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/nix-cache-info")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                conn.close()
            assert time.monotonic() < deadline, "not serving again"
            time.sleep(0.1)
        assert "cannot accept connections: Too many open files" in log.read_text()
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(20)
