"""Nix binary caches both ways, against Nix and a static file server (issue 5 point 6).

Inputs: the three-derivation closure of the cache tests plus the stdlib tree added to /nix/store,
written by ``nix copy --to file://…`` once with xz (Nix's default) and once uncompressed.
- ``tvix-store copy --from file://`` (xz) into an empty store vs ``nix copy --from file://`` into a
  fresh ``local?root=`` store (target: ours ≤ 1.0x Nix's time);
- ``nix copy --from http://`` our ``serve-cache`` vs ``python -m http.server`` over the
  uncompressed cache Nix wrote (so neither side pays for decompression);
- one big NAR (the stdlib's, ~2,500 files) downloaded with curl: ours vs the static file (target:
  ours ≥ 0.5x the static server's throughput), both warm (served from the rendered-NAR cache) and
  rendered on the fly (cache off).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.common import TVIX_STORE, BenchContext, Row, timed
from benchlib.common import run as run_cmd

SECTION = "cache"
NIX = ["nix", "--extra-experimental-features", "nix-command"]
REPEAT = 3
MiB = 1024 * 1024

NIX_EXPR = r"""
let
  sh = "/bin/sh";
  leaf = derivation {
    name = "bench-leaf"; system = builtins.currentSystem; builder = sh; PATH = "/usr/bin:/bin";
    args = [ "-c" "mkdir -p $out/bin; seq 1 300000 > $out/data; printf x > $out/bin/x; chmod +x $out/bin/x" ];
  };
  mid = derivation {
    name = "bench-mid"; system = builtins.currentSystem; builder = sh; PATH = "/usr/bin:/bin";
    args = [ "-c" "mkdir $out; echo ${leaf} > $out/ref; ln -s ${leaf}/bin/x $out/x" ];
  };
in derivation {
  name = "bench-top"; system = builtins.currentSystem; builder = sh; PATH = "/usr/bin:/bin";
  args = [ "-c" "echo ${mid} ${leaf} > $out" ];
}
"""


def _env(store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SERVICE_ADDR") and k != "RUST_LOG"}
    env["TVIX_STORE_HOME"] = str(store)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _inputs(ctx: BenchContext) -> tuple[list[str], Path, Path]:
    work = ctx.dir("cache-inputs")
    (work / "default.nix").write_text(NIX_EXPR)
    top = (
        run_cmd(["nix-build", "--option", "substituters", "", "--no-out-link", str(work / "default.nix")])
        .stdout.decode()
        .strip()
    )
    stdlib = run_cmd(["nix-store", "--add", str(ctx.stdlib_tree())]).stdout.decode().strip()
    paths = [top, stdlib]
    xz, none = work / "cache-xz", work / "cache-none"
    for cache, comp in ((xz, "xz"), (none, "none")):
        if not cache.exists():
            run_cmd([*NIX, "copy", "--to", f"file://{cache}?compression={comp}", *paths])
    return paths, xz, none


def _biggest_nar(cache: Path) -> tuple[str, Path]:
    """(store path, NAR file) of the biggest NAR in an uncompressed cache."""
    best: tuple[int, str, Path] = (-1, "", cache)
    for info in cache.glob("*.narinfo"):
        text = info.read_text()
        size = int(re.search(r"^NarSize: (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
        if size > best[0]:
            path = re.search(r"^StorePath: (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
            url = re.search(r"^URL: (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
            best = (size, path, cache / url)
    return best[1], best[2]


def _curl_seconds(url: str) -> float:
    return timed(lambda: run_cmd(["curl", "-sf", "-o", "/dev/null", url]), repeat=REPEAT)


def run(ctx: BenchContext) -> list[Row]:
    """Measure the three figures."""
    if shutil.which("nix-build") is None:
        return []
    paths, xz, none = _inputs(ctx)
    work = ctx.dir("cache-runs")
    sizes = (re.search(r"^NarSize: (\d+)$", f.read_text(), re.M) for f in none.glob("*.narinfo"))
    nar_bytes = sum(int(m.group(1)) for m in sizes if m)
    rows: list[Row] = []

    # 1. copy from a file:// cache (xz, as Nix writes by default)
    counter = iter(range(1000))

    def ours_copy() -> None:
        store = work / f"tvix-{next(counter)}"
        run_cmd([TVIX_STORE, "copy", "--from", f"file://{xz}", *paths], env=_env(store))

    def nix_copy() -> None:
        root = work / f"nix-{next(counter)}"
        run_cmd([*NIX, "copy", "--no-check-sigs", "--from", f"file://{xz}",
                 "--to", f"local?root={root}", *paths])  # fmt: skip

    ours_copy()  # bytecode caches, page cache
    t_ours = timed(ours_copy, REPEAT)
    t_nix = timed(nix_copy, REPEAT)
    rows.append(
        Row(SECTION, f"copy --from file:// xz ({nar_bytes / MiB:.0f} MiB of NARs)", t_ours, t_nix, "s", 1.0,
            note="vs nix copy --from")
    )  # fmt: skip

    # 2. Nix substituting over HTTP: our server vs a static file server over Nix's own cache
    served = work / "served-store"
    run_cmd([TVIX_STORE, "copy", "--from", f"file://{none}", *paths], env=_env(served))
    port_ours, port_static, port_cold = _free_port(), _free_port(), _free_port()
    ours_srv = subprocess.Popen(
        [TVIX_STORE, "serve-cache", "-l", f"127.0.0.1:{port_ours}"],
        env=_env(served), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    cold_srv = subprocess.Popen(
        [TVIX_STORE, "serve-cache", "-l", f"127.0.0.1:{port_cold}", "--nar-cache-size", "0"],
        env=_env(served), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    static_srv = subprocess.Popen(
        [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(none), str(port_static)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port_ours, ours_srv)
        _wait_port(port_static, static_srv)
        _wait_port(port_cold, cold_srv)

        def nix_from(port: int) -> None:
            root = work / f"nix-http-{next(counter)}"
            run_cmd([*NIX, "copy", "--no-check-sigs", "--from", f"http://127.0.0.1:{port}",
                     "--to", f"local?root={root}", *paths])  # fmt: skip

        nix_from(port_ours)
        t_ours = timed(lambda: nix_from(port_ours), REPEAT)
        t_static = timed(lambda: nix_from(port_static), REPEAT)
        rows.append(
            Row(SECTION, "nix copy --from http:// (ours vs http.server)", t_ours, t_static, "s",
                note="static: uncompressed cache written by Nix; ours warm")
        )  # fmt: skip
        t_cold = timed(lambda: nix_from(port_cold), REPEAT)
        rows.append(
            Row(SECTION, "nix copy --from http:// (ours, NAR cache off)", t_cold, t_static, "s",
                note="every NAR rendered on the fly")
        )  # fmt: skip

        # 3. one NAR with curl
        store_path, nar_file = _biggest_nar(none)
        digest = Path(store_path).name[:32]
        with urllib_open(f"http://127.0.0.1:{port_ours}/{digest}.narinfo") as r:
            url = re.search(r"^URL: (\S+)$", r.read().decode(), re.M).group(1)  # type: ignore[union-attr]
        size = nar_file.stat().st_size
        t_ours = _curl_seconds(f"http://127.0.0.1:{port_ours}/{url}")
        t_cold = _curl_seconds(f"http://127.0.0.1:{port_cold}/{url}")
        t_static = _curl_seconds(f"http://127.0.0.1:{port_static}/nar/{nar_file.name}")
        rows.append(
            Row(SECTION, f"curl NAR download ({size / MiB:.0f} MiB), warm", size / MiB / t_ours,
                size / MiB / t_static, "MiB/s", 0.5, better="higher", note="from the rendered-NAR cache")
        )  # fmt: skip
        rows.append(
            Row(SECTION, f"curl NAR download ({size / MiB:.0f} MiB), rendered", size / MiB / t_cold,
                size / MiB / t_static, "MiB/s", 0.5, better="higher", note="NAR cache off")
        )  # fmt: skip
    finally:
        _stop(ours_srv)
        _stop(static_srv)
        _stop(cold_srv)
    return rows


def urllib_open(url: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(url, timeout=30)
