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
