"""gRPC backends for the conformance suites: a real server on a unix socket, client by URL.

``grpc+memory`` and ``grpc+lmdb`` start a ``tvix_store.server.Daemon`` in this process with
memory or LMDB services behind it, listening on a socket in a fresh short tmp dir (unix socket
paths are limited to ~108 bytes), and hand the test the client built by
``from_addr("grpc+unix://…")``, so servicers, clients and conversions are all exercised.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backends import register_blob, register_directory, register_path_info

from tvix_castore.blobservice import BlobService
from tvix_castore.blobservice import from_addr as blob_from_addr
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.directoryservice import from_addr as directory_from_addr
from tvix_store.pathinfoservice import PathInfoService
from tvix_store.pathinfoservice import from_addr as path_info_from_addr
from tvix_store.server import Daemon
from tvix_store.services import construct_services


@contextmanager
def running_daemon(kind: str, tmp: Path) -> Iterator[str]:
    """A daemon over memory:// or lmdb://tmp/store; yields its ``grpc+unix://`` URL."""
    url = "memory://" if kind == "memory" else f"lmdb://{tmp / 'store'}"
    services = construct_services(url, url, url)
    sock_dir = tempfile.mkdtemp(prefix="tvg", dir="/tmp")
    sock = f"{sock_dir}/s.sock"
    daemon = Daemon(services, sock, max_workers=16)
    try:
        yield f"grpc+unix://{sock}"
    finally:
        daemon.stop(grace=1.0)
        services.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def _register(kind: str) -> None:
    @register_blob(f"grpc+{kind}")
    @contextmanager
    def _blobs(tmp: Path) -> Iterator[BlobService]:
        with running_daemon(kind, tmp) as url:
            service = blob_from_addr(url)
            try:
                yield service
            finally:
                service.close()

    @register_directory(f"grpc+{kind}")
    @contextmanager
    def _dirs(tmp: Path) -> Iterator[DirectoryService]:
        with running_daemon(kind, tmp) as url:
            service = directory_from_addr(url)
            try:
                yield service
            finally:
                service.close()

    @register_path_info(f"grpc+{kind}")
    @contextmanager
    def _infos(tmp: Path) -> Iterator[PathInfoService]:
        with running_daemon(kind, tmp) as url:
            blobs = blob_from_addr(url)
            dirs = directory_from_addr(url)
            service = path_info_from_addr(url, blobs, dirs)
            try:
                yield service
            finally:
                service.close()
                dirs.close()
                blobs.close()


_register("memory")
_register("lmdb")
