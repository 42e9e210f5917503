"""``tvix-store daemon`` as a subprocess: listening, health, reflection v1, signals, and every
CLI command pointed at it through the address flags and env vars (issue 4 points 1 and 3)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from daemon_helpers import (
    DaemonProc,
    start_daemon,
    wait_for_socket,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from tvix_cli import TVIX_STORE, cli_env, needs_nix, nix_dump, tvix

from nix_compat.store_path import StorePath
from tvix.castore.protos import rpc_blobstore_pb2 as bpb
from tvix.castore.protos import rpc_blobstore_pb2_grpc as bgrpc
from tvix_castore.digests import B3Digest

SERVICES = (
    "tvix.castore.v1.BlobService",
    "tvix.castore.v1.DirectoryService",
    "tvix.store.v1.PathInfoService",
)


def _tree(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"hello\n")
    (src / "sub" / "exe").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "sub" / "exe").chmod(0o755)
    (src / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (src / "l").symlink_to("a")
    return src


def test_health_serving(daemon_proc: DaemonProc) -> None:
    """Health reports SERVING for "" and for each of the three services."""
    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", *SERVICES):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, name


def test_reflection_v1_and_v1alpha(daemon_proc: DaemonProc) -> None:
    """Both reflection services list the three services and describe their files."""
    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        for pkg in ("grpc.reflection.v1alpha", "grpc.reflection.v1"):
            call = ch.stream_stream(
                f"/{pkg}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            reqs = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="tvix.store.v1.PathInfoService"
                ),
            ]
            listed, described = list(call(iter(reqs), timeout=10))
            names = {s.name for s in listed.list_services_response.service}
            assert set(SERVICES) <= names, (pkg, names)
            assert "grpc.health.v1.Health" in names
            files = described.file_descriptor_response.file_descriptor_proto
            assert files, pkg


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_signal_exits_zero(daemon_proc: DaemonProc, sig: int) -> None:
    """SIGTERM, SIGINT and SIGHUP stop the daemon with exit status 0 and remove its socket."""
    assert daemon_proc.stop(sig) == 0
    assert not os.path.exists(daemon_proc.sock)


def test_in_flight_call_finishes_after_sigterm(daemon_proc: DaemonProc) -> None:
    """A Put still streaming when SIGTERM arrives completes; then the daemon exits 0."""
    go_on = threading.Event()
    data = os.urandom(3 * 1024 * 1024)

    def gen() -> Iterator[bpb.BlobChunk]:
        yield bpb.BlobChunk(data=data[: 1 << 20])
        go_on.wait(20)
        yield bpb.BlobChunk(data=data[1 << 20 :])

    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        fut = bgrpc.BlobServiceStub(ch).Put.future(gen(), timeout=30)
        time.sleep(0.5)
        daemon_proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert daemon_proc.proc.poll() is None  # still finishing the call
        go_on.set()
        assert fut.result().digest == B3Digest.of(data)
    assert daemon_proc.proc.wait(timeout=30) == 0


def test_second_signal_ends_calls_in_flight_at_once(daemon_proc: DaemonProc) -> None:
    """While a first SIGTERM waits for a call that does not end, a second one (or Ctrl-C)
    ends it at once instead of after the grace period; the daemon exits 0, socket removed."""
    stuck = threading.Event()

    def gen() -> Iterator[bpb.BlobChunk]:
        yield bpb.BlobChunk(data=b"x" * 1000)
        stuck.wait(60)

    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        fut = bgrpc.BlobServiceStub(ch).Put.future(gen(), timeout=60)
        time.sleep(0.5)
        daemon_proc.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert daemon_proc.proc.poll() is None  # waiting for the call
        started = time.monotonic()
        daemon_proc.proc.send_signal(signal.SIGINT)
        assert daemon_proc.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError):
            fut.result(timeout=20)
        stuck.set()
    assert not os.path.exists(daemon_proc.sock)
    assert daemon_proc.proc.stderr is not None
    err = daemon_proc.proc.stderr.read().decode()
    assert "signal again to end them now" in err
    assert "ending the calls in flight now" in err


def test_second_signal_ends_a_daemon_whose_backend_stalled(tmp_path: Path, short_dir: Path) -> None:
    """B forwards to A; A is stopped (SIGSTOP) while an import through B is uploading. A second
    signal ends B within seconds, though closing its backend would wait on A for ever."""
    a, b = short_dir / "a.sock", short_dir / "b.sock"
    back = start_daemon(tmp_path / "a", str(a))
    front = start_daemon(tmp_path / "b", str(b), *_addr_flags(f"grpc+unix://{a}"))
    src = tmp_path / "big"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(100 << 20))
    importer = subprocess.Popen(
        [TVIX_STORE, "import", str(src), *_addr_flags(f"grpc+unix://{b}")],
        env=cli_env(tmp_path / "c"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.4)
        back.proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        front.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        started = time.monotonic()
        front.proc.send_signal(signal.SIGINT)
        assert front.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10
    finally:
        back.proc.send_signal(signal.SIGCONT)
        importer.kill()
        importer.wait()
        front.stop(signal.SIGKILL)
        back.stop()


def _free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _has_ipv6_loopback() -> bool:
    try:
        _free_port(socket.AF_INET6, "::1")
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("family", "host", "fmt"),
    [
        (socket.AF_INET, "127.0.0.1", "127.0.0.1:{}"),
        pytest.param(
            socket.AF_INET6,
            "::1",
            "[::1]:{}",
            marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
    ids=["v4", "v6"],
)
def test_tcp_listen(tmp_path: Path, family: int, host: str, fmt: str) -> None:
    """``-l host:port`` and ``-l [v6]:port`` serve over TCP; grpc+http:// clients reach them."""
    port = _free_port(family, host)
    addr = fmt.format(port)
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", addr], env=cli_env(tmp_path / "store"), stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        url = f"grpc+http://{addr}"
        src = _tree(tmp_path)
        while True:
            res = tvix(
                tmp_path / "client",
                "import",
                src,
                f"--blob-service-addr={url}",
                f"--directory-service-addr={url}",
                f"--path-info-service-addr={url}",
                check=False,
            )
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.returncode == 0, res.stderr
        path = res.stdout.decode().strip()
        assert path.startswith("/nix/store/")
        assert not (tmp_path / "client").exists()  # nothing went to an embedded store
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_port_zero_logs_the_chosen_port(tmp_path: Path) -> None:
    """``-l 127.0.0.1:0`` listens on a port the kernel picks, and the start line names it."""
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", "127.0.0.1:0"],
        env=cli_env(tmp_path / "store"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "starting daemon listen_address=127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        assert port > 0
        url = f"grpc+http://127.0.0.1:{port}"
        res = tvix(tmp_path / "client", f"--path-info-service-addr={url}", "path-info", "--all")
        assert res.returncode == 0 and res.stdout == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _port_free(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not _has_ipv6_loopback() or not _port_free(socket.AF_INET6, "::1", 8000),
    reason="no IPv6 loopback, or [::1]:8000 is taken",
)
def test_default_listen_address_is_tvix_s(tmp_path: Path) -> None:
    """Without ``-l`` the daemon listens where tvix's does (decision 5): ``[::1]:8000``."""
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon"], env=cli_env(tmp_path / "store"), stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "starting daemon listen_address=[::1]:8000" in line, line
        url = "grpc+http://[::1]:8000"
        res = tvix(tmp_path / "client", f"--path-info-service-addr={url}", "path-info", "--all")
        assert res.returncode == 0 and res.stdout == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("listen", "says"),
    [
        ("not-an-address", "expected host:port"),
        # grpc-core would listen on the port modulo 65536 (or any free one for 65536).
        ("127.0.0.1:99999", "port out of range 0-65535"),
        ("127.0.0.1:65536", "port out of range 0-65535"),
    ],
)
def test_bad_listen_address(tmp_path: Path, listen: str, says: str) -> None:
    """An unusable listen address is one error line naming it and exit status 1."""
    res = tvix(tmp_path / "s", "daemon", "-l", listen, check=False)
    assert res.returncode == 1
    last = res.stderr.decode().splitlines()[-1]
    assert last.startswith("error: ") and listen in last and says in last, last


@pytest.mark.parametrize("unix", [True, False])
def test_backend_that_is_the_daemon_itself_is_refused(tmp_path: Path, short_dir: Path, unix: bool) -> None:
    """A backend URL naming the daemon's own address (in a flag or the env) is refused at start:
    each call would wait on a call to itself."""
    if unix:
        listen, url = str(short_dir / "self.sock"), f"grpc+unix://{short_dir / 'self.sock'}"
    else:
        port = _free_port(socket.AF_INET, "127.0.0.1")
        listen, url = f"127.0.0.1:{port}", f"grpc+http://127.0.0.1:{port}"
    store = tmp_path / "s"
    for how in (["--blob-service-addr", url], []):
        env = cli_env(store, PATH_INFO_SERVICE_ADDR=url)
        res = tvix(store, "daemon", "-l", listen, *how, env=env, check=False)
        assert res.returncode == 1
        assert res.stderr.decode() == (
            f"error: invalid service address '{url}': it is this daemon's own listen address '{listen}'\n"
        )


def _addr_flags(url: str) -> list[str]:
    return [f"--{kind}-service-addr={url}" for kind in ("blob", "directory", "path-info")]


@pytest.mark.parametrize("alias", ["symlink", "localhost"])
def test_backend_that_leads_back_to_the_daemon_is_refused_per_call(
    tmp_path: Path, short_dir: Path, alias: str
) -> None:
    """A backend address that names the daemon itself under another name (a symlink to its
    socket, localhost for 127.0.0.1) passes the check at start; each call is then refused after
    one hop as a request loop, quickly, and the daemon keeps running."""
    if alias == "symlink":
        listen = str(short_dir / "self.sock")
        (short_dir / "alias.sock").symlink_to(listen)
        url = f"grpc+unix://{short_dir / 'alias.sock'}"
    else:
        port = _free_port(socket.AF_INET, "127.0.0.1")
        listen, url = f"127.0.0.1:{port}", f"grpc+http://localhost:{port}"
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", listen, *_addr_flags(url)],
        env=cli_env(tmp_path / "home"),
        stderr=subprocess.PIPE,
    )
    try:
        if alias == "symlink":
            wait_for_socket(listen, proc)
        else:
            _wait_for_port(port, proc)
        own = f"grpc+unix://{listen}" if alias == "symlink" else f"grpc+http://{listen}"
        started = time.monotonic()
        res = tvix(tmp_path / "c", "path-info", "--all", *_addr_flags(own), check=False)
        assert time.monotonic() - started < 20
        assert res.returncode == 1
        err = res.stderr.decode()
        assert "request loop" in err
        assert len(err) < 1000, err  # one hop, not one per call thread
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_loop_through_a_cache_url_or_an_upper_case_scheme_is_refused(tmp_path: Path, short_dir: Path) -> None:
    """A gRPC backend inside ``cache://`` (its far side is the daemon itself) or written with an
    upper-case scheme turns the loop guard on as well: the loop is refused after one round."""
    sock = short_dir / "e.sock"
    (short_dir / "alias.sock").symlink_to(sock)
    far = f"grpc%2Bunix%3A%2F%2F{short_dir}%2Falias.sock"
    for backend in [f"--path-info-service-addr=cache://?near=memory://&far={far}"], _addr_flags(
        f"GRPC+UNIX://{short_dir}/alias.sock"
    ):
        proc = subprocess.Popen(
            [TVIX_STORE, "daemon", "-l", str(sock), *backend],
            env=cli_env(tmp_path / "h"),
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_socket(str(sock), proc)
            res = tvix(
                tmp_path / "c", "path-info", "/nix/store/00000000000000000000000000000000-x",
                *_addr_flags(f"grpc+unix://{sock}"), check=False,
            )
            assert res.returncode == 1
            assert "request loop" in res.stderr.decode()
            assert len(res.stderr) < 2000
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0


def test_two_daemons_backed_by_each_other_refuse_the_loop(tmp_path: Path, short_dir: Path) -> None:
    """Daemon A's backend is daemon B and B's is A: a call to A comes back to A through B and
    is refused there, after two hops; both keep running."""
    a, b = str(short_dir / "a.sock"), str(short_dir / "b.sock")
    procs = [
        subprocess.Popen(
            [TVIX_STORE, "daemon", "-l", listen, *_addr_flags(f"grpc+unix://{backend}")],
            env=cli_env(tmp_path / name),
            stderr=subprocess.PIPE,
        )
        for name, listen, backend in (("a", a, b), ("b", b, a))
    ]
    try:
        wait_for_socket(a, procs[0])
        wait_for_socket(b, procs[1])
        res = tvix(tmp_path / "c", "path-info", "--all", *_addr_flags(f"grpc+unix://{a}"), check=False)
        assert res.returncode == 1
        assert "request loop" in res.stderr.decode()
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=60) for p in procs] == [0, 0]


def test_request_through_one_daemon_twice_for_different_services_is_no_loop(
    tmp_path: Path, short_dir: Path
) -> None:
    """B keeps the blobs and forwards directories and path infos to A; A keeps those and reads
    its blobs from B. CalculateNAR on B goes B -> A -> B (path-info, then blob): it passes B
    twice, for different services, and ends; it must be answered, not refused as a loop."""
    from tvix.store.protos import rpc_pathinfo_pb2 as ppb
    from tvix.store.protos import rpc_pathinfo_pb2_grpc as pgrpc

    a, b = short_dir / "a.sock", short_dir / "b.sock"
    ua, ub = f"grpc+unix://{a}", f"grpc+unix://{b}"
    la, lb = f"lmdb://{tmp_path / 'a'}", f"lmdb://{tmp_path / 'b'}"

    def flags(blob: str, rest: str) -> list[str]:
        return [f"--blob-service-addr={blob}", *_addr_flags(rest)[1:]]

    procs = [
        subprocess.Popen(
            [TVIX_STORE, "daemon", "-l", str(sock), *addrs],
            env=cli_env(tmp_path / name),
            stderr=subprocess.PIPE,
        )
        for name, sock, addrs in (("ha", a, flags(ub, la)), ("hb", b, flags(lb, ua)))
    ]
    try:
        wait_for_socket(str(a), procs[0])
        wait_for_socket(str(b), procs[1])
        src = _tree(tmp_path)
        path = tvix(tmp_path / "c", "import", src, *_addr_flags(ub)).stdout.decode().strip()
        with grpc.insecure_channel(f"unix:{b}") as ch:
            stub = pgrpc.PathInfoServiceStub(ch)
            info = stub.Get(ppb.GetPathInfoRequest(by_output_hash=StorePath.from_absolute_path(path).digest))
            node = info.node
            getattr(node, str(node.WhichOneof("node"))).name = b""  # CalculateNAR takes it anonymous
            answer = stub.CalculateNAR(node)
        assert answer.nar_size == len(nix_dump(src))
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(timeout=60) for p in procs] == [0, 0]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_stale_socket_file_is_replaced(tmp_path: Path, short_dir: Path) -> None:
    """A socket file left by a killed daemon does not prevent the next start."""
    sock = str(short_dir / "r.sock")
    d = start_daemon(tmp_path / "store", sock)
    d.stop(signal.SIGKILL)
    assert os.path.exists(sock)
    d2 = start_daemon(tmp_path / "store", sock)
    assert d2.stop() == 0


def test_socket_of_a_running_daemon_is_refused(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """A second daemon on the socket path of a running one exits 1; the first keeps serving."""
    try:
        res = subprocess.run(
            [TVIX_STORE, "daemon", "-l", daemon_proc.sock],
            env=cli_env(tmp_path / "second"),
            capture_output=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:  # run() has killed it
        pytest.fail("a second daemon took over the socket of a running one")
    assert res.returncode == 1
    assert res.stderr.decode().splitlines()[-1] == (
        f"error: cannot listen on {daemon_proc.sock}: another process is listening there"
    )
    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert daemon_proc.stop() == 0
    assert not os.path.exists(daemon_proc.sock)


def test_default_store_is_embedded_lmdb(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """With no address flags the daemon serves the embedded store: what it was sent is on disk."""
    with grpc.insecure_channel(f"unix:{daemon_proc.sock}") as ch:
        digest = bgrpc.BlobServiceStub(ch).Put(iter([bpb.BlobChunk(data=b"x86_64-linux")])).digest
    assert daemon_proc.stop() == 0
    from tvix_castore.blobservice import from_addr

    local = from_addr(f"lmdb://{daemon_proc.store}")
    try:
        assert local.has(B3Digest(digest))
    finally:
        local.close()


# ---- every command against the daemon -------------------------------------------------------------


def test_commands_through_flags(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """import, path-info, nar and import --nar via the address flags give what local ones give."""
    src = _tree(tmp_path)
    flags = daemon_proc.addr_flags()
    client_home = tmp_path / "client-home"
    remote_path = tvix(client_home, "import", src, *flags).stdout.decode().strip()
    local_path = tvix(tmp_path / "local", "import", src).stdout.decode().strip()
    assert remote_path == local_path
    assert (
        tvix(client_home, "path-info", remote_path, *flags).stdout
        == tvix(tmp_path / "local", "path-info", remote_path).stdout
    )
    assert (
        tvix(client_home, "path-info", "--all", "--json", *flags).stdout
        == tvix(tmp_path / "local", "path-info", "--all", "--json").stdout
    )
    remote_nar = tvix(client_home, "nar", remote_path, *flags).stdout
    assert remote_nar == tvix(tmp_path / "local", "nar", local_path).stdout
    nar_file = tmp_path / "x.nar"
    nar_file.write_bytes(remote_nar)
    nar_path = tvix(client_home, "import", "--nar", nar_file, "--name", "from-nar", *flags).stdout
    nar_path_local = tvix(tmp_path / "local", "import", "--nar", nar_file, "--name", "from-nar").stdout
    assert nar_path == nar_path_local
    assert not client_home.exists()  # the client never opened an embedded store


def test_commands_through_env(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """The same commands with the addresses in BLOB/DIRECTORY/PATH_INFO_SERVICE_ADDR."""
    src = _tree(tmp_path)
    env = cli_env(
        tmp_path / "client-home",
        BLOB_SERVICE_ADDR=daemon_proc.url,
        DIRECTORY_SERVICE_ADDR=daemon_proc.url,
        PATH_INFO_SERVICE_ADDR=daemon_proc.url,
    )
    path = tvix(tmp_path, "import", src, env=env).stdout.decode().strip()
    assert f"StorePath: {path}\n" in tvix(tmp_path, "path-info", "--all", env=env).stdout.decode()
    nar = tvix(tmp_path, "nar", path, env=env).stdout
    assert (
        nar
        == tvix(
            tmp_path / "local", "nar", tvix(tmp_path / "local", "import", src).stdout.decode().strip()
        ).stdout
    )
    assert not (tmp_path / "client-home").exists()


@needs_nix
@pytest.mark.nix
def test_nar_through_daemon_matches_nix(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """The NAR rendered from the daemon's store is what ``nix-store --dump`` writes."""
    src = _tree(tmp_path)
    flags = daemon_proc.addr_flags()
    path = tvix(tmp_path / "c", "import", src, *flags).stdout.decode().strip()
    assert tvix(tmp_path / "c", "nar", path, *flags).stdout == nix_dump(src)


def test_commands_fail_cleanly_without_daemon(tmp_path: Path, short_dir: Path) -> None:
    """Pointing a command at a socket nobody serves is one error line and exit status 1."""
    url = f"grpc+unix://{short_dir}/nobody.sock"
    res = tvix(
        tmp_path,
        "path-info",
        "--all",
        f"--path-info-service-addr={url}",
        f"--blob-service-addr={url}",
        f"--directory-service-addr={url}",
        check=False,
    )
    assert res.returncode == 1
    assert res.stderr.decode().splitlines()[-1].startswith("error: ")


def test_daemon_in_front_of_daemon(daemon_proc: DaemonProc, tmp_path: Path, short_dir: Path) -> None:
    """A daemon whose store is another daemon (grpc+unix flags) serves the same data."""
    front = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", str(short_dir / "front.sock"), *daemon_proc.addr_flags()],
        env=cli_env(tmp_path / "front-home"),
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(str(short_dir / "front.sock"), front)
        src = _tree(tmp_path)
        url = f"grpc+unix://{short_dir}/front.sock"
        flags = [
            f"--blob-service-addr={url}",
            f"--directory-service-addr={url}",
            f"--path-info-service-addr={url}",
        ]
        path = tvix(tmp_path / "c", "import", src, *flags).stdout.decode().strip()
        listed = tvix(tmp_path / "c", "path-info", "--all", *daemon_proc.addr_flags()).stdout.decode()
        assert f"StorePath: {path}\n" in listed
    finally:
        front.send_signal(signal.SIGTERM)
        assert front.wait(timeout=60) == 0
    assert not (tmp_path / "front-home").exists()


def _delaying_proxy(target: tuple[str, int], delay: float) -> tuple[int, socket.socket]:
    """A loopback TCP proxy to target that holds each connection's first server bytes back
    by delay seconds, as a slow link or a TLS handshake would; returns (port, listener)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket, first_delay: float) -> None:
        with contextlib.suppress(OSError):
            first = True
            while data := src.recv(65536):
                if first:
                    time.sleep(first_delay)
                    first = False
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection(target)
                threading.Thread(target=pump, args=(client, server, 0.0), daemon=True).start()
                threading.Thread(target=pump, args=(server, client, delay), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], listener


def test_server_slow_to_answer_the_handshake_is_reached(tmp_path: Path) -> None:
    """A daemon whose handshake arrives late (1.5 s here) is still reached, not refused as
    'connection attempt timed out before receiving SETTINGS frame'."""
    port = _free_port(socket.AF_INET, "127.0.0.1")
    proc = subprocess.Popen(
        [TVIX_STORE, "daemon", "-l", f"127.0.0.1:{port}"],
        env=cli_env(tmp_path / "store"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "daemon did not start"
            time.sleep(0.1)
        proxy_port, listener = _delaying_proxy(("127.0.0.1", port), 1.5)
        with listener:
            url = f"grpc+http://127.0.0.1:{proxy_port}"
            res = tvix(
                tmp_path / "c", "path-info", "--all", env=cli_env(tmp_path / "c", PATH_INFO_SERVICE_ADDR=url)
            )
            assert res.returncode == 0 and res.stdout == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
