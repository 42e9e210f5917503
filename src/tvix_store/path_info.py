"""PathInfo: a store path, its root node, and the metadata Nix needs (references, NAR hash…)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nix_compat.nixhash import CAHash
from nix_compat.signing import Signature
from nix_compat.store_path import StorePath
from tvix_castore.nodes import Node
from tvix_store.errors import PathInfoError


@dataclass(frozen=True, slots=True)
class PathInfo:
    """An immutable, validated PathInfo (spec §4)."""

    store_path: StorePath
    node: Node
    nar_size: int
    nar_sha256: bytes
    references: tuple[StorePath, ...] = ()
    signatures: tuple[Signature, ...] = ()
    deriver: StorePath | None = None
    ca: CAHash | None = None
    # Not part of the wire format: kept out of equality so round trips compare equal.
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.nar_sha256) != 32:
            raise PathInfoError(f"Invalid narinfo.nar_sha256 length: expected 32, got {len(self.nar_sha256)}")
        if not 0 <= self.nar_size < 1 << 64:
            raise PathInfoError(f"invalid nar_size {self.nar_size}")
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "signatures", tuple(self.signatures))

    def fingerprint(self) -> bytes:
        """The narinfo fingerprint signatures are made over (spec §6.6)."""
        from nix_compat import nixbase32

        refs = ",".join(r.absolute() for r in self.references)
        return (
            f"1;{self.store_path.absolute()};sha256:{nixbase32.encode(self.nar_sha256)};"
            f"{self.nar_size};{refs}"
        ).encode()

    def with_signatures(self, signatures: tuple[Signature, ...]) -> PathInfo:
        """A copy with the given signatures."""
        return PathInfo(
            self.store_path,
            self.node,
            self.nar_size,
            self.nar_sha256,
            self.references,
            signatures,
            self.deriver,
            self.ca,
        )
