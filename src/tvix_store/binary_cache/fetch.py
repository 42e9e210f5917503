"""A small client for Nix binary caches: ``file:///dir`` and ``http(s)://host/path`` (IO shell).

``join_url`` resolves a cache-relative name against a base URL; unlike plain URL joining, a base
path without a trailing slash keeps its last segment (spec §15 item 9: ``http://h/foo`` +
``x.narinfo`` is ``http://h/foo/x.narinfo``). ``open_url`` streams a response (None for 404/403/410
or a missing file), decoded when it comes with a Content-Encoding (see ``compression``);
``fetch_bytes`` gets a whole small one. Every failure becomes a ``BinaryCacheError`` naming the
URL and, for HTTP, the status.

Transient failures are tried again, as Nix's downloads do (``download-attempts``, 5 by default):
a refused, reset or timed-out connection, HTTP 408 and 429, and 5xx other than 501, 505 and 511,
up to ``DOWNLOAD_ATTEMPTS`` attempts in all, after 250 ms, then twice as long each time (with
jitter). ``open_url`` tries again until the response starts; ``fetch_bytes`` also when its body
is cut short. A body streamed to its reader is not fetched again: the reader has its bytes.
"""

from __future__ import annotations

import io
import os
import random
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar, cast

from tvix_castore.lazy_logging import get_logger
from tvix_store.binary_cache import BinaryCacheError, CacheUnavailable
from tvix_store.binary_cache.compression import decompress, read_errors

__all__ = ["DOWNLOAD_ATTEMPTS", "cache_base_url", "fetch_bytes", "join_url", "open_url"]

log = get_logger(__name__)
_T = TypeVar("_T")

TIMEOUT = 60.0
_BUFFER = 1 << 20
_NOT_FOUND = (403, 404, 410)
DOWNLOAD_ATTEMPTS = 5
_FIRST_RETRY_SECONDS = 0.25


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


def _transient_status(code: int) -> bool:
    """Whether an HTTP error status is worth another attempt, as Nix judges it.

    408 (the server timed out waiting for us), 429 (too many requests), and server errors but
    501 (not implemented), 505 (HTTP version not supported) and 511 (a captive portal).
    """
    return code in (408, 429) or (500 <= code < 600 and code not in (501, 505, 511))


def _attempts(attempt: Callable[[], _T], attempts: int) -> _T:
    """attempt(), again after a CacheUnavailable, up to attempts times in all."""
    for n in range(1, attempts):
        try:
            return attempt()
        except CacheUnavailable as exc:
            delay = _FIRST_RETRY_SECONDS * 2 ** (n - 1 + random.uniform(0.0, 0.5))
            log.warning("%s; retrying in %d ms", exc, delay * 1000)
            time.sleep(delay)
    try:
        return attempt()
    except CacheUnavailable as exc:
        if attempts == 1:
            raise
        raise CacheUnavailable(f"{exc} (after {attempts} attempts)") from exc


def open_url(url: str, attempts: int = DOWNLOAD_ATTEMPTS) -> tuple[BinaryIO, int | None] | None:
    """Open url for streaming: (stream, length if known), or None when the cache has no such file.

    Transient failures before the response starts are tried again, up to attempts in all (see
    the module docstring).
    """
    return _attempts(lambda: _open_once(url), attempts)


def _open_once(url: str) -> tuple[BinaryIO, int | None] | None:
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
        klass = CacheUnavailable if _transient_status(exc.code) else BinaryCacheError
        raise klass(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, URLError) else exc
        # Refused, reset, timed out, name not resolved: worth a retry. Not a bad certificate.
        transient = isinstance(reason, ConnectionError | TimeoutError | socket.gaierror)
        klass = CacheUnavailable if transient else BinaryCacheError
        raise klass(f"GET {url}: {reason}") from exc
    except HTTPException as exc:
        raise BinaryCacheError(f"GET {url}: {exc}") from exc
    header = response.headers.get("Content-Length")
    length = int(header) if header and header.isdigit() else None
    stream = cast(BinaryIO, response) if length is None else _whole(response, length)
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        # As Nix's downloads do: S3 caches serve narinfos and listings so (narinfo-compression).
        compression = _CONTENT_ENCODINGS.get(encoding)
        if compression is None:
            response.close()
            raise BinaryCacheError(f"GET {url}: unsupported Content-Encoding {encoding!r}")
        return decompress(stream, compression, url), None
    return stream, length


# HTTP Content-Encoding values -> our decompressors' names.
_CONTENT_ENCODINGS = {
    "gzip": "gzip",
    "x-gzip": "gzip",
    "xz": "xz",
    "bzip2": "bzip2",
    "zstd": "zstd",
    "br": "br",
}


class _Whole(io.RawIOBase):
    """A response body that must come whole: ending before Content-Length is an error.

    http.client takes a connection closed early for the end of the body; a narinfo cut short
    would then parse, missing its last lines (references, signatures).
    """

    def __init__(self, response: Any, length: int) -> None:
        self._response = response
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n: int = self._response.readinto(buffer)
        if not n and len(buffer) and self._left > 0:
            raise EOFError(f"the body ended {self._left} bytes short of its Content-Length")
        self._left -= n
        return n

    def close(self) -> None:
        self._response.close()
        super().close()


def _whole(response: Any, length: int) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(_Whole(response, length), _BUFFER))


def fetch_bytes(url: str, limit: int) -> bytes | None:
    """The whole body at url (at most limit bytes), or None when absent.

    Transient failures are tried again, a body cut short included (see the module docstring).
    """
    return _attempts(lambda: _fetch_once(url, limit), DOWNLOAD_ATTEMPTS)


def _cut_short(exc: BaseException) -> bool:
    """Whether a read failed because the connection went: reset, timed out, or closed early."""
    if isinstance(exc, ConnectionError | TimeoutError | EOFError):
        return True
    client = sys.modules.get("http.client")  # never loaded for file:// caches
    return client is not None and isinstance(exc, client.IncompleteRead)


def _fetch_once(url: str, limit: int) -> bytes | None:
    opened = _open_once(url)
    if opened is None:
        return None
    stream, _ = opened
    with stream:
        try:
            data = stream.read(limit + 1)
        except read_errors() as exc:
            klass = CacheUnavailable if _cut_short(exc) else BinaryCacheError
            raise klass(f"GET {url}: read failed: {exc}") from exc
    if len(data) > limit:
        raise BinaryCacheError(f"GET {url}: response larger than {limit} bytes")
    return data
