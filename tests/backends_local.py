"""In-process backends for the conformance suites: ``memory://`` and ``lmdb:///tmp-dir``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends import register_blob

from tvix_castore.blobservice import BlobService
from tvix_castore.blobservice import from_addr as blob_from_addr

# ---- BlobService (helper H2a) -------------------------------------------------------------------


@register_blob("memory")
@contextmanager
def _memory_blobs(tmp: Path) -> Iterator[BlobService]:
    service = blob_from_addr("memory://")
    try:
        yield service
    finally:
        service.close()


@register_blob("lmdb")
@contextmanager
def _lmdb_blobs(tmp: Path) -> Iterator[BlobService]:
    service = blob_from_addr(f"lmdb://{tmp / 'store'}")
    try:
        yield service
    finally:
        service.close()


# ---- end BlobService ----------------------------------------------------------------------------


# ---- DirectoryService and PathInfoService (helper H2b) ------------------------------------------

from backends import register_directory, register_path_info  # noqa: E402

from tvix_castore.directoryservice import DirectoryService  # noqa: E402
from tvix_castore.directoryservice import from_addr as directory_from_addr  # noqa: E402
from tvix_store.pathinfoservice import PathInfoService  # noqa: E402
from tvix_store.pathinfoservice import from_addr as path_info_from_addr  # noqa: E402


@register_directory("memory")
@contextmanager
def _memory_directories(tmp: Path) -> Iterator[DirectoryService]:
    service = directory_from_addr("memory://")
    try:
        yield service
    finally:
        service.close()


@register_directory("lmdb")
@contextmanager
def _lmdb_directories(tmp: Path) -> Iterator[DirectoryService]:
    service = directory_from_addr(f"lmdb://{tmp / 'store'}")
    try:
        yield service
    finally:
        service.close()


@register_path_info("memory")
@contextmanager
def _memory_path_infos(tmp: Path) -> Iterator[PathInfoService]:
    blobs = blob_from_addr("memory://")
    dirs = directory_from_addr("memory://")
    service = path_info_from_addr("memory://", blobs, dirs)
    try:
        yield service
    finally:
        service.close()
        dirs.close()
        blobs.close()


@register_path_info("lmdb")
@contextmanager
def _lmdb_path_infos(tmp: Path) -> Iterator[PathInfoService]:
    url = f"lmdb://{tmp / 'store'}"
    blobs = blob_from_addr(url)
    dirs = directory_from_addr(url)
    service = path_info_from_addr(url, blobs, dirs)
    try:
        yield service
    finally:
        service.close()
        dirs.close()
        blobs.close()


# ---- end DirectoryService and PathInfoService ---------------------------------------------------
