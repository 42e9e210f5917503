"""Checking content against a CA claim (``tvix_store.content_address``), on a real LMDB store.

The claims here are computed with ``HashModulo`` in its plain, hashing form over the whole NAR
or file, the way Nix computes them; what is checked is that the shortcuts of the check (the
NAR's own SHA-256 when it does not name its path, a search only while it is ingested) reach the
same verdicts.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures import nar
from store_services import local_services

from nix_compat.nixhash import CAHash, HashModulo, NixHash
from nix_compat.store_path import StorePath
from tvix_store.content_address import content_mismatch, nar_checker
from tvix_store.nar.ingest import ingest_nar
from tvix_store.services import Services

PATH = StorePath.from_bytes(b"0c61j8i1hjwwhx2bgwpy0xnpn1l4bq5v-selfish")
HASH_PART = PATH.encoded_digest.encode()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with local_services("lmdb", tmp_path) as s:
        yield s


def _file_nar(contents: bytes) -> bytes:
    return nar(b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")")


def _check(services: Services, data: bytes, ca: CAHash) -> str | None:
    """Ingest data as copy does (feeding a nar_checker), then check ca against it."""
    checker = nar_checker(PATH, ca)
    stream = io.BytesIO(data)

    def read(n: int) -> bytes:
        piece = stream.read(min(n, 7))  # small pieces: occurrences cut across them
        checker.update(piece)
        return piece

    root, nar_sha256, _ = ingest_nar(services.blob_service, services.directory_service, read)
    return content_mismatch(
        PATH, ca, root, services.blob_service, services.directory_service, checker, nar_sha256
    )


def _modulo(algo: str, data: bytes) -> NixHash:
    h = HashModulo(algo, HASH_PART)
    h.update(data)
    return h.finish()


@pytest.mark.parametrize("algo", ["sha256", "sha1"])
def test_a_nar_naming_its_own_path_is_checked_modulo_its_hash_part(services: Services, algo: str) -> None:
    """A self-referencing NAR's address is its hash with the hash part zeroed: that passes, and
    its plain hash, which the shortcut would use, does not."""
    data = _file_nar(b"I live at /nix/store/" + HASH_PART + b"-selfish, see")
    assert _check(services, data, CAHash("nar", _modulo(algo, data))) is None
    plain = NixHash(algo, hashlib.new(algo, data).digest())
    assert "CA mismatch" in (_check(services, data, CAHash("nar", plain)) or "")


@pytest.mark.parametrize("algo", ["sha256", "sha1"])
def test_a_nar_not_naming_itself_is_checked_by_its_plain_hash(services: Services, algo: str) -> None:
    data = _file_nar(b"nothing about myself here")
    plain = NixHash(algo, hashlib.new(algo, data).digest())
    assert _modulo(algo, data) == plain
    assert _check(services, data, CAHash("nar", plain)) is None
    other = NixHash(algo, hashlib.new(algo, data + b"x").digest())
    assert "CA mismatch" in (_check(services, data, CAHash("nar", other)) or "")


def test_search_only_finds_the_modulus_across_pieces() -> None:
    for cut in (1, 5, 31, 32, 33, 100):
        data = b"x" * 50 + HASH_PART + b"y" * 50
        found = HashModulo("sha256", HASH_PART, hashing=False)
        for i in range(0, len(data), cut):
            found.update(data[i : i + cut])
        assert found.matched, cut
    clean = HashModulo("sha256", HASH_PART, hashing=False)
    clean.update(HASH_PART[:-1])
    clean.update(b"!" + HASH_PART[1:])
    assert not clean.matched


@pytest.mark.parametrize("names_itself", [False, True])
def test_a_stored_nar_is_rendered_and_checked(services: Services, names_itself: bool) -> None:
    """Without a checker fed on the way in (an upload's narinfo comes after its NAR), the NAR
    is rendered from the store: its known SHA-256 answers unless it names its own path."""
    contents = b"at /nix/store/" + HASH_PART if names_itself else b"plain"
    data = _file_nar(contents)
    root, nar_sha256, _ = ingest_nar(services.blob_service, services.directory_service, io.BytesIO(data).read)
    good = CAHash("nar", _modulo("sha256", data))
    wrong = CAHash("nar", NixHash("sha256", hashlib.sha256(data + b"x").digest()))
    blobs, dirs = services.blob_service, services.directory_service
    assert content_mismatch(PATH, good, root, blobs, dirs, nar_sha256=nar_sha256) is None
    assert "CA mismatch" in (content_mismatch(PATH, wrong, root, blobs, dirs, nar_sha256=nar_sha256) or "")
