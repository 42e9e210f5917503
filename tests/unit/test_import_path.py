"""Pieces of the import shell: Nix's basename rule, the threaded NAR hasher, NAR stream sniffing,
and one-pass import on the memory backend (the CLI and real-Nix tests cover LMDB)."""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import os
from pathlib import Path

import pytest
import zstandard
from fixtures import NAR_CONTENTS_COMPLICATED

from nix_compat.errors import NarError, StorePathError
from tvix_store.errors import ImportError_
from tvix_store.import_path import ThreadedSha256, import_nar, import_path, nix_basename, open_nar_stream
from tvix_store.nar.renderer import write_nar
from tvix_store.services import construct_services


@pytest.mark.parametrize(
    ("arg", "name"),
    [
        ("foo", "foo"),
        ("a/b/c", "c"),
        ("a/b/", "b"),  # one trailing slash is ignored
        ("a//", ""),  # only one
        ("/", ""),
        ("a/..", ".."),
        ("./-x", "-x"),
        ("/abs/path.txt", "path.txt"),
    ],
)
def test_nix_basename(arg: str, name: str) -> None:
    """Names follow Nix's baseNameOf."""
    assert nix_basename(arg) == name


def test_threaded_sha256() -> None:
    """The helper-thread hash equals hashlib's over the same pieces."""
    pieces = [os.urandom(n) for n in (0, 1, 1000, 1 << 20, 7)]
    h = ThreadedSha256()
    for p in pieces:
        h(p)
    h(memoryview(b"tail"))
    assert h.finish() == (sum(map(len, pieces)) + 4, hashlib.sha256(b"".join(pieces) + b"tail").digest())


@pytest.mark.parametrize(
    "compress",
    [
        lambda b: b,
        lambda b: lzma.compress(b),
        lambda b: bz2.compress(b),
        lambda b: zstandard.ZstdCompressor().compress(b),
        lambda b: zstandard.ZstdCompressor().compress(b[:100]) + zstandard.ZstdCompressor().compress(b[100:]),
    ],
    ids=["plain", "xz", "bz2", "zstd", "zstd-two-frames"],
)
def test_open_nar_stream(compress: object) -> None:
    """Compression is recognised by its magic bytes; the NAR comes out unchanged."""
    data = compress(NAR_CONTENTS_COMPLICATED)  # type: ignore[operator]
    assert open_nar_stream(io.BytesIO(data)).read() == NAR_CONTENTS_COMPLICATED


def test_import_path_memory(tmp_path: Path) -> None:
    """One pass yields the NAR hash of what the renderer produces afterwards."""
    services = construct_services("memory://", "memory://", "memory://")
    (tmp_path / "t" / "d").mkdir(parents=True)
    (tmp_path / "t" / "d" / "f").write_bytes(os.urandom(3 << 20))
    os.symlink("d/f", tmp_path / "t" / "l")
    info = import_path(services, str(tmp_path / "t"))
    out = io.BytesIO()
    write_nar(out.write, info.node, services.blob_service, services.directory_service)
    assert (info.nar_size, info.nar_sha256) == (len(out.getvalue()), hashlib.sha256(out.getvalue()).digest())
    assert info.store_path.name == "t"
    assert services.path_info_service.get(info.store_path.digest) == info


def test_import_nar_errors_name_the_source() -> None:
    """A bad NAR, a bad name and trailing data are refused before any PathInfo is put."""
    services = construct_services("memory://", "memory://", "memory://")
    with pytest.raises(NarError, match=r"^input\.nar: "):
        import_nar(services, io.BytesIO(NAR_CONTENTS_COMPLICATED[:-8]), "x", source="input.nar")
    with pytest.raises(StorePathError):
        import_nar(services, io.BytesIO(NAR_CONTENTS_COMPLICATED), "bad/name")
    with pytest.raises(ImportError_, match="after the end"):
        import_nar(services, io.BytesIO(NAR_CONTENTS_COMPLICATED + b"x"), "x")
    assert list(services.path_info_service.list()) == []
