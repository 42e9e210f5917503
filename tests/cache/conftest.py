"""The real-Nix closure and binary caches the cache tests share (built once per session).

Three derivations built with ``/bin/sh`` (no nixpkgs): ``leaf`` (a directory with a multi-chunk
file, an executable, a symlink, an empty directory), ``mid`` (refers to leaf and to a
``builtins.toFile`` text path) and ``top`` (refers to mid and to a ``./src`` source path, so the
closure holds CA ``text:`` and ``fixed:r:`` paths). The outputs live in the host's /nix/store
(nix-build needs a real store); ``nix copy --to file://…`` writes one cache per compression,
and a signed uncompressed one.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cache_helpers import COMPRESSIONS, NIX

NIX_EXPR = r"""
let
  sh = "/bin/sh";
  note = builtins.toFile "h6-note" "a text file";
  leaf = derivation {
    name = "h6-leaf";
    system = builtins.currentSystem;
    builder = sh;
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/bin $out/share/empty
      seq -f "line %g of a file that spans several chunks" 1 90000 > $out/share/big
      printf '#!/bin/sh\necho leaf\n' > $out/bin/leaf; chmod +x $out/bin/leaf
      ln -s bin/leaf $out/run
      : > $out/share/zero
    '' ];
  };
  mid = derivation {
    name = "h6-mid";
    system = builtins.currentSystem;
    builder = sh;
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir $out; echo ${leaf} > $out/leaf-ref; ln -s ${leaf}/bin/leaf $out/leaf
      cat ${note} > $out/note; echo ${note} >> $out/note
    '' ];
  };
in derivation {
  name = "h6-top";
  system = builtins.currentSystem;
  builder = sh;
  PATH = "/usr/bin:/bin";
  args = [ "-c" "echo ${mid} ${leaf} ${./src} > $out" ];
}
"""


def run(*args: str | Path, **kw: object) -> str:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    if res.returncode != 0:
        raise AssertionError(f"{args} failed: {res.stderr}")
    return str(res.stdout)


@pytest.fixture(scope="session")
def nix_closure(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Build the closure; write the caches; return paths, keys and `nix path-info --json` by path."""
    if shutil.which("nix-build") is None:
        pytest.skip("nix not installed")
    base = tmp_path_factory.mktemp("h6nix")
    src = base / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("source file\n")
    (src / "x").write_text("#!/bin/sh\n")
    (src / "x").chmod(0o755)
    (base / "default.nix").write_text(NIX_EXPR)
    top = run("nix-build", "--option", "substituters", "", "--no-out-link", base / "default.nix").strip()
    sk, pk = base / "sk", base / "pk"
    run("nix-store", "--generate-binary-cache-key", "h6.test-1", sk, pk)
    caches: dict[str, Path] = {}
    for comp in COMPRESSIONS:
        caches[comp] = base / f"cache-{comp}"
        run(*NIX, "copy", "--to", f"file://{caches[comp]}?compression={comp}", top)
    caches["signed"] = base / "cache-signed"
    run(*NIX, "copy", "--to", f"file://{caches['signed']}?compression=none&secret-key={sk}", top)
    infos = json.loads(run(*NIX, "path-info", "--json", "-r", top))
    by_path = {i["path"]: i for i in infos}
    assert len(by_path) == 5, sorted(by_path)
    return {
        "top": top,
        "paths": sorted(by_path),
        "path_info": by_path,
        "caches": caches,
        "sk": sk,
        "pk": pk.read_text().strip(),
        "base": base,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
