"""Several clients at once against a daemon with few threads: calls beyond its threads wait for
one instead of failing (each importer keeps ~64 uploads in flight)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tvix_cli import TVIX_STORE, cli_env, tvix

from tvix_store.server import Daemon
from tvix_store.services import construct_services

IMPORTERS = 3
FILES = 300


def _tree(root: Path, i: int) -> Path:
    tree = root / f"tree-{i}"
    tree.mkdir()
    for j in range(FILES):
        (tree / f"f{j:03}").write_text(f"importer {i}, file {j}\n" * (1 + j % 40))
    return tree


def test_concurrent_imports_through_a_daemon_with_four_threads(tmp_path: Path, short_dir: Path) -> None:
    """Three imports at once keep ~190 calls in flight on a daemon of 4 threads: all succeed and
    store what a local import stores."""
    url = f"lmdb://{tmp_path / 'served'}"
    services = construct_services(url, url, url)
    sock = str(short_dir / "o.sock")
    daemon = Daemon(services, sock, max_workers=4)
    trees = [_tree(tmp_path, i) for i in range(IMPORTERS)]
    addr = f"grpc+unix://{sock}"
    env = cli_env(
        tmp_path / "unused", BLOB_SERVICE_ADDR=addr, DIRECTORY_SERVICE_ADDR=addr, PATH_INFO_SERVICE_ADDR=addr
    )
    try:
        procs = [
            subprocess.Popen(
                [TVIX_STORE, "import", str(t)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for t in trees
        ]
        results = [p.communicate(timeout=300) for p in procs]
        for proc, (_, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err.decode()
        for tree, (out, _) in zip(trees, results, strict=True):
            local = tvix(tmp_path / "local", "import", tree).stdout
            assert out == local
            info = tvix(tmp_path / "unused", "path-info", out.decode().strip(), env=env).stdout
            assert out.decode().strip() in info.decode()
    finally:
        daemon.stop(grace=2.0)
        services.close()
