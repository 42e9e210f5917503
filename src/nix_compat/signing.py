"""Signatures over narinfo fingerprints: ``name:base64(64 bytes)``, ed25519 keys in Nix's format.

Verifying key ``name:base64(32 bytes)``; secret key ``name:base64(seed ‖ public key)`` (64 bytes).
A key only accepts signatures carrying its own name (spec §6.6).
"""

from __future__ import annotations

import base64
import binascii

from nix_compat.errors import SignatureError
from nix_compat.frozen import Frozen


def _valid_name(name: str) -> bool:
    """Non-empty; letters and digits of any script, ``-`` and ``.`` (not ``_``: spec §6.6)."""
    return bool(name) and all(c.isalnum() or c in "-." for c in name)


def _split(text: str, what: str, length: int) -> tuple[str, bytes]:
    name, sep, b64 = text.strip().partition(":")
    if not sep or not _valid_name(name):
        raise SignatureError(f"invalid {what} {text!r}: expected name:base64")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"invalid {what} {text!r}: bad base64") from exc
    if len(raw) != length:
        raise SignatureError(f"invalid {what} {name!r}: {len(raw)} bytes, expected {length}")
    return name, raw


class Signature(Frozen):
    """A named ed25519 signature (64 bytes)."""

    __slots__ = ("data", "name")
    name: str
    data: bytes

    def __init__(self, name: str, data: bytes) -> None:
        if len(data) != 64:
            raise SignatureError(f"invalid signature {name!r}: {len(data)} bytes, expected 64")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "data", data)

    @classmethod
    def parse(cls, text: str) -> Signature:
        """Parse ``name:base64``."""
        return cls(*_split(text, "signature", 64))

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.data).decode()}"


class VerifyingKey(Frozen):
    """A public key: name and 32 raw bytes."""

    __slots__ = ("key", "name")
    name: str
    key: bytes

    def __init__(self, name: str, key: bytes) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "key", key)

    @classmethod
    def parse(cls, text: str) -> VerifyingKey:
        """Parse ``name:base64(32 bytes)``."""
        return cls(*_split(text, "public key", 32))

    def verify(self, fingerprint: bytes, signature: Signature) -> bool:
        """True if signature is ours by name and valid over fingerprint."""
        if signature.name != self.name:
            return False
        from nacl.exceptions import BadSignatureError
        from nacl.signing import VerifyKey

        try:
            VerifyKey(self.key).verify(fingerprint, signature.data)
        except BadSignatureError:
            return False
        return True

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.key).decode()}"


class SigningKey(Frozen):
    """A secret key: name, 32-byte seed and 32-byte public key."""

    __slots__ = ("name", "public", "seed")
    name: str
    seed: bytes
    public: bytes

    def __init__(self, name: str, seed: bytes, public: bytes) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "public", public)

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """Parse Nix's secret key format ``name:base64(seed ‖ public)``."""
        name, raw = _split(text, "secret key", 64)
        from nacl.signing import SigningKey as NaclKey

        if bytes(NaclKey(raw[:32]).verify_key) != raw[32:]:
            raise SignatureError(f"invalid secret key {name!r}: public half does not match")
        return cls(name, raw[:32], raw[32:])

    def verifying_key(self) -> VerifyingKey:
        """The matching public key."""
        return VerifyingKey(self.name, self.public)

    def sign(self, fingerprint: bytes) -> Signature:
        """Sign fingerprint."""
        from nacl.signing import SigningKey as NaclKey

        return Signature(self.name, NaclKey(self.seed).sign(fingerprint).signature)
