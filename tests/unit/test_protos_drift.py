"""The generated protobuf modules match protos/, and the protos match tvix's wire format (§1.1, §3.1, §4).

Regenerating with scripts/gen_protos.py into a temporary directory must reproduce src/tvix/
byte for byte; descriptor file names, packages, services, methods and field numbers must be
tvix's, because gRPC reflection and the wire format depend on them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor

from tvix.castore.protos import castore_pb2, rpc_blobstore_pb2, rpc_directory_pb2
from tvix.store.protos import pathinfo_pb2, rpc_pathinfo_pb2

ROOT = Path(__file__).resolve().parents[2]


def _tree(base: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_current(tmp_path: Path) -> None:
    """Regenerating from protos/ gives exactly the committed src/tvix tree."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    fresh = _tree(tmp_path / "tvix")
    committed = _tree(ROOT / "src" / "tvix")
    assert sorted(fresh) == sorted(committed)
    drifted = [name for name in fresh if fresh[name] != committed[name]]
    assert drifted == [], f"regenerate with scripts/gen_protos.py: {drifted}"


@pytest.mark.parametrize(
    ("module", "name", "package"),
    [
        (castore_pb2, "tvix/castore/protos/castore.proto", "tvix.castore.v1"),
        (rpc_blobstore_pb2, "tvix/castore/protos/rpc_blobstore.proto", "tvix.castore.v1"),
        (rpc_directory_pb2, "tvix/castore/protos/rpc_directory.proto", "tvix.castore.v1"),
        (pathinfo_pb2, "tvix/store/protos/pathinfo.proto", "tvix.store.v1"),
        (rpc_pathinfo_pb2, "tvix/store/protos/rpc_pathinfo.proto", "tvix.store.v1"),
    ],
)
def test_descriptor_names(module: object, name: str, package: str) -> None:
    """Descriptor file names keep tvix's include paths; packages are tvix's."""
    fd: FileDescriptor = module.DESCRIPTOR  # type: ignore[attr-defined]
    assert fd.name == name
    assert fd.package == package


def test_store_imports_castore_by_tvix_path() -> None:
    """pathinfo.proto imports castore.proto under its tvix path."""
    deps = [d.name for d in pathinfo_pb2.DESCRIPTOR.dependencies]
    assert "tvix/castore/protos/castore.proto" in deps


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (rpc_directory_pb2, "DirectoryService", {"Get", "Put"}),
        (rpc_pathinfo_pb2, "PathInfoService", {"Get", "Put", "CalculateNAR", "List"}),
    ],
)
def test_services(module: object, service: str, methods: set[str]) -> None:
    """The directory and path-info services have tvix's methods and streaming shapes."""
    sd = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    assert set(sd.methods_by_name) == methods
    if service == "DirectoryService":
        get, put = sd.methods_by_name["Get"], sd.methods_by_name["Put"]
        assert sd.full_name == "tvix.castore.v1.DirectoryService"
        assert (get.input_type.name, get.output_type.name) == ("GetDirectoryRequest", "Directory")
        assert (put.input_type.name, put.output_type.name) == ("Directory", "PutDirectoryResponse")
        assert (get.server_streaming, get.client_streaming) == (True, False)
        assert (put.server_streaming, put.client_streaming) == (False, True)
    else:
        assert sd.full_name == "tvix.store.v1.PathInfoService"
        assert sd.methods_by_name["List"].server_streaming
        calc = sd.methods_by_name["CalculateNAR"]
        assert (calc.input_type.full_name, calc.output_type.name) == (
            "tvix.castore.v1.Node",
            "CalculateNARResponse",
        )


def _fields(desc: Descriptor) -> dict[str, int]:
    return {f.name: f.number for f in desc.fields}


@pytest.mark.parametrize(
    ("desc", "fields"),
    [
        (castore_pb2.Directory.DESCRIPTOR, {"directories": 1, "files": 2, "symlinks": 3}),
        (castore_pb2.DirectoryNode.DESCRIPTOR, {"name": 1, "digest": 2, "size": 3}),
        (castore_pb2.FileNode.DESCRIPTOR, {"name": 1, "digest": 2, "size": 3, "executable": 4}),
        (castore_pb2.SymlinkNode.DESCRIPTOR, {"name": 1, "target": 2}),
        (castore_pb2.Node.DESCRIPTOR, {"directory": 1, "file": 2, "symlink": 3}),
        (rpc_directory_pb2.GetDirectoryRequest.DESCRIPTOR, {"digest": 1, "recursive": 2}),
        (rpc_directory_pb2.PutDirectoryResponse.DESCRIPTOR, {"root_digest": 1}),
        (pathinfo_pb2.PathInfo.DESCRIPTOR, {"node": 1, "references": 2, "narinfo": 3}),
        (pathinfo_pb2.StorePath.DESCRIPTOR, {"name": 1, "digest": 2}),
        (
            pathinfo_pb2.NARInfo.DESCRIPTOR,
            {
                "nar_size": 1,
                "nar_sha256": 2,
                "signatures": 3,
                "reference_names": 4,
                "deriver": 5,
                "ca": 6,
            },
        ),
        (pathinfo_pb2.NARInfo.Signature.DESCRIPTOR, {"name": 1, "data": 2}),
        (pathinfo_pb2.NARInfo.CA.DESCRIPTOR, {"type": 1, "digest": 2}),
        (rpc_pathinfo_pb2.GetPathInfoRequest.DESCRIPTOR, {"by_output_hash": 1}),
        (rpc_pathinfo_pb2.CalculateNARResponse.DESCRIPTOR, {"nar_size": 1, "nar_sha256": 2}),
        (rpc_pathinfo_pb2.ListPathInfoRequest.DESCRIPTOR, {}),
    ],
    ids=lambda v: v.full_name if isinstance(v, Descriptor) else "",
)
def test_field_numbers(desc: Descriptor, fields: dict[str, int]) -> None:
    """Messages carry tvix's field names and numbers, nothing more."""
    assert _fields(desc) == fields


def _oneof(desc: Descriptor, name: str) -> list[str]:
    return [f.name for f in desc.oneofs_by_name[name].fields]


def test_oneofs() -> None:
    """by_what and node are oneofs, as on the wire."""
    assert _oneof(castore_pb2.Node.DESCRIPTOR, "node") == ["directory", "file", "symlink"]
    assert _oneof(rpc_directory_pb2.GetDirectoryRequest.DESCRIPTOR, "by_what") == ["digest"]
    assert _oneof(rpc_pathinfo_pb2.GetPathInfoRequest.DESCRIPTOR, "by_what") == ["by_output_hash"]
