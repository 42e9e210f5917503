"""Helpers of the binary cache tests: comparing with Nix, running serve-cache and mount by PID."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tvix_cli import TVIX_STORE, all_paths, cli_env, nix_dump, tvix

from nix_compat import nixbase32

NIX = ["nix", "--extra-experimental-features", "nix-command"]
COMPRESSIONS = ("none", "xz", "zstd", "bzip2", "br", "lz4")

_URL_RE = re.compile(r"serving binary cache on (http://\S+)")


@contextmanager
def serve_cache(
    store: Path, *args: str, log: Path | None = None, env_extra: dict[str, str] | None = None
) -> Iterator[str]:
    """Start the server on 127.0.0.1 (a free port); yield its base URL; stop it afterwards."""
    log = log or store.parent / f"serve-{store.name}.log"
    store.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TVIX_STORE, "serve-cache", "-l", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=cli_env(store, **(env_extra or {})),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            m = _URL_RE.search(log.read_text(errors="replace"))
            if m:
                url = m.group(1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve-cache did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield url
        assert proc.poll() is None, f"serve-cache died: {log.read_text(errors='replace')}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stored_paths(store: Path) -> list[str]:
    """The store paths `path-info --all` lists, sorted."""
    text = all_paths(store).decode()
    return sorted(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("StorePath: "))


def _sri_to_nix(sri: str) -> str:
    """`nix path-info --json` prints narHash as sha256:<nixbase32> in Nix 2.8; normalise SRI too."""

    if sri.startswith("sha256-"):
        return "sha256:" + nixbase32.encode(base64.b64decode(sri[len("sha256-") :]))
    return sri


def assert_same_as_nix(store: Path, nix_closure: dict, paths: list[str], full: bool = True) -> None:
    """Every PathInfo field equals `nix path-info --json`, every NAR equals `nix-store --dump`.

    full=False skips deriver and CA, which an exportReferencesGraph closure does not carry.
    """
    ours = json.loads(tvix(store, "path-info", "--json", *paths).stdout)
    assert sorted(o["path"] for o in ours) == sorted(paths)
    for o in ours:
        theirs = nix_closure["path_info"][o["path"]]
        assert _sri_to_nix(o["narHash"]) == _sri_to_nix(theirs["narHash"])
        assert o["narSize"] == theirs["narSize"]
        assert sorted(o["references"]) == sorted(theirs["references"])
        if full:
            assert o.get("deriver") == theirs.get("deriver")
            assert o.get("ca") == theirs.get("ca")
        assert tvix(store, "nar", o["path"]).stdout == nix_dump(o["path"])


def _is_mounted(path: Path) -> bool:
    target = str(path.absolute())
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@contextmanager
def mounted(store: Path, mnt: Path, *args: str) -> Iterator[Path]:
    """``tvix-store mount mnt args…`` in a subprocess; unmounted and stopped (by PID) afterwards."""
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / f"{mnt.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [TVIX_STORE, "mount", str(mnt), *args], stdout=out, stderr=subprocess.STDOUT, env=cli_env(store)
        )
    try:
        deadline = time.monotonic() + 30
        while not _is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mount did not appear: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        yield mnt
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(20)
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


@contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """A stdlib static file server over directory on 127.0.0.1 (a thread; shut down afterwards)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
