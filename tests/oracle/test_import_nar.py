"""``tvix-store import --nar`` of plain, xz, zstd, bzip2, gzip and lz4 NARs (file and stdin)
against Nix.

The NAR is ``nix-store --dump`` of a tree, compressed by the real command-line tools (lz4 by the
lz4 package's frame format, which libarchive's lz4 filter, Nix's, writes); the store
path must be the one ``nix-store --add`` prints for the tree, and ``nar`` must give the NAR back.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tvix_cli import all_paths, needs_nix, nix_dump, nix_store, one_line_error, tvix

pytestmark = [pytest.mark.nix, needs_nix]

COMPRESSORS = {
    "plain": None,
    "xz": ["xz", "-c"],
    "zst": ["zstd", "-q", "-c"],
    "bz2": ["bzip2", "-c"],
    "gz": ["gzip", "-c"],
    "lz4": [],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    """A small tree, its NAR and the path nix-store --add gives it."""
    base = tmp_path_factory.mktemp("nar-src")
    tree = base / "payload"
    (tree / "sub" / "empty").mkdir(parents=True)
    (tree / "sub" / "data.bin").write_bytes(os.urandom(700_000))
    (tree / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(tree / "tool", 0o755)
    os.symlink("sub/data.bin", tree / "link")
    path = nix_store(base / "nixroot", "--add", tree).decode().strip()
    return tree, nix_dump(tree), path


def compressed(nar: bytes, kind: str) -> bytes:
    cmd = COMPRESSORS[kind]
    if cmd is None:
        return nar
    if kind == "lz4":
        import lz4.frame

        return bytes(lz4.frame.compress(nar))
    return subprocess.run(cmd, input=nar, capture_output=True, check=True).stdout


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_import_nar(tmp_path: Path, tree: tuple[Path, bytes, str], kind: str, via: str) -> None:
    """Each compression, from a file or stdin, gives Nix's path and the same NAR back."""
    _, nar, expected = tree
    data = compressed(nar, kind)
    store = tmp_path / "tvix"
    if via == "file":
        f = tmp_path / f"payload.nar.{kind}"
        f.write_bytes(data)
        res = tvix(store, "import", "--nar", f, "--name", "payload")
    else:
        res = tvix(store, "import", "--nar", "-", "--name", "payload", input=data)
    assert res.stdout.decode() == expected + "\n"
    assert tvix(store, "nar", expected).stdout == nar


def test_import_nar_needs_valid_name(tmp_path: Path, tree: tuple[Path, bytes, str]) -> None:
    """A name Nix would refuse is an error naming it, and nothing is added."""
    store = tmp_path / "tvix"
    res = tvix(store, "import", "--nar", "-", "--name", "bad name", input=tree[1], check=False)
    assert "bad name" in one_line_error(res)
    assert all_paths(store) == b""


def test_import_nar_trailing_garbage(tmp_path: Path, tree: tuple[Path, bytes, str]) -> None:
    """Bytes after the NAR's end are refused."""
    store = tmp_path / "tvix"
    res = tvix(store, "import", "--nar", "-", "--name", "payload", input=tree[1] + b"junk", check=False)
    assert "after the end of the NAR" in one_line_error(res)
    assert all_paths(store) == b""


@pytest.mark.parametrize(
    ("kind", "damage", "expected"),
    [
        ("xz", "junk", "data after the end of the compressed stream"),
        ("bz2", "junk", "data after the end of the compressed stream"),
        ("zst", "junk", "Unknown frame descriptor"),
        ("xz", "cut", "ended before its end marker"),
        ("bz2", "cut", "ended before its end marker"),
    ],
)
def test_import_damaged_compressed_nar(
    tmp_path: Path, tree: tuple[Path, bytes, str], kind: str, damage: str, expected: str
) -> None:
    """Bytes after the compressed stream, or a stream cut before its end marker (even where the
    NAR inside is whole), are refused naming the input, and nothing is added (xz and bzip2
    readers used to drop trailing data)."""
    data = compressed(tree[1], kind)
    data = data + b"junk" if damage == "junk" else data[:-4]
    store = tmp_path / "tvix"
    f = tmp_path / f"payload.nar.{kind}"
    f.write_bytes(data)
    line = one_line_error(tvix(store, "import", "--nar", f, "--name", "payload", check=False))
    assert expected in line and f.name in line, line
    assert all_paths(store) == b""


@pytest.mark.parametrize("kind", ["xz", "bz2"])
def test_import_concatenated_compressed_nar(tmp_path: Path, tree: tuple[Path, bytes, str], kind: str) -> None:
    """A NAR compressed as several streams one after another (as pixz or pbzip2 write it), or an
    xz stream with NUL padding after it, reads as the whole NAR."""
    _, nar, expected = tree
    half = len(nar) // 2
    data = compressed(nar[:half], kind) + compressed(nar[half:], kind)
    if kind == "xz":
        data += bytes(8)
    store = tmp_path / "tvix"
    res = tvix(store, "import", "--nar", "-", "--name", "payload", input=data)
    assert res.stdout.decode() == expected + "\n"
    assert tvix(store, "nar", expected).stdout == nar
