"""Helpers and fixtures for tests that need a daemon (tests/grpc, mounts over gRPC):
in-process daemon over LMDB, and a daemon subprocess.

``served`` gives the URL of a ``tvix_store.server.Daemon`` running in this process together with
the LMDB services behind it, so a test can check through the backend itself that nothing was
stored; ``daemon_serving`` runs one in front of any services a test makes. ``daemon_proc``
runs ``.venv/bin/tvix-store daemon -l <sock>`` as a subprocess on its own embedded store and
stops it (by PID) afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tvix_cli import TVIX_STORE, cli_env

from tvix_store.server import Daemon
from tvix_store.services import Services, construct_services


@dataclass
class Served:
    url: str
    sock: str
    services: Services

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.sock}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short-named tmp dir for unix sockets (their paths are limited to ~108 bytes)."""
    d = tempfile.mkdtemp(prefix="tvg", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def daemon_serving(services: Services, sock: str, max_workers: int = 16) -> Iterator[str]:
    """A daemon in this process serving services on the unix socket sock; yields its URL.

    Afterwards the daemon is stopped and the services are closed.
    """
    daemon = Daemon(services, sock, max_workers=max_workers)
    try:
        yield f"grpc+unix://{sock}"
    finally:
        daemon.stop(grace=2.0)
        services.close()


@pytest.fixture
def served(tmp_path: Path, short_dir: Path) -> Iterator[Served]:
    """An in-process daemon over an LMDB store in tmp_path."""
    url = f"lmdb://{tmp_path / 'store'}"
    services = construct_services(url, url, url)
    sock = str(short_dir / "s.sock")
    with daemon_serving(services, sock) as served_url:
        yield Served(served_url, sock, services)


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until the daemon answers a health check on path."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited early with {proc.returncode}")
        if os.path.exists(path):
            with grpc.insecure_channel(f"unix:{path}") as ch:
                try:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.1)
    raise AssertionError("daemon did not come up")


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    sock: str
    store: Path

    @property
    def url(self) -> str:
        return f"grpc+unix://{self.sock}"

    def addr_flags(self) -> list[str]:
        return [
            f"--blob-service-addr={self.url}",
            f"--directory-service-addr={self.url}",
            f"--path-info-service-addr={self.url}",
        ]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def start_daemon(store: Path, sock: str, *extra: str) -> DaemonProc:
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", sock, *extra],
        env=cli_env(store),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    d = DaemonProc(proc, sock, store)
    try:
        wait_for_socket(sock, proc)
    except BaseException:
        d.stop(signal.SIGKILL)
        raise
    return d


@pytest.fixture
def daemon_proc(tmp_path: Path, short_dir: Path) -> Iterator[DaemonProc]:
    """``tvix-store daemon -l <short_dir>/d.sock`` on an embedded store in tmp_path."""
    d = start_daemon(tmp_path / "daemon-store", str(short_dir / "d.sock"))
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
