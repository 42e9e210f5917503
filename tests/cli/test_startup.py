"""Start-up cost of the everyday commands: ``import`` and ``nar`` must not load grpc, trio or
pyfuse3 (grpc alone costs ~150 ms of import time); those belong to daemon, mount and the gRPC
backends only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("grpc", "trio", "pyfuse3")

SCRIPT = """
import sys
from tvix_store.cli import main
store = sys.argv[1]
flags = ["--blob-service-addr", store, "--directory-service-addr", store, "--path-info-service-addr", store]
assert main(["import", *flags, sys.argv[2]]) == 0
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_import_and_nar_do_not_load_grpc(tmp_path: Path) -> None:
    """An import into the embedded LMDB store loads none of the heavy server-side modules."""
    (tmp_path / "f").write_bytes(b"x")
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT.format(heavy=HEAVY),
            f"lmdb://{tmp_path / 'store'}",
            str(tmp_path / "f"),
        ],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode().splitlines()[-1] == "[]"
