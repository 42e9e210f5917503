"""Names and MIME types of a Nix HTTP binary cache (spec §6.7).

``<32 nixbase32 chars>.narinfo`` names a store path's narinfo by its 20-byte digest;
``nar/<52 nixbase32 chars>.nar[.<compression>]`` names a NAR by its SHA-256 (the compressed
file's hash in Nix's caches; the NAR's own hash in nar-bridge).
"""

from __future__ import annotations

from nix_compat import nixbase32
from nix_compat.errors import NixCompatError

__all__ = [
    "MIME_TYPE_CACHE_INFO",
    "MIME_TYPE_NAR",
    "MIME_TYPE_NARINFO",
    "parse_nar_str",
    "parse_narinfo_str",
]

MIME_TYPE_NAR = "application/x-nix-nar"
MIME_TYPE_NARINFO = "text/x-nix-narinfo"
MIME_TYPE_CACHE_INFO = "text/x-nix-cache-info"

_NARINFO_DIGEST_LEN = nixbase32.encode_len(20)  # 32
_NAR_DIGEST_LEN = nixbase32.encode_len(32)  # 52


def parse_narinfo_str(name: str) -> bytes | None:
    """The 20-byte store path digest named by ``<nixbase32>.narinfo``, or None if malformed."""
    if len(name) != _NARINFO_DIGEST_LEN + len(".narinfo") or not name.endswith(".narinfo"):
        return None
    return _decode(name[:_NARINFO_DIGEST_LEN])


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
