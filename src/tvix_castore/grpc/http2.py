"""HTTP/2 (RFC 9113) framing and the gRPC-over-HTTP/2 conventions both our ends share.

Frame type, flag, setting and error-code numbers; building frames; the incremental frame
reader; gRPC's length-prefixed messages, ``grpc-timeout`` and the percent-encoded
``grpc-message``. No I/O here: ``h2server`` and ``h2client`` own the sockets.
"""

from __future__ import annotations

__all__ = [
    "PREFACE",
    "FrameReader",
    "H2Error",
    "frame",
    "grpc_message_decode",
    "grpc_message_encode",
    "parse_timeout",
    "status_code",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1


class H2Error(Exception):
    """A connection error: the peer broke the protocol; the connection ends with GOAWAY(code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header and its payload."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame carrying settings."""
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings.items())
    return frame(SETTINGS, 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame."""
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    """An RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame."""
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


def data_frames(
    stream_id: int, payload: bytes | memoryview, max_frame: int, end: bool
) -> list[bytes | memoryview]:
    """Cut payload into DATA frames of at most max_frame bytes; the last one may end the stream."""
    out: list[bytes | memoryview] = []
    view = memoryview(payload)
    n = len(view)
    start = 0
    sid = stream_id.to_bytes(4, "big")
    while True:
        piece = view[start : start + max_frame]
        start += len(piece)
        last = start >= n
        out.append(len(piece).to_bytes(3, "big") + bytes((DATA, END_STREAM if (last and end) else 0)) + sid)
        out.append(piece)
        if last:
            return out


def headers_frames(stream_id: int, block: bytes, max_frame: int, end_stream: bool) -> bytes:
    """A header block as HEADERS plus CONTINUATION frames."""
    first = block[:max_frame]
    rest = block[max_frame:]
    flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
    out = [frame(HEADERS, flags, stream_id, first)]
    while rest:
        piece, rest = rest[:max_frame], rest[max_frame:]
        out.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece))
    return b"".join(out)


class FrameReader:
    """Cuts a byte stream into frames; a DATA frame's payload is handed out as it arrives.

    ``feed`` returns events: ``(kind, flags, stream_id, payload)`` for every frame but DATA,
    whose payload comes as ``(DATA, flags, stream_id, piece)`` events of the parts received
    so far (flags and the padding count apply to the last piece: ``flags`` carries END_STREAM
    only there); ``flow`` is the flow-controlled length (padding included) charged with it.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = b""
        self._data_left = 0  # payload bytes of the current DATA frame still to come
        self._data_pad = 0  # trailing padding of the current DATA frame
        self._data_flags = 0
        self._data_stream = 0

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes | memoryview, int]]:
        """Events for the bytes received so far: (kind, flags, stream, payload, flow length).

        Raises:
            H2Error: a frame longer than max_frame or a bad padding length.

        """
        buf = self._buf + data if self._buf else data
        self._buf = b""
        view = memoryview(buf)
        n = len(buf)
        pos = 0
        events: list[tuple[int, int, int, bytes | memoryview, int]] = []
        while pos < n:
            if self._data_left:
                left = self._data_left
                take = min(left, n - pos)
                # Trailing padding carries no data but is charged to flow control all the same.
                content = max(0, min(take, left - self._data_pad))
                self._data_left = left - take
                last = not self._data_left
                events.append(
                    (
                        DATA,
                        self._data_flags if last else 0,
                        self._data_stream,
                        view[pos : pos + content],
                        take,
                    )
                )
                pos += take
                continue
            if n - pos < 9:
                break
            length = int.from_bytes(buf[pos : pos + 3], "big")
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if length > self.max_frame:
                raise H2Error(FRAME_SIZE_ERROR, f"frame of {length} bytes over {self.max_frame}")
            if kind == DATA:
                pos += 9
                pad = 0
                charged = 0
                if flags & PADDED:
                    if length < 1:
                        raise H2Error(PROTOCOL_ERROR, "padded DATA frame without pad length")
                    if pos >= n:
                        # The pad length byte is not here yet: wait for it with the header.
                        pos -= 9
                        break
                    pad = buf[pos]
                    if pad >= length:
                        raise H2Error(PROTOCOL_ERROR, "DATA padding longer than the frame")
                    pos += 1
                    length -= 1
                    charged = 1
                self._data_left = length
                self._data_pad = pad
                self._data_flags = flags & END_STREAM
                self._data_stream = stream_id
                if not length:
                    events.append((DATA, flags & END_STREAM, stream_id, b"", charged))
                elif charged:
                    events.append((DATA, 0, stream_id, b"", charged))
                continue
            if n - pos < 9 + length:
                break
            events.append((kind, flags, stream_id, buf[pos + 9 : pos + 9 + length], 0))
            pos += 9 + length
        if pos < n:
            self._buf = buf[pos:]
        return events


# ---- gRPC conventions ---------------------------------------------------------------------------

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


UNKNOWN_STATUS = 2


def status_code(value: bytes | None) -> int:
    """The number of a ``grpc-status`` value (2, UNKNOWN, for anything unparsable)."""
    if value is None or not value.isdigit() or len(value) > 2:
        return UNKNOWN_STATUS
    return int(value)


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``100m``, ``5S``…); None if malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def grpc_message_encode(message: str) -> bytes:
    """Percent-encode a status message (bytes outside printable ASCII, and ``%``)."""
    raw = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def grpc_message_decode(value: bytes) -> str:
    """Undo ``grpc_message_encode`` (malformed escapes are kept as they are)."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    out = bytearray()
    i = 0
    while i < len(value):
        b = value[i]
        if b == 0x25 and i + 2 < len(value) and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
