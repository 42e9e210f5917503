"""Imported trees and their mounted views are the same: ``diff -r`` and a stat walk.

Trees: the oracle trees of the import tests (every kind of node, odd names, a 1500-level deep
chain), a copy of Python's standard library (~40 MB) and a 20,000-file tree. Each is imported
with ``tvix-store import`` and mounted; contents must be identical (``diff -r
--no-dereference``), and every entry must have the same type, size, symlink target and
executable bit, with our fixed modes (0444/0555), owner root and mtime 1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from fuse_mounts import MountFactory
from tvix_cli import tvix


def _oracle_module() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "oracle" / "test_import_vs_nix.py"
    spec = importlib.util.spec_from_file_location("_oracle_trees_for_fuse", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORACLE = _oracle_module()
ORACLE_TREES: dict[str, Callable[[Path], Path]] = ORACLE.TREES


def compare_tree(src: Path, mounted: Path) -> int:
    """Assert that mounted shows src faithfully; returns the number of entries compared."""
    res = subprocess.run(
        ["diff", "-r", "--no-dereference", str(src), str(mounted)], capture_output=True, check=False
    )
    assert res.returncode == 0, res.stdout.decode(errors="replace")[:2000] + res.stderr.decode(
        errors="replace"
    )
    count = 0
    stack = [(src, mounted)]
    while stack:  # iterative: the deep tree is deeper than Python's recursion limit
        a, b = stack.pop()
        sa, sb = os.lstat(a), os.lstat(b)
        count += 1
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), a
        assert (sb.st_uid, sb.st_gid, sb.st_mtime_ns) == (0, 0, 1_000_000_000), b
        if stat.S_ISREG(sa.st_mode):
            assert sb.st_size == sa.st_size, a
            assert stat.S_IMODE(sb.st_mode) == (0o555 if sa.st_mode & stat.S_IXUSR else 0o444), a
        elif stat.S_ISLNK(sa.st_mode):
            assert os.readlink(b) == os.readlink(a), a
            assert stat.S_IMODE(sb.st_mode) == 0o444
        else:
            assert stat.S_IMODE(sb.st_mode) == 0o555
            names_a = sorted(os.listdir(a))
            assert sorted(os.listdir(b)) == names_a, a
            stack.extend((a / n, b / n) for n in names_a)
    return count


def import_and_mount(tmp_path: Path, mount: MountFactory, src: Path) -> Path:
    store = tmp_path / "store"
    store_path = tvix(store, "import", f"./{src.name}", cwd=src.parent).stdout.decode().strip()
    m = mount(store)
    return m.path / os.path.basename(store_path)


@pytest.mark.parametrize("kind", sorted(ORACLE_TREES))
def test_oracle_tree_mounted(tmp_path: Path, mount: MountFactory, kind: str) -> None:
    (tmp_path / "src").mkdir()
    src = ORACLE_TREES[kind](tmp_path / "src")
    mounted = import_and_mount(tmp_path, mount, src)
    try:
        assert compare_tree(src, mounted) >= 1
    finally:
        if kind == "deep":
            ORACLE.remove_deep(src)


@pytest.mark.slow
def test_stdlib_tree_mounted(tmp_path: Path, mount: MountFactory) -> None:
    src = tmp_path / "src" / "stdlib"
    shutil.copytree(
        sysconfig.get_paths()["stdlib"],
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__", "site-packages", "*.pyc"),
    )
    mounted = import_and_mount(tmp_path, mount, src)
    # Debian's stdlib (the one our venv uses) has ~790 entries in ~40 MB; a source build ~2,700.
    assert compare_tree(src, mounted) > 500


@pytest.mark.slow
def test_20000_file_tree_mounted(tmp_path: Path, mount: MountFactory) -> None:
    src = tmp_path / "src" / "many"
    for i in range(200):
        d = src / f"d{i:03}"
        d.mkdir(parents=True)
        for j in range(100):
            (d / f"f{j:03}").write_bytes(f"{i}/{j}\n".encode() * (j % 7))
        os.symlink(f"f{i % 100:03}", d / "link")
    mounted = import_and_mount(tmp_path, mount, src)
    assert compare_tree(src, mounted) == 1 + 200 * 102
    res = subprocess.run(["find", str(mounted)], capture_output=True, check=True)
    assert len(res.stdout.splitlines()) == 1 + 200 * 102


def test_identical_directories_keep_their_own_parents(tmp_path: Path, mount: MountFactory) -> None:
    """A process inside one copy of a directory stays there when the other copy is looked up.

    pkgA and pkgB hold the same ``bin`` and different ``share``. Were both ``bin`` one inode,
    the kernel would move its single dentry to pkgB's when pkgB/bin is looked up, and a shell
    in pkgA/bin would print pkgB's path and read pkgB's ``../share/data``.
    """
    src = tmp_path / "src"
    for pkg in ("pkgA", "pkgB"):
        (src / pkg / "bin").mkdir(parents=True)
        (src / pkg / "share").mkdir()
        tool = src / pkg / "bin" / "tool"
        tool.write_text("#!/bin/sh\necho hi\n")
        tool.chmod(0o755)
        (src / pkg / "share" / "data").write_text(f"I am {pkg}\n")
    store = tmp_path / "store"
    paths = tvix(store, "import", "pkgA", "pkgB", cwd=src).stdout.decode().split()
    m = mount(store)
    a, b = (m.path / os.path.basename(p) for p in paths)
    script = (
        f'cd "{a}/bin" && ls "{b}/bin" >/dev/null && cat "{b}/share/data" >/dev/null'
        " && /bin/pwd && cat ../share/data"
    )
    out = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout.decode()
    assert out == f"{a}/bin\nI am pkgA\n"
    assert os.stat(a / "bin").st_ino != os.stat(b / "bin").st_ino
    assert os.stat(a / "bin" / "tool").st_ino == os.stat(b / "bin" / "tool").st_ino
