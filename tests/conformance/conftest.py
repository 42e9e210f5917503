"""Conformance fixtures: one parametrised service fixture per service kind, over every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import BLOB_BACKENDS

from tvix_castore.blobservice import BlobService


@pytest.fixture(params=sorted(BLOB_BACKENDS), ids=str)
def blob_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobService]:
    """Each registered BlobService backend, fresh and empty, closed afterwards."""
    with BLOB_BACKENDS[request.param](tmp_path) as service:
        yield service
