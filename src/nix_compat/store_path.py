"""Store paths: ``/nix/store/<nixbase32 digest>-<name>``, parsing, validation, CA paths.

Vectors and rules: ../shared/spec/tvix-store.md §5.2 and §5.4.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import total_ordering
from typing import TYPE_CHECKING

from nix_compat import nixbase32
from nix_compat.errors import Nixbase32Error, StorePathError
from nix_compat.frozen import Frozen

if TYPE_CHECKING:
    from nix_compat.nixhash import CAHash

STORE_DIR = "/nix/store"
STORE_DIR_WITH_SLASH = STORE_DIR + "/"
DIGEST_LEN = 20
ENCODED_DIGEST_LEN = nixbase32.encode_len(DIGEST_LEN)  # 32
MAX_NAME_LEN = 211
_NAME_RE = re.compile(rb"[a-zA-Z0-9+\-_?=.]+")


def validate_name(name: str | bytes) -> str:
    """Check a store-path name (the part after the dash) and return it as str."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    if not 1 <= len(raw) <= MAX_NAME_LEN:
        raise StorePathError(f"invalid store path name length {len(raw)}: {raw!r}")
    if not _NAME_RE.fullmatch(raw):
        pos = next(i for i, b in enumerate(raw) if not _NAME_RE.fullmatch(raw[i : i + 1]))
        raise StorePathError(f"invalid character at position {pos} in store path name {raw!r}")
    return raw.decode("ascii")


@total_ordering
class StorePath(Frozen):
    """A validated store path: a 20-byte digest and a name.

    Ordering follows Nix: comparing the nixbase32 strings, i.e. the digest bytes reversed.
    """

    __slots__ = ("digest", "name")
    digest: bytes
    name: str

    def __init__(self, digest: bytes, name: str) -> None:
        if len(digest) != DIGEST_LEN:
            raise StorePathError(f"invalid store path digest length {len(digest)}")
        validate_name(name)
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "name", name)

    @classmethod
    def from_bytes(cls, basename: str | bytes) -> StorePath:
        """Parse a basename ``<hash>-<name>`` (no store directory)."""
        if isinstance(basename, bytes):
            try:
                basename = basename.decode("ascii")
            except UnicodeDecodeError as exc:
                raise StorePathError(f"invalid store path {basename!r}: not ASCII") from exc
        if len(basename) < ENCODED_DIGEST_LEN + 2:
            raise StorePathError(f"invalid store path {basename!r}: invalid length")
        try:
            digest = nixbase32.decode(basename[:ENCODED_DIGEST_LEN])
        except Nixbase32Error as exc:
            raise StorePathError(f"invalid store path {basename!r}: invalid hash encoding") from exc
        if basename[ENCODED_DIGEST_LEN] != "-":
            raise StorePathError(f"invalid store path {basename!r}: missing dash")
        return cls(digest, validate_name(basename[ENCODED_DIGEST_LEN + 1 :]))

    @classmethod
    def from_absolute_path(cls, path: str | bytes) -> StorePath:
        """Parse ``/nix/store/<hash>-<name>``."""
        text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
        if not text.startswith(STORE_DIR_WITH_SLASH):
            raise StorePathError(f"{text!r} is not in the store directory {STORE_DIR}")
        return cls.from_bytes(text[len(STORE_DIR_WITH_SLASH) :])

    @classmethod
    def from_absolute_path_full(cls, path: str) -> tuple[StorePath, str]:
        """Split ``/nix/store/<hash>-<name>/sub/path`` into the store path and ``sub/path``."""
        if not path.startswith(STORE_DIR_WITH_SLASH):
            raise StorePathError(f"{path!r} is not in the store directory {STORE_DIR}")
        first, _, rest = path[len(STORE_DIR_WITH_SLASH) :].partition("/")
        return cls.from_bytes(first), rest

    @property
    def encoded_digest(self) -> str:
        """The nixbase32 hash part."""
        return nixbase32.encode(self.digest)

    def basename(self) -> str:
        """``<hash>-<name>``."""
        return f"{self.encoded_digest}-{self.name}"

    def absolute(self) -> str:
        """``/nix/store/<hash>-<name>``."""
        return f"{STORE_DIR_WITH_SLASH}{self.basename()}"

    def __str__(self) -> str:
        return self.basename()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, StorePath):
            return NotImplemented
        return (self.digest[::-1], self.name) < (other.digest[::-1], other.name)


def canon_path(path: str) -> str:
    """The path with repeated slashes, ``.`` and ``..`` resolved lexically (Nix's ``canonPath``).

    The trailing slash goes too; symlinks are not looked at. path must be absolute.
    """
    if not path.startswith("/"):
        raise StorePathError(f"{path!r} is not an absolute path")
    parts: list[str] = []
    for component in path.split("/"):
        if component == "..":
            if parts:
                parts.pop()
        elif component and component != ".":
            parts.append(component)
    return "/" + "/".join(parts)


def compress_hash(digest: bytes, size: int) -> bytes:
    """XOR-fold a digest down to ``size`` bytes, as Nix does for store path digests."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def build_store_path_from_fingerprint(type_: str, inner_digest_hex: str, name: str) -> StorePath:
    """Store path for ``<type>:sha256:<hex>:/nix/store:<name>``."""
    validate_name(name)
    fingerprint = f"{type_}:sha256:{inner_digest_hex}:{STORE_DIR}:{name}"
    import hashlib  # here, not at the top: reading commands (nar, path-info) never build paths

    return StorePath(compress_hash(hashlib.sha256(fingerprint.encode()).digest(), DIGEST_LEN), name)


def build_nar_sha256_path(
    name: str, nar_sha256: bytes, references: Iterable[StorePath] = (), self_reference: bool = False
) -> StorePath:
    """The path ``nix-store --add`` gives: content-addressed by the NAR's SHA-256 ("source")."""
    type_ = "source" + "".join(f":{r.absolute()}" for r in references)
    if self_reference:
        type_ += ":self"
    return build_store_path_from_fingerprint(type_, nar_sha256.hex(), name)


def build_text_path(name: str, content_sha256: bytes, references: Iterable[StorePath] = ()) -> StorePath:
    """The path of a text file added with ``builtins.toFile`` (``text`` CA)."""
    type_ = "text" + "".join(f":{r.absolute()}" for r in references)
    return build_store_path_from_fingerprint(type_, content_sha256.hex(), name)


def build_ca_path(name: str, ca: CAHash, references: Iterable[StorePath], self_reference: bool) -> StorePath:
    """The path Nix gives a content-addressed path (``makeFixedOutputPathFromCA``, spec §5.4).

    references are the others the path refers to (a repeat counts once); self_reference says
    whether it refers to itself. NAR/sha256 is a "source" path with its references; text one
    with them too (never itself); any other address allows no other references, and leaves a
    reference to itself out of the path, as Nix 2.8 does.

    Raises:
        StorePathError: references the address cannot have, or an invalid name.

    """
    refs = sorted(set(references), key=StorePath.basename)  # Nix's StorePathSet: by name text
    if ca.kind == "text":
        if self_reference:
            raise StorePathError(f"a text path cannot refer to itself ({name})")
        return build_text_path(name, ca.hash.digest, refs)
    if ca.kind == "nar" and ca.hash.algo == "sha256":
        return build_nar_sha256_path(name, ca.hash.digest, refs, self_reference)
    if refs:
        raise StorePathError(f"a path addressed by {ca} cannot have references ({name})")
    return build_fixed_output_path(name, ca.hash.algo, ca.hash.digest, recursive=ca.kind == "nar")


def build_fixed_output_path(name: str, algo: str, digest: bytes, recursive: bool) -> StorePath:
    """The path of a fixed-output result other than NAR/sha256 (``output:out``)."""
    method = "r:" if recursive else ""
    import hashlib

    inner = hashlib.sha256(f"fixed:out:{method}{algo}:{digest.hex()}:".encode()).hexdigest()
    return build_store_path_from_fingerprint("output:out", inner, name)
