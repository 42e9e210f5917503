"""``nix+http://`` PathInfoService and the ``cache://?near=…&far=…`` composition (issue 5 point 2)."""

from __future__ import annotations

import urllib.parse

import pytest
from cache_helpers import static_server
from fixtures import PATH_INFO
from tvix_cli import nix_dump

from nix_compat.store_path import StorePath
from tvix_castore.errors import InvalidRequest
from tvix_store.binary_cache import BinaryCacheError
from tvix_store.binary_cache.fetch import join_url
from tvix_store.nar.renderer import write_nar
from tvix_store.pathinfoservice.cache import CachePathInfoService
from tvix_store.pathinfoservice.nix_http import NixHttpPathInfoService
from tvix_store.services import Services, construct_services


def _nar(services: Services, node: object) -> bytes:
    out = bytearray()
    write_nar(out.extend, node, services.blob_service, services.directory_service)  # type: ignore[arg-type]
    return bytes(out)


def test_join_keeps_last_segment():
    """Spec §15 item 9, fixed: a base path without trailing slash keeps its last segment."""
    assert join_url("http://192.0.2.1/foo", "x.narinfo") == "http://192.0.2.1/foo/x.narinfo"
    assert join_url("http://192.0.2.1/foo/", "x.narinfo") == "http://192.0.2.1/foo/x.narinfo"
    assert join_url("http://[::1]:8080", "nar/a.nar.xz") == "http://[::1]:8080/nar/a.nar.xz"
    assert join_url("file:///tmp/c?compression=xz", "nar/a.nar") == "file:///tmp/c/nar/a.nar"
    assert join_url("https://h/c", "https://other/n.nar") == "https://other/n.nar"


def test_from_url_rules(tmp_path):
    blobs_dirs = construct_services("memory://", "memory://", "memory://")
    b, d = blobs_dirs.blob_service, blobs_dirs.directory_service
    from tvix_store import pathinfoservice

    svc = pathinfoservice.from_addr(
        "nix+http://192.0.2.1/foo?trusted-public-keys=a-1:" + "A" * 43 + "=", b, d
    )
    assert isinstance(svc, NixHttpPathInfoService)
    assert svc.base_url == "http://192.0.2.1/foo"
    assert [k.name for k in svc.trusted_keys] == ["a-1"]
    refused = f"cannot put {PATH_INFO.store_path.absolute()} into .* read-only"
    with pytest.raises(InvalidRequest, match=refused):
        svc.put(PATH_INFO)
    with pytest.raises(InvalidRequest, match="list not supported"):
        svc.list()
    # tvix's names of the services to ingest into: "default" is the one this command has.
    named = pathinfoservice.from_addr(
        "nix+http://[::1]:8080/foo?blob_service=default&directory_service=default", b, d
    )
    assert isinstance(named, NixHttpPathInfoService) and named.base_url == "http://[::1]:8080/foo"
    for bad in (
        "nix+http:///nohost",
        "nix+ftp://h/x",
        "nix+http://h/x?bogus=1",
        "nix+http://h?trusted-public-keys=zz",
        "nix+http://h?blob_service=other",
    ):
        with pytest.raises(InvalidRequest):
            pathinfoservice.from_addr(bad, b, d)
    for bad in (
        "cache://?near=memory://",
        "cache://host?near=memory://&far=memory://",
        "cache://?far=memory://",
    ):
        with pytest.raises(InvalidRequest):
            pathinfoservice.from_addr(bad, b, d)
    blobs_dirs.close()


@pytest.mark.nix
def test_cache_fetches_once_then_serves_locally(tmp_path, nix_closure):
    """near misses -> far (a Nix-written cache over HTTP, signature checked) -> stored in near."""
    caches_dir = nix_closure["caches"]["signed"].parent
    leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
    digest = StorePath.from_absolute_path(leaf).digest
    store = f"lmdb://{tmp_path / 'store'}"
    with static_server(caches_dir) as base:
        far = f"nix+{base}/cache-signed?trusted-public-keys={urllib.parse.quote(nix_closure['pk'])}"
        url = f"cache://?near={store}&far={urllib.parse.quote(far, safe=':/?=')}"
        services = construct_services(store, store, url)
        try:
            assert isinstance(services.path_info_service, CachePathInfoService)
            assert services.path_info_service.near.get(digest) is None
            info = services.path_info_service.get(digest)
            assert info is not None and info.store_path.absolute() == leaf
            assert _nar(services, info.node) == nix_dump(leaf)
            assert services.path_info_service.near.get(digest) == info
            assert services.path_info_service.get(b"\0" * 20) is None
        finally:
            services.close()
    # the HTTP server is gone: the path still comes from near
    services = construct_services(store, store, url)
    try:
        info = services.path_info_service.get(digest)
        assert info is not None and _nar(services, info.node) == nix_dump(leaf)
        assert [i.store_path.absolute() for i in services.path_info_service.list()] == [leaf]
    finally:
        services.close()


@pytest.mark.nix
def test_nix_http_refuses_bad_signature_and_compressions(tmp_path, nix_closure):
    """Untrusted signer -> error; every compression Nix writes ingests to the same NAR."""
    leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
    digest = StorePath.from_absolute_path(leaf).digest
    caches_dir = nix_closure["caches"]["signed"].parent
    with static_server(caches_dir) as base:
        for comp in ("xz", "zstd", "bzip2", "none"):
            services = construct_services("memory://", "memory://", f"nix+{base}/cache-{comp}")
            info = services.path_info_service.get(digest)
            assert info is not None and _nar(services, info.node) == nix_dump(leaf)
            services.close()
        services = construct_services(
            "memory://", "memory://", f"nix+{base}/cache-none?trusted-public-keys={nix_closure['pk']}"
        )
        with pytest.raises(BinaryCacheError, match="no valid signature"):
            services.path_info_service.get(digest)
        # Unlike `copy` (and Nix), the service wants a signature of a content-addressed path too
        # (spec §9.4).
        note = next(p for p in nix_closure["paths"] if p.endswith("-h6-note"))
        assert nix_closure["path_info"][note].get("ca")
        with pytest.raises(BinaryCacheError, match="no valid signature"):
            services.path_info_service.get(StorePath.from_absolute_path(note).digest)
        services.close()


@pytest.mark.nix
def test_cache_stores_nothing_in_near_when_the_blobs_did_not_arrive(tmp_path, nix_closure, short_dir):
    """With a blob service that writes behind (gRPC) and refuses the blobs, a far hit must not
    leave near a PathInfo whose blobs never arrived (near is asked first, so far would never
    be asked again)."""
    from daemon_helpers import daemon_serving

    from tvix_castore.blobservice.memory import MemoryBlobService
    from tvix_castore.directoryservice.memory import MemoryDirectoryService
    from tvix_castore.errors import StorageError
    from tvix_store.pathinfoservice.memory import MemoryPathInfoService

    class RefusingBlobs(MemoryBlobService):
        def _store(self, digest: object, data: bytes) -> None:
            raise StorageError("no room left")

    refusing = Services(RefusingBlobs(), MemoryDirectoryService(), MemoryPathInfoService())
    caches_dir = nix_closure["caches"]["none"].parent
    leaf = next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))
    digest = StorePath.from_absolute_path(leaf).digest
    near = f"lmdb://{tmp_path / 'near'}"
    with (
        daemon_serving(refusing, str(short_dir / "refusing.sock")) as daemon_url,
        static_server(caches_dir) as base,
    ):
        url = f"cache://?near={near}&far={urllib.parse.quote(f'nix+{base}/cache-none', safe=':/')}"
        services = construct_services(daemon_url, "memory://", url)
        try:
            with pytest.raises(StorageError, match="no room left"):
                services.path_info_service.get(digest)
            assert services.path_info_service.get_held(digest) is None
        finally:
            services.close()


@pytest.mark.nix
def test_copy_into_a_cache_store_does_not_ask_its_far_side(tmp_path, nix_closure):
    """Whether a path is already in the destination is asked of near alone, as Nix asks without
    substituting: a far side that is down (or would fetch it from elsewhere) plays no part."""
    from tvix_cli import all_paths, tvix

    store = tmp_path / "store"
    far = "nix+http://127.0.0.1:1/nothing-listens-here"
    url = f"cache://?near=lmdb://{store}&far={urllib.parse.quote(far, safe=':/')}"
    source = f"file://{nix_closure['caches']['none']}"
    res = tvix(store, "copy", "--path-info-service-addr", url, "--from", source, nix_closure["top"])
    assert res.stderr == b""  # not a single retry of the far side
    assert all_paths(store).count(b"StorePath: ") == len(nix_closure["paths"])
