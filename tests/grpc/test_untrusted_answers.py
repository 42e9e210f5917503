"""Answers a gRPC client must not take from a server: every one here is well-formed and made of
genuine, verifiable parts, but stands for something other than what was asked for.

- a chunk list of another blob (of the same size), whose chunks are all genuine;
- the PathInfo of another store path for a Get, or one other than the PathInfo sent for a Put.

The servers are real daemons (``tvix_store.server.Daemon`` on a unix socket) over services that
swap their answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import daemon_serving
from fixtures import PATH_INFO
from tvix_cli import cli_env, one_line_error, tvix

from nix_compat.signing import Signature
from nix_compat.store_path import StorePath
from tvix_castore.blobservice import ChunkMeta
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.digests import B3Digest
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import DataCorruption, StorageError
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import from_addr as path_info_from_addr
from tvix_store.pathinfoservice.memory import MemoryPathInfoService
from tvix_store.services import Services

MiB = 1024 * 1024
OTHER = PATH_INFO.replace(store_path=StorePath.from_bytes(b"11111111111111111111111111111111-other"))


class _SwappedChunkLists(LmdbBlobService):
    """Answers a Stat of a blob in ``swapped`` with the chunk list given there."""

    swapped: dict[B3Digest, list[ChunkMeta]]

    def chunks(self, digest: B3Digest) -> list[ChunkMeta] | None:
        listed = getattr(self, "swapped", {}).get(digest)
        return listed if listed is not None else super().chunks(digest)


@pytest.fixture
def swapping(tmp_path: Path, short_dir: Path) -> Iterator[tuple[str, _SwappedChunkLists]]:
    blobs = _SwappedChunkLists(str(tmp_path / "store"))
    services = Services(blobs, MemoryDirectoryService(), MemoryPathInfoService())
    with daemon_serving(services, str(short_dir / "swap.sock"), max_workers=8) as url:
        yield url, blobs


def test_a_chunk_list_of_another_blob_is_refused(swapping: tuple[str, _SwappedChunkLists]) -> None:
    """Two blobs of one size; the server answers X's Stat with Y's chunks. Every chunk checks out
    on its own, but a reader of X gets an error, not the last chunk of Y: nothing it was handed
    amounts to a blob that is not X."""
    url, blobs = swapping
    x, y = os.urandom(3 * MiB), os.urandom(3 * MiB)
    x_digest, y_digest = blobs.put(x), blobs.put(y)
    y_chunks = blobs.chunks(y_digest)
    assert y_chunks is not None and len(y_chunks) > 2  # the premise: Y is split
    blobs.swapped = {x_digest: y_chunks}
    client = blob_from_addr(url)
    try:
        reader = client.open_read(x_digest)
        assert reader is not None and reader.size() == len(x)
        got = bytearray()
        with pytest.raises(DataCorruption, match=re.escape(f"blob {x_digest}: its {len(y_chunks)} chunks")):
            while piece := reader.read(MiB // 4):
                got += piece
        assert len(got) == len(y) - y_chunks[-1].size  # all but the last chunk, and no more
        with pytest.raises(DataCorruption):  # asked again, the last chunk is still refused
            reader.read()
        # Y itself, with its own chunk list, reads fine.
        y_reader = client.open_read(y_digest)
        assert y_reader is not None and y_reader.read() == y
    finally:
        client.close()


def test_a_single_chunk_of_another_blob_is_refused(swapping: tuple[str, _SwappedChunkLists]) -> None:
    """The same with a chunk list of one entry: another small blob, stored whole."""
    url, blobs = swapping
    x, y = os.urandom(100_000), os.urandom(100_000)
    x_digest, y_digest = blobs.put(x), blobs.put(y)
    blobs.swapped = {x_digest: [ChunkMeta(y_digest, len(y))]}
    client = blob_from_addr(url)
    try:
        reader = client.open_read(x_digest)
        assert reader is not None
        with pytest.raises(DataCorruption):
            reader.read()
    finally:
        client.close()


class _LyingPathInfos(MemoryPathInfoService):
    """Answers every Get with OTHER, and a Put with what ``answer`` makes of the PathInfo sent."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = lambda info: OTHER

    def get(self, digest: bytes) -> PathInfo | None:
        return OTHER

    def put(self, info: PathInfo) -> PathInfo:
        super().put(info)
        return self.answer(info)


@pytest.fixture
def lying(tmp_path: Path, short_dir: Path) -> Iterator[tuple[str, _LyingPathInfos]]:
    infos = _LyingPathInfos()
    services = Services(LmdbBlobService(str(tmp_path / "store")), MemoryDirectoryService(), infos)
    with daemon_serving(services, str(short_dir / "lie.sock"), max_workers=8) as url:
        yield url, infos


def test_a_path_info_of_another_path_is_refused(lying: tuple[str, _LyingPathInfos]) -> None:
    url, _ = lying
    blobs = blob_from_addr(url)
    client = path_info_from_addr(url, blobs, MemoryDirectoryService())
    try:
        with pytest.raises(StorageError, match="the server sent the one of /nix/store/1111"):
            client.get(PATH_INFO.store_path.digest)
    finally:
        client.close()
        blobs.close()


def test_a_put_answered_with_another_path_info_fails(lying: tuple[str, _LyingPathInfos]) -> None:
    """Put answered with another path's PathInfo, or with this one's under another NAR hash:
    an error; one that only adds a signature is what the server stored."""
    url, infos = lying
    blobs = blob_from_addr(url)
    client = path_info_from_addr(url, blobs, MemoryDirectoryService())
    signature = Signature.parse("cache.example.org-1:" + "A" * 86 + "==")
    try:
        with pytest.raises(StorageError, match="differs from the one sent"):
            client.put(PATH_INFO)
        infos.answer = lambda info: info.replace(nar_sha256=bytes([1]) * 32)
        with pytest.raises(StorageError, match="differs from the one sent"):
            client.put(PATH_INFO)
        infos.answer = lambda info: info.with_signatures((*info.signatures, signature))
        stored = client.put(PATH_INFO)
        assert stored.signatures == (signature,) and stored.with_signatures(()) == PATH_INFO
    finally:
        client.close()
        blobs.close()


def test_import_through_a_lying_server_fails(tmp_path: Path, lying: tuple[str, _LyingPathInfos]) -> None:
    """``import`` prints the store path the server answered: that must be the path it computed,
    or the command fails with one error line."""
    url, _ = lying
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello\n")
    env = cli_env(tmp_path / "unused")
    for var in ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR"):
        env[var] = url
    res = tvix(tmp_path / "unused", "import", str(src), env=env, check=False)
    assert res.stdout == b""
    line = one_line_error(res)
    assert "differs from the one sent" in line, line


def test_a_chunk_list_with_an_empty_chunk_is_refused(swapping: tuple[str, _SwappedChunkLists]) -> None:
    """No read ever falls in a chunk of 0 bytes, so the whole-blob check would never reach
    the end of such a list: another blob plus an empty chunk read back as this one."""
    from tvix_castore.digests import EMPTY_BLOB_DIGEST

    url, blobs = swapping
    x, y = b"R" * 100_000, os.urandom(100_000)
    x_digest, y_digest = blobs.put(x), blobs.put(y)
    blobs.swapped = {x_digest: [ChunkMeta(y_digest, len(y)), ChunkMeta(EMPTY_BLOB_DIGEST, 0)]}
    client = blob_from_addr(url)
    try:
        with pytest.raises(StorageError, match="chunk #1 is empty"):
            client.open_read(x_digest)
    finally:
        client.close()
