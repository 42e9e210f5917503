"""Helpers for tests that run the real ``tvix-store`` console script and the real Nix.

Every CLI run gets its own embedded store (``TVIX_STORE_HOME``) and a clean environment (no
address variables, no RUST_LOG unless the test sets one). Nix runs against a private store root
under the test's tmp dir, so the host's /nix/store is left alone; the printed paths are the
same /nix/store/... paths (the store directory is unchanged, only its location on disk moves).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TVIX_STORE = str(REPO / ".venv" / "bin" / "tvix-store")
if not Path(TVIX_STORE).exists():  # fall back to the running interpreter's install
    TVIX_STORE = str(Path(sys.executable).parent / "tvix-store")

needs_nix = pytest.mark.skipif(
    shutil.which("nix-store") is None, reason="nix-store (nix-bin) is not installed"
)


def cli_env(store: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_ADDR") and k != "RUST_LOG"}
    env["TVIX_STORE_HOME"] = str(store)
    env.update(extra)
    return env


def tvix(
    store: Path,
    *args: str | os.PathLike[str] | bytes,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``tvix-store args…`` on the store in directory store."""
    res = subprocess.run(
        [TVIX_STORE, *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        env=env or cli_env(store),
        timeout=600,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"tvix-store {args} failed ({res.returncode}): {res.stderr.decode()}")
    return res


def nix_store(root: Path, *args: str | os.PathLike[str] | bytes, cwd: Path | None = None) -> bytes:
    """Run ``nix-store`` against a private store rooted at root; returns stdout."""
    res = subprocess.run(
        ["nix-store", "--store", f"local?root={root}", *args], capture_output=True, cwd=cwd, timeout=600
    )
    if res.returncode != 0:
        raise AssertionError(f"nix-store {args} failed: {res.stderr.decode()}")
    return res.stdout


def nix_dump(path: str | os.PathLike[str] | bytes) -> bytes:
    """``nix-store --dump path``: the NAR of a filesystem path (no store involved)."""
    res = subprocess.run(["nix-store", "--dump", path], capture_output=True, timeout=600)
    if res.returncode != 0:
        raise AssertionError(f"nix-store --dump failed: {res.stderr.decode()}")
    return res.stdout


def all_paths(store: Path) -> bytes:
    """What ``path-info --all`` prints for the store (b"" when it holds nothing)."""
    return tvix(store, "path-info", "--all").stdout


def one_line_error(res: subprocess.CompletedProcess[bytes]) -> str:
    """Assert exit status 1 and exactly one ``error: …`` line on stderr; return that line."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
