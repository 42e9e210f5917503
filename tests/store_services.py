"""A fixture helper for store-level tests: the three services on one local backend.

``local_services(kind, tmp)`` builds memory:// or one shared lmdb:///tmp/store for blobs,
directories and path infos, the combinations the NAR renderer/ingester tests run against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tvix_store.services import Services, construct_services

LOCAL_KINDS = ("memory", "lmdb")


@contextmanager
def local_services(kind: str, tmp: Path) -> Iterator[Services]:
    url = "memory://" if kind == "memory" else f"lmdb://{tmp / 'store'}"
    services = construct_services(url, url, url)
    try:
        yield services
    finally:
        services.close()
