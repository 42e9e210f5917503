"""What a copy reads from a Nix binary cache: verified narinfos, and NARs decompressed ahead.

``fetch_narinfo`` fetches and checks one narinfo. ``NarDownload`` opens a NAR and runs its
download, hashing (FileHash) and decompression in a helper thread (all of which release the
GIL), a bounded queue ahead of whoever reads the NAR. Nothing here touches the store, and the
module stays light, so ``tvix-store copy`` can start the NARs it was asked for before it loads
the ingestion code and opens the store: decompression (xz: the bulk of a copy) then overlaps
the command's start-up.
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
from tvix_store.binary_cache.compression import decompressed_pieces, read_errors
from tvix_store.binary_cache.fetch import DOWNLOAD_ATTEMPTS, fetch_bytes, join_url, open_url

__all__ = [
    "NARINFO_LIMIT",
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
    base_url: str, digest: bytes, trusted_keys: Sequence[VerifyingKey] = (), attempts: int = DOWNLOAD_ATTEMPTS
) -> NarInfo | None:
    """The narinfo of the store path with this digest, or None if the cache does not have it.

    attempts: how often a transient failure is tried (see ``fetch``).

    Raises:
        BinaryCacheError: unreadable or malformed narinfo, a StorePath of another digest, or
            (with trusted keys) no signature that verifies under one of them.

    """
    url = join_url(base_url, f"{nixbase32.encode(digest)}.narinfo")
    data = fetch_bytes(url, NARINFO_LIMIT, attempts)
    if data is None:
        return None
    try:
        narinfo = NarInfo.parse(data)
    except NixCompatError as exc:
        raise BinaryCacheError(f"{url}: invalid narinfo: {exc}") from exc
    if narinfo.store_path.digest != digest:
        raise BinaryCacheError(f"{url}: narinfo is for another store path: {narinfo.store_path.absolute()}")
    if trusted_keys and not narinfo.verify(trusted_keys):
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

    def __init__(self, base_url: str, narinfo: NarInfo, attempts: int = DOWNLOAD_ATTEMPTS) -> None:
        """Open narinfo's NAR and start decompressing it (attempts: see ``fetch.open_url``).

        Raises:
            BinaryCacheError: the NAR is not in the cache, or cannot be opened.

        """
        self.narinfo = narinfo
        self.url = join_url(base_url, narinfo.url)
        opened = open_url(self.url, attempts)
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


def start_downloads(
    base_url: str, paths: Sequence[StorePath], trusted_keys: Sequence[VerifyingKey] = (), limit: int = 4
) -> dict[bytes, NarDownload]:
    """Begin the NAR downloads of (up to limit of) paths, by store path digest; best effort.

    For ``copy`` to call before it opens the store. Whatever fails here is skipped, at the first
    attempt: the copy's own walk of the closure meets the problem again, tries again, and
    reports it.
    """
    started: dict[bytes, NarDownload] = {}
    errors: tuple[type[BaseException], ...] = (BinaryCacheError, *read_errors())
    for path in paths[:limit]:
        if path.digest in started:
            continue
        try:
            narinfo = fetch_narinfo(base_url, path.digest, trusted_keys, attempts=1)
            if narinfo is not None and narinfo.store_path == path:
                started[path.digest] = NarDownload(base_url, narinfo, attempts=1)
        except errors:
            continue
    return started
