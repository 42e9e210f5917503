"""Conformance fixtures: one parametrised service fixture per service kind, over every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import BLOB_BACKENDS, DIRECTORY_BACKENDS, PATH_INFO_BACKENDS

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_store.pathinfoservice import PathInfoService


@pytest.fixture(params=sorted(BLOB_BACKENDS), ids=str)
def blob_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobService]:
    """Each registered BlobService backend, fresh and empty, closed afterwards."""
    with BLOB_BACKENDS[request.param](tmp_path) as service:
        yield service


@pytest.fixture(params=sorted(DIRECTORY_BACKENDS), ids=str)
def directory_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryService]:
    """Each registered DirectoryService backend, fresh and empty, closed afterwards."""
    with DIRECTORY_BACKENDS[request.param](tmp_path) as service:
        yield service


@pytest.fixture(params=sorted(PATH_INFO_BACKENDS), ids=str)
def path_info_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PathInfoService]:
    """Each registered PathInfoService backend, fresh and empty, closed afterwards."""
    with PATH_INFO_BACKENDS[request.param](tmp_path) as service:
        yield service
