"""Decompressing NARs and responses as Nix writes them: none, xz, zstd, bzip2, gzip, br, lz4 (pure).

``decompressed_pieces`` turns a ``read(n)`` function into the uncompressed bytes, in pieces of
a few MiB and with bounded memory whatever the input holds; ``decompress`` does the same for a
file object. Both are strict: a stream cut short, or followed by anything but another stream of
the same kind (or, for xz, NUL padding), is an error. ``MAGICS`` says how each kind starts, for
callers that detect it (a brotli stream has no mark of its own, and nothing may follow it).
``read_errors`` lists what reading such a stream may raise.

Decompressors are imported where they are used: a command that meets no zstd never loads
zstandard. Of what Nix can write, lzip is not read (no library for it is at hand).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Protocol, cast

from tvix_store.binary_cache import BinaryCacheError

__all__ = [
    "COMPRESSIONS",
    "MAGICS",
    "Compressor",
    "CorruptStream",
    "compressor",
    "decompress",
    "decompressed_pieces",
    "read_errors",
]

COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "gzip", "br", "lz4")
_BUFFER = 1 << 20

# The error classes of the modules a stream may come through, looked up once they are loaded.
_ERROR_CLASSES = (
    ("lzma", "LZMAError"),
    ("zlib", "error"),
    ("http.client", "HTTPException"),
    ("zstandard", "ZstdError"),
    ("brotli", "error"),
)


class CorruptStream(Exception):
    """Corrupt data, found by a decompressor that has no error class of its own (lz4's)."""


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a (decompressed) NAR or response may raise besides our own errors.

    OSError and EOFError, plus the errors of the decompressors and HTTP client loaded so far:
    a module that was never imported cannot have raised.
    """
    errors: list[type[BaseException]] = [OSError, EOFError, CorruptStream]
    for module_name, class_name in _ERROR_CLASSES:
        module = sys.modules.get(module_name)
        if module is not None:
            errors.append(getattr(module, class_name))
    return tuple(errors)


def decompressed_pieces(read: Callable[[int], bytes], compression: str, url: str) -> Iterator[bytes]:
    """The uncompressed bytes of what read(n) yields, in pieces of up to a few MiB.

    Feeds whole MiB of input per call into the decompressor objects (which release the GIL),
    so that a helper thread running this holds the GIL rarely. The decompressor's module is
    loaded here, before the first piece, so that ``read_errors`` knows its errors by then.

    Raises:
        BinaryCacheError: compression is not one Nix writes.

    Raises (while iterating): EOFError for a stream cut short or followed by other data, and
    the decompressor's own error for corrupt data.

    """
    if compression == "none":
        return _plain_pieces(read)
    if compression == "zstd":
        import zstandard

        # Pulled through a stream reader, whose reads give at most what is asked for: zstd's
        # decompressobj gives everything one input piece holds, and a MiB of zstd can hold
        # GiBs (a file of zeros in the NAR), all in memory at once.
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, _ReadFunction(read)), read_size=_BUFFER, read_across_frames=True
        )
        return iter(lambda: reader.read(2 * _BUFFER), b"")
    new_decompressor = _DECOMPRESSORS.get(compression)
    if new_decompressor is None:
        raise BinaryCacheError(
            f"{url}: unsupported compression {compression!r} (supported: {', '.join(COMPRESSIONS)})"
        )
    return _stream_pieces(read, compression, new_decompressor)


def _plain_pieces(read: Callable[[int], bytes]) -> Iterator[bytes]:
    while data := read(_BUFFER):
        yield data


def _stream_pieces(
    read: Callable[[int], bytes], compression: str, new_decompressor: Callable[[], Any]
) -> Iterator[bytes]:
    d = new_decompressor()
    # Small output pieces keep the consumer close behind: when decompression ends, little is
    # left to ingest (8 MiB pieces left ~40 ms of ingesting after the last byte was out).
    limit = 2 * _BUFFER
    pending = b""  # input left over after the end of a stream
    while True:
        raw = pending or read(_BUFFER)
        pending = b""
        if not raw:
            if compression == "gzip":
                tail = d.flush()
                if tail:
                    yield tail
            else:
                # brotli may hold the last of its output back until asked once more.
                while not d.eof and (tail := d.decompress(b"", limit)):
                    yield tail
            if not d.eof:
                raise EOFError("compressed stream ended before its end marker")
            return
        if d.eof:
            # Streams may follow one another (as pbzip2 or pixz write them), an xz stream also
            # NUL padding; anything else after the end is not part of the file.
            if compression == "xz" and not raw.strip(b"\0"):
                continue
            magic = MAGICS.get(compression)
            if magic is None or not raw.startswith(magic[: len(raw)]):
                raise EOFError("data after the end of the compressed stream")
            d = new_decompressor()
        if compression == "gzip":
            out = d.decompress(raw, limit)
            while out:
                yield out
                out = d.decompress(d.unconsumed_tail, limit) if d.unconsumed_tail else b""
        else:
            out = d.decompress(raw, limit)
            while True:
                if out:
                    yield out
                if d.eof or d.needs_input:
                    break
                out = d.decompress(b"", limit)
        if d.eof:
            pending = d.unused_data


def _xz() -> Any:
    import lzma

    return lzma.LZMADecompressor(lzma.FORMAT_XZ)


def _bzip2() -> Any:
    import bz2

    return bz2.BZ2Decompressor()


def _gzip() -> Any:
    import zlib

    return zlib.decompressobj(wbits=31)


class _Lz4:
    """lz4's frame decompressor, its RuntimeErrors (corrupt data) as CorruptStream."""

    def __init__(self) -> None:
        import lz4.frame

        self._d = lz4.frame.LZ4FrameDecompressor()

    @property
    def eof(self) -> bool:
        return bool(self._d.eof)

    @property
    def needs_input(self) -> bool:
        return bool(self._d.needs_input)

    @property
    def unused_data(self) -> bytes:
        return bytes(self._d.unused_data or b"")

    def decompress(self, data: bytes, max_length: int) -> bytes:
        try:
            return bytes(self._d.decompress(data, max_length))
        except RuntimeError as exc:
            raise CorruptStream(f"lz4: {exc}") from exc


class _Brotli:
    """brotli's decompressor with the interface of lzma's (eof, needs_input, unused_data)."""

    def __init__(self) -> None:
        import brotli

        self._d = brotli.Decompressor()
        self.unused_data = b""  # brotli rejects input past the end of its stream instead

    @property
    def eof(self) -> bool:
        return bool(self._d.is_finished())

    @property
    def needs_input(self) -> bool:
        return bool(self._d.can_accept_more_data()) and not self.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        # Output past the limit stays inside, for the next calls (with no input) to give. The
        # buffer grows by doubling and stops once past the limit: up to twice it comes out.
        return bytes(self._d.process(data, output_buffer_limit=max(max_length // 2, 1)))


_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "xz": _xz,
    "bzip2": _bzip2,
    "gzip": _gzip,
    "br": _Brotli,
    "lz4": _Lz4,
}
MAGICS = {
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "bzip2": b"BZh",
    "gzip": b"\x1f\x8b",
    "lz4": b"\x04\x22\x4d\x18",
}
"""How a stream of each compression starts (brotli's: in no set way)."""


class Compressor(Protocol):
    """A streaming compressor: the compressed bytes of each piece, and the rest at the end."""

    def compress(self, data: bytes) -> bytes:
        """The compressed bytes of data that are ready (maybe none)."""
        ...

    def flush(self) -> bytes:
        """The rest, ending the stream."""
        ...


def compressor(compression: str) -> Compressor:
    """A compressor writing what Nix reads as compression (one of COMPRESSIONS but "none").

    Fast settings: it compresses NARs as they are served.
    """
    if compression == "xz":
        import lzma

        return cast(Compressor, lzma.LZMACompressor(lzma.FORMAT_XZ, preset=1))
    if compression == "bzip2":
        import bz2

        return cast(Compressor, bz2.BZ2Compressor(1))
    if compression == "gzip":
        import zlib

        return cast(Compressor, zlib.compressobj(1, wbits=31))
    if compression == "zstd":
        import zstandard

        return cast(Compressor, zstandard.ZstdCompressor(level=3).compressobj())
    if compression == "br":
        import brotli

        return _BrotliCompressor(brotli.Compressor(quality=1))
    if compression == "lz4":
        import lz4.frame

        return _Lz4Compressor(lz4.frame.LZ4FrameCompressor())
    raise ValueError(f"no compressor for {compression!r}")


class _BrotliCompressor:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def compress(self, data: bytes) -> bytes:
        return bytes(self._inner.process(data))

    def flush(self) -> bytes:
        return bytes(self._inner.finish())


class _Lz4Compressor:
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._begun = False

    def _header(self) -> bytes:
        """The frame header, before the first output only."""
        if self._begun:
            return b""
        self._begun = True
        return bytes(self._inner.begin())

    def compress(self, data: bytes) -> bytes:
        return self._header() + bytes(self._inner.compress(data))

    def flush(self) -> bytes:
        return self._header() + bytes(self._inner.flush())


class _ReadFunction(io.RawIOBase):
    """A read(n) function as the file object a stream reader wants."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._read(size if size >= 0 else _BUFFER)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def decompress(stream: BinaryIO, compression: str, url: str) -> BinaryIO:
    """Wrap stream so that reading it yields the uncompressed bytes (``decompressed_pieces``).

    Raises (while reading): EOFError for a stream cut short or followed by other data, and the
    decompressor's own error for corrupt data.
    """
    if compression == "none":
        return stream
    pieces = decompressed_pieces(stream.read, compression, url)
    return cast(BinaryIO, io.BufferedReader(_PiecesReader(pieces), _BUFFER))


class _PiecesReader(io.RawIOBase):
    """An iterator of byte strings as a readable stream."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._piece = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._piece:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._piece = memoryview(piece)
        n = min(len(buffer), len(self._piece))
        buffer[:n] = self._piece[:n]
        self._piece = self._piece[n:]
        return n
