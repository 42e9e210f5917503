"""PathInfo: a store path, its root node, and the metadata Nix needs (references, NAR hash…)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from nix_compat.nixhash import CAHash
from nix_compat.signing import Signature
from nix_compat.store_path import StorePath
from tvix_castore.frozen import Frozen
from tvix_castore.nodes import Node
from tvix_store.errors import PathInfoError

if TYPE_CHECKING:
    from nix_compat.narinfo import NarInfo


class PathInfo(Frozen, uncompared=("extra",)):
    """An immutable, validated PathInfo (spec §4).

    ``extra`` is not part of the wire format: it takes no part in equality, so round trips
    compare equal.
    """

    __slots__ = (
        "ca",
        "deriver",
        "extra",
        "nar_sha256",
        "nar_size",
        "node",
        "references",
        "signatures",
        "store_path",
    )
    store_path: StorePath
    node: Node
    nar_size: int
    nar_sha256: bytes
    references: tuple[StorePath, ...]
    signatures: tuple[Signature, ...]
    deriver: StorePath | None
    ca: CAHash | None
    extra: dict[str, str]

    def __init__(
        self,
        store_path: StorePath,
        node: Node,
        nar_size: int,
        nar_sha256: bytes,
        references: Iterable[StorePath] = (),
        signatures: Iterable[Signature] = (),
        deriver: StorePath | None = None,
        ca: CAHash | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        if len(nar_sha256) != 32:
            raise PathInfoError(f"Invalid narinfo.nar_sha256 length: expected 32, got {len(nar_sha256)}")
        if not 0 <= nar_size < 1 << 64:
            raise PathInfoError(f"invalid nar_size {nar_size}")
        object.__setattr__(self, "store_path", store_path)
        object.__setattr__(self, "node", node)
        object.__setattr__(self, "nar_size", nar_size)
        object.__setattr__(self, "nar_sha256", nar_sha256)
        object.__setattr__(self, "references", tuple(references))
        object.__setattr__(self, "signatures", tuple(signatures))
        object.__setattr__(self, "deriver", deriver)
        object.__setattr__(self, "ca", ca)
        object.__setattr__(self, "extra", {} if extra is None else extra)

    def fingerprint(self) -> bytes:
        """The narinfo fingerprint signatures are made over (spec §6.6), references as stored."""
        from nix_compat.narinfo import fingerprint

        return fingerprint(self.store_path, self.nar_sha256, self.nar_size, self.references)

    def to_narinfo(self, url: str, compression: str) -> NarInfo:
        """The narinfo of this PathInfo whose NAR is at url, stored with compression.

        References are listed sorted, as Nix writes them: Nix checks signatures over the sorted
        list, tvix over the listed order, so both accept a signature made over this narinfo.
        """
        from nix_compat.narinfo import NarInfo

        return NarInfo(
            store_path=self.store_path,
            url=url,
            nar_hash=self.nar_sha256,
            nar_size=self.nar_size,
            references=tuple(sorted(self.references, key=StorePath.basename)),
            compression=compression,
            deriver=self.deriver,
            signatures=self.signatures,
            ca=self.ca,
        )

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
