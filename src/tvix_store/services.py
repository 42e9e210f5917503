"""The three services a command works on, built from address flags (spec decision 4).

With no address given, every service is the embedded LMDB store in the data directory:
``$TVIX_STORE_HOME``, else ``/var/lib/tvix-store`` for root, else ``$XDG_DATA_HOME/tvix-store``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tvix_castore import blobservice, directoryservice
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.frozen import Frozen
from tvix_castore.url import path_url
from tvix_store import pathinfoservice
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import NarCalculationService, PathInfoService

BLOB_ENV = "BLOB_SERVICE_ADDR"
DIRECTORY_ENV = "DIRECTORY_SERVICE_ADDR"
PATH_INFO_ENV = "PATH_INFO_SERVICE_ADDR"


def default_data_dir() -> str:
    """Where the embedded store lives when no address is given (an absolute path)."""
    # os.path rather than pathlib: this runs at every start-up and pathlib's import is not free.
    home = os.environ.get("TVIX_STORE_HOME")
    if home:
        return os.path.abspath(home)
    if os.geteuid() == 0:
        return "/var/lib/tvix-store"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(xdg):  # the XDG base directory spec: relative values are ignored
        xdg = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(xdg, "tvix-store")


def default_store_url() -> str:
    """``lmdb:///<data dir>``."""
    return path_url("lmdb", default_data_dir())


class Services(Frozen):
    """A blob, directory and path-info service that belong together."""

    __slots__ = ("blob_service", "directory_service", "path_info_service")
    blob_service: BlobService
    directory_service: DirectoryService
    path_info_service: PathInfoService

    def __init__(
        self,
        blob_service: BlobService,
        directory_service: DirectoryService,
        path_info_service: PathInfoService,
    ) -> None:
        object.__setattr__(self, "blob_service", blob_service)
        object.__setattr__(self, "directory_service", directory_service)
        object.__setattr__(self, "path_info_service", path_info_service)

    def nar_calculation_service(self) -> NarCalculationService:
        """Remote NAR calculation when the path-info service has one, else local rendering."""
        remote = self.path_info_service.nar_calculation_service()
        if remote is not None:
            return remote
        from tvix_store.nar.calculation import LocalNarCalculationService

        return LocalNarCalculationService(self.blob_service, self.directory_service)

    def put_path_info(self, info: PathInfo) -> PathInfo:
        """Commit info once every blob it may refer to is stored; returns what was stored.

        The blob service may still be uploading (the gRPC client writes behind), and the
        PathInfos may live elsewhere (a local store in front of a remote blob service): the
        blob service is flushed first, so a PathInfo never points at blobs that never arrived.
        """
        self.blob_service.flush()
        return self.path_info_service.put(info)

    def put_path_infos(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """Like ``put_path_info`` for several, in order (``PathInfoService.put_many``)."""
        self.blob_service.flush()
        return self.path_info_service.put_many(infos)

    def close(self) -> None:
        """Close all three services."""
        self.path_info_service.close()
        self.directory_service.close()
        self.blob_service.close()


def service_urls(
    blob_url: str | None = None,
    directory_url: str | None = None,
    path_info_url: str | None = None,
) -> tuple[str, str, str]:
    """The blob, directory and path-info URLs: given, else from the env, else the embedded store."""
    default = None

    def pick(given: str | None, env: str) -> str:
        nonlocal default
        if given:
            return given
        if os.environ.get(env):
            return os.environ[env]
        if default is None:
            default = default_store_url()
        return default

    return pick(blob_url, BLOB_ENV), pick(directory_url, DIRECTORY_ENV), pick(path_info_url, PATH_INFO_ENV)


def construct_services(
    blob_url: str | None = None,
    directory_url: str | None = None,
    path_info_url: str | None = None,
) -> Services:
    """Build the services from the URLs ``service_urls`` picks."""
    blob, directory, path_info = service_urls(blob_url, directory_url, path_info_url)
    blobs = blobservice.from_addr(blob)
    dirs = directoryservice.from_addr(directory)
    infos = pathinfoservice.from_addr(path_info, blobs, dirs)
    return Services(blobs, dirs, infos)
