"""The gRPC daemon against the local store: imports through it, NAR reads, and many clients.

Each remote figure runs ``tvix-store daemon -l <unix socket>`` on an empty embedded store as a
separate process and points the client at it with the address flags; the baseline is the same
command on a local embedded store. Both sides are fresh processes on a warm page cache and
alternate, best of REPEAT:
- import of the stdlib tree and of a 256 MiB random file (target: remote at most 2x local);
- the same stdlib files as bare Puts from a plain grpcio client to a grpcio server that stores
  nothing (``putfloor.py``): the cost of the calls alone, against the same local import;
- ``tvix-store nar`` of the 256 MiB file to /dev/null (chunked reads over the socket);
- 100 concurrent clients (4 processes x 25 threads, one channel each) calling
  PathInfoService/Get 1,000 times each: throughput, p99 latency, errors (must be 0).
- through ``tvix-store mount`` backed by the daemon vs one on the local store (both fresh
  mounts, the LMDB file warm in the page cache): cold sequential read of a 512 MiB file
  (target: remote at least 0.5x local) and ``find`` over a 20,000-file store path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib.common import TVIX_STORE, BenchContext, Row, timed
from benchlib.common import run as run_cmd
from benchlib.putfloor import wait_for_socket

PUT_FLOOR = str(Path(__file__).resolve().with_name("putfloor.py"))

SECTION = "grpc"
MiB = 1024 * 1024
REPEAT = 3
CLIENT_PROCS = 4
THREADS_PER_PROC = 25
CALLS_PER_CLIENT = 1000


def _env(store: Path, url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TVIX_STORE_HOME"] = str(store)
    for var in ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR", "RUST_LOG"):
        env.pop(var, None)
    if url is not None:
        for var in ("BLOB_SERVICE_ADDR", "DIRECTORY_SERVICE_ADDR", "PATH_INFO_SERVICE_ADDR"):
            env[var] = url
    return env


class _Daemon:
    """``tvix-store daemon`` on a fresh store, listening on a unix socket."""

    def __init__(self, store: Path) -> None:
        self.dir = tempfile.mkdtemp(prefix="tvb", dir="/tmp")
        self.sock = f"{self.dir}/d.sock"
        self.url = f"grpc+unix://{self.sock}"
        self.proc = subprocess.Popen(
            [TVIX_STORE, "daemon", "-l", self.sock], env=_env(store), stderr=subprocess.DEVNULL
        )
        wait_for_socket(self.sock, self.proc, "daemon")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=120) != 0:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}")
        shutil.rmtree(self.dir, ignore_errors=True)


def _put_floor_row(ctx: BenchContext, src: Path, t_local: float) -> Row:
    """The same files as Puts to a grpcio server that stores nothing (``putfloor.py``)."""
    work = Path(tempfile.mkdtemp(prefix="tvf", dir="/tmp"))
    sock = str(work / "floor.sock")
    server = subprocess.Popen([sys.executable, "-P", PUT_FLOOR, "serve", sock], stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(sock, server, "put floor server")
        send = [sys.executable, "-P", PUT_FLOOR, "send", sock, str(src)]
        run_cmd(send)
        t_floor = min(timed(lambda: run_cmd(send)) for _ in range(REPEAT))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return Row(
        SECTION,
        "floor: stdlib files as Puts to a do-nothing grpcio server",
        t_floor,
        t_local,
        "s",
        note="vs local import: gRPC calls alone, nothing hashed or stored",
    )


def _import_rows(ctx: BenchContext, label: str, src: Path) -> tuple[Row, str, Path, float]:
    work = ctx.dir(f"grpc-import-{src.name}")
    out = ""

    def local(i: int) -> None:
        store = work / f"local-{i}"
        shutil.rmtree(store, ignore_errors=True)
        run_cmd([TVIX_STORE, "import", str(src)], env=_env(store))

    def remote(i: int) -> float:
        nonlocal out
        store = work / f"daemon-{i}"
        shutil.rmtree(store, ignore_errors=True)
        d = _Daemon(store)
        try:
            t0 = time.perf_counter()
            out = run_cmd([TVIX_STORE, "import", str(src)], env=_env(work / "unused", d.url)).stdout.decode()
            return time.perf_counter() - t0
        finally:
            d.stop()

    local(0)
    remote(0)
    t_local = t_remote = float("inf")
    for i in range(REPEAT):
        t_local = min(t_local, timed(lambda i=i: local(i)))
        t_remote = min(t_remote, remote(i))
    return (
        Row(
            SECTION, f"import {label} via daemon (unix)", t_remote, t_local, "s", target=2.0, note="vs local"
        ),
        out.strip(),
        work / f"daemon-{REPEAT - 1}",
        t_local,
    )


def _nar_row(store: Path, store_path: str, local_store: Path) -> Row:
    d = _Daemon(store)
    try:

        def remote() -> None:
            with open(os.devnull, "wb") as null:
                subprocess.run(
                    [TVIX_STORE, "nar", store_path],
                    stdout=null,
                    env=_env(store.parent / "unused", d.url),
                    check=True,
                )

        def local() -> None:
            with open(os.devnull, "wb") as null:
                subprocess.run(
                    [TVIX_STORE, "nar", store_path], stdout=null, env=_env(local_store), check=True
                )

        remote()
        local()
        t_r = t_l = float("inf")
        for _ in range(REPEAT):
            t_r = min(t_r, timed(remote))
            t_l = min(t_l, timed(local))
    finally:
        d.stop()
    return Row(SECTION, "nar 256 MiB file via daemon > /dev/null", t_r, t_l, "s", note="vs local")


_CLIENT = r"""
import json, sys, threading, time, grpc
from nix_compat.store_path import StorePath
from tvix.store.protos import rpc_pathinfo_pb2 as rpb, rpc_pathinfo_pb2_grpc as pgrpc
sock, path, threads, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
req = rpb.GetPathInfoRequest(by_output_hash=StorePath.from_absolute_path(path).digest)
lat, errors = [], [0]
lock = threading.Lock()
start = threading.Barrier(threads + 1)
def client():
    ch = grpc.insecure_channel("unix:" + sock)
    stub = pgrpc.PathInfoServiceStub(ch)
    stub.Get(req, timeout=60)
    mine, bad = [], 0
    start.wait()
    for _ in range(calls):
        t0 = time.perf_counter()
        try:
            stub.Get(req, timeout=60)
        except grpc.RpcError:
            bad += 1
        mine.append(time.perf_counter() - t0)
    with lock:
        lat.extend(mine); errors[0] += bad
    ch.close()
ts = [threading.Thread(target=client) for _ in range(threads)]
for t in ts: t.start()
start.wait()
t0 = time.perf_counter()
for t in ts: t.join()
print(json.dumps({"wall": time.perf_counter() - t0, "lat": lat, "errors": errors[0]}))
"""


def _concurrency_rows(store: Path, store_path: str) -> list[Row]:
    d = _Daemon(store)
    try:
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CLIENT,
                    d.sock,
                    store_path,
                    str(THREADS_PER_PROC),
                    str(CALLS_PER_CLIENT),
                ],
                stdout=subprocess.PIPE,
            )
            for _ in range(CLIENT_PROCS)
        ]
        results = []
        for p in procs:
            stdout, _ = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise RuntimeError("client process failed")
            results.append(json.loads(stdout))
        wall = time.perf_counter() - t0
    finally:
        d.stop()
    lat = sorted(x for r in results for x in r["lat"])
    errors = sum(r["errors"] for r in results)
    calls = len(lat)
    p99 = lat[int(0.99 * (calls - 1))] * 1000
    clients = CLIENT_PROCS * THREADS_PER_PROC
    return [
        Row(
            SECTION,
            f"{clients} clients x {CALLS_PER_CLIENT} PathInfo Get: throughput",
            calls / wall,
            None,
            "calls/s",
        ),
        Row(SECTION, f"{clients} clients x {CALLS_PER_CLIENT} PathInfo Get: p99 latency", p99, None, "ms"),
        Row(
            SECTION,
            f"{clients} clients x {CALLS_PER_CLIENT} PathInfo Get: errors",
            errors,
            None,
            "",
            target=0,
        ),
    ]


def _mount_rows(ctx: BenchContext) -> list[Row]:
    from benchlib.mount import _dd, _many_files, _Mount, _quiet

    work = ctx.dir("grpc-mount")
    local_store = work / "local"
    remote_store = work / "remote"
    for s in (local_store, remote_store):
        shutil.rmtree(s, ignore_errors=True)
    big = ctx.random_file("mount-512m", 512 * MiB)
    many = _many_files(work)
    d = _Daemon(remote_store)
    try:
        names = {}
        for src in (big, many):
            out = run_cmd([TVIX_STORE, "import", str(src)], env=_env(local_store)).stdout.decode().strip()
            run_cmd([TVIX_STORE, "import", str(src)], env=_env(work / "unused", d.url))
            names[src] = out.rsplit("/", 1)[1]
        for store in (local_store, remote_store):
            for f in store.glob("*.mdb"):
                _quiet(["cat", str(f)])
        counter = iter(range(1000))

        def mount(remote: bool) -> _Mount:
            mnt = work / f"mnt{next(counter)}"
            env = _env(work / "unused", d.url) if remote else _env(local_store)
            return _Mount([TVIX_STORE, "mount", str(mnt)], mnt, env)

        best = {True: float("inf"), False: float("inf")}
        find = {True: float("inf"), False: float("inf")}
        for _ in range(3):
            for remote in (False, True):
                m = mount(remote)
                try:
                    best[remote] = min(best[remote], timed(lambda m=m: _dd(m.path / names[big])))
                finally:
                    m.stop()
                m = mount(remote)
                try:
                    find[remote] = min(
                        find[remote], timed(lambda m=m: _quiet(["find", str(m.path / names[many])]))
                    )
                finally:
                    m.stop()
    finally:
        d.stop()
    size_mib = big.stat().st_size / MiB
    return [
        Row(
            SECTION,
            "mount via daemon: cold sequential read 512 MiB",
            size_mib / best[True],
            size_mib / best[False],
            "MiB/s",
            target=0.5,
            better="higher",
            note="vs local mount",
        ),
        Row(
            SECTION, "mount via daemon: find over 20,000 files", find[True], find[False], "s", note="vs local"
        ),
    ]


def run(ctx: BenchContext) -> list[Row]:
    """All rows of this section."""
    rows: list[Row] = []
    stdlib = ctx.stdlib_tree()
    row, stdlib_path, stdlib_store, t_local = _import_rows(ctx, "stdlib tree", stdlib)
    rows.append(row)
    rows.append(_put_floor_row(ctx, stdlib, t_local))
    big = ctx.random_file("store-256m", 256 * MiB, seed=3)
    row, big_path, big_store, _ = _import_rows(ctx, "256 MiB random file", big)
    rows.append(row)
    rows.append(_nar_row(big_store, big_path, ctx.dir(f"grpc-import-{big.name}") / f"local-{REPEAT - 1}"))
    rows += _concurrency_rows(stdlib_store, stdlib_path)
    rows += _mount_rows(ctx)
    return rows
