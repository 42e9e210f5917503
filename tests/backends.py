"""Backend factory tables for the conformance suites: one entry per backend under test.

Each entry maps a backend id to a context-manager factory taking a fresh temporary directory and
yielding a service; the conformance fixtures parametrize over the keys, so a new backend is one
new entry here (the gRPC entries wrap memory and LMDB services behind a real server).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_store.pathinfoservice import PathInfoService

BlobFactory = Callable[[Path], AbstractContextManager[BlobService]]
DirectoryFactory = Callable[[Path], AbstractContextManager[DirectoryService]]
PathInfoFactory = Callable[[Path], AbstractContextManager[PathInfoService]]

BLOB_BACKENDS: dict[str, BlobFactory] = {}
DIRECTORY_BACKENDS: dict[str, DirectoryFactory] = {}
PATH_INFO_BACKENDS: dict[str, PathInfoFactory] = {}


def register_blob(name: str) -> Callable[[BlobFactory], BlobFactory]:
    """Decorator adding a blob backend factory."""

    def deco(f: BlobFactory) -> BlobFactory:
        BLOB_BACKENDS[name] = f
        return f

    return deco


def register_directory(name: str) -> Callable[[DirectoryFactory], DirectoryFactory]:
    """Decorator adding a directory backend factory."""

    def deco(f: DirectoryFactory) -> DirectoryFactory:
        DIRECTORY_BACKENDS[name] = f
        return f

    return deco


def register_path_info(name: str) -> Callable[[PathInfoFactory], PathInfoFactory]:
    """Decorator adding a path-info backend factory."""

    def deco(f: PathInfoFactory) -> PathInfoFactory:
        PATH_INFO_BACKENDS[name] = f
        return f

    return deco


# Backend entries are added in the modules below (imported by tests/conftest.py):
#   tests/backends_local.py  memory:// and lmdb:// for all three services
#   tests/backends_grpc.py   grpc+unix:// over memory and over lmdb, with a real server
