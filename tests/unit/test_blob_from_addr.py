"""Blob service URLs: which addresses build which backend (tvix blobservice/from_addr.rs table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvix_castore.blobservice import from_addr
from tvix_castore.blobservice.lmdb_store import LmdbBlobService
from tvix_castore.blobservice.memory import MemoryBlobService
from tvix_castore.errors import InvalidRequest


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("memory://", True),
        ("memory://foo", False),
        ("memory:///", False),
        ("memory:///foo", False),
        ("memory://?x=1", False),
        ("http://foo.example/test", False),
        ("nonsense", False),
    ],
)
def test_memory_urls(url: str, ok: bool) -> None:
    """memory:// takes no host, path or options; unknown schemes are refused."""
    if ok:
        s = from_addr(url)
        assert isinstance(s, MemoryBlobService)
        s.close()
    else:
        with pytest.raises(InvalidRequest):
            from_addr(url)


@pytest.mark.parametrize(
    ("template", "ok"),
    [
        ("lmdb://{dir}", True),
        ("lmdb://host.example{dir}", False),
        ("lmdb://", False),
        ("lmdb:///", False),
        ("lmdb://{dir}?foo=bar", False),
    ],
)
def test_lmdb_urls(tmp_path: Path, template: str, ok: bool) -> None:
    """lmdb:// needs an absolute directory other than / and takes no host or options."""
    url = template.format(dir=tmp_path / "store")
    if ok:
        s = from_addr(url)
        assert isinstance(s, LmdbBlobService)
        assert s.path == str((tmp_path / "store").resolve())
        s.close()
    else:
        with pytest.raises(InvalidRequest):
            from_addr(url)
    if not ok:
        assert not (tmp_path / "store").exists()
