"""Write-behind blob uploads: a failed upload surfaces at the next use of its digest and at the
next PathInfo put to the same server, which then stores nothing; a blob already sent is not sent
again until that commit point."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import Served
from fixtures import PATH_INFO

from tvix_castore.blobservice import BlobService, BlobWriter
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import StorageError
from tvix_store.pathinfoservice import from_addr as path_info_from_addr
from tvix_store.pathinfoservice.memory import MemoryPathInfoService
from tvix_store.server import Daemon
from tvix_store.services import Services


class _RefusingBlobs(BlobService):
    """A blob service whose writers fail on close for blobs containing b"refuse".

    ``received`` lists the contents of every upload that reached close, in order.
    """

    def __init__(self) -> None:
        self.inner = MemoryBlobService()
        self.received: list[bytes] = []

    def has(self, digest: B3Digest) -> bool:
        return self.inner.has(digest)

    def open_read(self, digest: B3Digest):  # type: ignore[no-untyped-def]
        return self.inner.open_read(digest)

    def open_write(self) -> BlobWriter:
        inner = self.inner.open_write()
        seen = bytearray()
        received = self.received

        class W(BlobWriter):
            def write(self, data: bytes | bytearray | memoryview) -> int:
                seen.extend(data)
                return inner.write(data)

            def close(self) -> B3Digest:
                received.append(bytes(seen))
                if b"refuse" in seen:
                    raise StorageError("disk full")
                return inner.close()

            def abort(self) -> None:
                inner.abort()

        return W()


@pytest.fixture
def refusing_server(short_dir: Path) -> Iterator[tuple[str, _RefusingBlobs]]:
    blobs = _RefusingBlobs()
    services = Services(blobs, MemoryDirectoryService(), MemoryPathInfoService())
    sock = str(short_dir / "w.sock")
    daemon = Daemon(services, sock, max_workers=8)
    try:
        yield f"grpc+unix://{sock}", blobs
    finally:
        daemon.stop(grace=1.0)


@pytest.fixture
def refusing(refusing_server: tuple[str, _RefusingBlobs]) -> str:
    return refusing_server[0]


def test_failed_upload_blocks_path_info_put(refusing: str) -> None:
    """close() returns the local digest; the failure shows at the PathInfo put, which stores nothing."""
    blobs = blob_from_addr(refusing)
    dirs = directory_from_addr(refusing)
    infos = path_info_from_addr(refusing, blobs, dirs)
    try:
        good = blobs.put(b"fine")
        w = blobs.open_write()
        w.write(b"please refuse this")
        digest = w.close()
        assert digest == B3Digest.of(b"please refuse this")
        with pytest.raises(StorageError, match=re.escape(f"upload of blob {digest}")):
            infos.put(PATH_INFO)
        assert infos.get(PATH_INFO.store_path.digest) is None
        # Reported once; the good blob arrived, and the next put goes through.
        assert blobs.has(good)
        assert infos.put(PATH_INFO) == PATH_INFO
    finally:
        infos.close()
        dirs.close()
        blobs.close()


def test_failed_upload_shows_at_use_of_digest(refusing: str) -> None:
    """has() of a digest whose upload failed raises instead of answering False."""
    blobs = blob_from_addr(refusing)
    try:
        digest = blobs.put(b"refuse me")
        with pytest.raises(StorageError, match="disk full"):
            blobs.has(digest)
        assert blobs.has(digest) is False
    finally:
        blobs.close()


def test_failure_is_reported_for_its_own_digest(refusing: str) -> None:
    """flush(digest) waits for that blob only and raises only its own failure (a daemon answers
    each Put this way): a failed upload is not charged to another blob, nor reported twice."""
    blobs = blob_from_addr(refusing)
    try:
        bad = blobs.put(b"refuse this one")
        good = blobs.put(b"a good one")
        blobs.flush(good)
        with pytest.raises(StorageError, match="disk full"):
            blobs.flush(bad)
        blobs.flush()  # reported already
    finally:
        blobs.close()


def test_close_waits_for_uploads(refusing: str) -> None:
    """Closing the client waits for its uploads and reports a failure among them."""
    blobs = blob_from_addr(refusing)
    blobs.put(b"refuse on close")
    with pytest.raises(StorageError):
        blobs.close()


def test_calculate_nar_after_upload_and_cached(served: Served) -> None:
    """CalculateNAR right after a (write-behind) upload sees the blob; the daemon caches the result."""
    import hashlib

    from fixtures import CASTORE_NODE_HELLOWORLD, HELLOWORLD_BLOB_CONTENTS, NAR_CONTENTS_HELLOWORLD

    from tvix_store.nar_cache import nar_cache_for

    blobs = blob_from_addr(served.url)
    dirs = directory_from_addr(served.url)
    infos = path_info_from_addr(served.url, blobs, dirs)
    try:
        blobs.put(HELLOWORLD_BLOB_CONTENTS)
        calc = infos.nar_calculation_service()
        assert calc is not None
        expected = (len(NAR_CONTENTS_HELLOWORLD), hashlib.sha256(NAR_CONTENTS_HELLOWORLD).digest())
        assert calc.calculate_nar(CASTORE_NODE_HELLOWORLD) == expected
        cache = nar_cache_for(served.services.path_info_service)
        assert cache.get_nar_cache(CASTORE_NODE_HELLOWORLD) == expected
        assert calc.calculate_nar(CASTORE_NODE_HELLOWORLD) == expected
    finally:
        infos.close()
        dirs.close()
        blobs.close()


def test_repeated_blob_is_sent_once_until_commit(refusing_server: tuple[str, _RefusingBlobs]) -> None:
    """The same bytes put many times reach the server once; after a wait for all uploads (the
    commit point of an import) they are sent again, so a server that lost them gets them back."""
    url, server = refusing_server
    blobs = blob_from_addr(url)
    try:
        empty = B3Digest.of(b"")
        assert blobs.put_many([b"", b"same", b"", b"same", b"other"]) == [
            empty,
            B3Digest.of(b"same"),
            empty,
            B3Digest.of(b"same"),
            B3Digest.of(b"other"),
        ]
        for _ in range(20):
            assert blobs.put(b"same") == B3Digest.of(b"same")
        blobs.flush()
        assert sorted(server.received) == [b"", b"other", b"same"]
        assert blobs.has(B3Digest.of(b"same"))
        assert blobs.put(b"same") == B3Digest.of(b"same")
        blobs.flush()
        assert sorted(server.received) == [b"", b"other", b"same", b"same"]
    finally:
        blobs.close()


def test_failed_upload_is_sent_again(refusing_server: tuple[str, _RefusingBlobs]) -> None:
    """A repeat of a blob whose upload failed is sent again, and fails again, visibly."""
    url, server = refusing_server
    blobs = blob_from_addr(url)
    try:
        digest = blobs.put(b"refuse twice")
        with pytest.raises(StorageError, match="disk full"):
            blobs.has(digest)
        assert blobs.put(b"refuse twice") == digest
        with pytest.raises(StorageError, match="disk full"):
            blobs.flush()
        assert server.received == [b"refuse twice", b"refuse twice"]
    finally:
        blobs.close()


def test_import_of_repeated_files_through_daemon(
    refusing_server: tuple[str, _RefusingBlobs], tmp_path: Path
) -> None:
    """A tree of many identical files imports as locally, each distinct content uploaded once."""
    from tvix_store.import_path import import_path

    url, server = refusing_server
    tree = tmp_path / "tree"
    for d in range(10):
        (tree / f"pkg{d}").mkdir(parents=True)
        (tree / f"pkg{d}" / "__init__.py").write_bytes(b"")
        (tree / f"pkg{d}" / "LICENSE").write_bytes(b"same licence text\n" * 100)
        (tree / f"pkg{d}" / "own.py").write_bytes(f"value = {d}\n".encode())
    blobs = blob_from_addr(url)
    dirs = directory_from_addr(url)
    infos = path_info_from_addr(url, blobs, dirs)
    local = Services(MemoryBlobService(), MemoryDirectoryService(), MemoryPathInfoService())
    try:
        remote_info = import_path(Services(blobs, dirs, infos), str(tree))
        assert remote_info == import_path(local, str(tree))
        assert infos.get(remote_info.store_path.digest) == remote_info
        assert sorted(server.received) == sorted(
            [b"", b"same licence text\n" * 100] + [f"value = {d}\n".encode() for d in range(10)]
        )
    finally:
        infos.close()
        dirs.close()
        blobs.close()
