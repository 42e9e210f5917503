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

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

from nix_compat import nixbase32
from nix_compat.errors import NarError
from nix_compat.narinfo import NarInfo
from nix_compat.signing import VerifyingKey
from nix_compat.store_path import StorePath
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.frozen import Frozen
from tvix_castore.lazy_logging import get_logger
from tvix_store.binary_cache import BinaryCacheError
from tvix_store.binary_cache.compression import read_errors
from tvix_store.binary_cache.download import EarlyDownload, NarDownload, fetch_narinfo
from tvix_store.binary_cache.fetch import join_url
from tvix_store.content_address import content_mismatch, nar_checker, path_mismatch
from tvix_store.nar.ingest import ingest_nar
from tvix_store.path_info import PathInfo
from tvix_store.services import Services

__all__ = [
    "ClosureEntry",
    "CopyResult",
    "copy_closure",
    "copy_local_closure",
    "fetch_path_info",
    "parse_closure_json",
]

log = get_logger(__name__)

DEFAULT_JOBS = 4
_NARINFO_JOBS = 16


def fetch_path_info(
    base_url: str,
    narinfo: NarInfo,
    blob_service: BlobService,
    directory_service: DirectoryService,
    on_bytes: Callable[[int], object] | None = None,
    download: NarDownload | None = None,
) -> PathInfo:
    """Fetch, decompress, verify and ingest narinfo's NAR; return the PathInfo (not yet put).

    download: the NAR's download, if it was already started (and is closed here).

    Raises:
        BinaryCacheError: the NAR is missing, unreadable, malformed or truncated, its size or
            hash differs from the narinfo's NarSize/NarHash (or FileSize/FileHash), or the
            content is not what the narinfo's CA says (no signature covers that line).

    """
    path = narinfo.store_path.absolute()
    ca = narinfo.ca
    # The path must follow from its CA line: checked before the NAR is fetched for nothing.
    mismatch = path_mismatch(narinfo.store_path, ca, narinfo.references) if ca is not None else None
    if mismatch is not None:
        if download is not None:
            download.close()
        raise BinaryCacheError(f"{join_url(base_url, narinfo.url)}: {mismatch}")
    if download is None:
        download = NarDownload(base_url, narinfo)
    url = download.url
    tee = download.tee
    # Download and decompression (which release the GIL) run in a thread beside ingestion.
    download.set_on_bytes(on_bytes)
    read = download.read
    ca_hash = nar_checker(narinfo.store_path, ca) if ca is not None and ca.kind == "nar" else None
    if ca_hash is not None:
        update = ca_hash.update

        def ingest_read(n: int) -> bytes:
            data = read(n)
            update(data)
            return data

    else:
        ingest_read = read
    try:
        root, nar_sha256, nar_size = ingest_nar(blob_service, directory_service, ingest_read)
        trailing = read(1)
    except NarError as exc:
        raise BinaryCacheError(f"{url}: NAR of {path}: {exc}") from exc
    except read_errors() as exc:
        raise BinaryCacheError(f"{url}: NAR of {path}: download or decompression failed: {exc}") from exc
    finally:
        download.close()
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
    if ca is not None:
        # As Nix checks it when it adds the path: no signature covers the CA line.
        mismatch = content_mismatch(
            narinfo.store_path, ca, root, blob_service, directory_service, ca_hash, nar_sha256
        )
        if mismatch is not None:
            raise BinaryCacheError(f"{url}: {mismatch}")
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


class CopyResult:
    """What a copy did: the PathInfos it put (references first) and the paths it found present."""

    __slots__ = ("copied", "present")

    def __init__(self) -> None:
        self.copied: list[PathInfo] = []
        self.present: list[StorePath] = []


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


@contextmanager
def _pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that is waited for on the way out, except after an interrupt (Ctrl-C).

    Then its queued tasks are dropped and the running ones left behind: a download from a
    stalled cache would otherwise hold the interrupt up until its socket timed out.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def copy_closure(
    services: Services,
    base_url: str,
    paths: Sequence[StorePath],
    trusted_keys: Sequence[VerifyingKey] = (),
    jobs: int = DEFAULT_JOBS,
    on_bytes: Callable[[int], object] | None = None,
    on_path: Callable[[PathInfo], object] | None = None,
    started: dict[bytes, EarlyDownload] | None = None,
) -> CopyResult:
    """Copy paths and their closure from the cache at base_url; paths already present are skipped.

    started: downloads begun before the store was opened (``download.start_downloads``), by store
    path digest; they are used, or closed when their path is present. The dict is emptied.

    Raises:
        BinaryCacheError: a path of the closure is missing from the cache, or its narinfo or
            NAR fails verification. Nothing is put then.

    """
    early = started if started is not None else {}
    try:
        return _copy_closure(services, base_url, paths, trusted_keys, jobs, on_bytes, on_path, early)
    finally:
        # Downloads of paths found present, or left over by a failure.
        for download in early.values():
            download.abandon()
        early.clear()


def _copy_closure(
    services: Services,
    base_url: str,
    paths: Sequence[StorePath],
    trusted_keys: Sequence[VerifyingKey],
    jobs: int,
    on_bytes: Callable[[int], object] | None,
    on_path: Callable[[PathInfo], object] | None,
    early_downloads: dict[bytes, EarlyDownload],
) -> CopyResult:
    result = CopyResult()
    narinfos: dict[bytes, NarInfo] = {}
    lock = threading.Lock()
    seen: set[bytes] = set()
    pending: list[Future[None]] = []

    with _pool(_NARINFO_JOBS, "narinfo") as pool:

        def visit(path: StorePath, referrer: StorePath | None) -> None:
            with lock:
                early = early_downloads.get(path.digest)
            # What the store holds itself: a cache:// store must not fetch it from its far side.
            if services.path_info_service.get_held(path.digest) is not None:
                with lock:
                    result.present.append(path)
                    early_downloads.pop(path.digest, None)
                if early is not None:
                    early.abandon()
                return
            narinfo = (
                early.narinfo()
                if early is not None
                # A content-addressed path needs no signature: it is checked against its CA line.
                else fetch_narinfo(base_url, path.digest, trusted_keys, content_addressed_trusted=True)
            )
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
    with _pool(max(1, jobs), "nar") as pool:

        def fetch(narinfo: NarInfo) -> None:
            with lock:
                early = early_downloads.pop(narinfo.store_path.digest, None)
            download = early.take_download() if early is not None else None
            info = fetch_path_info(
                base_url, narinfo, services.blob_service, services.directory_service, on_bytes, download
            )
            with lock:
                infos[narinfo.store_path.digest] = info
            log.debug("fetched %s (%d bytes NAR)", narinfo.store_path.absolute(), info.nar_size)

        # Biggest NARs first, so that one big path does not start last.
        order = sorted(narinfos.values(), key=lambda n: n.nar_size, reverse=True)
        _run_all(pool, [pool.submit(fetch, n) for n in order])
    _put_all(services, infos, result, on_path)
    return result


def _put_all(
    services: Services,
    infos: dict[bytes, PathInfo],
    result: CopyResult,
    on_path: Callable[[PathInfo], object] | None,
) -> None:
    """Put the PathInfos of the copied paths, references first, in one go; record each.

    The store may commit them together (LMDB: one transaction and one flush for the closure,
    where a put each cost two flushes a path): none is visible before those it refers to.
    """
    for info in services.put_path_infos(_references_first(infos)):
        result.copied.append(info)
        if on_path is not None:
            on_path(info)


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


class ClosureEntry(Frozen):
    """One element of an exportReferencesGraph ``closure`` list."""

    __slots__ = ("nar_sha256", "nar_size", "path", "references")
    path: StorePath
    nar_sha256: bytes
    nar_size: int
    references: tuple[StorePath, ...]

    def __init__(
        self, path: StorePath, nar_sha256: bytes, nar_size: int, references: tuple[StorePath, ...]
    ) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "nar_sha256", nar_sha256)
        object.__setattr__(self, "nar_size", nar_size)
        object.__setattr__(self, "references", references)


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
            if not isinstance(nar_size, int) or isinstance(nar_size, bool) or nar_size < 0:
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
        if services.path_info_service.get_held(entry.path.digest) is not None:
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

    with _pool(max(1, jobs), "ingest") as pool:
        _run_all(pool, [pool.submit(ingest, e) for e in todo])
    _put_all(services, infos, result, on_path)
    return result
