"""Run ``tvix-store serve-cache`` as a subprocess on a test's store; stop it by PID."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tvix_cli import TVIX_STORE, cli_env

_URL_RE = re.compile(r"serving binary cache on (http://\S+)")


@contextmanager
def serve_cache(store: Path, *args: str, log: Path | None = None) -> Iterator[str]:
    """Start the server on 127.0.0.1 (a free port); yield its base URL; stop it afterwards."""
    log = log or store.parent / f"serve-{store.name}.log"
    store.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TVIX_STORE, "serve-cache", "-l", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=cli_env(store),
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
