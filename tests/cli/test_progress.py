"""The import progress line: drawn on stderr only when stderr is a terminal, erased at the end."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tvix_cli import TVIX_STORE, cli_env, tvix


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(48):
        (tree / f"f{i:02}").write_bytes(os.urandom(2 * 1024 * 1024))
    return tree


def test_quiet_without_tty(tmp_path: Path) -> None:
    """With stderr not a terminal, an import writes nothing but the store path."""
    res = tvix(tmp_path / "store", "import", _tree(tmp_path))
    assert res.stderr == b""
    assert res.stdout.startswith(b"/nix/store/")


def test_progress_on_tty(tmp_path: Path) -> None:
    """With stderr on a pty, a progress line (files, MiB) appears and is erased; stdout is unchanged."""
    tree = _tree(tmp_path)
    plain = tvix(tmp_path / "store-a", "import", tree).stdout
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [TVIX_STORE, "import", str(tree)],
            stdout=subprocess.PIPE,
            stderr=secondary,
            env=cli_env(tmp_path / "store-b"),
        )
        os.close(secondary)
        secondary = -1
        seen = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert out == plain
    assert b"importing" in seen
    assert b"files" in seen
    assert b"MiB" in seen
    assert seen.endswith(b"\r\x1b[2K")
