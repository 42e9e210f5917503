"""Write-behind blob uploads: a failed upload surfaces at the next use of its digest and at the
next PathInfo put to the same server, which then stores nothing."""

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
    """A blob service whose writers fail on close for blobs containing b"refuse"."""

    def __init__(self) -> None:
        self.inner = MemoryBlobService()

    def has(self, digest: B3Digest) -> bool:
        return self.inner.has(digest)

    def open_read(self, digest: B3Digest):  # type: ignore[no-untyped-def]
        return self.inner.open_read(digest)

    def open_write(self) -> BlobWriter:
        inner = self.inner.open_write()
        seen = bytearray()

        class W(BlobWriter):
            def write(self, data: bytes | bytearray | memoryview) -> int:
                seen.extend(data)
                return inner.write(data)

            def close(self) -> B3Digest:
                if b"refuse" in seen:
                    raise StorageError("disk full")
                return inner.close()

            def abort(self) -> None:
                inner.abort()

        return W()


@pytest.fixture
def refusing(short_dir: Path) -> Iterator[str]:
    services = Services(_RefusingBlobs(), MemoryDirectoryService(), MemoryPathInfoService())
    sock = str(short_dir / "w.sock")
    daemon = Daemon(services, sock, max_workers=8)
    try:
        yield f"grpc+unix://{sock}"
    finally:
        daemon.stop(grace=1.0)


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
