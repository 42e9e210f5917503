#!/usr/bin/env python3
"""Generate the Python protobuf and gRPC modules from protos/ into src/tvix/.

Usage: scripts/gen_protos.py [OUTPUT_DIR]   (default: src/)

The generated tree is checked in; tests/unit/test_protos_drift.py regenerates it into a
temporary directory and fails when it differs from what is committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[str]:
    """Every .proto below protos/, as paths relative to it, in a stable order."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Write the generated modules (and empty package __init__ files) below out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # mypy-protobuf's plugins live next to the interpreter in the venv.
    bindir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *proto_files(),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit status {rc}")
    for pkg in ("tvix", "tvix/castore", "tvix/castore/protos", "tvix/store", "tvix/store/protos"):
        init = out_dir / pkg / "__init__.py"
        init.write_text('"""Generated from protos/ by scripts/gen_protos.py; do not edit."""\n')


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "src"
    if out == ROOT / "src":
        shutil.rmtree(out / "tvix", ignore_errors=True)
    generate(out)


if __name__ == "__main__":
    main()
