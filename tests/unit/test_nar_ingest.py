"""NAR ingestion (spec §6.3): fixture NARs into castore, against every local backend."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import (
    CASTORE_NODE_COMPLICATED,
    CASTORE_NODE_HELLOWORLD,
    CASTORE_NODE_SYMLINK,
    DIRECTORY_COMPLICATED,
    DIRECTORY_WITH_KEEP,
    HELLOWORLD_BLOB_CONTENTS,
    NAR_CONTENTS_COMPLICATED,
    NAR_CONTENTS_HELLOWORLD,
    NAR_CONTENTS_SYMLINK,
    nar,
)
from store_services import LOCAL_KINDS, local_services

from nix_compat.errors import NarError
from tvix_castore.nodes import DirectoryNode, FileNode, Node
from tvix_store.nar.ingest import ingest_nar
from tvix_store.nar.renderer import write_nar
from tvix_store.services import Services


@pytest.fixture(params=LOCAL_KINDS)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    with local_services(request.param, tmp_path) as s:
        yield s


def ingest(s: Services, data: bytes) -> tuple[Node, bytes, int]:
    return ingest_nar(s.blob_service, s.directory_service, io.BytesIO(data).read)


@pytest.mark.parametrize(
    ("data", "node"),
    [
        (NAR_CONTENTS_SYMLINK, CASTORE_NODE_SYMLINK),
        (NAR_CONTENTS_HELLOWORLD, CASTORE_NODE_HELLOWORLD),
        (NAR_CONTENTS_COMPLICATED, CASTORE_NODE_COMPLICATED),
    ],
    ids=["symlink", "helloworld", "complicated"],
)
def test_ingest_fixtures(services: Services, data: bytes, node: Node) -> None:
    """Each fixture NAR yields its fixture node, with the NAR's own size and SHA-256."""
    assert ingest(services, data) == (node, hashlib.sha256(data).digest(), len(data))


def test_ingest_helloworld_stores_blob(services: Services) -> None:
    """File contents end up as a blob under their BLAKE3 digest."""
    node, _, _ = ingest(services, NAR_CONTENTS_HELLOWORLD)
    assert isinstance(node, FileNode)
    reader = services.blob_service.open_read(node.digest)
    assert reader is not None
    assert reader.read() == HELLOWORLD_BLOB_CONTENTS


def test_ingest_complicated_directories(services: Services) -> None:
    """The complicated NAR stores exactly DIRECTORY_COMPLICATED and DIRECTORY_WITH_KEEP."""
    node, _, _ = ingest(services, NAR_CONTENTS_COMPLICATED)
    assert isinstance(node, DirectoryNode)
    assert node.size == 8  # decision 1: the snapshot size definition
    assert list(services.directory_service.get_recursive(node.digest)) == [
        DIRECTORY_COMPLICATED,
        DIRECTORY_WITH_KEEP,
    ]


def test_ingest_executable_and_roundtrip(services: Services) -> None:
    """An executable file in a nested tree survives ingest -> render byte for byte."""
    data = nar(
        b"nix-archive-1", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"bin", b"node", b"(", b"type", b"directory",
        b"entry", b"(", b"name", b"run", b"node", b"(", b"type", b"regular",
        b"executable", b"", b"contents", b"#!/bin/sh\n", b")", b")",
        b")", b")",
        b"entry", b"(", b"name", b"empty", b"node", b"(", b"type", b"directory", b")", b")",
        b")",
    )  # fmt: skip
    node, sha, size = ingest(services, data)
    out = io.BytesIO()
    write_nar(out.write, node, services.blob_service, services.directory_service)
    assert out.getvalue() == data
    assert (sha, size) == (hashlib.sha256(data).digest(), len(data))


def test_ingest_stops_after_root(services: Services) -> None:
    """Bytes after the NAR are not consumed (and not hashed)."""
    stream = io.BytesIO(NAR_CONTENTS_SYMLINK + b"trailing")
    _, sha, size = ingest_nar(services.blob_service, services.directory_service, stream.read)
    assert (sha, size) == (hashlib.sha256(NAR_CONTENTS_SYMLINK).digest(), len(NAR_CONTENTS_SYMLINK))
    assert stream.read() == b"trailing"


@pytest.mark.parametrize("cut", [1, 100, len(NAR_CONTENTS_COMPLICATED) - 1])
def test_ingest_truncated_stores_no_directory(services: Services, cut: int) -> None:
    """A truncated NAR raises NarError, and its Directories never become visible."""
    with pytest.raises(NarError, match="unexpected end"):
        ingest(services, NAR_CONTENTS_COMPLICATED[:cut])
    assert services.directory_service.get(DIRECTORY_WITH_KEEP.digest()) is None
    assert services.directory_service.get(DIRECTORY_COMPLICATED.digest()) is None


def _deep_nar(depth: int) -> bytes:
    """A root directory with `depth` directories nested below it, each holding a file "0"
    beside the next directory "a" (so every level has a child waiting for its parent)."""
    level = (b"entry", b"(", b"name", b"0", b"node", b"(", b"type", b"regular", b"contents", b"x", b")", b")")
    tokens = [b"nix-archive-1", b"(", b"type", b"directory"]
    for _ in range(depth):
        tokens += [*level, b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory"]
    tokens += [b")", b")"] * depth + [b")"]
    return nar(*tokens)


def test_deepest_nar_round_trips(services: Services) -> None:
    """2047 directories below the root (2048 in all, the most a NAR may nest): ingested and
    rendered back byte for byte."""
    from nix_compat.nar.wire import MAX_DEPTH

    data = _deep_nar(MAX_DEPTH - 1)
    root, _, _ = ingest(services, data)
    out = io.BytesIO()
    write_nar(out.write, root, services.blob_service, services.directory_service)
    assert out.getvalue() == data


def test_nar_nested_too_deep_is_refused(services: Services) -> None:
    """One level more is refused where it starts: a NAR Nix could neither make nor unpack, which
    would otherwise cost memory that grows with the square of its depth."""
    from nix_compat.nar.wire import MAX_DEPTH

    data = _deep_nar(MAX_DEPTH)
    with pytest.raises(NarError, match=f"directories nested more than {MAX_DEPTH} deep"):
        ingest(services, data)
    with pytest.raises(NarError, match="nested more than"):
        ingest(services, _deep_nar(30_000))


def test_small_files_are_stored_in_batches(tmp_path: Path) -> None:
    """LMDB: the files of a NAR below 1 MiB share commits (a disk flush each), as an import of
    the same tree from the filesystem does; a bigger one is streamed on its own."""
    import os

    from tvix_castore.blobservice.lmdb_store import LmdbBlobService
    from tvix_castore.ingest.fs import ingest_path

    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(300):
        (tree / "d" / f"f{i:03}").write_bytes(b"%d\n" % i)
    (tree / "chunked").write_bytes(os.urandom(600 * 1024))  # cut into chunks, still batched
    (tree / "big").write_bytes(os.urandom(2 * 1024 * 1024))
    with local_services("memory", tmp_path / "m") as memory:
        node = ingest_path(memory.blob_service, memory.directory_service, str(tree))
        out = io.BytesIO()
        write_nar(out.write, node, memory.blob_service, memory.directory_service)
    data = out.getvalue()
    with local_services("lmdb", tmp_path / "l") as s:
        blob_service = s.blob_service
        assert isinstance(blob_service, LmdbBlobService) and blob_service._store is not None
        env = blob_service._store.env
        before = env.info()["last_txnid"]
        root, sha, size = ingest(s, data)
        # One batch of small files, the big file, the Directories.
        assert env.info()["last_txnid"] - before <= 3
        assert root == node and size == len(data) and sha == hashlib.sha256(data).digest()
        again = io.BytesIO()
        write_nar(again.write, root, s.blob_service, s.directory_service)
        assert again.getvalue() == data
