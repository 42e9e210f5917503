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
    out, seen = _on_pty([TVIX_STORE, "import", str(tree)], cli_env(tmp_path / "store-b"))
    assert out == plain
    assert b"importing" in seen
    assert b"files" in seen
    assert b"MiB" in seen
    assert seen.endswith(b"\r\x1b[2K")


def _on_pty(args: list[str], env: dict[str, str], columns: int | None = None) -> tuple[bytes, bytes]:
    """Run a command with stderr on a pty (of the given width, if any): (stdout, the pty's bytes)."""
    import fcntl
    import struct
    import termios

    primary, secondary = pty.openpty()
    if columns is not None:
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=secondary, env=env)
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
    return out, seen


def test_progress_line_fits_a_narrow_terminal(tmp_path: Path) -> None:
    """A line wider than the terminal would wrap, and erasing it would leave its first rows
    behind at every redraw: the label gives way (its start first) and the line fits."""
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "and-another"
    deep.mkdir(parents=True)
    tree = _tree(deep)
    _, seen = _on_pty([TVIX_STORE, "import", str(tree)], cli_env(tmp_path / "store"), 50)
    drawn = [line for line in seen.split(b"\r\x1b[2K") if line]
    assert drawn and all(len(line.decode()) < 50 for line in drawn), drawn
    assert any(b"\xe2\x80\xa6" in line and b"files" in line for line in drawn), drawn  # "…"


def test_log_lines_do_not_run_into_the_progress_line(tmp_path: Path) -> None:
    """With logging on, a log line takes the progress line away first: each starts a line of
    its own, not glued to the end of "… MiB/s (0.6s)"."""
    import re

    tree = _tree(tmp_path)
    env = cli_env(tmp_path / "store", RUST_LOG="debug")
    _, seen = _on_pty([TVIX_STORE, "import", str(tree)], env, 200)
    assert b"files" in seen and b" DEBUG " in seen
    glued = re.findall(rb"s\)\d{4}-\d\d-\d\dT", seen)
    assert not glued, seen[-2000:]


def test_wide_and_undecodable_labels_fit_the_columns() -> None:
    """Width is measured in terminal columns: a wide character takes two, and a file name
    byte that is not UTF-8 (which stderr would escape as four) shows as one "?"."""
    from tvix_store.progress import _columns, _fit

    stats = ": 1 files, 1.0 MiB @ 1.0 MiB/s (0.1s)"
    for label in ("importing /tmp/" + "写真" * 30, "importing " + "x\udcff" * 30):
        line = _fit("| ", label, stats, 80)
        assert _columns(line) < 80 and "\udcff" not in line and line.endswith(stats), line
