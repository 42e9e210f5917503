"""The store as a Nix HTTP binary cache (tvix's nar-bridge): IO shell over the three services.

Routes (``BinaryCacheServer``, threaded stdlib ``http.server``, HTTP/1.1 keep-alive):

* ``GET /nix-cache-info``; ``GET``/``HEAD /<hash>.narinfo`` from the PathInfoService, signed with
  the server's key when it has one. The narinfo's URL names the NAR by its root node
  (``nar/tvix-castore/<base64url node>?narsize=N``), so serving a NAR needs no index.
* ``GET``/``HEAD /nar/tvix-castore/…``: the NAR rendered on the fly and streamed, with
  ``Content-Length``; a single ``Range`` gives 206 (416 when unsatisfiable). With
  ``compression=<zstd|xz|bzip2|gzip|br|lz4>`` in the query the NAR is compressed so and sent
  chunked.
* ``PUT /nar/<filehash>.nar[.xz|.zst|.bz2|.gz]``: the body is hashed (it must hash to the name),
  decompressed (a gzip body under a plain ``.nar`` name too, as Nix uploads it) and ingested;
  the root node waits in a small LRU keyed by NAR hash. The name is kept as an alias
  (``cache_files.nar_alias``): a GET or HEAD of it is redirected (302) to the NAR's own URL,
  compressed as it was uploaded, and a narinfo naming it needs no new upload of the NAR.
  ``PUT /<hash>.narinfo``: the name must match the body's StorePath and the NarHash/NarSize must
  be of an uploaded NAR; then the PathInfo is put. This is what ``nix copy --to http://…`` does.
* ``PUT``, ``GET``/``HEAD`` of the other files Nix writes into a cache: ``<hash>.ls``,
  ``log/<drv>``, ``debuginfo/<build id>``, ``realisations/<id>.doi`` (``cache_files``), kept as
  uploaded and served back as they came.

Malformed requests get 400 with a one-line reason (a GET of a name that cannot exist: 404, as
nar-bridge answers); handler failures are logged and answered with 500 (or the connection is
dropped mid-body); the server keeps serving.

Stopping (``finish_requests`` after ``serve_forever`` returns): idle kept-alive connections are
closed at once, requests in flight (a NAR download, an upload) get a grace period to finish.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import http.server
import io
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from google.protobuf.message import DecodeError

from nix_compat import nix_http, nixbase32
from nix_compat.errors import NixCompatError
from nix_compat.narinfo import NarInfo
from nix_compat.signing import SigningKey
from tvix.castore.protos import castore_pb2
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import StoreError
from tvix_castore.frozen import Frozen
from tvix_castore.lazy_logging import DEBUG, INFO, get_logger
from tvix_castore.nodes import DirectoryNode, FileNode, Node
from tvix_castore.proto_conv import anonymous_node_from_proto, node_to_proto
from tvix_store.binary_cache.cache_files import (
    MAX_FILE_BYTES,
    NAR_ALIAS_TYPE,
    CacheFile,
    CacheFiles,
    MemoryCacheFiles,
    nar_alias,
    read_nar_alias,
)
from tvix_store.binary_cache.compression import COMPRESSIONS, MAGICS, compressor, decompress, read_errors
from tvix_store.binary_cache.download import NARINFO_LIMIT
from tvix_store.content_address import content_mismatch, path_mismatch
from tvix_store.nar.calculation import FetchedDirectories, fetch_directories, nar_size_from
from tvix_store.nar.ingest import ingest_nar
from tvix_store.nar.renderer import write_nar
from tvix_store.path_info import PathInfo
from tvix_store.services import Services

__all__ = [
    "BinaryCacheServer",
    "RenderedNarCache",
    "nar_url",
    "parse_listen_address",
    "path_info_to_narinfo",
    "raise_open_files_limit",
]

log = get_logger(__name__)

# A NAR URL's node: at most this many bytes once decoded (tvix's limit), so at most this many
# base64 characters (unpadded) before decoding.
MAX_NODE_BYTES = 4096
_MAX_NODE_B64 = (MAX_NODE_BYTES * 4 + 2) // 3
PENDING_CAPACITY = 1000
# NAR URLs whose narsize was found right, remembered (~100 bytes each).
RIGHT_SIZES = 10_000
# A connection on which nothing moves for this long is dropped (a half-sent request, a client
# that stopped reading); the same span as Nix's stalled-download-timeout.
IDLE_TIMEOUT = 300.0
# Connections open at once (a thread each). At the cap a new connection displaces the one that
# has waited longest between requests (a kept-alive client reconnects; a client trickling its
# headers to hold a slot loses it); with every connection answering a request, it gets 503.
MAX_CONNECTIONS = 256
_BUSY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 26\r\n\r\n"
    b"too many connections open\n"
)
_COPY_CHUNK = 1 << 20
_SUFFIX_COMPRESSION = {
    "": "none",
    ".xz": "xz",
    ".zst": "zstd",
    ".bz2": "bzip2",
    ".gz": "gzip",
    ".br": "br",
    ".lz4": "lz4",
}
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
# Cache-file uploads taken at once (each held in memory until stored); more get 503, which Nix
# tries again.
CACHE_FILE_UPLOADS = 2
# The Content-Types of cache files served as they came (what Nix sends for them).
_SERVED_TYPES = frozenset({"application/json", "text/plain; charset=utf-8", "text/plain"})


class _BadRequest(Exception):
    """The client's fault: answered with 400 and the message."""


class _Abort(Exception):
    """Stop rendering: the requested range is complete."""


def nar_url(node: Node, nar_size: int, compression: str = "none") -> str:
    """The cache-relative URL under which this server renders node's NAR."""
    raw = node_to_proto(b"", node).SerializeToString()
    b64 = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    query = f"narsize={nar_size}" + (f"&compression={compression}" if compression != "none" else "")
    return f"nar/tvix-castore/{b64}?{query}"


def path_info_to_narinfo(info: PathInfo, compression: str = "none", key: SigningKey | None = None) -> NarInfo:
    """The narinfo served for info (optionally with our signature added)."""
    narinfo = info.to_narinfo(nar_url(info.node, info.nar_size, compression), compression)
    return narinfo if key is None else narinfo.add_signature(key)


def parse_listen_address(text: str) -> tuple[socket.AddressFamily, str, int]:
    """``[v6]:port``, ``v4:port`` or ``host:port`` -> (family, host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535 or not host:
        raise ValueError(f"invalid listen address {text!r}: expected HOST:PORT or [V6]:PORT")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, host[1:-1], int(port_text)
    if ":" in host:
        raise ValueError(f"invalid listen address {text!r}: put IPv6 addresses in brackets")
    family = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM)[0][0]
    return family, host, int(port_text)


class _Uploaded(Frozen):
    """A NAR received by PUT before its narinfo: the root it was ingested into, and its size."""

    __slots__ = ("nar_size", "node")
    node: Node
    nar_size: int

    def __init__(self, node: Node, nar_size: int) -> None:
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "nar_size", nar_size)


class _Body(io.RawIOBase):
    """A request body: Content-Length bytes, or chunked transfer coding, from rfile."""

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool, limit: int | None = None) -> None:
        self._rfile = rfile
        self._left: int = 0 if chunked or length is None else length
        self._chunked = chunked
        self._eof = not chunked and not length
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> None:
        line = self._rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()
        # Hex digits only (RFC 9112): int() would also take "-1" (read to EOF), "0x3" or "1_0".
        if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
            raise _BadRequest(f"malformed chunked body: chunk header {line[:40]!r}")
        size = int(size_text, 16)
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
            self._eof = True
        self._left = size

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._eof:
            return 0
        if self._left == 0:
            if self._chunked:
                if self.count:
                    self._rfile.readline(16)  # CRLF after the previous chunk
                self._next_chunk()
                if self._eof:
                    return 0
            else:
                self._eof = True
                return 0
        want = min(len(buffer), self._left)
        data = self._rfile.read(want)
        if not data:
            raise _BadRequest(f"request body ended early ({self.count} bytes received)")
        n = len(data)
        buffer[:n] = data
        self._left -= n
        self.count += n
        if self._limit is not None and self.count > self._limit:
            raise _BadRequest(f"request body larger than {self._limit} bytes")
        return n

    def drain(self) -> None:
        buf = memoryview(bytearray(1 << 16))
        while self.readinto(buf):
            pass


class _HashingReader(io.RawIOBase):
    """SHA-256 of every byte read through it (the uploaded file's hash)."""

    def __init__(self, inner: _Body) -> None:
        self._inner = inner
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)
        self.sha.update(buffer[:n])
        return n


def _decompressor(raw: io.RawIOBase, compression: str) -> tuple[BinaryIO, str]:
    """The uncompressed upload, and its compression as found."""
    buffered = io.BufferedReader(raw, _COPY_CHUNK)
    if compression == "none" and buffered.peek(2)[:2] == MAGICS["gzip"]:
        # Nix names its gzip-compressed NARs plain ``.nar`` (its URL suffixes omit gzip); a NAR
        # itself starts with the length of "nix-archive-1", never with these bytes.
        compression = "gzip"
    if compression == "none":
        return cast(BinaryIO, buffered), compression
    return decompress(cast(BinaryIO, buffered), compression, "the upload"), compression


class _RangeWriter:
    """Passes through bytes [start, end) of what is written, counting everything."""

    def __init__(self, write: Callable[[bytes | memoryview], object], start: int, end: int) -> None:
        self._write = write
        self._start = start
        self._end = end
        self.pos = 0

    def __call__(self, data: bytes | memoryview) -> None:
        n = len(data)
        lo, hi = self.pos, self.pos + n
        self.pos = hi
        if hi <= self._start:
            return
        if lo >= self._end:
            raise _Abort
        a, b = max(self._start - lo, 0), min(self._end - lo, n)
        self._write(data if a == 0 and b == n else memoryview(data)[a:b])
        if hi >= self._end:
            raise _Abort


class _CacheWriter:
    """Copies a NAR being rendered into the cache; finish() keeps it only when complete."""

    def __init__(self, cache: RenderedNarCache, key: str, size: int) -> None:
        self._cache = cache
        self._key = key
        self._size = size
        fd, self._tmp = tempfile.mkstemp(dir=cache.directory, suffix=".part")
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._ok = True

    def tee(self, write: Callable[[bytes | memoryview], object]) -> Callable[[bytes | memoryview], object]:
        def both(data: bytes | memoryview) -> None:
            write(data)
            if self._ok:
                try:
                    self._file.write(data)
                except OSError as exc:  # a full disk must not break the response
                    log.warning("NAR cache: cannot write %s: %s", self._tmp, exc)
                    self._ok = False

        return both

    def finish(self, complete: bool) -> None:
        try:
            self._file.close()
        except OSError:
            self._ok = False
        if complete and self._ok:
            self._cache.commit(self._key, self._tmp, self._size)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)


class RenderedNarCache:
    """Rendered NARs kept on disk (least recently used dropped first) and sent with sendfile.

    The first request for a NAR renders it on the fly and copies it here; later ones are served
    from the file. Keys name the root node and size, so an entry never goes stale: the store
    is content-addressed.
    """

    def __init__(self, directory: str, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._used = 0

    def _file_for(self, key: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(key.encode()).hexdigest() + ".nar")

    def holds(self, key: str) -> bool:
        """Whether key's NAR is here (rendered whole, at the size its key names)."""
        with self._lock:
            return key in self._entries

    def open(self, key: str) -> BinaryIO | None:
        """The cached NAR for key, opened for reading, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            try:
                return open(entry[0], "rb")
            except OSError:
                self._entries.pop(key)
                self._used -= entry[1]
                return None

    def writer(self, key: str, size: int) -> _CacheWriter | None:
        """A writer for key's NAR, or None when it would not fit."""
        if size > self.capacity:
            return None
        try:
            return _CacheWriter(self, key, size)
        except OSError as exc:
            log.warning("NAR cache: %s", exc)
            return None

    def commit(self, key: str, tmp: str, size: int) -> None:
        """Make a completely written NAR available, evicting older ones beyond capacity."""
        path = self._file_for(key)
        with self._lock:
            os.replace(tmp, path)
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._entries[key] = (path, size)
            self._used += size
            while self._used > self.capacity and self._entries:
                _, (victim, victim_size) = self._entries.popitem(last=False)
                self._used -= victim_size
                with contextlib.suppress(OSError):
                    os.unlink(victim)


class BinaryCacheServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server answering Nix binary cache requests from services."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        services: Services,
        family: socket.AddressFamily = socket.AF_INET,
        priority: int = 39,
        sign_key: SigningKey | None = None,
        compression: str = "none",
        nar_cache: RenderedNarCache | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        cache_files: CacheFiles | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address_family = family
        self.max_connections = max_connections
        # Accepted connections not yet closed (from accept to the end of their thread).
        self._accepted: set[socket.socket] = set()
        self._out_of_descriptors_at = 0.0
        # Listings, logs, debug info and realisations uploaded by Nix (owned by the caller).
        self.cache_files = cache_files if cache_files is not None else MemoryCacheFiles()
        self.cache_file_uploads = threading.BoundedSemaphore(CACHE_FILE_UPLOADS)
        self.idle_timeout = idle_timeout
        self.nar_cache = nar_cache
        self.services = services
        self.priority = priority
        self.sign_key = sign_key
        self.compression = compression
        self._pending: OrderedDict[bytes, _Uploaded] = OrderedDict()
        self._pending_lock = threading.Lock()
        # NAR URLs whose narsize was found right (a key names a root node and a size: it never
        # goes stale), so that a NAR's Directories are walked for it once, not per request.
        self._right_sizes: OrderedDict[str, None] = OrderedDict()
        # Open connections, each with whether a request is being answered on it.
        self._connections: dict[socket.socket, bool] = {}
        self._connections_lock = threading.Lock()
        self.stopping = False
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind; an IPv6 socket listens on IPv6 only."""
        if self.address_family == socket.AF_INET6:
            # Listen on exactly the address given, not on IPv4 too.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def remember_upload(self, nar_sha256: bytes, node: Node, nar_size: int) -> None:
        """Keep an uploaded NAR's root node until its narinfo arrives."""
        with self._pending_lock:
            self._pending[nar_sha256] = _Uploaded(node, nar_size)
            self._pending.move_to_end(nar_sha256)
            while len(self._pending) > PENDING_CAPACITY:
                self._pending.popitem(last=False)

    def size_known_right(self, key: str) -> bool:
        """Whether the NAR URL key (``<node>:<narsize>``) was found to have its NAR's size."""
        cache = self.nar_cache
        if cache is not None and cache.holds(key):  # rendered whole, at that size
            return True
        with self._pending_lock:
            if key in self._right_sizes:
                self._right_sizes.move_to_end(key)
                return True
        return False

    def note_size_right(self, key: str) -> None:
        """Remember that key's narsize is its NAR's size (the last RIGHT_SIZES keys)."""
        with self._pending_lock:
            self._right_sizes[key] = None
            self._right_sizes.move_to_end(key)
            while len(self._right_sizes) > RIGHT_SIZES:
                self._right_sizes.popitem(last=False)

    def uploaded(self, nar_sha256: bytes) -> _Uploaded | None:
        """The uploaded NAR with this hash, if it is still remembered."""
        with self._pending_lock:
            return self._pending.get(nar_sha256)

    def note_connection(self, connection: socket.socket, busy: bool | None) -> None:
        """Record a connection as answering a request (busy), waiting for one, or closed (None)."""
        with self._connections_lock:
            if busy is None:
                self._connections.pop(connection, None)
            else:
                self._connections[connection] = busy

    def begin_stop(self) -> None:
        """Stop taking connections and requests (from a signal handler: it does not block).

        Answers from now on say ``Connection: close``, so that a client opens a new connection
        for its next request (refused, at once) rather than sending it where none is read.
        """
        self.stopping = True
        threading.Thread(target=self.shutdown, name="stop-serving", daemon=True).start()

    def finish_requests(self, grace: float, cut: threading.Event) -> None:
        """End the connections once ``serve_forever`` has returned.

        New connections are refused; idle ones are closed at once; requests in flight get up
        to grace seconds (less if cut is set); then what is left is closed.
        """
        self.stopping = True
        with contextlib.suppress(OSError):
            self.socket.close()
        deadline = time.monotonic() + grace
        while True:
            with self._connections_lock:
                idle = [c for c, busy in self._connections.items() if not busy]
                busy_count = len(self._connections) - len(idle)
            for connection in idle:
                _hang_up(connection)
            if busy_count == 0 or cut.is_set() or time.monotonic() >= deadline:
                break
            log.debug("waiting for %d requests in flight", busy_count)
            cut.wait(0.1)
        with self._connections_lock:
            left = list(self._connections)
            busy_count = sum(self._connections.values())
        if busy_count:
            log.info("closing %d connections with requests still in flight", busy_count)
        for connection in left:
            _hang_up(connection)
        # Let their threads see the closed sockets before the services close under them.
        settle = time.monotonic() + 2.0
        while self._connections and time.monotonic() < settle:
            time.sleep(0.02)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; out of file descriptors, pause a moment instead of spinning.

        The listening socket stays readable while accept fails with EMFILE, and socketserver
        would retry at once, a core busy until a descriptor is free.
        """
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                now = time.monotonic()
                if now - self._out_of_descriptors_at > 60:
                    log.warning("cannot accept connections: %s (%d open)", exc.strerror, len(self._accepted))
                self._out_of_descriptors_at = now
                time.sleep(0.05)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Take the connection if there is room, making room from an idle one if need be."""
        with self._connections_lock:
            room = len(self._accepted) < self.max_connections or self._hang_up_an_idle_one()
            if room:
                self._accepted.add(request)
        if not room:
            log.debug("connection from %s refused: %d connections busy", client_address, len(self._accepted))
            with contextlib.suppress(OSError):
                request.setblocking(False)
                request.send(_BUSY_ANSWER)
        return room

    def _hang_up_an_idle_one(self) -> bool:
        """End the connection waiting longest without a request; False if all are answering.

        Called with ``_connections_lock`` held.
        """
        idle = next((c for c, busy in self._connections.items() if not busy), None)
        if idle is None:
            return False
        # Out of the count now: its thread may take a moment to see the hang-up.
        self._accepted.discard(idle)
        self._connections.pop(idle, None)
        _hang_up(idle)
        return True

    def shutdown_request(self, request: Any) -> None:
        """Close a connection that was refused or whose thread ended."""
        with self._connections_lock:
            self._accepted.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: object, client_address: object) -> None:
        """Log what escaped a connection's handler, instead of socketserver's raw traceback.

        A client hanging up or going silent, even mid-request, is routine for a server.
        """
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.error("connection from %s failed", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests; every method answers, whatever happens inside."""

    protocol_version = "HTTP/1.1"
    server_version = "tvix-store"
    # TCP_NODELAY: headers and body leave in separate writes; with Nagle the body waited for
    # the client's delayed ACK of the headers, ~40 ms per small response on a kept-alive connection.
    disable_nagle_algorithm = True
    server: BinaryCacheServer

    def setup(self) -> None:
        super().setup()
        # A read or write that waits longer ends the connection (TimeoutError).
        self.connection.settimeout(self.server.idle_timeout)
        self.server.note_connection(self.connection, busy=False)

    def finish(self) -> None:
        self.server.note_connection(self.connection, busy=None)
        super().finish()

    def end_headers(self) -> None:
        if self.server.stopping:
            self.send_header("Connection", "close")  # also ends this connection after the answer
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing ------------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        level = DEBUG if status == 404 else INFO
        log.log(level, "%s %s -> %d: %s", self.command, self.path, status, message)
        self._send(status, (message + "\n").encode())

    def _dispatch(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        self.server.note_connection(self.connection, busy=True)
        try:
            self._route(route)
        finally:
            if self.server.stopping:
                self.close_connection = True
            self.server.note_connection(self.connection, busy=False)

    def _route(self, route: Callable[[str, dict[str, list[str]]], None]) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        try:
            route(urllib.parse.unquote(parts.path), query)
        except _BadRequest as exc:
            self.close_connection = True
            self._error(400, str(exc))
        except (ConnectionError, TimeoutError) as exc:
            log.debug("%s %s: client gone: %s", self.command, self.path, exc)
            self.close_connection = True
        except Exception as exc:
            log.error(
                "%s %s failed: %s", self.command, self.path, exc, exc_info=not isinstance(exc, StoreError)
            )
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._error(500, f"internal error: {exc}")

    def do_GET(self) -> None:
        """Serve cache info, narinfos and NARs."""
        self._dispatch(self._get)

    def do_HEAD(self) -> None:
        """Like GET, without the body."""
        self._dispatch(self._get)

    def do_PUT(self) -> None:
        """Accept NAR and narinfo uploads."""
        self._dispatch(self._put)

    # -- GET / HEAD ----------------------------------------------------------------------------

    def _get(self, path: str, query: dict[str, list[str]]) -> None:
        if path == "/":
            # nar-bridge's greeting, byte for byte (spec §10): scripts probe with it.
            self._send(200, b"Hello from nar-bridge")
        elif path == "/nix-cache-info":
            body = f"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {self.server.priority}\n"
            self._send(200, body.encode(), nix_http.MIME_TYPE_CACHE_INFO)
        elif path.endswith(".narinfo") and "/" not in path[1:]:
            self._get_narinfo(path[1:])
        elif path.startswith("/nar/tvix-castore/"):
            self._get_nar(path[len("/nar/tvix-castore/") :], query)
        elif path.startswith("/nar/"):
            self._get_uploaded_nar(path[1:])
        elif nix_http.parse_cache_file_str(path[1:]) is not None:
            self._get_cache_file(path[1:])
        else:
            self._error(404, f"not found: {path}")

    def _get_uploaded_nar(self, name: str) -> None:
        alias = self._nar_alias(name)
        if alias is None:
            self._error(404, f"no NAR was uploaded as {name}")
            return
        compression, node, nar_size, _ = alias
        # Relative to /nar/: right also behind a proxy that serves the cache under a prefix.
        location = nar_url(node, nar_size, compression).removeprefix("nar/")
        self._send(302, f"see {location}\n".encode(), headers={"Location": location})

    def _nar_alias(self, url: str) -> tuple[str, Node, int, bytes] | None:
        """The NAR uploaded under the cache URL ``nar/<file hash>.nar…``, if its root is here.

        Only such names are aliases: no other upload can store one (``_put_cache_file``).
        """
        if not url.startswith("nar/") or nix_http.parse_nar_str(url[len("nar/") :]) is None:
            return None
        alias = read_nar_alias(self.server.cache_files.get(url))
        if alias is None:
            return None
        # The record may have outlived its content (blobs kept in another store that lost
        # them): then there is no NAR to point at.
        return alias if _root_present(self.server.services, alias[1]) else None

    def _get_cache_file(self, name: str) -> None:
        file = self.server.cache_files.get(name)
        if file is None:
            self._error(404, f"no {name} here")
            return
        headers = {"X-Content-Type-Options": "nosniff"}
        if file.content_encoding:
            headers["Content-Encoding"] = file.content_encoding
        # Anyone may upload these: served as data, never as a page a browser would render.
        content_type = file.content_type if file.content_type in _SERVED_TYPES else "application/octet-stream"
        self._send(200, file.data, content_type, headers)

    def _get_narinfo(self, name: str) -> None:
        digest = nix_http.parse_narinfo_str(name)
        if digest is None:
            # No narinfo can have that name: "not here", as nar-bridge answers.
            self._error(404, f"no narinfo {name!r}: expected <32 nixbase32 chars>.narinfo")
            return
        info = self.server.services.path_info_service.get(digest)
        if info is None:
            self._error(404, f"no store path with hash {name[:32]} here")
            return
        narinfo = path_info_to_narinfo(info, self.server.compression, self.server.sign_key)
        self._send(200, narinfo.render().encode(), nix_http.MIME_TYPE_NARINFO)

    def _get_nar(self, b64: str, query: dict[str, list[str]]) -> None:
        # As nar-bridge: what cannot name a node is not found (404); a node too big or not
        # valid as a NAR root is a bad request (400).
        if len(b64) > _MAX_NODE_B64:
            raise _BadRequest(f"NAR URL: node over {MAX_NODE_BYTES} bytes")
        try:
            if "=" in b64:
                raise binascii.Error("padding")  # nar-bridge's base64url has none
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), altchars=b"-_", validate=True)
            msg = castore_pb2.Node.FromString(raw)
        except (binascii.Error, ValueError, DecodeError) as exc:
            self._error(404, f"NAR URL: no node in {b64!r}: {exc}")
            return
        if len(raw) > MAX_NODE_BYTES:
            raise _BadRequest(f"NAR URL: node over {MAX_NODE_BYTES} bytes")
        try:
            node = anonymous_node_from_proto(msg)
        except StoreError as exc:
            raise _BadRequest(f"NAR URL: invalid node: {exc}") from exc
        sizes = query.get("narsize", [])
        if len(sizes) != 1 or not (sizes[0].isascii() and sizes[0].isdigit()):
            raise _BadRequest("NAR URL: missing or invalid narsize")
        nar_size = int(sizes[0])
        compression = query.get("compression", ["none"])[0]
        if compression not in COMPRESSIONS:
            raise _BadRequest(f"NAR URL: unsupported compression {compression!r}")
        headers = {"Cache-Control": "max-age=31536000, immutable"}
        services = self.server.services
        # Once the headers are out, a render failure can only cut the body short; a root that is
        # not in the store at all is answered 404 before anything is sent.
        if not _root_present(services, node):
            self._error(404, f"NAR of {node}: not in this store")
            return
        cache = self.server.nar_cache
        key = f"{b64}:{nar_size}"
        # The response's length is narsize: check it against the real NAR (from the Directories
        # alone, as nar-bridge's seekable NAR does), unless it was found right before. A wrong
        # one would otherwise get a NAR cut short, or a connection dropped; a Directory missing
        # is a 500 before any header. The Directories fetched for it serve the rendering too:
        # the tree is read once.
        directories: DirectoryService = services.directory_service
        if not self.server.size_known_right(key):
            try:
                fetched = fetch_directories(node, directories)
                actual = nar_size_from(node, fetched)
            except StoreError as exc:
                log.error("NAR of %s: cannot find its size: %s", node, exc)
                self._error(500, f"NAR of {node}: {exc}")
                return
            if actual != nar_size:
                raise _BadRequest(f"NAR URL: narsize={nar_size}, but the NAR is {actual} bytes")
            self.server.note_size_right(key)
            directories = FetchedDirectories(fetched)
        if compression != "none":
            self._send_compressed(node, compression, headers, directories)
            return
        start, end = 0, nar_size
        status = 200
        m = None
        range_header = self.headers.get("Range")
        if range_header is not None:
            m = _RANGE_RE.fullmatch(range_header.strip())
            if m is not None and (
                not (m.group(1) or m.group(2))
                # first > last: an invalid range, which RFC 9110 says to ignore
                or (m.group(1) and m.group(2) and int(m.group(1)) > int(m.group(2)))
            ):
                m = None
        # A Range of another form (several ranges) is answered with the whole NAR (RFC 9110).
        if m is not None:
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, nar_size) if m.group(2) else nar_size
            else:
                start = max(nar_size - int(m.group(2)), 0)
            if start >= nar_size or start >= end:
                self._send(416, b"", nix_http.MIME_TYPE_NAR, {"Content-Range": f"bytes */{nar_size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{nar_size}"
        headers["Accept-Ranges"] = "bytes"
        self.send_response(status)
        self.send_header("Content-Type", nix_http.MIME_TYPE_NAR)
        self.send_header("Content-Length", str(end - start))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        cached = cache.open(key) if cache is not None else None
        if cached is not None:
            with cached:
                # socket.sendfile: the zero-copy sendfile(2), waiting within the idle timeout.
                sent = self.connection.sendfile(cached, start, end - start)
            if sent != end - start:
                log.error("rendered NAR cache file for %s ended after %d of %d bytes", key, sent, end - start)
                self.close_connection = True
            return
        tee = cache.writer(key, nar_size) if cache is not None and status == 200 else None
        out = _RangeWriter(self.wfile.write if tee is None else tee.tee(self.wfile.write), start, end)
        try:
            # Not zero_copy: views of the map would keep a read transaction open while a client
            # that stopped reading (for up to IDLE_TIMEOUT) holds sendall up, and that snapshot
            # pins every page freed meanwhile: the store file would grow with each upload.
            write_nar(out, node, services.blob_service, directories)
        except _Abort:
            return
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:
            # Headers are out: all we can do is cut the response short so the client notices.
            log.error("rendering NAR of %s failed after %d bytes: %s", node, out.pos, exc)
            self.close_connection = True
            return
        finally:
            if tee is not None:
                tee.finish(out.pos == nar_size)
        if out.pos != nar_size:
            log.error("NAR of %s is %d bytes, but the URL said narsize=%d", node, out.pos, nar_size)
            self.close_connection = True

    def _send_compressed(
        self, node: Node, compression: str, headers: dict[str, str], directories: DirectoryService
    ) -> None:
        """The NAR compressed as it is rendered, sent in chunks (its length is not known)."""
        self.send_response(200)
        self.send_header("Content-Type", nix_http.MIME_TYPE_NAR)
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        wfile = self.wfile
        squeeze = compressor(compression)
        pending: list[bytes] = []
        pending_bytes = 0

        def send(data: bytes) -> None:
            if data:
                wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")

        def write(piece: bytes | memoryview) -> None:
            nonlocal pending_bytes
            out = squeeze.compress(bytes(piece))
            if out:
                pending.append(out)
                pending_bytes += len(out)
            if pending_bytes >= _COPY_CHUNK:  # few, large chunks
                send(b"".join(pending))
                pending.clear()
                pending_bytes = 0

        services = self.server.services
        try:
            write_nar(write, node, services.blob_service, directories)
            send(b"".join(pending) + squeeze.flush())
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:
            log.error("rendering %s NAR of %s failed: %s", compression, node, exc)
            self.close_connection = True
            return
        wfile.write(b"0\r\n\r\n")

    # -- PUT -----------------------------------------------------------------------------------

    def _body(self, limit: int | None = None) -> _Body:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        lengths = set(self.headers.get_all("Content-Length") or ())
        if len(lengths) > 1:  # RFC 9112 §6.3: a message that cannot be framed one way
            raise _BadRequest(f"conflicting Content-Length headers {sorted(lengths)!r}")
        length_text = next(iter(lengths), None)
        length = None
        if length_text is not None:
            digits = length_text.strip()
            if not (digits.isascii() and digits.isdigit()):  # "²" is a digit to isdigit()
                raise _BadRequest(f"invalid Content-Length {length_text!r}")
            length = int(digits)
        elif not chunked:
            raise _BadRequest("PUT needs a Content-Length or a chunked body")
        if limit is not None and length is not None and length > limit:
            raise _BadRequest(f"request body larger than {limit} bytes")
        return _Body(cast(BinaryIO, self.rfile), length, chunked, limit)

    def _put(self, path: str, query: dict[str, list[str]]) -> None:
        if path.startswith("/nar/"):
            self._put_nar(path[len("/nar/") :])
        elif path.endswith(".narinfo") and "/" not in path[1:]:
            self._put_narinfo(path[1:])
        elif path == "/nix-cache-info":
            self._body(NARINFO_LIMIT).drain()  # we answer GET /nix-cache-info ourselves
            self._send(200)
        elif nix_http.parse_cache_file_str(path[1:]) is not None:
            self._put_cache_file(path[1:])
        else:
            raise _BadRequest(
                f"cannot upload {path}: only nar/<hash>.nar[.<ext>], <hash>.narinfo, <hash>.ls, "
                "log/<drv>, debuginfo/<build id> and realisations/<id>.doi"
            )

    def _put_cache_file(self, name: str) -> None:
        if self.headers.get("Content-Type", "").strip().lower() == NAR_ALIAS_TYPE:
            raise _BadRequest(f"{name}: Content-Type {NAR_ALIAS_TYPE} is this server's own")
        # Each upload is held in memory (up to MAX_FILE_BYTES, a few times over) until stored.
        if not self.server.cache_file_uploads.acquire(blocking=False):
            self._body(MAX_FILE_BYTES).drain()
            self._send(503, b"busy with other uploads, try again\n", headers={"Retry-After": "1"})
            return
        try:
            self._store_cache_file(name)
        finally:
            self.server.cache_file_uploads.release()

    def _store_cache_file(self, name: str) -> None:
        body = self._body(MAX_FILE_BYTES)
        data = b"".join(iter(lambda: body.read(_COPY_CHUNK), b""))
        try:
            file = CacheFile(
                name,
                self.headers.get("Content-Type", "application/octet-stream"),
                self.headers.get("Content-Encoding", ""),
                data,
            )
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc
        self.server.cache_files.put(file)
        log.info("stored %s (%d bytes)", name, len(data))
        self._send(200)

    def _put_nar(self, name: str) -> None:
        parsed = nix_http.parse_nar_str(name)
        if parsed is None or parsed[1] not in _SUFFIX_COMPRESSION:
            raise _BadRequest(
                f"malformed NAR name {name!r}: expected <52 nixbase32 chars>.nar[.xz|.zst|.bz2|.gz|.br|.lz4]"
            )
        file_hash, suffix = parsed
        body = self._body()
        hashing = _HashingReader(body)
        stream, compression = _decompressor(hashing, _SUFFIX_COMPRESSION[suffix])
        services = self.server.services
        try:
            node, nar_sha256, nar_size = ingest_nar(
                services.blob_service, services.directory_service, stream.read
            )
            if stream.read(1):
                raise _BadRequest(f"{name}: unexpected data after the end of the NAR")
            body.drain()
        except NixCompatError as exc:
            raise _BadRequest(f"{name}: invalid NAR: {exc}") from exc
        except read_errors() as exc:
            raise _BadRequest(f"{name}: cannot decompress: {exc}") from exc
        got = hashing.sha.digest()
        if got != file_hash:
            raise _BadRequest(
                f"{name}: body hashes to sha256:{nixbase32.encode(got)}, not to the hash in its name"
            )
        self.server.remember_upload(nar_sha256, node, nar_size)
        # Nix keeps the narinfo it uploads, with this name as its URL, and may ask for it by
        # that name later (and a debug info link names it): it is redirected to our own URL.
        self.server.cache_files.put(nar_alias(f"nar/{name}", compression, node, nar_size, nar_sha256))
        log.info("received NAR %s (%d bytes, %d uncompressed)", name, body.count, nar_size)
        self._send(200)

    def _put_narinfo(self, name: str) -> None:
        digest = nix_http.parse_narinfo_str(name)
        if digest is None:
            raise _BadRequest(f"malformed narinfo name {name!r}: expected <32 nixbase32 chars>.narinfo")
        body = self._body(NARINFO_LIMIT)
        data = body.readall()
        try:
            narinfo = NarInfo.parse(data)
        except NixCompatError as exc:
            raise _BadRequest(f"{name}: invalid narinfo: {exc}") from exc
        if narinfo.store_path.digest != digest:
            raise _BadRequest(
                f"{name}: URL name does not match the narinfo's StorePath {narinfo.store_path.absolute()}"
            )
        uploaded = self.server.uploaded(narinfo.nar_hash)
        if uploaded is None:
            # Nix did not send the NAR again: a HEAD found it here under its name (an alias).
            alias = self._nar_alias(narinfo.url)
            if alias is not None and alias[3] == narinfo.nar_hash:
                uploaded = _Uploaded(alias[1], alias[2])
        if uploaded is None:
            raise _BadRequest(
                f"{name}: unknown NarHash sha256:{nixbase32.encode(narinfo.nar_hash)}: upload the NAR first"
            )
        if uploaded.nar_size != narinfo.nar_size:
            raise _BadRequest(
                f"{name}: NarSize {narinfo.nar_size} differs from the uploaded NAR's {uploaded.nar_size}"
            )
        if narinfo.ca is not None:
            services = self.server.services
            mismatch = path_mismatch(narinfo.store_path, narinfo.ca, narinfo.references) or content_mismatch(
                narinfo.store_path,
                narinfo.ca,
                uploaded.node,
                services.blob_service,
                services.directory_service,
                nar_sha256=narinfo.nar_hash,  # the uploaded NAR's: it is found under that hash
            )
            if mismatch is not None:
                raise _BadRequest(f"{name}: {mismatch}")
        try:
            info = PathInfo(
                store_path=narinfo.store_path,
                node=uploaded.node,
                nar_size=narinfo.nar_size,
                nar_sha256=narinfo.nar_hash,
                references=narinfo.references,
                signatures=narinfo.signatures,
                deriver=narinfo.deriver,
                ca=narinfo.ca,
            )
        except StoreError as exc:
            raise _BadRequest(f"{name}: invalid path info: {exc}") from exc
        self.server.services.put_path_info(info)
        log.info("stored %s", narinfo.store_path.absolute())
        self._send(200)


def _root_present(services: Services, node: Node) -> bool:
    """Whether the store holds node's Directory or blob (a symlink needs nothing)."""
    if isinstance(node, DirectoryNode):
        return services.directory_service.get(node.digest) is not None
    return not isinstance(node, FileNode) or services.blob_service.has(node.digest)


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each connection is a descriptor.

    The usual soft limit, 1,024, is reached by as many clients (or one holding that many
    connections) long before the hard limit; past it nothing more can be accepted.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hang_up(connection: socket.socket) -> None:
    """End a connection from another thread: its handler's next read or write fails."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
