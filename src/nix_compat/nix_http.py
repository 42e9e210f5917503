"""Names and MIME types of a Nix HTTP binary cache (spec §6.7).

``<32 nixbase32 chars>.narinfo`` names a store path's narinfo by its 20-byte digest;
``nar/<52 nixbase32 chars>.nar[.<compression>]`` names a NAR by its SHA-256 (the compressed
file's hash in Nix's caches; the NAR's own hash in nar-bridge).

Beside them Nix writes other files into a cache (``parse_cache_file_str``): a NAR's listing
``<32 nixbase32 chars>.ls`` (``write-nar-listing=true``), a build log ``log/<drv basename>``
(``nix store copy-log``), ``debuginfo/<build id>[.debug]`` (``index-debug-info=true``) and a
content-addressed derivation output's ``realisations/<hash>!<output>.doi``.
"""

from __future__ import annotations

import re

from nix_compat import nixbase32, store_path
from nix_compat.errors import NixCompatError

__all__ = [
    "CACHE_FILE_KINDS",
    "MIME_TYPE_CACHE_INFO",
    "MIME_TYPE_NAR",
    "MIME_TYPE_NARINFO",
    "parse_cache_file_str",
    "parse_nar_str",
    "parse_narinfo_str",
]

MIME_TYPE_NAR = "application/x-nix-nar"
MIME_TYPE_NARINFO = "text/x-nix-narinfo"
MIME_TYPE_CACHE_INFO = "text/x-nix-cache-info"

_NARINFO_DIGEST_LEN = nixbase32.encode_len(20)  # 32
_NAR_DIGEST_LEN = nixbase32.encode_len(32)  # 52

CACHE_FILE_KINDS = ("listing", "log", "debuginfo", "realisation")
# A GNU build id in hex (Nix indexes the 40-digit SHA-1 ones; other linkers make other lengths),
# with ``.debug`` as Nix 2.8 names it or without, as later versions and dwarffs do.
_BUILD_ID_RE = re.compile(r"[0-9a-f]{2,128}(\.debug)?")
# A DrvOutput as Nix writes it: <algo>:<hash of the derivation's modulo>!<output name>.
# (Bounded: Nix writes sha256:<64 hex>; a key of the store must stay short.)
_REALISATION_RE = re.compile(r"[a-z0-9]{1,16}:[0-9a-zA-Z+/=]{1,128}![a-zA-Z0-9+\-_?=.]{1,211}\.doi")


def parse_narinfo_str(name: str) -> bytes | None:
    """The 20-byte store path digest named by ``<nixbase32>.narinfo``, or None if malformed."""
    if len(name) != _NARINFO_DIGEST_LEN + len(".narinfo") or not name.endswith(".narinfo"):
        return None
    return _decode(name[:_NARINFO_DIGEST_LEN])


def parse_cache_file_str(path: str) -> str | None:
    """The kind (one of CACHE_FILE_KINDS) of the cache file at path (no leading ``/``), or None.

    None for anything that is not one of those names, narinfos and NARs included.
    """
    if path.endswith(".ls") and "/" not in path:
        digest = path[: -len(".ls")]
        return "listing" if len(digest) == _NARINFO_DIGEST_LEN and _decode(digest) is not None else None
    directory, _, name = path.partition("/")
    if "/" in name:
        return None
    if directory == "log":
        try:
            store_path.StorePath.from_bytes(name)
        except NixCompatError:
            return None
        return "log"
    if directory == "debuginfo":
        return "debuginfo" if _BUILD_ID_RE.fullmatch(name) else None
    if directory == "realisations":
        return "realisation" if _REALISATION_RE.fullmatch(name) else None
    return None


def parse_nar_str(name: str) -> tuple[bytes, str] | None:
    """The 32-byte digest and compression suffix (``""``, ``".xz"``, …) of ``<nixbase32>.nar<suffix>``.

    None if name is not of that form.
    """
    head, rest = name[:_NAR_DIGEST_LEN], name[_NAR_DIGEST_LEN:]
    if len(head) != _NAR_DIGEST_LEN or not rest.startswith(".nar"):
        return None
    digest = _decode(head)
    if digest is None:
        return None
    return digest, rest[len(".nar") :]


def _decode(text: str) -> bytes | None:
    try:
        return nixbase32.decode(text)
    except NixCompatError:
        return None
