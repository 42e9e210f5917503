"""Zero-copy reads from the LMDB blob store (``open_views``) and the NAR renderer that uses them."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_services import local_services

from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.chunker import MAX_SIZE
from tvix_castore.digests import B3Digest
from tvix_castore.directory import Directory
from tvix_castore.errors import DataCorruption, StorageError
from tvix_castore.nodes import FileNode
from tvix_store.nar.renderer import write_nar
from tvix_store.services import Services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with local_services("lmdb", tmp_path) as s:
        yield s


def _lmdb(services: Services) -> LmdbBlobService:
    blobs = services.blob_service
    assert isinstance(blobs, LmdbBlobService)
    return blobs


def _render(services: Services, node: FileNode, zero_copy: bool) -> bytes:
    out = io.BytesIO()
    tree = Directory({b"f": node})
    services.directory_service.put(tree)
    write_nar(
        out.write, tree.as_node(), services.blob_service, services.directory_service, zero_copy=zero_copy
    )
    return out.getvalue()


def _chunks_table_put(services: Services, key: bytes, value: bytes) -> None:
    blobs = _lmdb(services)
    db: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with blobs._env.begin(write=True, db=db) as txn:
        txn.put(key, value)


def test_views_cover_every_chunk(services: Services) -> None:
    """A multi-chunk blob's views concatenate to its bytes; size is announced up front."""
    data = os.urandom(4 * MAX_SIZE + 3)
    digest = services.blob_service.put(data)
    opened = _lmdb(services).open_views(digest)
    assert opened is not None
    size, views = opened
    assert size == len(data)
    assert b"".join(bytes(v) for v in views) == data
    assert _lmdb(services).open_views(B3Digest.of(b"absent")) is None


def test_zero_copy_render_matches_copying_render(services: Services) -> None:
    """Both rendering paths give the same NAR for a multi-chunk and a single-chunk file."""
    for data in (os.urandom(3 * MAX_SIZE + 11), b"small"):
        node = FileNode(services.blob_service.put(data), len(data), True)
        assert _render(services, node, True) == _render(services, node, False)


def test_corrupt_chunk_refused_by_views(services: Services) -> None:
    """A chunk whose bytes do not hash to its key is refused before any of it is handed out."""
    digest = services.blob_service.put(b"original bytes")
    _chunks_table_put(services, digest, b"tampered bytes")
    opened = _lmdb(services).open_views(digest)
    assert opened is not None
    with pytest.raises(DataCorruption, match=re.escape(str(digest))):
        next(opened[1])


def test_missing_chunk_of_multi_chunk_blob(services: Services) -> None:
    """A chunk list naming an absent chunk fails while iterating, naming chunk and blob."""
    data = os.urandom(3 * MAX_SIZE)
    digest = services.blob_service.put(data)
    chunks = services.blob_service.chunks(digest)
    assert chunks
    blobs = _lmdb(services)
    db: Any = blobs._store.table("chunks") if blobs._store is not None else None
    with blobs._env.begin(write=True, db=db) as txn:
        txn.delete(chunks[1].digest)
    opened = blobs.open_views(digest)
    assert opened is not None
    with pytest.raises(StorageError, match=re.escape(str(chunks[1].digest))):
        list(opened[1])
