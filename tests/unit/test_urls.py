"""Service addresses for the directory and path-info services: accept/reject tables (spec §9.1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tvix_castore import blobservice, directoryservice
from tvix_castore.directory import Directory
from tvix_castore.directoryservice.lmdb_store import LmdbDirectoryService
from tvix_castore.directoryservice.memory import MemoryDirectoryService
from tvix_castore.errors import InvalidRequest
from tvix_store import pathinfoservice
from tvix_store.pathinfoservice.lmdb_store import LmdbPathInfoService
from tvix_store.pathinfoservice.memory import MemoryPathInfoService


def _directory(url: str) -> object:
    service = directoryservice.from_addr(url)
    service.close()
    return service


def _path_info(url: str) -> object:
    blobs = blobservice.from_addr("memory://")
    dirs = directoryservice.from_addr("memory://")
    try:
        service = pathinfoservice.from_addr(url, blobs, dirs)
        service.close()
        return service
    finally:
        dirs.close()
        blobs.close()


SERVICES: dict[str, tuple[Callable[[str], object], type, type]] = {
    "directory": (_directory, MemoryDirectoryService, LmdbDirectoryService),
    "path_info": (_path_info, MemoryPathInfoService, LmdbPathInfoService),
}

REJECTED = [
    "memory://foo",
    "memory:///",
    "memory:///foo",
    "memory://?option=1",
    "memory://foo.example:1234",
    "lmdb://",
    "lmdb:///",
    "lmdb://host/x",
    "lmdb://host",
    "lmdb://[::1]/x",
    "lmdb:///abs/dir?option=1",
    "http://foo.example/test",
    "foo://",
    "memory",
    "memory:",
    "lmdb:relative/dir",
    "",
]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_memory_accepted(service: str) -> None:
    """``memory://`` builds the in-memory backend."""
    build, memory_cls, _ = SERVICES[service]
    assert isinstance(build("memory://"), memory_cls)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_lmdb_accepted(service: str, tmp_path: Path) -> None:
    """``lmdb:///abs/dir`` builds the LMDB backend and creates the directory."""
    build, _, lmdb_cls = SERVICES[service]
    target = tmp_path / "a" / "store"
    assert isinstance(build(f"lmdb://{target}"), lmdb_cls)
    assert target.is_dir()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_lmdb_accepted_without_authority(service: str, tmp_path: Path) -> None:
    """``lmdb:/abs/dir`` (no ``//``) is the same URL to tvix's parser, and to ours."""
    build, _, lmdb_cls = SERVICES[service]
    assert isinstance(build(f"lmdb:{tmp_path / 'store'}"), lmdb_cls)


@pytest.mark.parametrize("url", REJECTED)
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_rejected(service: str, url: str) -> None:
    """Hosts, paths and options where none belong, unknown schemes and no scheme are refused."""
    build, _, _ = SERVICES[service]
    with pytest.raises(InvalidRequest):
        build(url)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_unknown_type_message(service: str) -> None:
    """An unregistered scheme names its tag (the part before ``+``)."""
    build, _, _ = SERVICES[service]
    with pytest.raises(InvalidRequest, match="Unknown type: foo"):
        build("foo+bar://x")


def test_one_lmdb_store_for_all_services(tmp_path: Path) -> None:
    """The three services of one ``lmdb:///dir`` URL share the environment and can be opened together."""
    url = f"lmdb://{tmp_path / 'store'}"
    blobs = blobservice.from_addr(url)
    dirs = directoryservice.from_addr(url)
    infos = pathinfoservice.from_addr(url, blobs, dirs)
    again = directoryservice.from_addr(url)
    try:
        digest = blobs.put(b"x")
        root = dirs.put(Directory())
        assert again.get(root) == Directory()
        assert list(infos.list()) == []
        assert blobs.has(digest)
    finally:
        again.close()
        infos.close()
        dirs.close()
        blobs.close()


@pytest.mark.parametrize(
    "directory",
    ["/s/plain", "/s/with space", "/s/a#b", "/s/a?b", "/s/100%", "/s/%41", "/s/ünï", "/s/\udcff\udcfe"],
    ids=["plain", "space", "hash", "question", "percent", "escape-like", "unicode", "not-utf8"],
)
def test_path_url_round_trips(directory: str) -> None:
    """A filesystem path made into a URL by path_url parses back to exactly that path, whatever
    characters it has (``#`` and ``?`` would otherwise end it, ``%41`` would become ``A``)."""
    from tvix_castore.url import ServiceUrl, path_url

    url = path_url("lmdb", directory)
    parsed = ServiceUrl.parse(url)
    assert (parsed.scheme, parsed.path, parsed.query) == ("lmdb", directory, {})
    if directory == "/s/plain":
        assert url == "lmdb:///s/plain"


def test_lmdb_url_path_is_percent_decoded(tmp_path: Path) -> None:
    """``lmdb:///a%20b`` is the directory ``a b``, as ``grpc+unix:///a%20b`` is the socket ``a b``."""
    url = f"lmdb://{tmp_path}/a%20b%23c"
    service = directoryservice.from_addr(url)
    try:
        service.put(Directory())
    finally:
        service.close()
    assert (tmp_path / "a b#c" / "data.mdb").exists()
    assert not (tmp_path / "a%20b%23c").exists()


@pytest.mark.parametrize("url", ["lmdb:///s/a%00b", "grpc+unix:///s/a%00b.sock"])
def test_nul_in_url_path_is_refused(url: str) -> None:
    """A NUL byte cannot be in a filesystem path: refused, not cut off or passed to the OS."""
    from tvix_castore.url import ServiceUrl

    with pytest.raises(InvalidRequest, match="NUL byte"):
        ServiceUrl.parse(url)
