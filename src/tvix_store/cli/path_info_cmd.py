"""``tvix-store path-info STORE_PATH...`` / ``--all``: print PathInfos as narinfo text or JSON.

Narinfo text uses ``URL: nar/<nixbase32 NAR hash>.nar`` and ``Compression: none``, as a
binary cache serving uncompressed NARs would. ``--json`` prints a list shaped like
``nix path-info --json`` (path, narHash in SRI form, narSize, references, ca, signatures,
deriver). An unknown store path is an error naming it, after the paths that are known are
printed (exit status 1); with ``--json`` it is listed as ``{"path": …, "valid": false}``, as
Nix lists it. Arguments are taken as Nix takes them: a path
inside a store path or a symlink into the store stands for that store path, and each store path
is printed once, in order.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvix_store.path_info import PathInfo

__all__ = ["narinfo_text", "path_info_json", "register"]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``path-info`` subcommand."""
    p = subparsers.add_parser(
        "path-info",
        parents=[common],
        help="show the PathInfo of store paths (narinfo text or --json)",
        description="Print the PathInfo of each STORE_PATH (or of every path with --all).",
    )
    p.add_argument("store_paths", nargs="*", metavar="STORE_PATH", help="/nix/store/<hash>-<name>")
    p.add_argument("--all", action="store_true", help="every path in the store")
    p.add_argument("--json", action="store_true", help="print JSON like `nix path-info --json`")
    p.set_defaults(func=run, parser=p)


def narinfo_text(info: PathInfo) -> str:
    """The narinfo of info, for a cache serving uncompressed NARs."""
    from nix_compat import nixbase32

    return info.to_narinfo(f"nar/{nixbase32.encode(info.nar_sha256)}.nar", "none").render()


def path_info_json(info: PathInfo) -> dict[str, object]:
    """One element of ``nix path-info --json`` output, for info."""
    from nix_compat.nixhash import NixHash

    out: dict[str, object] = {
        "path": info.store_path.absolute(),
        "narHash": NixHash("sha256", info.nar_sha256).to_sri(),
        "narSize": info.nar_size,
        "references": sorted(r.absolute() for r in info.references),
    }
    if info.ca is not None:
        out["ca"] = info.ca.to_nix_string()
    if info.deriver is not None:
        out["deriver"] = info.deriver.absolute() + ".drv"
    if info.signatures:
        out["signatures"] = [str(s) for s in info.signatures]
    return out


def run(args: argparse.Namespace) -> int:
    """Look the paths up and print them."""
    from nix_compat.store_path import StorePath
    from tvix_store.cli.stdio import write_stdout_text
    from tvix_store.cli.store_path_args import store_path_argument
    from tvix_store.services import construct_services

    if args.all == bool(args.store_paths):
        args.parser.error("give STORE_PATH arguments or --all (not both)")
    # As Nix: the store paths the arguments lead to, each once, in order.
    wanted = sorted({store_path_argument(p)[0] for p in args.store_paths}, key=StorePath.absolute)
    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    missing: list[StorePath] = []
    try:
        # In order; an unknown path (only with --json, else an error) as its StorePath.
        found: list[PathInfo | StorePath] = []
        if args.all:
            listed: list[PathInfo] = sorted(
                services.path_info_service.list(), key=lambda i: i.store_path.absolute()
            )
            found.extend(listed)
        else:
            for sp in wanted:
                info = services.path_info_service.get(sp.digest)
                if info is None or info.store_path != sp:
                    if not args.json:
                        missing.append(sp)  # reported once the others are printed, as Nix does
                        continue
                    found.append(sp)
                else:
                    found.append(info)
    finally:
        services.close()
    if args.json:
        # nix path-info --json lists an unknown path as not valid, and succeeds.
        items = [
            {"path": f.absolute(), "valid": False} if isinstance(f, StorePath) else path_info_json(f)
            for f in found
        ]
        text = json.dumps(items, separators=(",", ":")) + "\n"
    else:
        text = "\n".join(narinfo_text(f) for f in found if not isinstance(f, StorePath))
    if text:
        write_stdout_text("the path info", text)
    for sp in missing:
        print(f"error: path '{sp.absolute()}' is not in the store", file=sys.stderr)
    return 1 if missing else 0
