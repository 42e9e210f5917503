"""What a copy reads from a Nix binary cache: verified narinfos, and NARs decompressed ahead.

``fetch_narinfo`` fetches and checks one narinfo. ``NarDownload`` opens a NAR and runs its
download, hashing (FileHash) and decompression in a helper thread (all of which release the
GIL), a bounded queue ahead of whoever reads the NAR. Nothing here touches the store, and the
module stays light, so ``tvix-store copy`` can start the NARs it was asked for (``EarlyDownload``)
before it loads the ingestion code and opens the store: decompression (xz: the bulk of a copy)
then overlaps the command's start-up.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

from nix_compat import nixbase32
from nix_compat.errors import NixCompatError
from nix_compat.narinfo import NarInfo
from nix_compat.signing import VerifyingKey
from nix_compat.store_path import STORE_DIR_WITH_SLASH, StorePath
from tvix_store.binary_cache import BinaryCacheError
from tvix_store.binary_cache.compression import decompressed_pieces
from tvix_store.binary_cache.fetch import fetch_bytes, join_url, open_url

__all__ = [
    "NARINFO_LIMIT",
    "EarlyDownload",
    "NarDownload",
    "fetch_narinfo",
    "parse_trusted_keys",
    "parse_wanted_path",
    "start_downloads",
]

NARINFO_LIMIT = 2 << 20


def parse_trusted_keys(text: str | Iterable[str]) -> tuple[VerifyingKey, ...]:
    """``name:base64`` public keys, whitespace-separated (or already split)."""
    items = text.split() if isinstance(text, str) else [w for t in text for w in t.split()]
    return tuple(VerifyingKey.parse(item) for item in items)


def parse_wanted_path(text: str) -> StorePath:
    """A store path given as ``/nix/store/<hash>-<name>`` (anything below it is ignored) or basename."""
    if text.startswith(STORE_DIR_WITH_SLASH):
        return StorePath.from_absolute_path_full(text)[0]
    return StorePath.from_bytes(text)


def fetch_narinfo(
    base_url: str,
    digest: bytes,
    trusted_keys: Sequence[VerifyingKey] = (),
    *,
    content_addressed_trusted: bool = False,
) -> NarInfo | None:
    """The narinfo of the store path with this digest, or None if the cache does not have it.

    A transient failure is tried again (see ``fetch``). content_addressed_trusted: a narinfo with
    a CA line needs no signature, as in Nix (its store path follows from its content and
    references: the caller must check both, as ``copy.fetch_path_info`` does).

    Raises:
        BinaryCacheError: unreadable or malformed narinfo, a StorePath of another digest, or
            (with trusted keys) no signature that verifies under one of them.

    """
    url = join_url(base_url, f"{nixbase32.encode(digest)}.narinfo")
    data = fetch_bytes(url, NARINFO_LIMIT)
    if data is None:
        return None
    try:
        narinfo = NarInfo.parse(data)
    except NixCompatError as exc:
        raise BinaryCacheError(f"{url}: invalid narinfo: {exc}") from exc
    if narinfo.store_path.digest != digest:
        raise BinaryCacheError(f"{url}: narinfo is for another store path: {narinfo.store_path.absolute()}")
    trusted = content_addressed_trusted and narinfo.ca is not None
    if trusted_keys and not trusted and not narinfo.verify(trusted_keys):
        names = ", ".join(sorted({k.name for k in trusted_keys}))
        signers = ", ".join(s.name for s in narinfo.signatures) or "none"
        raise BinaryCacheError(
            f"{url}: no valid signature for {narinfo.store_path.absolute()} by a trusted key "
            f"({names}); signatures present: {signers}"
        )
    return narinfo


class _Tee(io.RawIOBase):
    """Counts (and optionally hashes) the raw bytes read from a download."""

    def __init__(self, inner: BinaryIO, hash_it: bool) -> None:
        self._inner = inner
        self._sha = hashlib.sha256() if hash_it else None
        # Set by the consumer once it is there (progress display); reads before that are
        # reported when it is set.
        self.on_bytes: Callable[[int], object] | None = None
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self._sha is not None:
            self._sha.update(data)
        on_bytes = self.on_bytes
        if on_bytes is not None:
            on_bytes(n)
        return n

    def read_rest(self) -> None:
        while self.readinto(memoryview(bytearray(1 << 16))):
            pass

    def digest(self) -> bytes | None:
        return None if self._sha is None else self._sha.digest()


class NarDownload:
    """One NAR being downloaded and decompressed by a helper thread, a bounded queue ahead.

    ``read`` hands out the decompressed NAR in order and re-raises what the helper raised; when
    it returns the end, the whole file has been read (``tee`` has its final count and hash);
    ``close`` stops the helper and waits for it; ``abandon`` only tells it to stop (for a
    download begun early that turned out not to be needed). The helper closes the download.
    """

    _DEPTH = 8

    def __init__(self, base_url: str, narinfo: NarInfo) -> None:
        """Open narinfo's NAR (trying again after a transient failure) and start decompressing it.

        Raises:
            BinaryCacheError: the NAR is not in the cache, or cannot be opened.

        """
        self.narinfo = narinfo
        self.url = join_url(base_url, narinfo.url)
        opened = open_url(self.url)
        if opened is None:
            raise BinaryCacheError(f"{self.url}: NAR of {narinfo.store_path.absolute()} not found")
        self._raw = opened[0]
        self.tee = _Tee(self._raw, narinfo.file_hash is not None)
        self._source: Iterator[bytes] = decompressed_pieces(
            self.tee.read, narinfo.effective_compression, self.url
        )
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self._DEPTH)
        self._stop = threading.Event()
        self._buffer = b""
        self._offset = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="decompress", daemon=True)
        self._thread.start()

    def set_on_bytes(self, on_bytes: Callable[[int], object] | None) -> None:
        """Report downloaded bytes to on_bytes from now on, and those read so far at once."""
        if on_bytes is not None:
            on_bytes(self.tee.count)
        self.tee.on_bytes = on_bytes

    def _run(self) -> None:
        try:
            for data in self._source:
                if self._stop.is_set():
                    return
                self._put(data)
            # Whatever follows the compressed stream counts for FileSize and FileHash.
            self.tee.read_rest()
            self._put(b"")
        except BaseException as exc:
            self._put(exc)
        finally:
            self._raw.close()

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end."""
        if self._offset >= len(self._buffer):
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return b""
            self._buffer, self._offset = item, 0
        start = self._offset
        self._offset = min(start + n, len(self._buffer))
        if start == 0 and self._offset == len(self._buffer):
            return self._buffer
        return self._buffer[start : self._offset]

    def abandon(self) -> None:
        """Tell the helper to stop at its next piece; do not wait for it."""
        self._stop.set()
        # A helper blocked on a full queue notices at once.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        """Stop the helper and wait for it (the download is closed then)."""
        self.abandon()
        self._thread.join()


class EarlyDownload:
    """A wanted path fetched on a thread of its own while ``copy`` starts up and opens the store.

    Its narinfo is fetched and its NAR opened and decompressed ahead. The fetches make the
    usual attempts (``fetch``): the copy takes their outcome as its own rather than asking
    again. ``abandon`` drops the download (the path turned out to be present, or the copy
    failed) without waiting for it.
    """

    def __init__(self, base_url: str, path: StorePath, trusted_keys: Sequence[VerifyingKey]) -> None:
        self._lock = threading.Lock()
        self._narinfo_known = threading.Event()
        self._done = threading.Event()
        self._abandoned = False
        self._narinfo: NarInfo | None = None
        self._narinfo_error: Exception | None = None
        self._download: NarDownload | None = None
        self._download_error: Exception | None = None
        thread = threading.Thread(
            target=self._run, args=(base_url, path, trusted_keys), name="early-download", daemon=True
        )
        thread.start()

    def _run(self, base_url: str, path: StorePath, trusted_keys: Sequence[VerifyingKey]) -> None:
        try:
            try:
                narinfo = fetch_narinfo(base_url, path.digest, trusted_keys, content_addressed_trusted=True)
                self._narinfo = narinfo
            except Exception as exc:  # the copy's to report (re-raised by narinfo())
                self._narinfo_error = exc
                return
            finally:
                self._narinfo_known.set()
            # A narinfo for another path is the copy's to report; it needs no NAR.
            if narinfo is None or narinfo.store_path != path or self._abandoned:
                return
            try:
                download = NarDownload(base_url, narinfo)
            except Exception as exc:  # re-raised by take_download()
                self._download_error = exc
                return
            with self._lock:
                self._download = download
                abandoned = self._abandoned
            if abandoned:
                download.abandon()
        finally:
            self._done.set()

    def narinfo(self) -> NarInfo | None:
        """The narinfo (None: not in the cache), once fetched; raises what fetching it raised.

        Does not wait for the NAR: the copy's walk goes on while the NAR's response is awaited.
        """
        self._narinfo_known.wait()
        if self._narinfo_error is not None:
            raise self._narinfo_error
        return self._narinfo

    def take_download(self) -> NarDownload:
        """The NAR's download, once opened; raises what opening it raised."""
        self._done.wait()
        if self._download_error is not None:
            raise self._download_error
        if self._download is None:
            raise BinaryCacheError("no NAR download was started for this path")  # a caller's bug
        return self._download

    def abandon(self) -> None:
        """Drop the download, now or as soon as it is open; does not wait."""
        with self._lock:
            self._abandoned = True
            download = self._download
        if download is not None:
            download.abandon()


def start_downloads(
    base_url: str, paths: Sequence[StorePath], trusted_keys: Sequence[VerifyingKey] = (), limit: int = 4
) -> dict[bytes, EarlyDownload]:
    """Begin fetching (up to limit of) paths, side by side, by store path digest; returns at once.

    For ``copy`` to call before it opens the store, so that decompression (the bulk of a copy
    from an xz cache) overlaps the rest of its start-up.
    """
    started: dict[bytes, EarlyDownload] = {}
    for path in paths:
        if len(started) >= limit:
            break
        if path.digest not in started:
            started[path.digest] = EarlyDownload(base_url, path, trusted_keys)
    return started
