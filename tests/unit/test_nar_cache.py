"""The NAR-calculation cache (tvix_store/nar_cache.py), memory and LMDB variants."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from fixtures import CASTORE_NODE_COMPLICATED, CASTORE_NODE_HELLOWORLD, CASTORE_NODE_SYMLINK

from tvix_castore import blobservice, directoryservice
from tvix_castore.nodes import FileNode
from tvix_store import pathinfoservice
from tvix_store.nar_cache import LmdbNarCache, MemoryNarCache, NarCache, nar_cache_for, nar_cache_key

SHA = hashlib.sha256(b"nar").digest()


@pytest.fixture(params=["memory", "lmdb"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NarCache]:
    """Each cache variant, fresh."""
    c: NarCache = MemoryNarCache() if request.param == "memory" else LmdbNarCache(str(tmp_path / "store"))
    yield c
    c.close()


def test_key_is_blake3_of_anonymous_node() -> None:
    """The key is BLAKE3 of the anonymous Node encoding (the hello-world vector of §10)."""
    anon = base64.urlsafe_b64decode("EiQSIFyngVrctITpoTbBHv5pwdUwF21Um10Y0DjrUoC0s0cMGAw=")
    assert nar_cache_key(CASTORE_NODE_HELLOWORLD) == blake3.blake3(anon).digest()


def test_get_put(cache: NarCache) -> None:
    """Unknown nodes miss; a put node hits with exactly what was put."""
    assert cache.get_nar_cache(CASTORE_NODE_HELLOWORLD) is None
    cache.put_nar_cache(CASTORE_NODE_HELLOWORLD, 128, SHA)
    cache.put_nar_cache(CASTORE_NODE_COMPLICATED, 1 << 63, bytes(32))
    assert cache.get_nar_cache(CASTORE_NODE_HELLOWORLD) == (128, SHA)
    assert cache.get_nar_cache(CASTORE_NODE_COMPLICATED) == (1 << 63, bytes(32))
    assert cache.get_nar_cache(CASTORE_NODE_SYMLINK) is None


def test_executable_bit_is_part_of_the_key(cache: NarCache) -> None:
    """A file's executable bit changes its NAR, so it changes the key."""
    cache.put_nar_cache(CASTORE_NODE_HELLOWORLD, 128, SHA)
    exe = FileNode(CASTORE_NODE_HELLOWORLD.digest, CASTORE_NODE_HELLOWORLD.size, True)
    assert cache.get_nar_cache(exe) is None


@pytest.mark.parametrize(("size", "sha"), [(-1, SHA), (1 << 64, SHA), (1, b"short")])
def test_bad_values_refused(cache: NarCache, size: int, sha: bytes) -> None:
    """Sizes outside u64 and hashes that are not 32 bytes are refused."""
    with pytest.raises(ValueError):
        cache.put_nar_cache(CASTORE_NODE_HELLOWORLD, size, sha)


def test_lmdb_cache_persists_and_is_shared(tmp_path: Path) -> None:
    """The LMDB cache survives reopening, and a path-info service hands out the same table."""
    path = tmp_path / "store"
    first = LmdbNarCache(str(path))
    first.put_nar_cache(CASTORE_NODE_SYMLINK, 136, SHA)
    first.close()
    url = f"lmdb://{path}"
    blobs, dirs = blobservice.from_addr(url), directoryservice.from_addr(url)
    infos = pathinfoservice.from_addr(url, blobs, dirs)
    try:
        cache = nar_cache_for(infos)
        assert isinstance(cache, LmdbNarCache)
        assert cache.get_nar_cache(CASTORE_NODE_SYMLINK) == (136, SHA)
    finally:
        infos.close()
        dirs.close()
        blobs.close()


def test_nar_cache_for_memory_service() -> None:
    """The memory path-info service keeps one memory cache for its lifetime."""
    blobs, dirs = blobservice.from_addr("memory://"), directoryservice.from_addr("memory://")
    infos = pathinfoservice.from_addr("memory://", blobs, dirs)
    cache = nar_cache_for(infos)
    cache.put_nar_cache(CASTORE_NODE_SYMLINK, 136, SHA)
    assert nar_cache_for(infos).get_nar_cache(CASTORE_NODE_SYMLINK) == (136, SHA)


def test_nar_cache_for_other_services() -> None:
    """A service without a cache of its own gets a fresh memory cache."""
    assert isinstance(nar_cache_for(object()), MemoryNarCache)
