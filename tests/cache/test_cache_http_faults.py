"""``copy --from http://…`` against a cache server that misbehaves the way real ones do.

The server serves a cache written by the real Nix, but may cut a narinfo short (announcing
its whole length, then closing the connection), send narinfos gzip-encoded with
``Content-Encoding`` (as S3 caches written with ``narinfo-compression`` do), or stall in the
middle of a NAR.
"""

from __future__ import annotations

import gzip
import http.server
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cache_helpers import assert_same_as_nix, stored_paths
from tvix_cli import TVIX_STORE, all_paths, cli_env, one_line_error, tvix

pytestmark = pytest.mark.nix


@contextmanager
def faulty_server(root: Path, fault: str) -> Iterator[tuple[str, threading.Event]]:
    """Serve root on 127.0.0.1 with a fault: "cut-narinfo", "gzip-narinfo" or "stall-nar".

    Yields the base URL and an event set once the fault has happened.
    """
    happened = threading.Event()
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            narinfo = path.suffix == ".narinfo"
            if fault == "gzip-narinfo" and narinfo:
                body = gzip.compress(body)
                self.send_response(200)
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault == "cut-narinfo" and narinfo:
                # Everything up to the references, then the connection goes.
                self.wfile.write(body[: body.index(b"References:") + 20])
                self.wfile.flush()
                self.close_connection = True
                happened.set()
                return
            if fault == "stall-nar" and not narinfo:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                happened.set()
                stop.wait(120)
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", happened
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


def test_narinfo_cut_short_is_refused(tmp_path, nix_closure):
    """A narinfo whose connection closes before its Content-Length is an error naming it, not a
    narinfo missing its last lines (references, signatures); nothing is stored."""
    store = tmp_path / "store"
    with faulty_server(nix_closure["caches"]["none"], "cut-narinfo") as (url, happened):
        res = tvix(store, "copy", "--from", url, nix_closure["top"], check=False)
    assert happened.is_set()
    line = one_line_error(res)
    assert ".narinfo" in line and "short of its Content-Length" in line, line
    assert all_paths(store) == b""


def test_gzip_content_encoding(tmp_path, nix_closure):
    """Narinfos sent with Content-Encoding: gzip are decoded, as Nix's downloads do."""
    store = tmp_path / "store"
    with faulty_server(nix_closure["caches"]["xz"], "gzip-narinfo") as (url, _):
        tvix(store, "copy", "--from", url, nix_closure["top"])
    assert stored_paths(store) == nix_closure["paths"]
    assert_same_as_nix(store, nix_closure, nix_closure["paths"])


def test_interrupt_during_a_stalled_download(tmp_path, nix_closure):
    """Ctrl-C while a NAR download hangs ends the copy at once (status 130), not when the
    socket times out a minute later; nothing is stored."""
    store = tmp_path / "store"
    with faulty_server(nix_closure["caches"]["none"], "stall-nar") as (url, happened):
        proc = subprocess.Popen(
            [TVIX_STORE, "copy", "--from", url, nix_closure["top"]],
            env=cli_env(store),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert happened.wait(60), "no NAR download began"
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            t0 = time.monotonic()
            assert proc.wait(30) == 130
            assert time.monotonic() - t0 < 5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all_paths(store) == b""
