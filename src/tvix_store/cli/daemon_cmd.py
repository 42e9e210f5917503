"""``tvix-store daemon [-l ADDR]``: serve the store over gRPC (spec §8, decision 5).

The store served is whatever the address flags name, the embedded LMDB store by default.
Runs until SIGINT/SIGTERM, finishes the calls in flight and exits 0.
"""

from __future__ import annotations

import argparse

from tvix_store.cli import nonempty

__all__ = ["register"]


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``daemon`` subcommand."""
    # tvix_store.server is imported only when the daemon runs: it pulls in grpc (~150 ms), which
    # every other command (import, nar, …) would otherwise pay for at start-up.
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
        default=None,
        metavar="ADDR",
        type=nonempty,
        help="host:port, [v6]:port, or a unix socket path starting with / or . (default [::1]:8000)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal arrives."""
    from tvix_castore.grpc.loops import enter_daemon_process
    from tvix_store.cli.stdio import exit_now
    from tvix_store.server import DEFAULT_LISTEN, refuse_serving_itself, serve
    from tvix_store.services import construct_services, service_urls

    listen = DEFAULT_LISTEN if args.listen_address is None else args.listen_address
    urls = service_urls(args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr)
    refuse_serving_itself(listen, urls)
    if any("grpc" in url.lower() for url in urls):
        # Before the backends' channels open: their calls then name this daemon (loops.py). Any
        # gRPC backend, also one inside a cache:// URL or with an upper-case scheme.
        enter_daemon_process()
    services = construct_services(*urls)
    if not serve(services, listen):
        # A second signal, and a backend that does not let go (a stalled remote): leave now
        # rather than wait on threads still blocked on it at interpreter exit.
        exit_now(0)
    return 0
