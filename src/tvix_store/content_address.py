"""Checking a path's content against its content address (a narinfo's ``CA:`` line).

Nix checks the claim when it adds such a path: ``fixed:r:<algo>`` is the hash of the path's
NAR, ``fixed:<algo>`` and ``text:sha256`` the hash of the single regular file it must be, each
modulo the path's own hash part (``nix_compat.nixhash.HashModulo``). A binary cache's signature
does not cover the line, so whatever takes narinfos from elsewhere (``copy``, uploads to
``serve-cache``) checks it here before it stores the claim.
"""

from __future__ import annotations

from nix_compat.nixhash import CAHash, HashModulo, NixHash
from nix_compat.store_path import StorePath
from tvix_castore.blobservice import BlobService
from tvix_castore.directoryservice import DirectoryService
from tvix_castore.nodes import DirectoryNode, FileNode, Node

__all__ = ["content_hasher", "content_mismatch", "nar_checker"]


def content_hasher(store_path: StorePath, ca: CAHash) -> HashModulo:
    """A hasher for what ca covers, modulo store_path's hash part; feed it the NAR or the file."""
    return HashModulo(ca.hash.algo, store_path.encoded_digest.encode())


def nar_checker(store_path: StorePath, ca: CAHash) -> HashModulo:
    """What to feed a ``fixed:r:`` path's NAR to as it comes in, for ``content_mismatch``.

    For sha256 it only looks for the path's hash part: the NAR's own SHA-256 (which the ingest
    computes anyway) is the answer unless the NAR names its own path.
    """
    return HashModulo(ca.hash.algo, store_path.encoded_digest.encode(), hashing=ca.hash.algo != "sha256")


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

    nar_fed: for a ``fixed:r:`` address, a ``nar_checker`` already fed the path's NAR as it was
    ingested, and nar_sha256 the NAR's SHA-256; without them (or when the NAR names its own
    path) the NAR is rendered from the store and hashed here.
    """
    actual: NixHash | None = None
    if ca.kind == "nar":
        if nar_fed is not None and nar_fed.hashing:
            actual = nar_fed.finish()
        elif nar_fed is not None and not nar_fed.matched and nar_sha256 is not None:
            actual = NixHash("sha256", nar_sha256)
        else:
            from tvix_store.nar.renderer import write_nar

            hasher = content_hasher(store_path, ca)
            write_nar(hasher.update, node, blob_service, directory_service)
            actual = hasher.finish()
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
