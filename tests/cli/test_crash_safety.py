"""Crash safety of ``import``: kill -9 midway leaves no store path visible; re-running completes it.

The PathInfo is written last, after every blob and Directory, so whatever a killed import left
behind is unreferenced data, never a store path without its contents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tvix_cli import TVIX_STORE, all_paths, cli_env, needs_nix, nix_dump, nix_store, tvix

pytestmark = [pytest.mark.slow, pytest.mark.nix, needs_nix]

MiB = 1024 * 1024


def _store_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in store.glob("*") if f.is_file()) if store.exists() else 0


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~256 MiB in 64 files across a few directories: an import that takes a while."""
    tree = tmp_path_factory.mktemp("crash") / "bigtree"
    for d in range(4):
        sub = tree / f"dir{d}"
        sub.mkdir(parents=True)
        for i in range(16):
            (sub / f"file{i:02}").write_bytes(os.urandom(4 * MiB))
    (tree / "empty").mkdir()
    os.symlink("dir0/file00", tree / "link")
    return tree


@pytest.mark.parametrize("kill_after_mib", [8, 128])
def test_kill_midway_then_rerun(tmp_path: Path, big_tree: Path, kill_after_mib: int) -> None:
    """SIGKILL once the store has grown by some MiB: no PathInfo; a second import completes."""
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [TVIX_STORE, "import", str(big_tree)],
        env=cli_env(store),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while _store_bytes(store) < kill_after_mib * MiB:
            assert proc.poll() is None, "the import finished before it could be killed"
            assert time.monotonic() < deadline, "the store never grew"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    assert all_paths(store) == b""

    again = tvix(store, "import", big_tree).stdout.decode()
    assert again == nix_store(tmp_path / "nixroot", "--add", big_tree).decode()
    path = again.strip()
    assert all_paths(store).decode().startswith(f"StorePath: {path}\n")
    assert tvix(store, "nar", path).stdout == nix_dump(big_tree)
