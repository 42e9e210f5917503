"""In-process backends for the conformance suites: ``memory://`` and ``lmdb:///tmp-dir``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from backends import register_blob, register_directory, register_path_info

from tvix_castore.blobservice import BlobService
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_store.pathinfoservice import PathInfoService
from tvix_store.pathinfoservice import from_addr as path_info_from_addr

_URLS = {"memory": lambda tmp: "memory://", "lmdb": lambda tmp: f"lmdb://{tmp / 'store'}"}


def _register(name: str) -> None:
    url_of = _URLS[name]

    @register_blob(name)
    @contextmanager
    def blobs(tmp: Path) -> Iterator[BlobService]:
        service = blob_from_addr(url_of(tmp))
        try:
            yield service
        finally:
            service.close()

    @register_directory(name)
    @contextmanager
    def directories(tmp: Path) -> Iterator[DirectoryService]:
        service = directory_from_addr(url_of(tmp))
        try:
            yield service
        finally:
            service.close()

    @register_path_info(name)
    @contextmanager
    def path_infos(tmp: Path) -> Iterator[PathInfoService]:
        # Closed in reverse order: the path-info service first, then the castore services.
        with ExitStack() as stack:
            url = url_of(tmp)
            b = blob_from_addr(url)
            stack.callback(b.close)
            d = directory_from_addr(url)
            stack.callback(d.close)
            service = path_info_from_addr(url, b, d)
            stack.callback(service.close)
            yield service


for _name in _URLS:
    _register(_name)
