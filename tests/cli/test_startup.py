"""Start-up cost of the everyday commands: ``import`` and ``nar`` must not load grpc, trio or
pyfuse3 (grpc alone costs ~150 ms of import time), which belong to daemon, mount and the gRPC
backends only; nor ``dataclasses`` and the ``inspect`` it imports (~10 ms with the classes it
builds: the value classes derive from ``Frozen`` instead, see ``nix_compat.frozen``); nor
``logging`` (~5 ms with traceback and the rest: imported at the first record that passes the
levels, see ``tvix_castore.lazy_logging``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("grpc", "trio", "pyfuse3", "dataclasses", "inspect", "logging")

# Runs one command through main() in a fresh interpreter, then reports on stderr which of the
# heavy modules it loaded (stdout carries the command's own output).
SCRIPT = """
import sys
from tvix_store.cli import main
store = sys.argv[1]
flags = ["--blob-service-addr", store, "--directory-service-addr", store, "--path-info-service-addr", store]
assert main([sys.argv[2], *flags, sys.argv[3]]) == 0
sys.stdout.flush()
print("loaded:", sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _loaded(store: str, command: str, argument: str) -> tuple[str, str]:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=HEAVY), store, command, argument],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode(), res.stderr.decode().splitlines()[-1]


@pytest.mark.parametrize("command", ["import", "nar"])
def test_import_and_nar_load_nothing_heavy(tmp_path: Path, command: str) -> None:
    """An import into the embedded LMDB store, and the NAR of what it stored, load none of the
    heavy modules."""
    (tmp_path / "f").write_bytes(b"x")
    store = f"lmdb://{tmp_path / 'store'}"
    out, loaded = _loaded(store, "import", str(tmp_path / "f"))
    if command == "nar":
        out, loaded = _loaded(store, "nar", out.strip())
        assert out.startswith("\r\x00\x00\x00\x00\x00\x00\x00nix-archive-1")
    assert loaded == "loaded: []"
