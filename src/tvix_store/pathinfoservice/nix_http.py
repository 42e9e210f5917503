"""``nix+http(s)://host/path``: a read-only PathInfoService over a Nix binary cache (spec §9.4).

``get`` fetches the narinfo (404/403 -> None), checks signatures when ``trusted-public-keys`` are
given (at least one must verify), then fetches, decompresses and ingests the NAR into the blob
and directory services it was built with, refusing a NarHash/NarSize mismatch. The base URL keeps
a last path segment that lacks a trailing slash (our fix of spec §15 item 9). ``put`` and ``list``
are refused. Meant to be the far side of ``cache://?near=…&far=…``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import final

from nix_compat.errors import NixCompatError
from nix_compat.signing import VerifyingKey
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.errors import InvalidRequest
from tvix_castore.url import ServiceUrl
from tvix_store.binary_cache.copy import fetch_path_info
from tvix_store.binary_cache.download import fetch_narinfo, parse_trusted_keys
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import PathInfoService

__all__ = ["NixHttpPathInfoService", "raw_query"]


def raw_query(query: str) -> dict[str, list[str]]:
    """``a=b&c=d`` percent-decoded, keeping ``+`` literal (URLs and base64 keys contain it)."""
    out: dict[str, list[str]] = {}
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            out.setdefault(urllib.parse.unquote(key), []).append(urllib.parse.unquote(value))
    return out


@final
class NixHttpPathInfoService(PathInfoService):
    """PathInfos fetched on demand from a binary cache at base_url (``http(s)://…``)."""

    def __init__(
        self,
        base_url: str,
        blob_service: BlobService,
        directory_service: DirectoryService,
        trusted_keys: tuple[VerifyingKey, ...] = (),
    ) -> None:
        self.base_url = base_url
        self.trusted_keys = trusted_keys
        self._blobs = blob_service
        self._dirs = directory_service

    @classmethod
    def from_url(
        cls, url: ServiceUrl, blob_service: BlobService, directory_service: DirectoryService
    ) -> NixHttpPathInfoService:
        """Accept ``nix+http(s)://host[:port][/path][?trusted-public-keys=k1%20k2]``.

        ``blob_service=default`` and ``directory_service=default`` (tvix's defaults) are
        accepted too.
        """
        if url.scheme not in ("nix+http", "nix+https"):
            raise InvalidRequest(f"invalid path info service address {url.raw!r}: expected nix+http(s)://")
        if not url.host:
            raise InvalidRequest(f"invalid path info service address {url.raw!r}: no host")
        url.require_no_query(("trusted-public-keys", "blob_service", "directory_service"))
        # tvix names the blob and directory services to ingest into; without a composition
        # the only ones are those this command was given, tvix's "default".
        for option in ("blob_service", "directory_service"):
            for value in url.query.get(option, []):
                if value != "default":
                    raise InvalidRequest(
                        f"invalid path info service address {url.raw!r}: {option}={value!r} "
                        "(only 'default', the service given to this command, exists)"
                    )
        parts = urllib.parse.urlsplit(url.raw)
        try:
            # Not url.query: its form decoding would turn the "+" of base64 keys into spaces.
            keys = parse_trusted_keys(raw_query(parts.query).get("trusted-public-keys", []))
        except NixCompatError as exc:
            raise InvalidRequest(f"invalid path info service address {url.raw!r}: {exc}") from exc
        base = urllib.parse.urlunsplit((parts.scheme.removeprefix("nix+"), parts.netloc, parts.path, "", ""))
        return cls(base, blob_service, directory_service, keys)

    def get(self, digest: bytes) -> PathInfo | None:
        """Fetch and ingest the store path with this digest; None if the cache lacks it."""
        if len(digest) != 20:
            raise InvalidRequest(f"invalid store path digest length {len(digest)}, expected 20")
        narinfo = fetch_narinfo(self.base_url, digest, self.trusted_keys)
        if narinfo is None:
            return None
        info = fetch_path_info(self.base_url, narinfo, self._blobs, self._dirs)
        # A blob service that writes behind (gRPC) may still be uploading: whoever stores the
        # PathInfo (a cache:// near side) must not point at blobs that never arrive.
        self._blobs.flush()
        return info

    def get_held(self, digest: bytes) -> PathInfo | None:
        """None: a binary cache is fetched from, never held."""
        return None

    def put(self, info: PathInfo) -> PathInfo:
        """Refused: a binary cache is read-only here."""
        raise InvalidRequest(
            f"cannot put {info.store_path.absolute()} into the binary cache {self.base_url}: "
            "nix+http path info services are read-only"
        )

    def list(self) -> Iterator[PathInfo]:
        """Refused: binary caches cannot be listed."""
        raise InvalidRequest("list not supported for this backend")
