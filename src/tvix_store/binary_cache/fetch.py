"""A small client for Nix binary caches: ``file:///dir`` and ``http(s)://host/path`` (IO shell).

``join_url`` resolves a cache-relative name against a base URL; unlike plain URL joining, a base
path without a trailing slash keeps its last segment (spec §15 item 9: ``http://h/foo`` +
``x.narinfo`` is ``http://h/foo/x.narinfo``). ``open_url`` streams a response (None for 404/403/410
or a missing file); ``decompress`` wraps a stream for the narinfo ``Compression`` values Nix
writes. Every failure becomes a ``BinaryCacheError`` naming the URL and, for HTTP, the status.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

from tvix_store.binary_cache import BinaryCacheError, CacheUnavailable

__all__ = [
    "COMPRESSIONS",
    "cache_base_url",
    "decompress",
    "decompressed_pieces",
    "fetch_bytes",
    "join_url",
    "open_url",
    "read_errors",
]

TIMEOUT = 60.0
_BUFFER = 1 << 20
_NOT_FOUND = (403, 404, 410)
# A proxy or server that is down or overloaded: worth a retry.
_UNAVAILABLE = (502, 503, 504)
COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "gzip")


# Decompressors and the HTTP client are imported where they are used: a copy from a file://
# cache with xz never loads http.client (with the email package) or zstandard, which is a good
# part of the command's start-up.
_ERROR_CLASSES = (
    ("lzma", "LZMAError"),
    ("zlib", "error"),
    ("http.client", "HTTPException"),
    ("zstandard", "ZstdError"),
)


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a (decompressed) NAR or response may raise besides our own errors.

    OSError and EOFError, plus the errors of the decompressors and HTTP client loaded so far:
    a module that was never imported cannot have raised.
    """
    errors: list[type[BaseException]] = [OSError, EOFError]
    for module_name, class_name in _ERROR_CLASSES:
        module = sys.modules.get(module_name)
        if module is not None:
            errors.append(getattr(module, class_name))
    return tuple(errors)


def cache_base_url(url: str) -> str:
    """Validate a binary cache URL (``file://``, ``http://``, ``https://``) and return it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise BinaryCacheError(f"invalid binary cache URL {url!r}: expected file:///absolute/dir")
    elif parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise BinaryCacheError(f"invalid binary cache URL {url!r}: no host")
    else:
        raise BinaryCacheError(
            f"invalid binary cache URL {url!r}: expected file:///dir, http://host/path or https://…"
        )
    return url


def join_url(base: str, name: str) -> str:
    """Resolve name (``<hash>.narinfo``, ``nar/…``, or an absolute URL) against the cache base URL."""
    parts = urllib.parse.urlsplit(base)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    # Query and fragment of the base (e.g. Nix store options) are not part of the cache's location.
    return urllib.parse.urljoin(urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), name)


def open_url(url: str) -> tuple[BinaryIO, int | None] | None:
    """Open url for streaming: (stream, length if known), or None when the cache has no such file."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        path = urllib.parse.unquote(parts.path)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BinaryCacheError(f"GET {url}: {exc.strerror or exc}") from exc
        return cast(BinaryIO, f), os.fstat(f.fileno()).st_size
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    request = Request(url, headers={"User-Agent": "tvix-store"})
    try:
        response = urlopen(request, timeout=TIMEOUT)
    except HTTPError as exc:
        exc.close()
        if exc.code in _NOT_FOUND:
            return None
        klass = CacheUnavailable if exc.code in _UNAVAILABLE else BinaryCacheError
        raise klass(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, URLError) else exc
        # Refused, reset, timed out, name not resolved: worth a retry. Not a bad certificate.
        transient = isinstance(reason, ConnectionError | TimeoutError | socket.gaierror)
        klass = CacheUnavailable if transient else BinaryCacheError
        raise klass(f"GET {url}: {reason}") from exc
    except HTTPException as exc:
        raise BinaryCacheError(f"GET {url}: {exc}") from exc
    length = response.headers.get("Content-Length")
    return cast(BinaryIO, response), int(length) if length and length.isdigit() else None


def fetch_bytes(url: str, limit: int) -> bytes | None:
    """The whole body at url (at most limit bytes), or None when absent."""
    opened = open_url(url)
    if opened is None:
        return None
    stream, _ = opened
    with stream:
        try:
            data = stream.read(limit + 1)
        except read_errors() as exc:
            raise BinaryCacheError(f"GET {url}: read failed: {exc}") from exc
    if len(data) > limit:
        raise BinaryCacheError(f"GET {url}: response larger than {limit} bytes")
    return data


def decompressed_pieces(read: Callable[[int], bytes], compression: str, url: str) -> Iterator[bytes]:
    """The uncompressed bytes of what read(n) yields, in pieces of up to a few MiB.

    Feeds whole MiB of input per call into the decompressor objects (which release the GIL),
    so that a helper thread running this holds the GIL rarely.
    """
    if compression == "none":
        while data := read(_BUFFER):
            yield data
        return
    if compression == "xz":
        import lzma

        d: Any = lzma.LZMADecompressor()
    elif compression == "bzip2":
        import bz2

        d = bz2.BZ2Decompressor()
    elif compression == "gzip":
        import zlib

        d = zlib.decompressobj(wbits=31)
    elif compression == "zstd":
        import zstandard

        d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    else:
        raise BinaryCacheError(
            f"{url}: unsupported compression {compression!r} (supported: {', '.join(COMPRESSIONS)})"
        )
    # Small output pieces keep the consumer close behind: when decompression ends, little is
    # left to ingest (8 MiB pieces left ~40 ms of ingesting after the last byte was out).
    limit = 2 * _BUFFER
    zlib_like = compression == "gzip"
    while True:
        raw = read(_BUFFER)
        if not raw:
            if compression == "zstd":
                break
            if zlib_like:
                tail = d.flush()
                if tail:
                    yield tail
                if not d.eof:
                    raise EOFError("compressed stream ended before its end marker")
                return
            if not d.eof:
                raise EOFError("compressed stream ended before its end marker")
            return
        if zlib_like:
            out = d.decompress(raw, limit)
            while out:
                yield out
                out = d.decompress(d.unconsumed_tail, limit) if d.unconsumed_tail else b""
        elif compression == "zstd":
            out = d.decompress(raw)
            if out:
                yield out
        else:
            if d.eof:
                raise EOFError("data after the end of the compressed stream")
            out = d.decompress(raw, limit)
            while True:
                if out:
                    yield out
                if d.eof or d.needs_input:
                    break
                out = d.decompress(b"", limit)


def decompress(stream: BinaryIO, compression: str, url: str) -> BinaryIO:
    """Wrap stream so that reading it yields the uncompressed bytes."""
    if compression == "none":
        return stream
    buffered = (
        io.BufferedReader(cast(io.RawIOBase, stream), _BUFFER) if not hasattr(stream, "peek") else stream
    )
    if compression == "xz":
        import lzma

        return cast(BinaryIO, lzma.LZMAFile(buffered, "rb"))
    if compression == "bzip2":
        import bz2

        return cast(BinaryIO, bz2.BZ2File(buffered, "rb"))
    if compression == "gzip":
        import gzip

        return cast(BinaryIO, gzip.GzipFile(fileobj=buffered, mode="rb"))
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        return cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, reader), _BUFFER))
    raise BinaryCacheError(
        f"{url}: unsupported compression {compression!r} (supported: {', '.join(COMPRESSIONS)})"
    )
