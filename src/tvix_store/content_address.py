"""Checking a path's content against its content address (a narinfo's ``CA:`` line).

Nix checks the claim when it adds such a path: ``fixed:r:<algo>`` is the hash of the path's
NAR, ``fixed:<algo>`` and ``text:sha256`` the hash of the single regular file it must be, each
modulo the path's own hash part (``nix_compat.nixhash.HashModulo``); and the path itself must
be the one the address, the name and the references give (``path_mismatch``). A binary cache's
signature does not cover the line, so whatever takes narinfos from elsewhere (``copy``, uploads
to ``serve-cache``) checks it here before it stores the claim.
"""

from __future__ import annotations

from collections.abc import Sequence

from nix_compat.errors import StorePathError
from nix_compat.nixhash import CAHash, HashModulo, NixHash
from nix_compat.store_path import StorePath, build_ca_path
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import DirectoryNode, FileNode, Node

__all__ = ["content_hasher", "content_mismatch", "nar_checker", "path_mismatch"]


def content_hasher(store_path: StorePath, ca: CAHash) -> HashModulo:
    """A hasher for what ca covers, modulo store_path's hash part; feed it the NAR or the file."""
    return HashModulo(ca.hash.algo, store_path.encoded_digest.encode())


def nar_checker(store_path: StorePath, ca: CAHash) -> HashModulo:
    """What to feed a ``fixed:r:`` path's NAR to as it comes in, for ``content_mismatch``.

    For sha256 it only looks for the path's hash part: the NAR's own SHA-256 (which the ingest
    computes anyway) is the answer unless the NAR names its own path.
    """
    return HashModulo(ca.hash.algo, store_path.encoded_digest.encode(), hashing=ca.hash.algo != "sha256")


def _nar_hash(
    store_path: StorePath,
    ca: CAHash,
    node: Node,
    blob_service: BlobService,
    directory_service: DirectoryService,
    fed: HashModulo | None,
    nar_sha256: bytes | None,
) -> NixHash:
    """The hash of node's NAR as a ``fixed:r:`` address counts it (see ``content_mismatch``)."""
    from tvix_store.nar.renderer import write_nar

    if fed is None:
        # With the NAR's SHA-256 known, a search for the hash part is all a sha256 address needs.
        fed = nar_checker(store_path, ca) if nar_sha256 is not None else content_hasher(store_path, ca)
        write_nar(fed.update, node, blob_service, directory_service)
    if fed.hashing:
        return fed.finish()
    if not fed.matched and nar_sha256 is not None:
        return NixHash("sha256", nar_sha256)
    # The NAR names its own path: hashed again, modulo its hash part.
    hasher = content_hasher(store_path, ca)
    write_nar(hasher.update, node, blob_service, directory_service)
    return hasher.finish()


def path_mismatch(store_path: StorePath, ca: CAHash, references: Sequence[StorePath]) -> str | None:
    """Why store_path is not the path ca, its name and its references give it, or None.

    Nix computes a content-addressed path from these when it adds one, and refuses the path
    ("claims to be content-addressed but isn't") when they disagree: a cache we copy from, or
    an upload we would sign, must not get such a claim past us either.
    """
    others = {r for r in references if r != store_path}
    try:
        expected = build_ca_path(store_path.name, ca, others, self_reference=store_path in references)
    except StorePathError as exc:
        return f"{store_path.absolute()} claims CA {ca}: {exc}"
    if expected != store_path:
        return (
            f"{store_path.absolute()} claims CA {ca}, but with its name and references that "
            f"address is {expected.absolute()}"
        )
    return None


def content_mismatch(
    store_path: StorePath,
    ca: CAHash,
    node: Node,
    blob_service: BlobService,
    directory_service: DirectoryService,
    nar_fed: HashModulo | None = None,
    nar_sha256: bytes | None = None,
) -> str | None:
    """Why node is not the content ca says, or None when it is.

    For a ``fixed:r:`` address: nar_sha256 is the NAR's SHA-256, if known, and nar_fed a
    ``nar_checker`` already fed the NAR as it was ingested; without it the NAR is rendered from
    the store and fed to one here.
    """
    if ca.kind == "nar":
        actual = _nar_hash(store_path, ca, node, blob_service, directory_service, nar_fed, nar_sha256)
    else:
        if not isinstance(node, FileNode):
            kind = "directory" if isinstance(node, DirectoryNode) else "symlink"
            return f"{store_path.absolute()} claims CA {ca}, which needs a regular file, not a {kind}"
        hasher = content_hasher(store_path, ca)
        reader = blob_service.open_read(node.digest)
        if reader is None:
            return f"{store_path.absolute()}: blob {node.digest} is missing"
        with reader:
            while piece := reader.read(1 << 20):
                hasher.update(piece)
        actual = hasher.finish()
    if actual != ca.hash:
        return (
            f"CA mismatch for {store_path.absolute()}: the claim is {ca}, "
            f"the content hashes to {actual.to_nixbase32()}"
        )
    return None
