"""The user-facing store commands against Nix: import, nar, and the memory an import needs.

Both sides run as fresh processes on the same inputs with a warm page cache, so interpreter
start-up counts for us as the C++ start-up counts for Nix:
- ``tvix-store import`` into an empty embedded (LMDB) store vs ``nix-store --add`` of a copy of
  the same content under a name Nix has not seen (so Nix really reads, hashes and copies it);
- the 256 MiB import again with our disk syncs off (``nosync.py``): Nix syncs only its database,
  so this is the like-for-like durability (no target; it shows what our syncs cost);
- ``tvix-store nar`` vs ``nix-store --dump`` of the original tree, both to /dev/null;
- both commands on a 6-byte file: start-up alone (no target; it bounds the ratios above);
- peak RSS of importing a 1 GiB file (target: below 200 MiB, i.e. streaming).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchlib.common import TVIX_STORE, BenchContext, Row, peak_rss_of, timed
from benchlib.common import run as run_cmd

NO_SYNC = str(Path(__file__).resolve().with_name("nosync.py"))

SECTION = "store"
MiB = 1024 * 1024
REPEAT = 5


def _env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TVIX_STORE_HOME"] = str(store)
    # A user's environment: bytecode caches are written on the first (untimed) run and used after.
    for var in (
        "BLOB_SERVICE_ADDR",
        "DIRECTORY_SERVICE_ADDR",
        "PATH_INFO_SERVICE_ADDR",
        "RUST_LOG",
        "PYTHONDONTWRITEBYTECODE",
    ):
        env.pop(var, None)
    return env


def _nix_delete(store_path: str) -> None:
    subprocess.run(["nix-store", "--delete", store_path], capture_output=True, check=False)


def _import_rows(
    ctx: BenchContext,
    label: str,
    src: Path,
    target: float | None = 1.0,
    command: tuple[str, ...] = (TVIX_STORE,),
    stores: str = "tvix",
) -> tuple[list[Row], str]:
    """Time our import (by command) and Nix's of src; returns the rows and our store path."""
    work = ctx.dir(f"store-import-{src.name}")
    ours_path = ""

    def ours(i: int) -> None:
        nonlocal ours_path
        store = work / f"{stores}-{i}"
        shutil.rmtree(store, ignore_errors=True)
        ours_path = run_cmd([*command, "import", str(src)], env=_env(store)).stdout.decode().strip()

    # Nix gets a fresh copy under a new name each time, so nothing is already valid for it.
    copies = []
    for i in range(REPEAT):
        dst = work / f"{src.name}-nix{os.getpid()}-{i}"
        if not dst.exists():
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copyfile(src, dst)
        copies.append(dst)
    nix_paths: list[str] = []

    def nix(i: int) -> None:
        nix_paths.append(run_cmd(["nix-store", "--add", str(copies[i])]).stdout.decode().strip())

    # One untimed pass warms the page cache and writes our bytecode caches. Then the two sides
    # alternate, so that load from elsewhere on the machine hits both alike; best run counts.
    ours(0)
    t_ours = t_nix = float("inf")
    for i in range(REPEAT):
        # Each run starts with nothing dirty in the page cache: neither side pays for writing
        # back what the one before left (Nix leaves everything it adds, unsynced ours too).
        os.sync()
        t_ours = min(t_ours, timed(lambda i=i: ours(i)))
        os.sync()
        t_nix = min(t_nix, timed(lambda i=i: nix(i)))
    for p in nix_paths:
        _nix_delete(p)
    for i in range(REPEAT - 1):
        shutil.rmtree(work / f"{stores}-{i}", ignore_errors=True)
    return [Row(SECTION, f"import {label}", t_ours, t_nix, "s", target=target)], ours_path


def _nar_row(ctx: BenchContext, label: str, src: Path, store_path: str, target: float | None = 1.0) -> Row:
    store = ctx.dir(f"store-import-{src.name}") / f"tvix-{REPEAT - 1}"

    def ours() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run([TVIX_STORE, "nar", store_path], stdout=null, env=_env(store), check=True)

    def nix() -> None:
        with open(os.devnull, "wb") as null:
            subprocess.run(["nix-store", "--dump", str(src)], stdout=null, check=True)

    ours()
    nix()
    t_ours = t_nix = float("inf")
    for _ in range(REPEAT):
        t_ours = min(t_ours, timed(ours))
        t_nix = min(t_nix, timed(nix))
    return Row(SECTION, f"nar {label} > /dev/null", t_ours, t_nix, "s", target=target)


def _rss_row(ctx: BenchContext) -> Row:
    src = ctx.random_file("store-1g", 1024 * MiB, seed=7)
    store = ctx.dir("store-rss") / "tvix"
    shutil.rmtree(store, ignore_errors=True)
    rss, _ = peak_rss_of([TVIX_STORE, "import", str(src)], env=_env(store))
    shutil.rmtree(store, ignore_errors=True)
    return Row(SECTION, "peak RSS of importing a 1 GiB file", rss, None, "MiB", target=200)


def run(ctx: BenchContext) -> list[Row]:
    """All rows of this section."""
    rows: list[Row] = []
    stdlib = ctx.stdlib_tree()
    size = sum(f.stat().st_size for f in stdlib.rglob("*") if f.is_file() and not f.is_symlink())
    r, stdlib_path = _import_rows(ctx, f"stdlib tree ({size / 1e6:.0f} MB)", stdlib)
    rows += r
    big = ctx.random_file("store-256m", 256 * MiB, seed=3)
    r, big_path = _import_rows(ctx, "256 MiB random file", big)
    rows += r
    # Nix syncs only its database, never the files it adds: the same import with our syncs off.
    r, _ = _import_rows(
        ctx,
        "256 MiB random file, unsynced as Nix's",
        big,
        target=None,
        command=(sys.executable, "-P", NO_SYNC),
        stores="unsynced",
    )
    rows += r
    rows.append(_nar_row(ctx, "stdlib tree", stdlib, stdlib_path))
    rows.append(_nar_row(ctx, "256 MiB random file", big, big_path))
    # Start-up alone: what each command costs before it reads a byte of content.
    tiny = ctx.dir("store-tiny") / "hello.txt"
    tiny.write_bytes(b"hello\n")
    r, tiny_path = _import_rows(ctx, "a 6-byte file (start-up)", tiny, target=None)
    rows += r
    rows.append(_nar_row(ctx, "a 6-byte file (start-up)", tiny, tiny_path, target=None))
    rows.append(_rss_row(ctx))
    return rows
