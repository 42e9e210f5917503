"""``tvix-store serve-cache [-l ADDR] [--sign-key-file F] [--priority N]``: the store as a Nix binary cache.

Serves ``GET /nix-cache-info``, narinfos and NARs (rendered on the fly) and accepts the uploads of
``nix copy --to http://…`` (see ``tvix_store.binary_cache.server``). Listens on ``[::1]:9000`` by
default (loopback: there is no authentication). Rendered NARs are kept in a bounded temporary
cache (``--nar-cache-size``) and sent from there with sendfile when asked for again. Logs the
URL it serves on once listening; runs until interrupted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading

from tvix_castore.lazy_logging import get_logger
from tvix_store.cli import nonempty

__all__ = ["register"]

log = get_logger(__name__)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``serve-cache`` subcommand."""
    from tvix_store.binary_cache.compression import COMPRESSIONS

    p = subparsers.add_parser(
        "serve-cache",
        parents=[common],
        help="serve the store as a Nix HTTP binary cache (nar-bridge)",
        description="Serve the store as a Nix HTTP binary cache that Nix can substitute from and copy to.",
    )
    p.add_argument(
        "-l",
        "--listen-address",
        default="[::1]:9000",
        metavar="ADDR",
        type=nonempty,
        help="HOST:PORT or [V6]:PORT ([::1]:9000)",
    )
    p.add_argument(
        "--sign-key-file", metavar="FILE", help="Nix secret key (name:base64) to sign narinfos with"
    )
    p.add_argument(
        "--priority", type=int, default=None, help="Priority in /nix-cache-info (env PRIORITY; 39)"
    )
    p.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="compression of served NARs (none: with Content-Length and Range support; "
        "zstd: fast; the others compress slowly, on the fly)",
    )
    p.add_argument(
        "--nar-cache-size",
        type=int,
        default=1024,
        metavar="MIB",
        help="keep up to MIB of rendered NARs in a temporary directory, sent with sendfile (1024; 0: off)",
    )
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT, SIGTERM or SIGHUP."""
    parser: argparse.ArgumentParser = args.parser
    if args.priority is None:
        env = os.environ.get("PRIORITY", "").strip()
        try:
            args.priority = int(env) if env else 39
        except ValueError:
            parser.error(f"PRIORITY: not a number: {env!r}")
    if args.priority < 0:
        parser.error("--priority must not be negative")
    if args.nar_cache_size < 0:
        parser.error("--nar-cache-size must not be negative")

    from nix_compat.signing import SigningKey
    from tvix_castore.errors import InvalidRequest
    from tvix_store.binary_cache.cache_files import cache_files_for
    from tvix_store.binary_cache.server import (
        BinaryCacheServer,
        RenderedNarCache,
        parse_listen_address,
        raise_open_files_limit,
    )
    from tvix_store.services import construct_services
    from tvix_store.stopping import GRACE_SECONDS, stop_signals

    try:
        family, host, port = parse_listen_address(args.listen_address)
    except ValueError as exc:
        parser.error(str(exc))
    key = None
    if args.sign_key_file is not None:
        with open(args.sign_key_file, encoding="utf-8") as f:
            key = SigningKey.parse(f.read().strip())
    services = construct_services(
        args.blob_service_addr, args.directory_service_addr, args.path_info_service_addr
    )
    cache_dir = tempfile.TemporaryDirectory(prefix="tvix-serve-cache-")
    nar_cache = RenderedNarCache(cache_dir.name, args.nar_cache_size << 20) if args.nar_cache_size else None
    try:
        cache_files = cache_files_for(services.path_info_service)
    except BaseException:
        services.close()
        cache_dir.cleanup()
        raise
    raise_open_files_limit()
    try:
        server = BinaryCacheServer(
            (host, port),
            services,
            family,
            priority=args.priority,
            sign_key=key,
            compression=args.compression,
            nar_cache=nar_cache,
            cache_files=cache_files,
        )
    except BaseException as exc:
        cache_files.close()
        services.close()
        cache_dir.cleanup()
        if isinstance(exc, OSError):
            # As the daemon says it: the address at fault, not only the errno.
            raise InvalidRequest(f"cannot listen on {args.listen_address}: {exc.strerror}") from exc
        raise

    cut = threading.Event()
    try:
        with stop_signals("requests", on_first=server.begin_stop, on_again=cut.set):
            # Said once the signals are ours: a stop sent on seeing this line is a clean stop.
            log.info("serving binary cache on %s", server.url)
            server.serve_forever(poll_interval=0.2)
            server.finish_requests(GRACE_SECONDS, cut)
    finally:
        server.server_close()
        cache_files.close()
        services.close()
        cache_dir.cleanup()
    return 0
