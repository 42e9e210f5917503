"""``cache://?near=URL&far=URL``: a near PathInfoService in front of a far one (tvix ``cache``).

``get`` asks near first; on a miss it asks far and puts what far returns into near, so the next
lookup is local. With a ``nix+http`` far side, far's ``get`` has already ingested the NAR into
the blob and directory services the two share, so the PathInfo put into near is complete.
``put`` goes to near only; ``list`` lists near; ``get_held`` asks near alone (``copy``'s "is it
there already?", which must not fetch from far). Both URLs are percent-encoded query values,
decoded once as such and then as URLs (a ``far=nix+http://…?trusted-public-keys=…`` needs its
``&`` escaped as ``%26``, and a ``%`` of a nested escape is ``%25``; ``+`` stays literal).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator, Sequence
from typing import final

from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import InvalidRequest
from tvix_castore.lazy_logging import get_logger
from tvix_castore.url import ServiceUrl
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import NarCalculationService, PathInfoService, from_addr

__all__ = ["CachePathInfoService"]

log = get_logger(__name__)


@final
class CachePathInfoService(PathInfoService):
    """near, filled on demand from far. Thread-safe if both sides are."""

    def __init__(self, near: PathInfoService, far: PathInfoService) -> None:
        self.near = near
        self.far = far

    @classmethod
    def from_url(
        cls, url: ServiceUrl, blob_service: BlobService, directory_service: DirectoryService
    ) -> CachePathInfoService:
        """Accept ``cache://?near=<url>&far=<url>`` (no host, no path, exactly these two options)."""
        url.require_no_host()
        url.require_no_path()
        url.require_no_query(("near", "far"))
        from tvix_store.pathinfoservice.nix_http import raw_query

        query = raw_query(urllib.parse.urlsplit(url.raw).query)
        sides: list[str] = []
        for key in ("near", "far"):
            values = query.get(key, [])
            if len(values) != 1 or not values[0]:
                raise InvalidRequest(f"invalid service address {url.raw!r}: needs exactly one {key}=URL")
            sides.append(values[0])
        near = from_addr(sides[0], blob_service, directory_service)
        try:
            far = from_addr(sides[1], blob_service, directory_service)
        except BaseException:
            near.close()
            raise
        return cls(near, far)

    def get(self, digest: bytes) -> PathInfo | None:
        """The near PathInfo, else far's (then also stored in near), else None."""
        info = self.near.get(digest)
        if info is not None:
            return info
        info = self.far.get(digest)
        if info is None:
            return None
        log.debug("fetched %s from the far path info service", info.store_path.absolute())
        return self.near.put(info)

    def get_held(self, digest: bytes) -> PathInfo | None:
        """Near's PathInfo: far is not asked."""
        return self.near.get_held(digest)

    def put(self, info: PathInfo) -> PathInfo:
        """Store in near."""
        return self.near.put(info)

    def put_many(self, infos: Sequence[PathInfo]) -> list[PathInfo]:
        """Store in near, as near stores several."""
        return self.near.put_many(infos)

    def list(self) -> Iterator[PathInfo]:
        """The near side's PathInfos (far may be too big, or unable, to list)."""
        return self.near.list()

    def nar_calculation_service(self) -> NarCalculationService | None:
        """The near side's calculator, if it has one."""
        return self.near.nar_calculation_service()

    def nar_cache(self) -> object:
        """The near side's NAR-calculation cache, if it has one."""
        getter = getattr(self.near, "nar_cache", None)
        return getter() if getter is not None else None

    def close(self) -> None:
        """Close both sides."""
        try:
            self.far.close()
        finally:
            self.near.close()
