"""A minimal gRPC client over cleartext HTTP/2 for calls whose whole request is at hand.

Used for write-behind uploads of small blobs: each Put is one HEADERS frame and the DATA of
its one message, written by the calling thread with a single ``sendall``; one reader thread per
connection parses the answers and completes ``concurrent.futures.Future`` objects. grpcio's
clients cost ~0.5 ms of CPU per call on our machines (its aio client also needs an event loop
thread hop per call); this costs a few tens of µs. The wire protocol is the ordinary one, so
any gRPC server (grpcio, tonic, ours) answers it.

Flow control and the server's SETTINGS are honoured (data waits for window updates; at most
MAX_CONCURRENT_STREAMS calls are open). A call fails with a ``CallError`` carrying the status
the server sent (``code()`` and ``details()`` as a grpcio error has), or UNAVAILABLE when the
connection broke or the server went away (GOAWAY) before answering; the next call opens a new
connection. Nothing here imports grpcio (see ``tvix_castore.grpc.lazy``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from tvix_castore.grpc import http2 as h2
from tvix_castore.grpc.hpack import Decoder, HpackError, encode
from tvix_castore.grpc.lazy import LazyModule

if TYPE_CHECKING:
    import grpc
else:
    grpc = LazyModule("grpc")

__all__ = ["CallError", "StreamCall", "UnaryCaller", "bytes_field", "calls_made"]

log = logging.getLogger(__name__)


class Code:
    """The gRPC status numbers this module uses."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INTERNAL = 13
    UNAVAILABLE = 14


_RECV_WINDOW = 16 * 1024 * 1024
_CONNECT_TIMEOUT = 10.0
_SEND_BUFFER = 4 * 1024 * 1024
_calls_made = threading.Event()


def calls_made() -> bool:
    """Whether this process has started a call through a ``UnaryCaller`` (it is writing)."""
    return _calls_made.is_set()


_HOLD_BYTES = 256 * 1024
"""Requests are held back (and then written together) while some answer is outstanding and
less than this much is waiting: Nagle's idea at the call level. Fewer writes here, and the
server finds many whole calls per read, which it answers together."""


class CallError(Exception):
    """A call that ended with a status other than OK (``code()``, ``details()`` as grpcio's).

    Not a ``grpc.RpcError``: that would import grpcio. Callers catch both.
    """

    def __init__(self, status: int, details: str) -> None:
        super().__init__(f"status {status}: {details}")
        self.status = status
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The status code (grpcio's enum)."""
        for code in grpc.StatusCode:
            if code.value[0] == self.status:
                return code
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        """The status message."""
        return self._details


class _Call:
    __slots__ = (
        "future",
        "headers",
        "message",
        "need",
        "parse",
        "pending",
        "rbuf",
        "sid",
        "streaming",
        "window",
        "written",
    )

    def __init__(
        self,
        sid: int,
        future: Future[Any],
        parse: Callable[[bytes], Any] | None,
        pending: memoryview,
        window: int,
    ) -> None:
        self.sid = sid
        self.future = future
        self.parse = parse
        self.pending = pending  # request bytes (message framing included) not yet sent
        self.window = window
        self.written = False  # its first frames went to the socket
        self.streaming = False  # the request is written piece by piece (``StreamCall``)
        self.rbuf = bytearray()
        self.headers: list[tuple[bytes, bytes]] = []
        self.message: bytes | None = None
        self.need = -1


class _Connection:
    """One HTTP/2 connection and its reader thread."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self._sock = sock
        self._name = name
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._calls: dict[int, _Call] = {}
        self._next_sid = 1
        self._peer_window = h2.DEFAULT_WINDOW
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._max_streams = 2**31
        self._send_window = h2.DEFAULT_WINDOW
        self._recv_unacked = 0
        self._decoder = Decoder()
        self._reader = h2.FrameReader(h2.DEFAULT_MAX_FRAME)
        self._held: list[bytes | memoryview] = []
        self._held_calls: list[_Call] = []
        self._held_bytes = 0
        self._written_open = 0  # calls written to the socket and not answered yet
        self.usable = True
        sock.sendall(
            h2.PREFACE
            + h2.settings_frame(
                {
                    h2.SETTINGS_ENABLE_PUSH: 0,
                    h2.SETTINGS_INITIAL_WINDOW_SIZE: _RECV_WINDOW,
                }
            )
            + h2.window_update(0, _RECV_WINDOW)
        )
        self._thread = threading.Thread(target=self._read_loop, name="grpc-h2-reader", daemon=True)
        self._thread.start()

    # ---- sending (caller threads, under the lock) -------------------------------------------

    def start(
        self,
        header_block: bytes,
        request: list[bytes | memoryview],
        future: Future[Any],
        parse: Callable[[bytes], Any] | None,
    ) -> bool:
        """Open a stream and send what flow control allows; False if this connection is done.

        request is the stream's whole body (message framing included) as pieces, not copied
        when it fits in one DATA frame.
        """
        size = sum(len(p) for p in request)
        with self._lock:
            while self.usable and len(self._calls) >= self._max_streams:
                self._room.wait()
            if not self.usable or self._next_sid >= 2**31:
                self.usable = False
                return False
            sid = self._next_sid
            self._next_sid += 2
            held = self._held
            held.append(h2.headers_frames(sid, header_block, self._peer_max_frame, end_stream=False))
            if size <= min(self._peer_window, self._send_window, self._peer_max_frame):
                # The usual case: the whole request in one DATA frame, its pieces uncopied.
                call = _Call(sid, future, parse, memoryview(b""), -1)
                held.append(
                    size.to_bytes(3, "big") + bytes((h2.DATA, h2.END_STREAM)) + sid.to_bytes(4, "big")
                )
                held.extend(request)
                self._send_window -= size
            else:
                body = memoryview(b"".join(request))
                call = _Call(sid, future, parse, body, self._peer_window)
                self._fill(call, held)
            self._calls[sid] = call
            self._held_calls.append(call)
            self._held_bytes += size + 64
            if not self._written_open or self._held_bytes >= _HOLD_BYTES:
                self._send([])
            return True

    def open_stream(
        self, header_block: bytes, future: Future[Any], parse: Callable[[bytes], Any] | None
    ) -> _Call | None:
        """Open a stream whose request is written later (``write``); None if this connection is done."""
        with self._lock:
            while self.usable and len(self._calls) >= self._max_streams:
                self._room.wait()
            if not self.usable or self._next_sid >= 2**31:
                self.usable = False
                return None
            sid = self._next_sid
            self._next_sid += 2
            call = _Call(sid, future, parse, memoryview(b""), self._peer_window)
            call.streaming = True
            self._calls[sid] = call
            self._held.append(h2.headers_frames(sid, header_block, self._peer_max_frame, end_stream=False))
            self._held_calls.append(call)
            return call

    def write(self, call: _Call, parts: list[bytes | memoryview], end: bool) -> bool:
        """Send parts on an open stream, waiting for flow control; False if the call has ended."""
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        with self._lock:
            out: list[bytes | memoryview] = []
            sid = call.sid.to_bytes(4, "big")
            ended = False
            while views:
                if call.sid not in self._calls:
                    return False
                n = min(sum(len(v) for v in views), call.window, self._send_window, self._peer_max_frame)
                if n <= 0:
                    self._send(out)
                    out = []
                    self._room.wait()
                    continue
                call.window -= n
                self._send_window -= n
                last = n == sum(len(v) for v in views)
                ended = last and end
                out.append(
                    n.to_bytes(3, "big") + bytes((h2.DATA, h2.END_STREAM if last and end else 0)) + sid
                )
                while n:
                    v = views[0]
                    if len(v) <= n:
                        out.append(v)
                        n -= len(v)
                        views.pop(0)
                    else:
                        out.append(v[:n])
                        views[0] = v[n:]
                        n = 0
            if end and not ended:
                out.append(h2.frame(h2.DATA, h2.END_STREAM, call.sid))
            if end:
                call.window = -1
            self._send(out)
            return call.sid in self._calls

    def reset(self, call: _Call) -> None:
        """Cancel a call (RST_STREAM CANCEL); its future fails with CANCELLED."""
        with self._lock:
            if self._calls.pop(call.sid, None) is None:
                return
            if call.written:
                self._written_open -= 1
            self._room.notify_all()
            self._send([h2.rst_stream(call.sid, h2.CANCEL)])
        if not call.future.done():
            call.future.set_exception(CallError(Code.CANCELLED, "cancelled by the client"))

    def _fill(self, call: _Call, out: list[bytes | memoryview]) -> None:
        """Append the DATA frames of call's pending request that the windows allow."""
        while True:
            n = min(len(call.pending), call.window, self._send_window, self._peer_max_frame)
            if n <= 0 and call.pending:
                return
            piece = call.pending[:n]
            call.pending = call.pending[n:]
            call.window -= n
            self._send_window -= n
            end = not call.pending
            out.append(
                n.to_bytes(3, "big")
                + bytes((h2.DATA, h2.END_STREAM if end else 0))
                + call.sid.to_bytes(4, "big")
            )
            out.append(piece)
            if end:
                call.pending = memoryview(b"")
                call.window = -1  # nothing more to send: marks the request as complete
                return

    def _send(self, out: list[bytes | memoryview]) -> None:
        """Write the held requests, then out (frames that may follow them)."""
        if self._held:
            out = self._held + out
            for call in self._held_calls:
                if not call.written and call.sid in self._calls:
                    call.written = True
                    self._written_open += 1
            self._held = []
            self._held_calls = []
            self._held_bytes = 0
        if not out:
            return
        try:
            _send_all(self._sock, out)
        except OSError as exc:
            self._broken_locked(f"send failed: {exc}")

    # ---- receiving (the reader thread) ----------------------------------------------------------

    def _read_loop(self) -> None:
        why = "connection closed by the server"
        try:
            while True:
                data = self._sock.recv(256 * 1024)
                if not data:
                    break
                done = self._receive(data)
                for future, result in done:
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        except (OSError, h2.H2Error, HpackError) as exc:
            why = f"connection failed: {exc}"
        with self._lock:
            self._broken_locked(why)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _receive(self, data: bytes) -> list[tuple[Future[Any], Any]]:
        done: list[tuple[Future[Any], Any]] = []
        out: list[bytes | memoryview] = []
        with self._lock:
            for kind, flags, sid, payload, flow in self._reader.feed(data):
                if kind == h2.DATA:
                    self._recv_unacked += flow
                    call = self._calls.get(sid)
                    if call is not None and payload:
                        self._assemble(call, payload)
                    if call is not None and flow:
                        out.append(h2.window_update(sid, flow))
                    if flags & h2.END_STREAM and call is not None:
                        self._end(call, done, None)
                elif kind == h2.HEADERS or kind == h2.CONTINUATION:
                    self._on_headers(kind, flags, sid, bytes(payload), done)
                elif kind == h2.SETTINGS:
                    if not flags & h2.ACK:
                        self._on_settings(bytes(payload), out)
                elif kind == h2.WINDOW_UPDATE:
                    increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
                    if sid == 0:
                        self._send_window += increment
                        for call in list(self._calls.values()):
                            if call.window >= 0 and call.pending:
                                self._fill(call, out)
                    else:
                        call = self._calls.get(sid)
                        if call is not None and call.window >= 0:
                            call.window += increment
                            if call.pending:
                                self._fill(call, out)
                    self._room.notify_all()
                elif kind == h2.RST_STREAM:
                    call = self._calls.get(sid)
                    if call is not None:
                        code = int.from_bytes(payload[:4], "big")
                        status = Code.UNAVAILABLE if code == h2.REFUSED_STREAM else Code.INTERNAL
                        if code == h2.CANCEL:
                            status = Code.CANCELLED
                        self._end(call, done, CallError(status, f"stream reset by the server (code {code})"))
                elif kind == h2.PING:
                    if not flags & h2.ACK:
                        out.append(h2.frame(h2.PING, h2.ACK, 0, bytes(payload)))
                elif kind == h2.GOAWAY:
                    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    self.usable = False
                    self._room.notify_all()
                    for call in [c for c in self._calls.values() if c.sid > last]:
                        self._end(call, done, CallError(Code.UNAVAILABLE, "server went away (GOAWAY)"))
            if self._recv_unacked >= _RECV_WINDOW // 2:
                out.append(h2.window_update(0, self._recv_unacked))
                self._recv_unacked = 0
            if out or self._held:
                self._send(out)
        return done

    def _on_settings(self, payload: bytes, out: list[bytes | memoryview]) -> None:
        for i in range(0, len(payload) - 5, 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_window
                self._peer_window = value
                for call in self._calls.values():
                    if call.window >= 0:
                        call.window += delta
                self._room.notify_all()
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame = max(h2.DEFAULT_MAX_FRAME, min(value, h2.MAX_FRAME_LIMIT))
            elif key == h2.SETTINGS_MAX_CONCURRENT_STREAMS:
                self._max_streams = value
                self._room.notify_all()
        out.append(h2.frame(h2.SETTINGS, h2.ACK, 0))
        for call in list(self._calls.values()):
            if call.window >= 0 and call.pending:
                self._fill(call, out)

    _continuation: tuple[int, int, list[bytes]] | None = None

    def _on_headers(
        self, kind: int, flags: int, sid: int, payload: bytes, done: list[tuple[Future[Any], Any]]
    ) -> None:
        if kind == h2.HEADERS:
            if flags & h2.PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & h2.PRIORITY_FLAG:
                payload = payload[5:]
            if not flags & h2.END_HEADERS:
                self._continuation = (sid, flags, [payload])
                return
            block, first_flags = payload, flags
        else:
            if self._continuation is None or self._continuation[0] != sid:
                raise h2.H2Error(h2.PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._continuation[2].append(payload)
            if not flags & h2.END_HEADERS:
                return
            first_flags = self._continuation[1]
            block = b"".join(self._continuation[2])
            self._continuation = None
        headers = self._decoder.decode(block)
        call = self._calls.get(sid)
        if call is None:
            return
        call.headers.extend(headers)
        if first_flags & h2.END_STREAM:
            self._end(call, done, None)

    @staticmethod
    def _assemble(call: _Call, piece: bytes | memoryview) -> None:
        call.rbuf += piece
        buf = call.rbuf
        if call.need < 0 and len(buf) >= 5:
            call.need = int.from_bytes(buf[1:5], "big")
            del buf[:5]
        if call.need >= 0 and len(buf) >= call.need and call.message is None:
            call.message = bytes(buf[: call.need])

    def _end(self, call: _Call, done: list[tuple[Future[Any], Any]], error: BaseException | None) -> None:
        """The stream ended: resolve its future (after the lock is released)."""
        self._calls.pop(call.sid, None)
        if call.written:
            self._written_open -= 1
        self._room.notify_all()
        if error is None:
            fields = dict(call.headers)
            status = h2.status_code(fields.get(b"grpc-status"))
            if b"grpc-status" not in fields:
                http = fields.get(b":status", b"")
                error = CallError(
                    Code.UNKNOWN if http == b"200" else Code.UNAVAILABLE,
                    f"no grpc-status (HTTP {http.decode(errors='replace')})",
                )
            elif status != Code.OK:
                error = CallError(status, h2.grpc_message_decode(fields.get(b"grpc-message", b"")))
            elif call.message is None:
                error = CallError(Code.INTERNAL, "no response message")
        if error is None and call.parse is not None and call.message is not None:
            try:
                done.append((call.future, call.parse(call.message)))
            except Exception as exc:
                done.append((call.future, CallError(Code.INTERNAL, f"cannot parse the response: {exc}")))
            return
        done.append((call.future, error if error is not None else call.message))

    def _broken_locked(self, why: str) -> None:
        if not self.usable and not self._calls:
            return
        self.usable = False
        calls = list(self._calls.values())
        self._calls.clear()
        self._room.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if calls:
            error = CallError(Code.UNAVAILABLE, f"{self._name}: {why}")

            def fail() -> None:
                for call in calls:
                    call.future.set_exception(error)

            # Not under the lock: done callbacks may start new calls.
            threading.Thread(target=fail, name="grpc-h2-fail", daemon=True).start()

    def close(self) -> None:
        """Close the socket; calls still open fail with UNAVAILABLE."""
        with self._lock:
            self._broken_locked("client closed")
            self.usable = False
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def bytes_field(message: bytes, number: int) -> bytes:
    """The last value of a bytes field in a protobuf message (b"" if absent); others skipped.

    Answers such as PutBlobResponse are read this way, without loading protobuf.

    Raises:
        ValueError: a malformed message.

    """
    value = b""
    pos = 0
    end = len(message)

    def varint() -> int:
        nonlocal pos
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated varint")
            b = message[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    while pos < end:
        key = varint()
        wire = key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length = varint()
            if pos + length > end:
                raise ValueError("truncated field")
            if key >> 3 == number:
                value = message[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
    return value


def _send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Write every part, gathered (``sendmsg``): large payloads are not copied into one buffer."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        batch = views[:512]  # below IOV_MAX
        sent = sock.sendmsg(batch)
        i = 0
        while i < len(batch) and sent >= len(batch[i]):
            sent -= len(batch[i])
            i += 1
        rest = batch[i:]
        if sent:
            rest[0] = rest[0][sent:]
        views = rest + views[512:]


class StreamCall:
    """A call whose request is sent message by message; ``future`` gives the response."""

    def __init__(self, conn: _Connection, call: _Call, future: Future[Any]) -> None:
        self._conn = conn
        self._call = call
        self.future = future

    def write(self, message: Sequence[bytes | memoryview]) -> None:
        """Send one message (given as pieces), waiting while flow control holds it back.

        Raises:
            CallError: the call already ended (the future says how).

        """
        prefix = b"\x00" + sum(len(p) for p in message).to_bytes(4, "big")
        if not self._conn.write(self._call, [prefix, *message], end=False):
            self._raise_ended()

    def close(self) -> Future[Any]:
        """End the request; returns the future of the response."""
        self._conn.write(self._call, [], end=True)
        return self.future

    def cancel(self) -> None:
        """Reset the call: the server drops it; the future fails with CANCELLED."""
        self._conn.reset(self._call)

    def _raise_ended(self) -> None:
        try:
            self.future.result(timeout=30)
        except CallError:
            raise
        except Exception as exc:
            raise CallError(Code.UNKNOWN, f"call ended: {exc!r}") from exc
        raise CallError(Code.INTERNAL, "the server answered before the request ended")


class UnaryCaller:
    """Calls to one server whose request is complete up front; thread-safe."""

    def __init__(self, target: str, authority: str = "localhost") -> None:
        self._target = target
        self._authority = authority.encode()
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._blocks: dict[str, bytes] = {}
        self._closed = False

    def _connect(self) -> _Connection:
        target = self._target
        if target.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_CONNECT_TIMEOUT)
            try:
                sock.connect(target[len("unix:") :])
            except OSError:
                sock.close()
                raise
        else:
            host, _, port = target.rpartition(":")
            host = host[1:-1] if host.startswith("[") else host
            sock = socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        # A large send buffer lets a streamed blob run ahead of the server's reads (which take
        # up to this much at once, see h2server._READ_SIZE).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        return _Connection(sock, target)

    def _header_block(self, path: str) -> bytes:
        block = self._blocks.get(path)
        if block is None:
            block = self._blocks[path] = encode(
                [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", path.encode()),
                    (b":authority", self._authority),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    (b"user-agent", b"tvix-store-py"),
                ]
            )
        return block

    def _connection(self) -> _Connection:
        """The open connection, (re)connected if needed.

        Raises:
            CallError: UNAVAILABLE when the server cannot be reached, CANCELLED after close.

        """
        with self._lock:
            if self._closed:
                raise CallError(Code.CANCELLED, "client closed")
            conn = self._conn
            if conn is None or not conn.usable:
                if conn is not None:
                    conn.close()
                try:
                    conn = self._conn = self._connect()
                except OSError as exc:
                    raise CallError(Code.UNAVAILABLE, f"{self._target}: cannot connect: {exc}") from exc
            return conn

    def call(
        self,
        path: str,
        messages: Sequence[Sequence[bytes | memoryview]],
        parse: Callable[[bytes], Any] | None = None,
    ) -> Future[Any]:
        """Start a call with these request messages (each given as pieces); the future answers.

        With parse, the future gives ``parse(response message)`` (run on the reader thread). It
        fails with a ``CallError`` (a ``grpc.RpcError``) for any status but OK. The pieces must
        not change until the future is done.
        """
        _calls_made.set()
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        request: list[bytes | memoryview] = []
        for message in messages:
            request.append(b"\x00" + sum(len(p) for p in message).to_bytes(4, "big"))
            request.extend(message)
        block = self._header_block(path)
        for _ in range(2):
            try:
                conn = self._connection()
            except CallError as exc:
                future.set_exception(exc)
                return future
            if conn.start(block, request, future, parse):
                return future
        future.set_exception(CallError(Code.UNAVAILABLE, f"{self._target}: connection not usable"))
        return future

    def open_stream(self, path: str, parse: Callable[[bytes], Any] | None = None) -> StreamCall:
        """Start a call whose request messages are written one by one (``StreamCall``).

        Raises:
            CallError: the server cannot be reached.

        """
        _calls_made.set()
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        block = self._header_block(path)
        for _ in range(2):
            conn = self._connection()
            call = conn.open_stream(block, future, parse)
            if call is not None:
                return StreamCall(conn, call, future)
        raise CallError(Code.UNAVAILABLE, f"{self._target}: connection not usable")

    def close(self) -> None:
        """Close the connection (calls still open fail with UNAVAILABLE)."""
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
