"""Copying store paths out of a Nix binary cache into the store (``tvix-store copy --from``).

Three phases, so that a failure leaves nothing visible behind:

1. walk the closure: fetch (in parallel) the narinfo of every wanted path not yet in the store,
   follow its References; a missing narinfo, a malformed one, or (with trusted keys) one without
   a valid signature stops everything before any data is fetched;
2. fetch, decompress and ingest the NARs (in parallel), re-hashing everything: NarHash and
   NarSize (and FileHash/FileSize when given) must match the narinfo (spec decision 9);
3. only when every NAR is in, put the PathInfos, references before referrers.

Blobs and Directories stored by a copy that fails later are unreferenced and invisible.
``fetch_path_info`` (one narinfo + NAR -> PathInfo) is shared with the ``nix+http``
PathInfoService.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import BinaryIO

from nix_compat import nixbase32
from nix_compat.errors import NarError, NixCompatError
from nix_compat.narinfo import NarInfo
from nix_compat.signing import VerifyingKey
from nix_compat.store_path import STORE_DIR_WITH_SLASH, StorePath
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_store.binary_cache import BinaryCacheError
from tvix_store.binary_cache.fetch import decompressed_pieces, fetch_bytes, join_url, open_url, read_errors
from tvix_store.nar.ingest import ingest_nar
from tvix_store.path_info import PathInfo
from tvix_store.services import Services
from tvix_store.writeback import BackgroundWriteback

__all__ = [
    "ClosureEntry",
    "CopyResult",
    "copy_closure",
    "copy_local_closure",
    "fetch_narinfo",
    "fetch_path_info",
    "parse_closure_json",
    "parse_trusted_keys",
    "parse_wanted_path",
]

log = logging.getLogger(__name__)

NARINFO_LIMIT = 2 << 20
DEFAULT_JOBS = 4
_NARINFO_JOBS = 16


def parse_trusted_keys(text: str | Iterable[str]) -> tuple[VerifyingKey, ...]:
    """``name:base64`` public keys, whitespace-separated (or already split)."""
    items = text.split() if isinstance(text, str) else [w for t in text for w in t.split()]
    return tuple(VerifyingKey.parse(item) for item in items)


def parse_wanted_path(text: str) -> StorePath:
    """A store path given as ``/nix/store/<hash>-<name>`` (anything below it is ignored) or basename."""
    if text.startswith(STORE_DIR_WITH_SLASH):
        return StorePath.from_absolute_path_full(text)[0]
    return StorePath.from_bytes(text)


def fetch_narinfo(base_url: str, digest: bytes, trusted_keys: Sequence[VerifyingKey] = ()) -> NarInfo | None:
    """The narinfo of the store path with this digest, or None if the cache does not have it.

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

    def __init__(self, inner: BinaryIO, hash_it: bool, on_bytes: Callable[[int], object] | None) -> None:
        self._inner = inner
        self._sha = hashlib.sha256() if hash_it else None
        self._on_bytes = on_bytes
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
        if self._on_bytes is not None:
            self._on_bytes(n)
        return n

    def read_rest(self) -> None:
        while self.readinto(memoryview(bytearray(1 << 16))):
            pass

    def digest(self) -> bytes | None:
        return None if self._sha is None else self._sha.digest()


class _Prefetcher:
    """Reads ahead from read(n) in a helper thread; read() hands out the pieces in order.

    An exception of the helper is re-raised by the read() that reaches it.
    """

    _DEPTH = 8

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._source = pieces
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self._DEPTH)
        self._stop = threading.Event()
        self._buffer = b""
        self._offset = 0
        self._done = False
        self._thread = threading.Thread(target=self._run, name="decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for data in self._source:
                if self._stop.is_set():
                    return
                self._put(data)
            self._put(b"")
        except BaseException as exc:
            self._put(exc)

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

    def close(self) -> None:
        """Stop the helper thread and wait for it."""
        self._stop.set()
        self._thread.join()


def fetch_path_info(
    base_url: str,
    narinfo: NarInfo,
    blob_service: BlobService,
    directory_service: DirectoryService,
    on_bytes: Callable[[int], object] | None = None,
) -> PathInfo:
    """Fetch, decompress, verify and ingest narinfo's NAR; return the PathInfo (not yet put).

    Raises:
        BinaryCacheError: the NAR is missing, unreadable, malformed or truncated, or its size or
            hash differs from the narinfo's NarSize/NarHash (or FileSize/FileHash).

    """
    path = narinfo.store_path.absolute()
    url = join_url(base_url, narinfo.url)
    opened = open_url(url)
    if opened is None:
        raise BinaryCacheError(f"{url}: NAR of {path} not found")
    raw, _ = opened
    with raw:
        tee = _Tee(raw, narinfo.file_hash is not None, on_bytes)
        # Download and decompression (which release the GIL) run in a thread beside ingestion.
        prefetch = _Prefetcher(decompressed_pieces(tee.read, narinfo.effective_compression, url))
        read = prefetch.read
        try:
            root, nar_sha256, nar_size = ingest_nar(blob_service, directory_service, read)
            trailing = read(1)
            tee.read_rest()
        except NarError as exc:
            raise BinaryCacheError(f"{url}: NAR of {path}: {exc}") from exc
        except read_errors() as exc:
            raise BinaryCacheError(f"{url}: NAR of {path}: download or decompression failed: {exc}") from exc
        finally:
            prefetch.close()
    if trailing:
        raise BinaryCacheError(f"{url}: NAR of {path}: unexpected data after the end of the NAR")
    if nar_size != narinfo.nar_size:
        raise BinaryCacheError(
            f"{url}: NarSize mismatch for {path}: narinfo says {narinfo.nar_size}, "
            f"the NAR has {nar_size} bytes"
        )
    if nar_sha256 != narinfo.nar_hash:
        raise BinaryCacheError(
            f"{url}: NarHash mismatch for {path}: narinfo says sha256:{nixbase32.encode(narinfo.nar_hash)}, "
            f"the NAR hashes to sha256:{nixbase32.encode(nar_sha256)}"
        )
    if narinfo.file_size is not None and tee.count != narinfo.file_size:
        raise BinaryCacheError(
            f"{url}: FileSize mismatch for {path}: narinfo says {narinfo.file_size}, got {tee.count} bytes"
        )
    file_sha256 = tee.digest()
    if narinfo.file_hash is not None and file_sha256 != narinfo.file_hash:
        assert file_sha256 is not None
        raise BinaryCacheError(
            f"{url}: FileHash mismatch for {path}: "
            f"narinfo says sha256:{nixbase32.encode(narinfo.file_hash)}, "
            f"the file hashes to sha256:{nixbase32.encode(file_sha256)}"
        )
    return PathInfo(
        store_path=narinfo.store_path,
        node=root,
        nar_size=nar_size,
        nar_sha256=nar_sha256,
        references=narinfo.references,
        signatures=narinfo.signatures,
        deriver=narinfo.deriver,
        ca=narinfo.ca,
    )


@dataclass
class CopyResult:
    """What a copy did: the PathInfos it put (references first) and the paths it found present."""

    copied: list[PathInfo] = field(default_factory=list)
    present: list[StorePath] = field(default_factory=list)


def _run_all(pool: ThreadPoolExecutor, futures: list[Future[None]]) -> None:
    """Wait for futures; on the first failure cancel what has not started and re-raise it."""
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for f in done:
        exc = f.exception()
        if exc is not None:
            for other in futures:
                other.cancel()
            wait(futures)
            raise exc


def copy_closure(
    services: Services,
    base_url: str,
    paths: Sequence[StorePath],
    trusted_keys: Sequence[VerifyingKey] = (),
    jobs: int = DEFAULT_JOBS,
    on_bytes: Callable[[int], object] | None = None,
    on_path: Callable[[PathInfo], object] | None = None,
) -> CopyResult:
    """Copy paths and their closure from the cache at base_url; paths already present are skipped.

    Raises:
        BinaryCacheError: a path of the closure is missing from the cache, or its narinfo or
            NAR fails verification. Nothing is put then.

    """
    result = CopyResult()
    narinfos: dict[bytes, NarInfo] = {}
    lock = threading.Lock()
    seen: set[bytes] = set()
    pending: list[Future[None]] = []

    with ThreadPoolExecutor(max_workers=_NARINFO_JOBS, thread_name_prefix="narinfo") as pool:

        def visit(path: StorePath, referrer: StorePath | None) -> None:
            if services.path_info_service.get(path.digest) is not None:
                with lock:
                    result.present.append(path)
                return
            narinfo = fetch_narinfo(base_url, path.digest, trusted_keys)
            if narinfo is None:
                via = f" (referenced by {referrer.absolute()})" if referrer is not None else ""
                raise BinaryCacheError(f"{path.absolute()}{via} is not in the binary cache {base_url}")
            if narinfo.store_path != path:
                raise BinaryCacheError(
                    f"{base_url}: asked for {path.absolute()}, "
                    f"got a narinfo for {narinfo.store_path.absolute()}"
                )
            with lock:
                narinfos[path.digest] = narinfo
                for ref in narinfo.references:
                    if ref.digest not in seen:
                        seen.add(ref.digest)
                        pending.append(pool.submit(visit, ref, path))

        with lock:
            for p in paths:
                if p.digest not in seen:
                    seen.add(p.digest)
                    pending.append(pool.submit(visit, p, None))
        # The list grows while we wait; loop until every submitted visit is done.
        waited = 0
        while True:
            with lock:
                batch = pending[waited:]
                waited = len(pending)
            if not batch:
                break
            _run_all(pool, batch)

    log.debug("closure walked: %d to copy, %d present", len(narinfos), len(result.present))
    infos: dict[bytes, PathInfo] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="nar") as pool:

        def fetch(narinfo: NarInfo) -> None:
            info = fetch_path_info(
                base_url, narinfo, services.blob_service, services.directory_service, on_bytes
            )
            with lock:
                infos[narinfo.store_path.digest] = info
            log.debug("fetched %s (%d bytes NAR)", narinfo.store_path.absolute(), info.nar_size)

        # Biggest NARs first, so that one big path does not start last.
        order = sorted(narinfos.values(), key=lambda n: n.nar_size, reverse=True)
        writeback = BackgroundWriteback(services.blob_service) if order else None
        try:
            _run_all(pool, [pool.submit(fetch, n) for n in order])
        finally:
            if writeback is not None:
                writeback.close()

    for info in _references_first(infos):
        services.path_info_service.put(info)
        result.copied.append(info)
        if on_path is not None:
            on_path(info)
    return result


def _references_first(infos: dict[bytes, PathInfo]) -> list[PathInfo]:
    """The infos ordered so that every reference (within infos) precedes its referrers."""
    out: list[PathInfo] = []
    state: dict[bytes, int] = {}  # 1 = in progress, 2 = done
    for start in sorted(infos):
        if start in state:
            continue
        stack: list[tuple[bytes, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            digest, i = stack[-1]
            refs = infos[digest].references
            if i < len(refs):
                stack[-1] = (digest, i + 1)
                ref = refs[i].digest
                if ref in infos and ref not in state:
                    state[ref] = 1
                    stack.append((ref, 0))
                continue
            stack.pop()
            state[digest] = 2
            out.append(infos[digest])
    return out


# -- tvix's form: an exportReferencesGraph closure from the local filesystem (spec §6.8) ----------


@dataclass(frozen=True, slots=True)
class ClosureEntry:
    """One element of an exportReferencesGraph ``closure`` list."""

    path: StorePath
    nar_sha256: bytes
    nar_size: int
    references: tuple[StorePath, ...]


def parse_closure_json(data: bytes | str, source: str) -> list[ClosureEntry]:
    """The ``closure`` list of a ``__json`` structured-attrs file.

    Raises:
        BinaryCacheError: malformed JSON or entries (the message names source and the entry).

    """
    import json

    from nix_compat.nixhash import NixHash

    try:
        doc = json.loads(data)
        items = doc["closure"]
        if not isinstance(items, list):
            raise TypeError("closure is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise BinaryCacheError(f"{source}: not an exportReferencesGraph file: {exc}") from exc
    out = []
    for i, item in enumerate(items):
        try:
            nar_hash = NixHash.parse(item["narHash"])
            if nar_hash.algo != "sha256":
                raise ValueError(f"narHash {item['narHash']!r} is not sha256")
            nar_size = item["narSize"]
            if not isinstance(nar_size, int) or nar_size < 0:
                raise ValueError(f"invalid narSize {nar_size!r}")
            out.append(
                ClosureEntry(
                    StorePath.from_absolute_path(item["path"]),
                    nar_hash.digest,
                    nar_size,
                    tuple(StorePath.from_absolute_path(r) for r in item["references"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BinaryCacheError(f"{source}: closure entry #{i}: {exc}") from exc
    return out


def copy_local_closure(
    services: Services,
    entries: Sequence[ClosureEntry],
    jobs: int = DEFAULT_JOBS,
    on_path: Callable[[PathInfo], object] | None = None,
) -> CopyResult:
    """Ingest each entry's path from the local filesystem (unless present) and put its PathInfo.

    The NAR of what was ingested is hashed and must equal the entry's narHash and narSize
    (decision 9: tvix trusts the JSON, we do not). PathInfos are put after all data is in.

    Raises:
        BinaryCacheError: a NAR hash or size differs from the JSON.
        IngestionError: a path cannot be read.

    """
    from tvix_castore.ingest.fs import ingest_path

    result = CopyResult()
    todo = []
    for entry in entries:
        if services.path_info_service.get(entry.path.digest) is not None:
            result.present.append(entry.path)
        else:
            todo.append(entry)
    calculator = services.nar_calculation_service()
    infos: dict[bytes, PathInfo] = {}
    lock = threading.Lock()

    def ingest(entry: ClosureEntry) -> None:
        fs_path = entry.path.absolute()
        root = ingest_path(services.blob_service, services.directory_service, fs_path)
        nar_size, nar_sha256 = calculator.calculate_nar(root)
        if (nar_size, nar_sha256) != (entry.nar_size, entry.nar_sha256):
            raise BinaryCacheError(
                f"{fs_path}: NAR is {nar_size} bytes with sha256:{nixbase32.encode(nar_sha256)}, "
                f"the closure file says {entry.nar_size} bytes with "
                f"sha256:{nixbase32.encode(entry.nar_sha256)}"
            )
        info = PathInfo(
            store_path=entry.path,
            node=root,
            nar_size=nar_size,
            nar_sha256=nar_sha256,
            references=entry.references,
        )
        with lock:
            infos[entry.path.digest] = info

    writeback = BackgroundWriteback(services.blob_service) if todo else None
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="ingest") as pool:
            _run_all(pool, [pool.submit(ingest, e) for e in todo])
    finally:
        if writeback is not None:
            writeback.close()
    for info in _references_first(infos):
        services.path_info_service.put(info)
        result.copied.append(info)
        if on_path is not None:
            on_path(info)
    return result
