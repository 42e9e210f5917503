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


class HashModulo:
    """A hash of a stream with every occurrence of ``modulus`` zeroed, and where each was.

    What Nix checks a content address against (its ``HashModuloSink``): a store path's content
    may name the path itself, whose hash part cannot be known before the content is hashed, so
    that hash part (the modulus) counts as NUL bytes, and the offsets where it occurred are
    hashed after the content as ``|<offset>`` each. Content that does not name itself hashes
    as it is. Fed in pieces of any size.

    With ``hashing=False`` it only looks for the modulus (``matched``): a caller that hashes the
    stream as it is anyway has its answer in that hash when nothing matched.
    """

    def __init__(self, algo: str, modulus: bytes, *, hashing: bool = True) -> None:
        import hashlib

        if algo not in DIGEST_LENGTHS or not modulus:
            raise NixHashError(f"cannot hash modulo with {algo!r} and {modulus!r}")
        self._hasher = hashlib.new(algo)
        self._algo = algo
        self._modulus = modulus
        self.hashing = hashing
        self._held = b""  # the last len(modulus) - 1 bytes: an occurrence may start in them
        self._offset = 0  # of _held in the stream
        self._matches: list[int] = []

    @property
    def matched(self) -> bool:
        """Whether the modulus occurred in what was fed so far."""
        return bool(self._matches)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next piece of the stream."""
        modulus = self._modulus
        if not self.hashing:
            if not self._matches:  # after one occurrence only "whether" is asked
                piece = data if isinstance(data, bytes) else bytes(data)
                tail = len(modulus) - 1
                edge = self._held + piece[:tail]
                if modulus in edge or modulus in piece:
                    self._matches.append(-1)
                self._held = (edge if len(piece) < tail else piece)[-tail:]
            return
        buffer = self._held + bytes(data)
        found = buffer.find(modulus)
        if found >= 0:
            out = bytearray(buffer)
            while found >= 0:
                self._matches.append(self._offset + found)
                out[found : found + len(modulus)] = bytes(len(modulus))
                found = buffer.find(modulus, found + len(modulus))
            buffer = bytes(out)
        keep = min(len(buffer), len(modulus) - 1)
        done = len(buffer) - keep
        self._hasher.update(memoryview(buffer)[:done])
        self._held = buffer[done:]
        self._offset += done

    def finish(self) -> NixHash:
        """The hash of everything fed, modulo ``modulus``; the object is spent."""
        if not self.hashing:
            raise NixHashError("this HashModulo only looked for its modulus")
        self._hasher.update(self._held)
        for offset in self._matches:
            self._hasher.update(f"|{offset}".encode())
        return NixHash(self._algo, self._hasher.digest())
