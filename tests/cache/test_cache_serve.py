"""``tvix-store serve-cache``: the real Nix substitutes from it and uploads to it (issue 5 points 3-5)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cache_helpers import NIX, assert_same_as_nix, serve_cache, stored_paths
from tvix_cli import TVIX_STORE, cli_env, nix_dump, tvix

from nix_compat import nixbase32
from nix_compat.narinfo import NarInfo
from nix_compat.signing import VerifyingKey
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.nodes import DirectoryNode, Node, SymlinkNode
from tvix_castore.proto_conv import node_to_proto
from tvix_store.services import construct_services

pytestmark = pytest.mark.nix


@pytest.fixture
def filled_store(tmp_path, nix_closure) -> Path:
    """A store holding the closure (copied from the uncompressed, unsigned cache)."""
    store = tmp_path / "store"
    tvix(store, "copy", "--from", f"file://{nix_closure['caches']['none']}", nix_closure["top"])
    return store


def _nix(*args: str) -> subprocess.CompletedProcess[str]:
    # Nix remembers, per cache URL, which paths a binary cache has (~/.cache/nix narinfo cache,
    # positive entries for 30 days). Our servers get fresh loopback ports that earlier servers
    # used, so a shared cache would make `nix copy --to` skip uploads: give every call its own.
    with tempfile.TemporaryDirectory(prefix="nix-xdg-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        return subprocess.run([*NIX, *args], capture_output=True, text=True, timeout=600, env=env)


def _assert_root_matches(root: Path, nix_closure: dict) -> None:
    """The private store under root holds the closure exactly as the host's /nix/store does."""
    res = _nix("path-info", "--store", f"local?root={root}", "--json", "-r", nix_closure["top"])
    assert res.returncode == 0, res.stderr
    got = {i["path"]: i for i in json.loads(res.stdout)}
    assert sorted(got) == nix_closure["paths"]
    for path, info in got.items():
        theirs = nix_closure["path_info"][path]
        for key in ("narHash", "narSize", "references", "deriver", "ca"):
            assert info.get(key) == theirs.get(key), (path, key)
        assert nix_dump(root / path.lstrip("/")) == nix_dump(path)


def _narinfo_url(base: str, path: str) -> str:
    return f"{base}/{path.removeprefix('/nix/store/')[:32]}.narinfo"


def test_nix_substitutes_with_our_signature(tmp_path, nix_closure, filled_store):
    """Nix copies the closure from our server, checking our signature with the matching key."""
    with serve_cache(filled_store, "--sign-key-file", str(nix_closure["sk"])) as url:
        text = urllib.request.urlopen(_narinfo_url(url, nix_closure["top"])).read().decode()
        assert NarInfo.parse(text).verify([VerifyingKey.parse(nix_closure["pk"])])
        root = tmp_path / "root"
        res = _nix(
            "copy", "--from", url, "--to", f"local?root={root}",
            "--option", "trusted-public-keys", nix_closure["pk"], nix_closure["top"],
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        _assert_root_matches(root, nix_closure)
        # a key we did not sign with: Nix refuses
        res = _nix(
            "copy", "--from", url, "--to", f"local?root={tmp_path / 'root2'}",
            "--option", "trusted-public-keys", "other-1:" + "A" * 43 + "=", nix_closure["top"],
        )  # fmt: skip
        assert res.returncode != 0
        assert "signature" in res.stderr


@pytest.mark.parametrize("compression", ["none", "zstd", "xz", "br"])
def test_nix_substitutes_without_sigs(tmp_path, nix_closure, filled_store, compression):
    """Unsigned, with --no-check-sigs; also with zstd-compressed NARs."""
    with serve_cache(filled_store, "--compression", compression) as url:
        root = tmp_path / "root"
        res = _nix("copy", "--no-check-sigs", "--from", url, "--to", f"local?root={root}", nix_closure["top"])
        assert res.returncode == 0, res.stderr
        _assert_root_matches(root, nix_closure)


def test_nix_uploads(tmp_path, nix_closure):
    """`nix copy --to http://…` (xz NARs, as Nix does by default, uncompressed, and the other
    compressions Nix writes that we read) fills our store."""
    for compression in ("xz", "none", "br", "lz4"):
        store = tmp_path / f"up-{compression}"
        with serve_cache(store) as url:
            res = _nix("copy", "--to", f"{url}?compression={compression}", nix_closure["top"])
            assert res.returncode == 0, res.stderr
        assert stored_paths(store) == nix_closure["paths"]
        assert_same_as_nix(store, nix_closure, nix_closure["paths"])


def test_copy_from_our_server(tmp_path, nix_closure, filled_store):
    """tvix-store copy --from http://… of our own server (signed by it, key trusted) round-trips."""
    with serve_cache(filled_store, "--sign-key-file", str(nix_closure["sk"])) as url:
        store = tmp_path / "copy"
        tvix(
            store, "copy", "--from", url + "/", "--trusted-public-keys", nix_closure["pk"], nix_closure["top"]
        )
    assert stored_paths(store) == nix_closure["paths"]
    assert_same_as_nix(store, nix_closure, nix_closure["paths"])


@pytest.mark.parametrize("nar_cache", ["0", "64"], ids=["rendered", "cached"])
def test_ranges_and_head(nix_closure, filled_store, nar_cache):
    """NARs carry Content-Length; Range gives 206 with the right bytes, 416 past the end.

    With the rendered-NAR cache off every answer is rendered; with it on, the first full GET
    fills it and the rest are sent from the file.
    """
    leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
    want = nix_dump(leaf)
    with serve_cache(filled_store, "--nar-cache-size", nar_cache) as url:
        ni = NarInfo.parse(urllib.request.urlopen(_narinfo_url(url, leaf)).read())
        nar_url = f"{url}/{ni.url}"
        for _ in range(2):
            with urllib.request.urlopen(nar_url) as r:
                assert r.headers["Content-Length"] == str(len(want))
                assert r.headers["Content-Type"] == "application/x-nix-nar"
                assert r.read() == want
        head = urllib.request.urlopen(urllib.request.Request(nar_url, method="HEAD"))
        assert head.headers["Content-Length"] == str(len(want)) and head.read() == b""
        for spec, lo, hi in (("0-9", 0, 10), ("100000-", 100000, len(want)), ("-7", len(want) - 7, len(want)),
                             ("2000000-2999999", 2000000, 3000000)):  # fmt: skip
            req = urllib.request.Request(nar_url, headers={"Range": f"bytes={spec}"})
            with urllib.request.urlopen(req) as r:
                assert r.status == 206
                assert r.headers["Content-Range"] == f"bytes {lo}-{hi - 1}/{len(want)}"
                assert r.read() == want[lo:hi]
        req = urllib.request.Request(nar_url, headers={"Range": f"bytes={len(want)}-"})
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(req)
        assert exc.value.code == 416
        assert exc.value.headers["Content-Range"] == f"bytes */{len(want)}"


def _put(url: str, data: bytes) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, method="PUT")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _with_ca(narinfo: str, ca: str) -> bytes:
    assert "\nCA: text:" in narinfo  # the premise: a text path (builtins.toFile)
    lines = narinfo.splitlines(True)
    return "".join(f"CA: {ca}\n" if line.startswith("CA: ") else line for line in lines).encode()


def test_bad_requests_get_400_and_nothing_is_stored(tmp_path, nix_closure):
    """Mismatched names, bad NARs, unknown NarHash, malformed names: 400, store unchanged, still serving."""
    store = tmp_path / "store"
    leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
    note = next(p for p in nix_closure["paths"] if p.endswith("-h6-note"))
    nar = nix_dump(note)
    nar_name = nixbase32.encode(hashlib.sha256(nar).digest())
    cache = nix_closure["caches"]["none"]
    note_narinfo = (cache / (note.removeprefix("/nix/store/")[:32] + ".narinfo")).read_text()
    leaf_narinfo = (cache / (leaf.removeprefix("/nix/store/")[:32] + ".narinfo")).read_bytes()
    with serve_cache(store) as url:
        cases = [
            # NAR body not hashing to its name
            (f"{url}/nar/{nar_name}.nar", nar + b"", 200),  # the good upload, for the narinfo cases
            (f"{url}/nar/{'0' * 52}.nar", nar, 400),
            (f"{url}/nar/{nar_name}.nar", nar[:-8], 400),  # truncated: hash and NAR both wrong
            (f"{url}/nar/{nar_name}.nar.lzip", nar, 400),  # unsupported compression
            (f"{url}/nar/{nar_name}.nar.lz4", nar, 400),  # not lz4
            (f"{url}/nar/short.nar", nar, 400),
            # narinfo whose URL name is another path's
            (_narinfo_url(url, leaf), note_narinfo.encode(), 400),
            (f"{url}/short.narinfo", note_narinfo.encode(), 400),
            (_narinfo_url(url, note), b"StorePath: /nix/store/nonsense\n", 400),
            (_narinfo_url(url, note), note_narinfo.replace("NarHash", "XarHash").encode(), 400),
            # a CA line the content does not match (no signature covers it)
            (_narinfo_url(url, note), _with_ca(note_narinfo, "text:sha256:" + "0" * 52), 400),
            (_narinfo_url(url, note), _with_ca(note_narinfo, "fixed:r:sha1:" + "0" * 32), 400),
            # a NarHash that was never uploaded
            (_narinfo_url(url, leaf), leaf_narinfo, 400),
            (f"{url}/log/foo", b"x", 400),
        ]  # fmt: skip
        for target, body, status in cases:
            got, text = _put(target, body)
            assert got == status, (target, got, text)
            if status == 400:
                assert text.strip(), target
        assert stored_paths(store) == []
        # GETs, as nar-bridge answers them: a name that cannot exist or a URL naming no node is
        # 404; a node that is not a NAR root, or a bad narsize, 400.
        hello = "EiQSIFyngVrctITpoTbBHv5pwdUwF21Um10Y0DjrUoC0s0cMGAw"  # spec §10's file node
        assert _get(f"{url}/abc.narinfo")[0] == 404
        assert _get(f"{url}/{'e' * 32}.narinfo")[0] == 404
        assert _get(f"{url}/nar/tvix-castore/!!!?narsize=1")[0] == 404
        assert _get(f"{url}/nar/tvix-castore/EiUSIK2UqIW04Ae8JtKQZLzJUXZ?narsize=1")[0] == 404
        assert _get(f"{url}/nar/tvix-castore/{hello}=?narsize=1")[0] == 404  # padded
        assert _get(f"{url}/nar/tvix-castore/{hello}")[0] == 400  # no narsize
        assert _get(f"{url}/nar/tvix-castore/{hello}?narsize=%EF%BC%92")[0] == 400  # a full-width 2
        named = base64.urlsafe_b64encode(bytes(node_to_proto(b"name", SymlinkNode(b"x")).SerializeToString()))
        assert _get(f"{url}/nar/tvix-castore/{named.decode().rstrip('=')}?narsize=1")[0] == 400
        assert _get(f"{url}/nar/tvix-castore/{'A' * 5500}?narsize=1")[0] == 400  # over 4096 bytes
        assert _get(_narinfo_url(url, note))[0] == 404
        # still serving: the good narinfo completes the upload
        assert _put(_narinfo_url(url, note), note_narinfo.encode()) == (200, "")
        status, text = _get(_narinfo_url(url, note))
        assert status == 200 and NarInfo.parse(text).nar_hash == hashlib.sha256(nar).digest()
    assert stored_paths(store) == [note]


def test_port_in_use_is_one_error_naming_the_address(tmp_path):
    """A second server on a busy port exits 1 with one line naming the address."""
    with serve_cache(tmp_path / "first") as url:
        address = url.removeprefix("http://").rstrip("/")
        res = tvix(tmp_path / "second", "serve-cache", "-l", address, check=False)
        assert res.returncode == 1
        assert res.stderr.decode().splitlines()[-1] == (
            f"error: cannot listen on {address}: Address already in use"
        )
        with urllib.request.urlopen(f"{url}/nix-cache-info", timeout=10) as r:
            assert r.status == 200


def test_clients_hanging_up_do_not_stop_the_server(tmp_path, nix_closure):
    """A client that closes or resets before reading the answer (or mid-request, mid-upload)
    leaves the server up, and its log free of tracebacks."""
    note = next(p for p in nix_closure["paths"] if p.endswith("-h6-note"))
    nar = nix_dump(note)
    nar_name = nixbase32.encode(hashlib.sha256(nar).digest())
    log = tmp_path / "serve.log"
    with serve_cache(tmp_path / "store", log=log) as url:
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        requests = [
            b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n",  # headers never finished
            b"GET /" + b"0" * 32 + b".narinfo HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PUT /" + b"0" * 32 + b".narinfo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\ngarbage\n",
            f"PUT /nar/{nar_name}.nar HTTP/1.1\r\nHost: x\r\nContent-Length: {len(nar)}\r\n\r\n".encode()
            + nar[: len(nar) // 2],
        ]
        for reset in (False, True, False):
            for request in requests:
                with socket.create_connection((host, int(port)), timeout=10) as conn:
                    conn.sendall(request)
                    if reset:  # close with RST: the server's next read fails with ECONNRESET
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                time.sleep(0.1)  # the answer meets a closed socket
        with urllib.request.urlopen(f"{url}/nix-cache-info", timeout=10) as r:
            assert r.status == 200
    assert "Traceback" not in log.read_text(), log.read_text()
    assert stored_paths(tmp_path / "store") == []


def test_range_checks_narsize_against_the_nar(nix_closure, filled_store):
    """A Range GET is answered only when narsize is the NAR's real size (else 400), and 500 when
    the NAR cannot be laid out (a Directory is missing)."""
    top = nix_closure["top"]
    missing = DirectoryNode(B3Digest.of(b"no such directory"), 1)
    parent_directory = Directory({b"child": missing})
    services = construct_services(*[f"lmdb://{filled_store}"] * 3)
    try:
        services.directory_service.put(parent_directory)
    finally:
        services.close()
    parent = parent_directory.as_node()
    ranged = {"Range": "bytes=0-9"}
    with serve_cache(filled_store) as url:
        ni = NarInfo.parse(urllib.request.urlopen(_narinfo_url(url, top)).read())
        good = f"{url}/{ni.url}"
        bad = good.replace(f"narsize={ni.nar_size}", f"narsize={ni.nar_size + 8}")
        assert bad != good
        for target, status in ((good, 206), (bad, 400)):
            req = urllib.request.Request(target, headers=ranged)
            try:
                with urllib.request.urlopen(req) as r:
                    got = r.status
            except urllib.error.HTTPError as exc:
                got = exc.code
            assert got == status, target
        # A directory node whose Directory the store lacks is not here at all.
        assert _get(f"{url}/nar/tvix-castore/{_b64(missing)}?narsize=112")[0] == 404
        # A root Directory that is here, with a child Directory that is not: 500.
        req = urllib.request.Request(f"{url}/nar/tvix-castore/{_b64(parent)}?narsize=1", headers=ranged)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code == 500
        with urllib.request.urlopen(f"{url}/nix-cache-info", timeout=10) as r:
            assert r.status == 200


def _b64(node: Node) -> str:
    return base64.urlsafe_b64encode(node_to_proto(b"", node).SerializeToString()).decode().rstrip("=")


def test_gzip_nar_under_a_plain_name(tmp_path, nix_closure):
    """Nix uploads gzip-compressed NARs as nar/<filehash>.nar (no suffix): they are accepted."""
    note = next(p for p in nix_closure["paths"] if p.endswith("-h6-note"))
    nar = nix_dump(note)
    body = gzip.compress(nar)
    file_hash = nixbase32.encode(hashlib.sha256(body).digest())
    with serve_cache(tmp_path / "store", env_extra={"PRIORITY": "40"}) as url:
        assert _put(f"{url}/nar/{file_hash}.nar", body) == (200, "")
        # PRIORITY is nar-bridge's env var for --priority.
        assert "Priority: 40\n" in _get(f"{url}/nix-cache-info")[1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_signal_stops_the_server_with_status_zero(tmp_path, sig):
    """SIGTERM, SIGINT and SIGHUP (its terminal closing) end serve-cache cleanly, exit 0."""
    store = tmp_path / "store"
    store.mkdir()
    log = tmp_path / "serve.log"
    proc, _ = _start_serving(store, log)
    try:
        proc.send_signal(sig)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start_serving(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``serve-cache`` on a free loopback port, logging to log; returns it and its URL."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TVIX_STORE, "serve-cache", "-l", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=cli_env(store),
        )
    deadline = time.monotonic() + 30
    while "serving binary cache on" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    url = log.read_text().split("serving binary cache on ", 1)[1].split()[0]
    return proc, url


def _start_nar_download(url: str, path: str) -> tuple[socket.socket, int]:
    """A raw GET of path's NAR that reads only the head; returns the socket and Content-Length."""
    with urllib.request.urlopen(_narinfo_url(url, path), timeout=10) as r:
        narinfo = r.read().decode()
    nar_url = next(line.split(": ", 1)[1] for line in narinfo.splitlines() if line.startswith("URL: "))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(f"GET /{nar_url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1)
    headers = head.split(b"\r\n")
    length = int(next(h.split(b":")[1] for h in headers if h.lower().startswith(b"content-length")))
    return conn, length


def _read_rest(conn: socket.socket) -> bytes:
    data = bytearray()
    with contextlib.suppress(OSError):
        while piece := conn.recv(1 << 20):
            data += piece
    return bytes(data)


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response with a Content-Length (it may arrive in several segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"connection closed mid-response: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert found, head
    length = int(found.group(1))
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, f"connection closed mid-body: {data!r}"
        body += piece
    assert len(body) == length, "more than the response arrived"
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("again", [False, True], ids=["finishes", "second-signal-cuts"])
def test_stop_lets_downloads_in_flight_finish(tmp_path: Path, again: bool) -> None:
    """On SIGTERM a NAR download in flight is served to its end before the server exits 0, while
    an idle kept-alive connection is closed and new ones are refused at once; a second signal
    cuts the download short."""
    store = tmp_path / "store"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 << 20))
    path = tvix(store, "import", big).stdout.decode().strip()
    expected = nix_dump(big)
    proc, url = _start_serving(store, tmp_path / "serve.log")
    try:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        idle = socket.create_connection((host, int(port)), timeout=30)
        idle.sendall(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(idle).startswith(b"HTTP/1.1 200")
        conn, length = _start_nar_download(url, path)
        assert length == len(expected)
        proc.send_signal(signal.SIGTERM)
        assert idle.recv(65536) == b""  # closed by the server, not kept for its idle timeout
        time.sleep(1.0)
        assert proc.poll() is None  # still sending the NAR
        with pytest.raises(ConnectionRefusedError):  # at once, not after the grace period
            socket.create_connection((host, int(port)), timeout=5).close()
        if again:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            assert len(_read_rest(conn)) < length
        else:
            assert _read_rest(conn) == expected
            assert proc.wait(15) == 0
        conn.close()
        idle.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "serve.log").read_text()
    assert "signal again to end them now" in log
    assert "Traceback" not in log, log


def test_a_client_that_stops_reading_pins_no_snapshot(tmp_path):
    """A client that stops reading a NAR holds the server's write up for as long as the idle
    timeout allows: the server must not hold a read transaction meanwhile, whose snapshot would
    keep every page freed by later writes from being reused (the store file would grow)."""
    import lmdb

    store = tmp_path / "store"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    path = tvix(store, "import", big).stdout.decode().strip()
    digest = path.removeprefix("/nix/store/")[:32]
    with serve_cache(store) as url:
        with urllib.request.urlopen(f"{url}/{digest}.narinfo", timeout=10) as r:
            nar_url = NarInfo.parse(r.read()).url
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.sendall(f"GET /{nar_url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert conn.recv(4096).startswith(b"HTTP/1.")  # then nothing more is read
            time.sleep(1.0)  # the server fills the socket's buffers and blocks
            env = lmdb.open(str(store), max_dbs=10, map_size=1 << 40, max_readers=1024, readonly=True)
            try:
                rows = [line.split() for line in env.readers().splitlines()[1:] if line.strip()]
            finally:
                env.close()
            assert all(row[2] == "-" for row in rows), rows  # no read transaction open


_DEBUG_EXPR = r"""
derivation {
  name = "h6-debug";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    echo "building h6-debug: a line of its log"
    mkdir -p $out/bin $out/lib/debug/.build-id/ab
    printf 'an ELF, say\n' > $out/bin/tool
    printf 'its debug info\n' > $out/lib/debug/.build-id/ab/cdef0123456789abcdef0123456789abcdef01.debug
  '' ];
}
"""


def test_nix_uploads_listings_logs_and_debug_info(tmp_path):
    """What else `nix copy --to` and `nix store copy-log` upload is kept and served back as Nix
    writes it to a file:// cache: a NAR listing (write-nar-listing), debug info (index-debug-info)
    and a build log, which `nix log --store` then finds; in the LMDB store, across restarts."""
    (tmp_path / "debug.nix").write_text(_DEBUG_EXPR)
    path = _nix_build(tmp_path / "debug.nix")
    drv = subprocess.run(["nix-store", "-q", "--deriver", path], capture_output=True, text=True, check=True)
    drv_path = drv.stdout.strip()
    options = "write-nar-listing=true&index-debug-info=true&compression=none"
    reference = tmp_path / "reference"
    assert _nix("copy", "--to", f"file://{reference}?{options}", path).returncode == 0
    listing = f"{Path(path).name[:32]}.ls"
    # debuginfo/<build id>.debug (Nix 2.8; later versions leave out the .debug)
    (debuginfo,) = (f"debuginfo/{f.name}" for f in (reference / "debuginfo").iterdir())
    assert debuginfo.startswith("debuginfo/abcdef0123456789abcdef0123456789abcdef01")
    store = tmp_path / "store"
    with serve_cache(store) as url:
        res = _nix("copy", "--to", f"{url}?{options}", path)
        assert res.returncode == 0, res.stderr
        res = _nix("store", "copy-log", "--to", url, drv_path)
        assert res.returncode == 0, res.stderr
    with serve_cache(store) as url:  # a restart: kept in the store
        for name in (listing, debuginfo):
            with urllib.request.urlopen(f"{url}/{name}") as r:
                assert r.read() == (reference / name).read_bytes(), name
                assert r.headers["Content-Type"] == "application/json"
        log = _nix("log", "--store", url, path)
        assert log.returncode == 0, log.stderr
        assert "building h6-debug: a line of its log" in log.stdout
        head = urllib.request.Request(f"{url}/{listing}", method="HEAD")
        with urllib.request.urlopen(head) as r:
            size = len((reference / listing).read_bytes())
            assert r.read() == b"" and int(r.headers["Content-Length"]) == size
        # Served as it came, Content-Encoding included (Nix's ls-compression, log-compression).
        req = urllib.request.Request(
            f"{url}/log/{Path(drv_path).name}",
            data=b"\x0b\x02\x80hello\x03",
            method="PUT",
            headers={"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "br"},
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{url}/log/{Path(drv_path).name}") as r:
            assert r.headers["Content-Encoding"] == "br" and r.read() == b"\x0b\x02\x80hello\x03"
        assert _get(f"{url}/debuginfo/0123")[0] == 404  # a name that could be, but is not here
        for bad in ("log/not-a-store-path", "debuginfo/XYZ", "realisations/out.doi", "junk/file"):
            status, text = _put(f"{url}/{bad}", b"{}")
            assert status == 400 and "cannot upload" in text, (bad, status, text)


def _nix_build(expr: Path) -> str:
    res = subprocess.run(
        ["nix-build", "--option", "substituters", "", "--no-out-link", str(expr)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_nix_finds_a_nar_by_the_name_it_uploaded_it_under(tmp_path, nix_closure):
    """Nix keeps the narinfo it uploaded (URL nar/<file hash>.nar.xz) and asks for that name
    later: it is redirected to the NAR, compressed as uploaded, also after a restart; and a
    NAR Nix finds there (HEAD) is not sent again for another path of the same contents."""
    xdg = tmp_path / "xdg"  # one Nix cache for all calls: Nix remembers what it uploaded
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg)}

    def nix(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*NIX, *args], capture_output=True, text=True, timeout=600, env=env)

    top = nix_closure["top"]
    store = tmp_path / "store"
    with socket.socket() as s:  # one port for both runs: Nix's cache of narinfos is per URL
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    listen = ("-l", f"127.0.0.1:{port}")
    with serve_cache(store, *listen, log=tmp_path / "first.log") as url:
        res = nix("copy", "--to", url, top)  # xz, Nix's default
        assert res.returncode == 0, res.stderr
        first = nix("copy", "--no-check-sigs", "--from", url, "--to", f"local?root={tmp_path / 'r1'}", top)
        assert first.returncode == 0, first.stderr
        leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
        cached = nix("path-info", "--json", "--store", url, leaf)
        (info,) = json.loads(cached.stdout)
        assert info["url"].startswith("nar/") and info["url"].endswith(".nar.xz"), info
        req = urllib.request.Request(f"{url}/{info['url']}", method="GET")
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(req)
        assert redirect.value.code == 302
        assert "compression=xz" in redirect.value.headers["Location"]
        with urllib.request.urlopen(f"{url}/{info['url']}") as r:  # followed
            assert lzma.decompress(r.read()) == nix_dump(leaf)
    second = tmp_path / "second.log"
    # Restarted, with the access log on: the names are kept in the store.
    with serve_cache(store, *listen, "--log-level", "debug", log=second) as again_url:
        assert again_url == url
        again = nix("copy", "--no-check-sigs", "--from", url, "--to", f"local?root={tmp_path / 'r2'}", top)
        assert again.returncode == 0, again.stderr
        twin = _twin_of(tmp_path, nix_closure["path_info"], leaf)
        res = nix("copy", "--to", url, twin)
        assert res.returncode == 0, res.stderr
    log = second.read_text()
    # The copy asked for the leaf by the name Nix knew from its upload, before the restart.
    assert f'"GET /{info["url"]} HTTP/1.1" 302' in log, log
    assert "received NAR" not in log, log  # the twin's NAR was found here, not sent again
    assert twin in stored_paths(store)
    assert tvix(store, "nar", twin).stdout == nix_dump(leaf)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _twin_of(tmp_path: Path, path_info: dict, path: str) -> str:
    """A store path with the same contents as path (so the same NAR) and another name."""
    copy = tmp_path / "twin-of-h6-leaf"
    shutil.copytree(path, copy, symlinks=True)
    twin = subprocess.run(["nix-store", "--add", str(copy)], capture_output=True, text=True, check=True)
    return twin.stdout.strip()
