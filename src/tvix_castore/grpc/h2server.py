"""A gRPC server that speaks HTTP/2 itself: grpcio's server API and handlers, less per-call cost.

grpcio's Python servers (sync and aio alike) spend ~0.5 ms of CPU on every call on our machines,
most of it in their Python layers and thread hand-offs: 2,450 small blob Puts cost over a second
of daemon CPU before any byte is stored. This server keeps the wire protocol (gRPC over
cleartext HTTP/2, any client: grpcio, tonic, grpc-go) and grpcio's handler objects, so the
generated ``add_*Servicer_to_server`` functions, reflection and health register on it
unchanged, and servicers see a ``grpc.ServicerContext``.

Structure: one asyncio event loop in its own thread owns every connection (framing, HPACK,
flow control, message assembly). Handlers run on a thread pool, as with ``grpc.server``:
a unary request when its stream has ended, a streaming one at once (its request iterator blocks
on the messages still to come). A method may also have a *batch handler*: calls to it whose
whole request is already in by the end of a socket read are answered together by one pool
job (blob Puts of small files: one job and one store transaction for many calls).

Flow control: what we receive is credited back to a stream as its handler consumes the
messages, so a slow handler holds its client back instead of buffering; the connection window
is credited on receipt. What we send respects the client's windows, and a streaming handler
waits while more than a few MiB of its responses are not yet written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, NoReturn

import grpc

from tvix_castore.grpc import http2 as h2
from tvix_castore.grpc.hpack import Decoder, HpackError, encode

__all__ = ["BatchHandler", "Outcome", "Server"]

log = logging.getLogger(__name__)

Code = grpc.StatusCode


class Outcome(NamedTuple):
    """The end of one call answered by a batch handler: a status and, when OK, the response."""

    code: grpc.StatusCode
    details: str
    response: bytes | None


Payload = bytes | tuple[bytes | memoryview, ...]
"""A serialized message: bytes, or pieces to be sent one after the other (not joined: a
response serializer may return a tuple so that large data is never copied into one buffer)."""

BatchHandler = Callable[[list[list[bytes]]], list[Outcome]]
"""Takes the raw request messages of several complete calls, returns one Outcome per call."""

_STREAM_WINDOW = 5 * 1024 * 1024
"""Receive window per stream: a largest message (4 MiB) always fits, with room to pipeline."""
_CONN_WINDOW = 64 * 1024 * 1024
_CONN_CREDIT = 1024 * 1024
"""Connection window credit is sent back in pieces of at least this much."""
_MAX_FRAME = 1024 * 1024
"""Largest frame we accept (fewer, larger DATA frames cost less to parse)."""
_MAX_HEADER_BLOCK = 256 * 1024
_MAX_HEADER_LIST = 64 * 1024
_OUT_PENDING = 4 * 1024 * 1024
"""A streaming handler waits while more than this much of its responses is not yet written."""
_READ_SIZE = 4 * 1024 * 1024
_BATCH_WAIT = 0.02
"""How long a call to a batched method may wait for the end of its request before it is run
on its own (clients such as grpcio send the end of a stream as a separate frame, often in a
later read)."""

_RESPONSE_HEADERS = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
_OK_TRAILERS = encode([(b"grpc-status", b"0")])


class _Abort(Exception):
    """Raised by ``context.abort``: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Cancelled(grpc.RpcError):  # type: ignore[misc]
    """Raised from a request iterator whose call was cancelled, reset or ended by the server."""

    def code(self) -> grpc.StatusCode:
        return Code.CANCELLED

    def details(self) -> str:
        return "call cancelled"


class _HandlerCallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


class _Stream:
    """One call. Loop-thread state, plus the request queue and send accounting under ``cond``."""

    def __init__(
        self,
        conn: _Connection,
        sid: int,
        path: str,
        handler: grpc.RpcMethodHandler,
        metadata: tuple[tuple[str, str | bytes], ...],
        deadline: float | None,
        send_window: int,
    ) -> None:
        self.conn = conn
        self.sid = sid
        self.path = path
        self.handler = handler
        self.metadata = metadata
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.cond = threading.Condition(threading.Lock())
        # Receiving (loop thread, queue under cond).
        self.rbuf = bytearray()
        self.need = -1  # length of the message being assembled, -1 while reading its prefix
        self.queue: deque[bytes] = deque()
        self.received = 0  # message bytes received in all
        self.charged = 0  # flow-controlled bytes not yet credited back
        self.remote_closed = False
        # Sending (loop thread; out_pending under cond).
        self.send_window = send_window
        self.headers_sent = False
        self.outq: deque[memoryview] = deque()
        self.trailers: bytes | None = None
        self.out_pending = 0
        # Lifecycle.
        self.dispatched = False
        self.finished = False  # a status was decided (or the call was cancelled)
        self.terminated = False  # trailers written or reset: callbacks have run
        self.callbacks: list[Callable[[], None]] = []


class Server:
    """``grpc.Server``'s registration and lifecycle API over our own HTTP/2 loop (cleartext only)."""

    def __init__(
        self,
        max_workers: int = 64,
        max_receive_message_length: int = 4 * 1024 * 1024,
        thread_name_prefix: str = "grpc-server",
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._thread_name = thread_name_prefix + "-io"
        self.max_receive = max_receive_message_length
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._batch: dict[str, tuple[BatchHandler, int]] = {}
        self._sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: set[_Connection] = set()
        self._stopped = threading.Event()
        self._draining = False

    # ---- registration (the calls generated code and grpc_reflection/grpc_health make) ---------

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Handlers asked, in order, for methods not registered by name."""
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        """Handlers of one service by method name."""
        for method, handler in method_handlers.items():
            self._methods[f"/{service_name}/{method}"] = handler

    def add_batch_handler(self, path: str, handler: BatchHandler, max_request_bytes: int) -> None:
        """Answer complete calls to path of at most max_request_bytes together (see module doc)."""
        self._batch[path] = (handler, max_request_bytes)

    def lookup(
        self, path: str, metadata: tuple[tuple[str, str | bytes], ...]
    ) -> grpc.RpcMethodHandler | None:
        """The handler of a method path, or None."""
        handler = self._methods.get(path)
        if handler is not None:
            return handler
        details = _HandlerCallDetails(path, metadata)
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    def batch_handler(self, path: str) -> tuple[BatchHandler, int] | None:
        """The batch handler of a path and its request size limit, if any."""
        return self._batch.get(path)

    # ---- listening --------------------------------------------------------------------------------

    def add_insecure_port(self, address: str) -> int:
        """Bind ``unix:/path``, ``host:port`` or ``[v6]:port`` now; returns the port (1 for unix).

        Raises:
            RuntimeError: the address cannot be bound.

        """
        if address.startswith("unix:"):
            path = address[len("unix:") :]
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # a stale socket of an earlier run
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
                sock.listen(512)
            except OSError as exc:
                sock.close()
                raise RuntimeError(f"Failed to bind to address {address}: {exc}") from exc
            self._sockets.append(sock)
            return 1
        host, _, port_text = address.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            port = int(port_text)
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (ValueError, OSError) as exc:
            raise RuntimeError(f"Failed to bind to address {address}: {exc}") from exc
        bound: list[socket.socket] = []
        errors = []
        seen = set()
        for family, kind, proto, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
                sock.listen(512)
                if port == 0:
                    port = sock.getsockname()[1]
                bound.append(sock)
            except OSError as exc:
                sock.close()
                errors.append(exc)
        if not bound:
            raise RuntimeError(
                f"Failed to bind to address {address}: {errors[0] if errors else 'no address'}"
            )
        self._sockets.extend(bound)
        return port

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread and serve every bound address."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self._thread_name, daemon=True)
        self._thread.start()

        async def listen() -> None:
            for sock in self._sockets:
                if sock.family == socket.AF_UNIX:
                    server = await loop.create_unix_server(lambda: _Connection(self), sock=sock)
                else:
                    server = await loop.create_server(lambda: _Connection(self), sock=sock)
                self._servers.append(server)

        asyncio.run_coroutine_threadsafe(listen(), loop).result()

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls (GOAWAY), let those in flight finish for up to grace seconds, close.

        Returns an Event that is already set: this waits for the shutdown itself.
        """
        loop = self._loop
        if loop is None or self._stopped.is_set():
            self._stopped.set()
            return self._stopped
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(grace or 0.0), loop).result(
                timeout=(grace or 0.0) + 30
            )
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until stop has run (True), or timeout passed (False)."""
        return self._stopped.wait(timeout)

    async def _shutdown(self, grace: float) -> None:
        self._draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.streams for c in self.connections):
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close("server stopped")
        await asyncio.sleep(0)

    @property
    def draining(self) -> bool:
        """Whether stop has begun (new streams are refused)."""
        return self._draining

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn on the handler pool (nothing once the pool is shut down)."""
        with contextlib.suppress(RuntimeError):
            self._pool.submit(fn, *args)


class _Connection(asyncio.Protocol):
    """One client connection; every method runs on the loop thread unless it says otherwise."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, _Stream] = {}
        self._transport: asyncio.Transport | None = None
        self._preface = b""
        self._preface_done = False
        self._reader = h2.FrameReader(_MAX_FRAME)
        self._decoder = Decoder()
        self._continuation: tuple[int, int, list[bytes], int] | None = None
        self._last_sid = 0
        self._goaway_sid: int | None = None
        self._peer_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._send_window = h2.DEFAULT_WINDOW
        self._recv_unacked = 0
        self._out: list[bytes | memoryview] = []
        self._blocked: dict[int, _Stream] = {}
        self._paused = False
        self._ready: list[_Stream] = []
        self._waiting: dict[int, _Stream] = {}
        self._wait_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.peer = "unknown"

    # ---- transport callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # Read in large pieces: each read takes the GIL back from a handler thread storing a blob
        # (up to a switch interval's wait); 256 KiB reads (asyncio's default) made a streamed
        # 256 MiB Put ~10% slower. max_size is the selector transport's read size.
        transport.max_size = _READ_SIZE  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _READ_SIZE)
                # Blob reads go out in 1 MiB messages: let the socket take them whole.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _READ_SIZE)
        self.server.connections.add(self)
        name = transport.get_extra_info("peername")
        if isinstance(name, tuple) and len(name) >= 2:
            self.peer = f"ipv6:[{name[0]}]:{name[1]}" if ":" in str(name[0]) else f"ipv4:{name[0]}:{name[1]}"
        else:
            self.peer = f"unix:{name}" if name else "unix:"
        self._out.append(
            h2.settings_frame(
                {
                    h2.SETTINGS_INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                    h2.SETTINGS_MAX_FRAME_SIZE: _MAX_FRAME,
                    h2.SETTINGS_MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST,
                }
            )
        )
        self._out.append(h2.window_update(0, _CONN_WINDOW - h2.DEFAULT_WINDOW))
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            if not self._preface_done:
                data = self._check_preface(data)
            if data:
                self._receive(data)
            self._dispatch_ready()
        except h2.H2Error as exc:
            log.debug("connection from %s broke the protocol: %s", self.peer, exc)
            self._fail(exc.code, str(exc))
        except HpackError as exc:
            log.debug("connection from %s sent a bad header block: %s", self.peer, exc)
            self._fail(h2.COMPRESSION_ERROR, str(exc))
        except Exception:
            log.exception("connection from %s failed", self.peer)
            self._fail(h2.INTERNAL_ERROR, "internal error")
        self._flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            self._cancel(stream)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for stream in list(self._blocked.values()):
            self._pump(stream)
        self._flush()

    # ---- output ---------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self._closed:
            out = self._out
            self._out = []
            if len(out) == 1:
                self._transport.write(out[0])
                return
            # Large pieces (blob data) go to the transport as they are, which sends them
            # straight from our buffer when the socket takes them; small ones are joined.
            small: list[bytes | memoryview] = []
            for piece in out:
                if len(piece) < 65536:
                    small.append(piece)
                    continue
                if small:
                    self._transport.write(b"".join(small))
                    small = []
                self._transport.write(piece)
            if small:
                self._transport.write(b"".join(small))
        else:
            self._out.clear()

    def _fail(self, code: int, message: str) -> None:
        self._out.append(h2.goaway(self._last_sid, code, message.encode()[:200]))
        self.close(message)

    def close(self, why: str) -> None:
        """Close the connection; calls still running are cancelled."""
        self._flush()
        self._closed = True
        if self._transport is not None:
            self._transport.close()
        for stream in list(self.streams.values()):
            self._cancel(stream)
        log.debug("closed connection from %s: %s", self.peer, why)

    def drain(self) -> None:
        """Announce the shutdown: streams already begun go on, later ones are refused."""
        self._goaway_sid = self._last_sid
        self._out.append(h2.goaway(self._last_sid, h2.NO_ERROR, b"server shutting down"))
        self._flush()
        if not self.streams:
            self.close("drained")

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) on the loop thread and flush its output (from any thread)."""

        def run() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("connection from %s failed", self.peer)
                self.close("internal error")
            self._flush()

        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped
            self.loop.call_soon_threadsafe(run)

    # ---- input ----------------------------------------------------------------------------------

    def _check_preface(self, data: bytes) -> bytes:
        self._preface += data
        if len(self._preface) < len(h2.PREFACE):
            if not h2.PREFACE.startswith(self._preface):
                raise h2.H2Error(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            return b""
        if not self._preface.startswith(h2.PREFACE):
            raise h2.H2Error(h2.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
        rest = self._preface[len(h2.PREFACE) :]
        self._preface = b""
        self._preface_done = True
        return rest

    def _receive(self, data: bytes) -> None:
        for kind, flags, sid, payload, flow in self._reader.feed(data):
            if self._closed:
                return
            if self._continuation is not None and kind != h2.CONTINUATION:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "expected CONTINUATION")
            if kind == h2.DATA:
                self._on_data(flags, sid, payload, flow)
            elif kind == h2.HEADERS:
                self._on_headers(flags, sid, bytes(payload))
            elif kind == h2.CONTINUATION:
                self._on_continuation(flags, sid, bytes(payload))
            elif kind == h2.SETTINGS:
                self._on_settings(flags, sid, bytes(payload))
            elif kind == h2.WINDOW_UPDATE:
                self._on_window_update(sid, bytes(payload))
            elif kind == h2.RST_STREAM:
                if sid == 0 or len(payload) != 4:
                    raise h2.H2Error(h2.PROTOCOL_ERROR, "bad RST_STREAM")
                stream = self.streams.get(sid)
                if stream is not None:
                    self._cancel(stream)
            elif kind == h2.PING:
                if sid != 0 or len(payload) != 8:
                    raise h2.H2Error(h2.PROTOCOL_ERROR, "bad PING")
                if not flags & h2.ACK:
                    self._out.append(h2.frame(h2.PING, h2.ACK, 0, bytes(payload)))
            elif kind == h2.GOAWAY:
                if sid != 0:
                    raise h2.H2Error(h2.PROTOCOL_ERROR, "GOAWAY on a stream")
            elif kind == h2.PUSH_PROMISE:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise h2.H2Error(h2.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & h2.ACK:
            return
        if len(payload) % 6:
            raise h2.H2Error(h2.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise h2.H2Error(h2.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= h2.MAX_FRAME_LIMIT:
                    raise h2.H2Error(h2.PROTOCOL_ERROR, "invalid max frame size")
                self._peer_max_frame = value
        self._out.append(h2.frame(h2.SETTINGS, h2.ACK, 0))
        for stream in list(self._blocked.values()):
            self._pump(stream)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.H2Error(h2.FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "zero window increment")
            self._send_window += increment
            if self._send_window > h2.MAX_WINDOW:
                raise h2.H2Error(h2.FLOW_CONTROL_ERROR, "connection window overflow")
            for stream in list(self._blocked.values()):
                self._pump(stream)
            return
        target = self.streams.get(sid)
        if target is None:
            return
        if not increment:
            self._reset(target, h2.PROTOCOL_ERROR)
            return
        target.send_window += increment
        self._pump(target)

    def _on_headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0 or not sid & 1:
            raise h2.H2Error(h2.PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        if flags & h2.PADDED:
            if not payload or payload[0] >= len(payload):
                raise h2.H2Error(h2.PROTOCOL_ERROR, "bad HEADERS padding")
            payload = payload[1 : len(payload) - payload[0]]
        if flags & h2.PRIORITY_FLAG:
            if len(payload) < 5:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "short HEADERS priority")
            payload = payload[5:]
        if flags & h2.END_HEADERS:
            self._on_header_block(sid, flags, payload)
        else:
            self._continuation = (sid, flags, [payload], len(payload))

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self._continuation is None or self._continuation[0] != sid:
            raise h2.H2Error(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
        first_sid, first_flags, parts, size = self._continuation
        parts.append(payload)
        size += len(payload)
        if size > _MAX_HEADER_BLOCK:
            raise h2.H2Error(h2.ENHANCE_YOUR_CALM, "header block too large")
        if flags & h2.END_HEADERS:
            self._continuation = None
            self._on_header_block(first_sid, first_flags, b"".join(parts))
        else:
            self._continuation = (first_sid, first_flags, parts, size)

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: the decoder's table must stay in step
        end_stream = bool(flags & h2.END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:
            # Trailers from the client: they end its side of the stream.
            if not end_stream:
                self._reset(stream, h2.PROTOCOL_ERROR)
                return
            self._remote_end(stream)
            return
        if sid <= self._last_sid:
            return  # a stream we already closed
        self._last_sid = sid
        if self._goaway_sid is not None and sid > self._goaway_sid:
            self._out.append(h2.rst_stream(sid, h2.REFUSED_STREAM))
            return
        self._new_stream(sid, headers, end_stream)

    def _new_stream(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        method = path = content_type = timeout = None
        metadata: list[tuple[str, str | bytes]] = []
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = h2.parse_timeout(value)
            elif name[:1] != b":" and name not in (b"te", b"grpc-encoding", b"grpc-accept-encoding"):
                key = name.decode("latin-1")
                metadata.append((key, value if key.endswith("-bin") else value.decode("latin-1")))

        def refuse(code: grpc.StatusCode, details: str, http_status: bytes = b"200") -> None:
            block = encode(
                [
                    (b":status", http_status),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", str(code.value[0]).encode()),
                    (b"grpc-message", h2.grpc_message_encode(details)),
                ]
            )
            self._out.append(h2.headers_frames(sid, block, self._peer_max_frame, end_stream=True))
            if not end_stream:
                self._out.append(h2.rst_stream(sid, h2.NO_ERROR))

        if size > _MAX_HEADER_LIST:
            refuse(Code.RESOURCE_EXHAUSTED, "header list too large")
            return
        if method != b"POST" or path is None:
            refuse(Code.UNIMPLEMENTED, "only POST is supported", b"405")
            return
        if content_type is None or not content_type.startswith(b"application/grpc"):
            refuse(Code.UNKNOWN, "invalid content-type", b"415")
            return
        text_path = path.decode("latin-1")
        meta = tuple(metadata)
        try:
            handler = self.server.lookup(text_path, meta)
        except Exception:
            log.exception("looking up handler for %s", text_path)
            handler = None
        if handler is None:
            refuse(Code.UNIMPLEMENTED, "Method not found!")
            return
        deadline = time.monotonic() + timeout if timeout is not None else None
        stream = _Stream(self, sid, text_path, handler, meta, deadline, self._peer_window)
        self.streams[sid] = stream
        if timeout is not None:
            stream.timer = self.loop.call_later(timeout, self._deadline_passed, stream)
        if end_stream:
            stream.remote_closed = True
        self._ready.append(stream)

    def _on_data(self, flags: int, sid: int, payload: bytes | memoryview, flow: int) -> None:
        if sid == 0:
            raise h2.H2Error(h2.PROTOCOL_ERROR, "DATA on stream 0")
        self._recv_unacked += flow
        if self._recv_unacked >= _CONN_CREDIT:
            self._out.append(h2.window_update(0, self._recv_unacked))
            self._recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self._last_sid:
                raise h2.H2Error(h2.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we closed: its late data is dropped
        if stream.remote_closed:
            self._reset(stream, h2.STREAM_CLOSED)
            return
        stream.charged += flow
        if stream.charged > _STREAM_WINDOW:
            self._reset(stream, h2.FLOW_CONTROL_ERROR)
            return
        if payload and not stream.finished:
            self._assemble(stream, payload)
            if stream.sid in self._waiting:
                self._ready.append(stream)  # re-checked against the batch size limit
        if flags & h2.END_STREAM:
            self._remote_end(stream)

    def _assemble(self, stream: _Stream, piece: bytes | memoryview) -> None:
        buf = stream.rbuf
        buf += piece
        while True:
            if stream.need < 0:
                if len(buf) < 5:
                    return
                if buf[0]:
                    self._finish(stream, Code.UNIMPLEMENTED, "compressed messages are not supported")
                    return
                need = int.from_bytes(buf[1:5], "big")
                if need > self.server.max_receive:
                    self._finish(
                        stream,
                        Code.RESOURCE_EXHAUSTED,
                        f"Received message larger than max ({need} vs. {self.server.max_receive})",
                    )
                    return
                del buf[:5]
                stream.need = need
            if len(buf) < stream.need:
                return
            with memoryview(buf) as view:
                message = bytes(view[: stream.need])
            del buf[: stream.need]
            stream.received += stream.need
            stream.need = -1
            with stream.cond:
                stream.queue.append(message)
                stream.cond.notify()

    def _remote_end(self, stream: _Stream) -> None:
        with stream.cond:
            stream.remote_closed = True
            stream.cond.notify()
        if stream.finished:
            self._maybe_terminate(stream)
            return
        if stream.need >= 0 or stream.rbuf:
            self._finish(stream, Code.INTERNAL, "incomplete message at the end of the stream")
            return
        if not stream.dispatched and (not stream.handler.request_streaming or stream.sid in self._waiting):
            self._ready.append(stream)

    def consumed(self, stream: _Stream) -> None:
        """A handler took a message: credit the stream's window once its queue runs low."""
        if stream.charged and not stream.finished and len(stream.queue) < 2 and not stream.remote_closed:
            self._out.append(h2.window_update(stream.sid, stream.charged))
            stream.charged = 0

    # ---- dispatch -------------------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        if not self._ready:
            return
        ready = self._ready
        self._ready = []
        batches: dict[str, list[_Stream]] = {}
        for stream in ready:
            if stream.dispatched or stream.finished:
                continue
            if not stream.handler.request_streaming and not stream.remote_closed:
                continue  # dispatched when its request is complete
            batch = self.server.batch_handler(stream.path)
            if batch is not None and stream.received + len(stream.rbuf) <= batch[1]:
                if stream.remote_closed:
                    self._waiting.pop(stream.sid, None)
                    batches.setdefault(stream.path, []).append(stream)
                    continue
                # Wait a moment for the end of the request (see _BATCH_WAIT).
                self._waiting[stream.sid] = stream
                if self._wait_timer is None:
                    self._wait_timer = self.loop.call_later(_BATCH_WAIT, self._waited)
                continue
            self._waiting.pop(stream.sid, None)
            stream.dispatched = True
            self.server.submit(_run_call, stream)
        for path, streams in batches.items():
            handler = self.server.batch_handler(path)
            assert handler is not None
            for stream in streams:
                stream.dispatched = True
            self.server.submit(_run_batch, self, handler[0], streams)

    def _waited(self) -> None:
        """Run the calls still waiting for the end of their request on their own."""
        self._wait_timer = None
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for stream in waiting:
            if not stream.dispatched and not stream.finished:
                stream.dispatched = True
                self.server.submit(_run_call, stream)
        self._flush()

    # ---- answering ------------------------------------------------------------------------------

    def send_message(self, stream: _Stream, payload: Payload) -> None:
        """Queue one response message (loop thread; ``out_pending`` was raised by the caller)."""
        if stream.finished:
            return
        if not stream.headers_sent:
            stream.headers_sent = True
            self._out.append(h2.frame(h2.HEADERS, h2.END_HEADERS, stream.sid, _RESPONSE_HEADERS))
        if isinstance(payload, bytes):
            size = len(payload)
            if size < 65536:
                stream.outq.append(memoryview(b"\x00" + size.to_bytes(4, "big") + payload))
            else:
                stream.outq.append(memoryview(b"\x00" + size.to_bytes(4, "big")))
                stream.outq.append(memoryview(payload))
        else:
            stream.outq.append(memoryview(b"\x00" + _size(payload).to_bytes(4, "big")))
            stream.outq.extend(memoryview(p).cast("B") for p in payload if len(p))
        self._pump(stream)

    def finish(self, stream: _Stream, code: grpc.StatusCode, details: str, payload: bytes | None) -> None:
        """End a call: an optional last message, then the status (loop thread)."""
        if stream.finished:
            return
        if payload is not None:
            with stream.cond:
                stream.out_pending += len(payload) + 5
            self.send_message(stream, payload)
        self._finish(stream, code, details)

    def finish_batch(self, streams: Sequence[_Stream], outcomes: Sequence[Outcome]) -> None:
        """End the calls a batch handler answered (loop thread)."""
        for stream, outcome in zip(streams, outcomes, strict=True):
            self.finish(stream, outcome.code, outcome.details, outcome.response)

    def _finish(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        if stream.finished:
            return
        stream.finished = True
        with stream.cond:
            stream.cond.notify_all()
        if code == Code.OK and not details:
            block = _OK_TRAILERS
        else:
            fields = [(b"grpc-status", str(code.value[0]).encode())]
            if details:
                fields.append((b"grpc-message", h2.grpc_message_encode(details[:4096])))
            block = encode(fields)
        if not stream.headers_sent:
            # Trailers-only: the status goes with the response headers.
            stream.headers_sent = True
            block = _RESPONSE_HEADERS + block
        stream.trailers = block
        self._pump(stream)

    def _pump(self, stream: _Stream) -> None:
        """Write what flow control allows of a stream's queued data, then its trailers."""
        sid = stream.sid
        released = 0
        while stream.outq:
            allowed = min(stream.send_window, self._send_window, self._peer_max_frame)
            if allowed <= 0 or self._paused:
                self._blocked[sid] = stream
                break
            piece = stream.outq[0]
            if len(piece) <= allowed:
                stream.outq.popleft()
            else:
                stream.outq[0] = piece[allowed:]
                piece = piece[:allowed]
            n = len(piece)
            self._out.append(n.to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big"))
            self._out.append(piece)
            stream.send_window -= n
            self._send_window -= n
            released += n
        else:
            self._blocked.pop(sid, None)
        if released:
            with stream.cond:
                before = stream.out_pending
                stream.out_pending -= released
                if before > _OUT_PENDING >= stream.out_pending:
                    stream.cond.notify_all()
        if not stream.outq and stream.trailers is not None and not stream.terminated:
            self._out.append(h2.headers_frames(sid, stream.trailers, self._peer_max_frame, end_stream=True))
            stream.trailers = None
            if not stream.remote_closed:
                # The client may still be sending: tell it to stop (RFC 9113 §8.1).
                self._out.append(h2.rst_stream(sid, h2.NO_ERROR))
            self._terminate(stream)

    def _maybe_terminate(self, stream: _Stream) -> None:
        if stream.finished and stream.trailers is None and not stream.outq:
            self._terminate(stream)

    def _terminate(self, stream: _Stream) -> None:
        if stream.terminated:
            return
        stream.terminated = True
        stream.finished = True
        if stream.timer is not None:
            stream.timer.cancel()
        self.streams.pop(stream.sid, None)
        self._blocked.pop(stream.sid, None)
        self._waiting.pop(stream.sid, None)
        with stream.cond:
            stream.cond.notify_all()
            callbacks = stream.callbacks
            stream.callbacks = []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("call termination callback failed")
        if self._goaway_sid is not None and not self.streams:
            self.close("drained")

    def _cancel(self, stream: _Stream) -> None:
        """The call ends without a status from us (reset, connection lost)."""
        stream.finished = True
        stream.outq.clear()
        stream.trailers = None
        self._terminate(stream)

    def _reset(self, stream: _Stream, code: int) -> None:
        self._out.append(h2.rst_stream(stream.sid, code))
        self._cancel(stream)

    def _deadline_passed(self, stream: _Stream) -> None:
        stream.timer = None
        if not stream.finished:
            stream.outq.clear()
            self._finish(stream, Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._flush()


# ---- the handler side (pool threads) ---------------------------------------------------------------


class _Context(grpc.ServicerContext):  # type: ignore[misc]
    """What a handler sees of its call."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._code: grpc.StatusCode | None = None
        self._details = ""

    ends_reliably = True
    """A request stream that ended normally was not cancelled (see ``status.stream_was_cancelled``)."""

    def is_active(self) -> bool:
        return not self._stream.finished

    def time_remaining(self) -> float | None:
        deadline = self._stream.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def cancel(self) -> None:
        stream = self._stream
        stream.conn.call_soon(stream.conn._finish, stream, Code.CANCELLED, "Cancelled")

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._stream.cond:
            if self._stream.terminated:
                return False
            self._stream.callbacks.append(callback)
            return True

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._stream.metadata

    def peer(self) -> str:
        return self._stream.conn.peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def set_compression(self, compression: grpc.Compression) -> None:
        pass

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        pass

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Abort(code, details)

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _Abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def disable_next_message_compression(self) -> None:
        pass


class _Requests(Iterator[Any]):
    """A streaming handler's request iterator: blocks for the next message."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._deserialize = stream.handler.request_deserializer

    def __next__(self) -> Any:
        stream = self._stream
        with stream.cond:
            while not stream.queue:
                if stream.finished:
                    raise _Cancelled()
                if stream.remote_closed:
                    raise StopIteration
                stream.cond.wait()
            message = stream.queue.popleft()
        if stream.charged:
            stream.conn.call_soon(stream.conn.consumed, stream)
        return _deserialize(self._deserialize, message)


def _size(payload: Payload) -> int:
    return len(payload) if isinstance(payload, bytes) else sum(len(p) for p in payload)


def _deserialize(deserializer: Callable[[bytes], Any] | None, message: bytes) -> Any:
    if deserializer is None:
        return message
    try:
        return deserializer(message)
    except Exception as exc:
        raise _Abort(Code.INTERNAL, "Exception deserializing request!") from exc


def _run_call(stream: _Stream) -> None:
    """Run one call's handler to its end (pool thread)."""
    conn = stream.conn
    if stream.finished:
        return
    handler = stream.handler
    context = _Context(stream)
    serialize = handler.response_serializer or (lambda r: r)
    payload: bytes | None = None
    try:
        if handler.request_streaming:
            request: Any = _Requests(stream)
        else:
            with stream.cond:
                messages = list(stream.queue)
                stream.queue.clear()
            if len(messages) != 1:
                raise _Abort(Code.UNIMPLEMENTED, f"expected one request message, got {len(messages)}")
            request = _deserialize(handler.request_deserializer, messages[0])
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            assert behavior is not None
            for response in behavior(request, context):
                data = serialize(response)
                with stream.cond:
                    while stream.out_pending > _OUT_PENDING and not stream.finished:
                        stream.cond.wait()
                    if stream.finished:
                        break
                    stream.out_pending += _size(data) + 5
                conn.call_soon(conn.send_message, stream, data)
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            assert behavior is not None
            response = behavior(request, context)
            if context.code() in (None, Code.OK):
                if response is None:
                    raise _Abort(Code.UNKNOWN, "handler returned no response")
                payload = serialize(response)
        code = context.code() or Code.OK
        conn.call_soon(conn.finish, stream, code, context.details(), payload if code == Code.OK else None)
    except _Abort as exc:
        conn.call_soon(conn.finish, stream, exc.code, exc.details, None)
    except _Cancelled:
        pass
    except Exception as exc:
        if stream.finished:
            return
        log.exception("handler of %s failed", stream.path)
        conn.call_soon(conn.finish, stream, Code.UNKNOWN, f"Exception calling application: {exc}", None)


def _run_batch(conn: _Connection, handler: BatchHandler, streams: list[_Stream]) -> None:
    """Answer complete calls together through a batch handler (pool thread)."""
    requests = []
    for stream in streams:
        with stream.cond:
            requests.append(list(stream.queue))
            stream.queue.clear()
    try:
        outcomes = handler(requests)
    except Exception as exc:
        log.exception("batch handler failed")
        outcomes = [Outcome(Code.UNKNOWN, f"Exception calling application: {exc}", None)] * len(streams)
    conn.call_soon(conn.finish_batch, streams, outcomes)
