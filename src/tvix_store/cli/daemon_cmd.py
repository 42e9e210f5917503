"""``tvix-store daemon [-l ADDR]``: serve the store over gRPC (spec §8, decision 5).

The store served is whatever the address flags name, the embedded LMDB store by default.
Runs until SIGINT/SIGTERM, finishes the calls in flight and exits 0.
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``daemon`` subcommand."""
    from tvix_store.server import DEFAULT_LISTEN

    p = subparsers.add_parser(
        "daemon",
        parents=[common],
        help="serve the store over gRPC",
        description=(
            "Serve BlobService, DirectoryService and PathInfoService (with CalculateNAR), gRPC "
            "reflection and health until SIGINT/SIGTERM."
        ),
    )
    p.add_argument(
        "-l",
        "--listen-address",
        default=DEFAULT_LISTEN,
        metavar="ADDR",
        help=f"host:port, [v6]:port, or a unix socket path starting with / or . (default {DEFAULT_LISTEN})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal arrives."""
    from tvix_store.server import serve
    from tvix_store.services import construct_services

    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    try:
        serve(services, args.listen_address)
    finally:
        services.close()
    return 0
