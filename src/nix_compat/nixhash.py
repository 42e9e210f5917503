"""Nix hashes (md5/sha1/sha256/sha512) and content-address descriptors (CAHash).

Text forms: ``<algo>:<nixbase32>`` (narinfo), ``<algo>-<nixbase32>`` (display), SRI
``<algo>-<base64>``, and the CA strings ``fixed:r:<algo>:…``, ``fixed:<algo>:…``,
``text:sha256:…`` (spec §5.3).
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from nix_compat import nixbase32
from nix_compat.errors import Nixbase32Error, NixHashError
from nix_compat.frozen import Frozen

DIGEST_LENGTHS = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
CAKind = Literal["nar", "flat", "text"]


class NixHash(Frozen):
    """An algorithm name and a digest of the right length for it."""

    __slots__ = ("algo", "digest")
    algo: str
    digest: bytes

    def __init__(self, algo: str, digest: bytes) -> None:
        expected = DIGEST_LENGTHS.get(algo)
        if expected is None:
            raise NixHashError(f"unknown hash algorithm {algo!r}")
        if len(digest) != expected:
            raise NixHashError(f"invalid digest length {len(digest)} for {algo}")
        object.__setattr__(self, "algo", algo)
        object.__setattr__(self, "digest", digest)

    def to_nixbase32(self) -> str:
        """``<algo>:<nixbase32>`` as in narinfo files."""
        return f"{self.algo}:{nixbase32.encode(self.digest)}"

    def to_sri(self) -> str:
        """``<algo>-<base64>``."""
        return f"{self.algo}-{base64.b64encode(self.digest).decode()}"

    def __str__(self) -> str:
        return f"{self.algo}-{nixbase32.encode(self.digest)}"

    @classmethod
    def parse(cls, text: str) -> NixHash:
        """Parse ``algo:<nixbase32|hex|base64>`` or SRI ``algo-<base64>``."""
        for sep in (":", "-"):
            algo, found, rest = text.partition(sep)
            if found and algo in DIGEST_LENGTHS:
                return cls(algo, _decode_digest(algo, rest, sri=(sep == "-")))
        raise NixHashError(f"invalid hash {text!r}")


def _decode_digest(algo: str, text: str, sri: bool = False) -> bytes:
    n = DIGEST_LENGTHS[algo]
    try:
        if not sri and len(text) == nixbase32.encode_len(n):
            return nixbase32.decode(text)
        if not sri and len(text) == 2 * n:
            return bytes.fromhex(text)
        raw = base64.b64decode(text, validate=True)
    except (Nixbase32Error, ValueError, binascii.Error) as exc:
        raise NixHashError(f"invalid {algo} digest {text!r}") from exc
    if len(raw) != n:
        raise NixHashError(f"invalid {algo} digest {text!r}: wrong length")
    return raw


class CAHash(Frozen):
    """How a store path is content-addressed: NAR ("fixed:r:"), flat ("fixed:") or text."""

    __slots__ = ("hash", "kind")
    kind: CAKind
    hash: NixHash

    def __init__(self, kind: CAKind, hash: NixHash) -> None:
        if kind == "text" and hash.algo != "sha256":
            raise NixHashError("text content addresses must use sha256")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "hash", hash)

    def to_nix_string(self) -> str:
        """The narinfo ``CA:`` value."""
        prefix = {"nar": "fixed:r:", "flat": "fixed:", "text": "text:"}[self.kind]
        return f"{prefix}{self.hash.algo}:{nixbase32.encode(self.hash.digest)}"

    def __str__(self) -> str:
        return self.to_nix_string()

    @classmethod
    def parse(cls, text: str) -> CAHash:
        """Parse ``text:sha256:…``, ``fixed:r:<algo>:…`` or ``fixed:<algo>:…``."""
        kind: CAKind
        if text.startswith("text:"):
            kind, rest = "text", text[5:]
        elif text.startswith("fixed:r:"):
            kind, rest = "nar", text[8:]
        elif text.startswith("fixed:"):
            kind, rest = "flat", text[6:]
        else:
            raise NixHashError(f"invalid content address {text!r}")
        algo, sep, digest = rest.partition(":")
        if not sep or algo not in DIGEST_LENGTHS:
            raise NixHashError(f"invalid content address {text!r}")
        return cls(kind, NixHash(algo, _decode_digest(algo, digest)))
