"""``copy --from http://…`` against a cache server that misbehaves the way real ones do.

The server serves a cache written by the real Nix, but may cut a narinfo short (announcing
its whole length, then closing the connection), send narinfos gzip-encoded with
``Content-Encoding`` (as S3 caches written with ``narinfo-compression`` do), stall in the
middle of a NAR, or answer with an HTTP error status a number of times before it serves.
"""

from __future__ import annotations

import collections
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
def faulty_server(
    root: Path, fault: str, requests: collections.Counter[str] | None = None
) -> Iterator[tuple[str, threading.Event]]:
    """Serve root on 127.0.0.1 with a fault: "cut-narinfo", "gzip-narinfo", "stall-nar",
    "slow-nar" or "slow-nar=SECONDS" (each NAR answered after 0.5 s or SECONDS), "STATUS*N"
    (each file's first N GETs answered with that HTTP status; N may be "all"), or
    "status-in-path" (a GET of /STATUS is answered with that status).

    Yields the base URL and an event set once the fault has happened. requests, if given,
    counts the GETs of each path, and under "most-nars-at-once" the most NAR GETs that were
    being answered at the same time.
    """
    happened = threading.Event()
    stop = threading.Event()
    status, _, times = fault.partition("*")
    gets: collections.Counter[str] = collections.Counter() if requests is None else requests
    nars_now = 0
    count_lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            gets[self.path] += 1
            if fault == "status-in-path":
                self.send_error(int(self.path.strip("/")))
                return
            if times and (times == "all" or gets[self.path] <= int(times)):
                happened.set()
                self.send_error(int(status))
                return
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
            if fault.startswith("slow-nar") and not narinfo:
                nonlocal nars_now
                with count_lock:
                    nars_now += 1
                    gets["most-nars-at-once"] = max(gets["most-nars-at-once"], nars_now)
                time.sleep(float(fault.partition("=")[2] or 0.5))  # before the response starts
                with count_lock:
                    nars_now -= 1
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
    """A narinfo whose connection closes before its Content-Length every time is an error naming
    it, not a narinfo missing its last lines (references, signatures); nothing is stored."""
    store = tmp_path / "store"
    with faulty_server(nix_closure["caches"]["none"], "cut-narinfo") as (url, happened):
        res = tvix(store, "copy", "--from", url, nix_closure["top"], check=False)
    assert happened.is_set()
    line = _error_after_retries(res, 5)  # a connection closed early is worth another try
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


def _error_after_retries(res: subprocess.CompletedProcess[bytes], attempts: int) -> str:
    """Exit status 1; a warning for each attempt but the last, then one error line (returned)."""
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 1, f"exit {res.returncode}, stderr: {err}"
    *warnings, last = err.splitlines()
    assert len(warnings) == attempts - 1, err
    assert all("WARN" in w and "retrying in" in w for w in warnings), err
    assert last.startswith("error: ") and f"(after {attempts} attempts)" in last, last
    return last


@pytest.mark.parametrize("status", [503, 429])
def test_transient_errors_are_tried_again(tmp_path, nix_closure, status):
    """A cache that answers a transient error (overloaded, rate-limiting, a proxy whose
    upstream is down) twice for every file is asked again, as Nix does, and the copy completes."""
    store = tmp_path / "store"
    gets: collections.Counter[str] = collections.Counter()
    with faulty_server(nix_closure["caches"]["xz"], f"{status}*2", gets) as (url, happened):
        res = tvix(store, "copy", "--from", url, nix_closure["top"])
    assert happened.is_set()
    assert stored_paths(store) == nix_closure["paths"]
    assert_same_as_nix(store, nix_closure, nix_closure["paths"])
    assert gets and all(n == 3 for n in gets.values()), gets  # two failures, then the file
    assert b"retrying in" in res.stderr


def test_a_cache_that_stays_down_fails_after_five_attempts(tmp_path, nix_closure):
    """Nix's download-attempts default: five attempts at a narinfo, then an error naming it and
    the status; nothing is stored."""
    store = tmp_path / "store"
    gets: collections.Counter[str] = collections.Counter()
    with faulty_server(nix_closure["caches"]["xz"], "503*all", gets) as (url, _):
        res = tvix(store, "copy", "--from", url, nix_closure["top"], check=False)
    line = _error_after_retries(res, 5)
    assert ".narinfo" in line and "HTTP 503" in line, line
    # Five in all: the copy's walk takes the outcome of the download it started early.
    assert list(gets.values()) == [5], gets
    assert all_paths(store) == b""


def test_the_paths_asked_for_are_fetched_side_by_side(tmp_path, nix_closure):
    """The NARs copy starts before it opens the store (up to 4, and --jobs) are fetched at
    once, not one after another; each file is asked for once."""
    wanted = nix_closure["paths"][:4]
    gets: collections.Counter[str] = collections.Counter()
    with faulty_server(nix_closure["caches"]["xz"], "slow-nar", gets) as (url, _):
        tvix(tmp_path / "store", "copy", "-j", "4", "--from", url, *wanted)
    assert gets.pop("most-nars-at-once") == len(wanted), gets
    assert set(gets.values()) == {1}, gets


def test_a_missing_path_is_reported_without_waiting_for_nars(tmp_path, nix_closure):
    """The walk takes a narinfo started early as soon as it arrives: a path missing from the
    cache fails the copy at once, not once the other paths' NARs have answered."""
    present = nix_closure["top"]
    missing = "/nix/store/" + "0" * 32 + "-missing"
    started = time.monotonic()
    with faulty_server(nix_closure["caches"]["xz"], "slow-nar=20", None) as (url, _):
        res = tvix(tmp_path / "store", "copy", "--from", url, present, missing, check=False)
    assert time.monotonic() - started < 10
    assert "is not in the binary cache" in one_line_error(res)


@pytest.mark.parametrize("status", [501, 505, 400, 401])
def test_errors_no_retry_mends_end_the_copy_at_once(tmp_path, nix_closure, status):
    """Not implemented, HTTP version not supported, bad request, unauthorized: asked once, as
    Nix does; one error line naming the narinfo and the status; nothing is stored."""
    store = tmp_path / "store"
    gets: collections.Counter[str] = collections.Counter()
    with faulty_server(nix_closure["caches"]["xz"], f"{status}*all", gets) as (url, _):
        res = tvix(store, "copy", "--from", url, nix_closure["top"], check=False)
    line = one_line_error(res)
    assert ".narinfo" in line and f"HTTP {status}" in line, line
    assert list(gets.values()) == [1], gets  # one GET, by the download started early
    assert all_paths(store) == b""


def test_which_statuses_are_tried_again(tmp_path):
    """Nix's judgement of HTTP errors: 408, 429 and server errors but 501, 505 and 511 are
    worth another attempt; client errors are not, and 403/404/410 mean "not in the cache"."""
    from tvix_store.binary_cache import BinaryCacheError
    from tvix_store.binary_cache.fetch import open_url

    transient = [408, 429, 500, 502, 503, 504, 507, 599]
    final = [400, 401, 407, 409, 501, 505, 511]
    absent = [403, 404, 410]
    gets: collections.Counter[str] = collections.Counter()
    with faulty_server(tmp_path, "status-in-path", gets) as (url, _):
        for status in transient + final + absent:
            if status in absent:
                assert open_url(f"{url}/{status}", attempts=2) is None
            else:
                with pytest.raises(BinaryCacheError, match=f"HTTP {status}"):
                    open_url(f"{url}/{status}", attempts=2)
    assert gets == {f"/{s}": 2 if s in transient else 1 for s in transient + final + absent}
