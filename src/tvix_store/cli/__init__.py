"""The ``tvix-store`` command: global options, subcommand dispatch, and error reporting.

Each subcommand lives in its own module here and exposes ``register(subparsers, common)``,
which adds its parser and sets ``func``. Command results go to stdout, logs and errors to
stderr; any StoreError or Nix-format error becomes one ``error: …`` line and exit status 1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

from tvix_castore.lazy_logging import get_logger
from tvix_store import __version__

log = get_logger(__name__)

CommandFunc = Callable[["argparse.Namespace"], int]


def nonempty(value: str) -> str:
    """An option value that may not be empty.

    ``--blob-service-addr "$UNSET"`` is a mistake, not a request for the default (which leaving
    the option out asks for).
    """
    import argparse

    if not value:
        raise argparse.ArgumentTypeError("may not be empty")
    return value


def _log_level(value: str) -> str:
    """A --log-level value, checked while parsing: a bad one is a usage error, as with clap."""
    import argparse

    from tvix_store.log import LogConfigError, parse_level

    try:
        parse_level(value)
    except LogConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand name."""
    import argparse

    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--log-level",
        default=argparse.SUPPRESS if suppress else "info",
        type=_log_level,
        metavar="LEVEL",
        help="error|warn|info|debug|trace (default info; RUST_LOG takes priority)",
    )
    p.add_argument(
        "--blob-service-addr",
        default=default,
        metavar="URL",
        type=nonempty,
        help="blob service URL (env BLOB_SERVICE_ADDR; default: the embedded store)",
    )
    p.add_argument(
        "--directory-service-addr",
        default=default,
        metavar="URL",
        type=nonempty,
        help="directory service URL (env DIRECTORY_SERVICE_ADDR)",
    )
    p.add_argument(
        "--path-info-service-addr",
        default=default,
        metavar="URL",
        type=nonempty,
        help="path info service URL (env PATH_INFO_SERVICE_ADDR)",
    )
    if not suppress:
        # Read (and removed) by _without_otlp before parsing; listed here for --help.
        p.add_argument(
            "--otlp",
            action="store_true",
            default=argparse.SUPPRESS,
            help="tvix's --otlp[=true|false], accepted for its scripts; OTLP export is not built in",
        )
    return p


def _without_otlp(argv: list[str]) -> list[str]:
    """The arguments without tvix's ``--otlp[=true|false]`` (a value follows an ``=``, as in clap).

    We export no OpenTelemetry traces; accepting the flag keeps tvix command lines working.
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg == "--otlp" or arg.startswith("--otlp="):
            value = arg.partition("=")[2] if "=" in arg else "true"
            if value not in ("true", "false"):
                raise _UsageError(f"invalid value {value!r} for '--otlp' (expected true or false)")
            continue
        out.append(arg)
    return out


class _UsageError(Exception):
    """A command line argparse never sees is malformed (exit status 2, as argparse's)."""


# Subcommand name -> module under tvix_store.cli. Modules of later capabilities may be absent.
_COMMANDS = {
    "import": "import_cmd",
    "nar": "nar_cmd",
    "path-info": "path_info_cmd",
    "mount": "mount_cmd",
    "daemon": "daemon_cmd",
    "copy": "copy_cmd",
    "serve-cache": "serve_cache_cmd",
}
# Global options that take a value (as the next argument unless written --opt=value).
_VALUE_OPTIONS = (
    "--log-level",
    "--blob-service-addr",
    "--directory-service-addr",
    "--path-info-service-addr",
)


def _command_modules(only: str | None = None) -> list[ModuleType]:
    """The subcommand modules: all of them, or only the one named only."""
    import importlib

    names = [_COMMANDS[only]] if only is not None else list(_COMMANDS.values())
    modules: list[ModuleType] = []
    for name in names:
        try:
            modules.append(importlib.import_module(f"tvix_store.cli.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"tvix_store.cli.{name}":
                raise
    return modules


def _command_position(argv: Sequence[str]) -> int | None:
    """Where the subcommand is in argv: its first argument that is not a global option or value."""
    skip_value = False
    for i, arg in enumerate(argv):
        if skip_value:
            skip_value = False
            continue
        if arg == "--":
            return None
        if arg.startswith("-"):
            # argparse accepts unambiguous prefixes of long options too.
            skip_value = "=" not in arg and len(arg) > 2 and any(o.startswith(arg) for o in _VALUE_OPTIONS)
            continue
        return i
    return None


def _requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand argv names, if it clearly names one (else None: build the whole parser).

    Loading one command's module instead of all of them keeps start-up short (the other
    modules pull in json, tempfile, threading …); the parser then knows only that command.
    """
    at = _command_position(argv)
    return argv[at] if at is not None and argv[at] in _COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: complete, or with only the subcommand command."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="tvix-store",
        description="A content-addressed Nix store, wire-compatible with tvix.",
        parents=[_common_options(suppress=False)],
    )
    parser.add_argument("-V", "--version", action="version", version=f"tvix-store {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_command_parser_class()
    )
    common = _common_options(suppress=True)
    for module in _command_modules(command):
        module.register(sub, common)
    return parser


def _command_parser_class() -> type[argparse.ArgumentParser]:
    """A subcommand's parser: options anywhere among its arguments, as clap and Nix take them.

    ``path-info P1 --json P2``: argparse's plain parse ends the list of paths at the first
    option and has P2 left over; the intermixed parse collects them all. What is left over is
    the subcommand's error, under its own usage (the main parser would show its own).
    """
    import argparse

    class CommandParser(argparse.ArgumentParser):
        _intermixing = False

        def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            if self._intermixing or (args is not None and "--" in args):
                # The intermixed parse's own passes; and after "--" every argument is a
                # positional one, which only the plain parse keeps so.
                return super().parse_known_args(args, namespace)
            self._intermixing = True
            try:
                parsed, extras = self.parse_known_intermixed_args(args, namespace)
            finally:
                self._intermixing = False
            if extras:
                self.error(f"unrecognized arguments: {' '.join(extras)}")
            return parsed, extras

    return CommandParser


def _plain_arguments(argv: Sequence[str]) -> Any:
    """The parsed arguments of the plainest calls, ``nar STORE_PATH`` and ``import PATH...``.

    Those need no parser: building argparse's (its import included) is a good part of the
    start-up of a command that may take a few tens of milliseconds in all. Any option, or any
    other command, returns None and goes through the full parser, which handles errors and help.
    The result carries exactly the attributes argparse would set.
    """
    if len(argv) < 2 or any(arg.startswith("-") for arg in argv):
        return None
    command, *rest = argv
    common = {
        "command": command,
        "log_level": "info",
        "blob_service_addr": None,
        "directory_service_addr": None,
        "path_info_service_addr": None,
    }
    if command == "nar" and len(rest) == 1:
        from tvix_store.cli import nar_cmd

        return SimpleNamespace(**common, store_path=rest[0], func=nar_cmd.run)
    if command == "import":
        from tvix_store.cli import import_cmd

        # parser is consulted only for --nar/--name misuse, which needs an option anyway.
        return SimpleNamespace(**common, paths=rest, nar=None, name=None, func=import_cmd.run, parser=None)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    from nix_compat.errors import NixCompatError
    from tvix_castore.allocator import keep_large_buffers
    from tvix_castore.errors import StoreError
    from tvix_store.cli.stdio import OutputError, exit_now, occupy_closed_descriptors
    from tvix_store.log import LogConfigError, setup_logging

    occupy_closed_descriptors()
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        arguments = _without_otlp(arguments)
    except _UsageError as exc:
        print(f"tvix-store: error: {exc}", file=sys.stderr)
        return 2
    at = _command_position(arguments)
    if at is not None and arguments[at] == "help":
        # clap's `help [COMMAND]`: the help of the program, or of that command.
        arguments = [*arguments[:at], *arguments[at + 1 : at + 2], "--help"]
    args = _plain_arguments(arguments)
    if args is None:
        args = build_parser(_requested_command(arguments)).parse_args(arguments)
    try:
        # The short commands mostly log nothing: they import logging at their first record.
        setup_logging(args.log_level, defer=args.command in _QUICK_EXIT)
    except LogConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command in _PIPE_COMMANDS:
        # Default SIGPIPE behaviour, so that `tvix-store nar … | head` ends quietly. Never for
        # the servers: a client hanging up must not kill them (their writes get EPIPE instead).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # Every command reads, writes or sends buffers of 128 KiB and more (see the module).
    keep_large_buffers()
    func: CommandFunc = args.func
    try:
        status = func(args)
    except (StoreError, NixCompatError, OSError, OutputError) as exc:
        log.debug("command failed", exc_info=True)
        print(f"error: {_explained(exc)}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    if argv is None and (args.command in _QUICK_EXIT or status == 130):
        # After Ctrl-C too: threads left working (a download from a stalled cache) must not
        # hold the exit up. Nothing is lost: the stores are safe against a kill at any point.
        exit_now(status)
    return status


def _explained(exc: BaseException) -> str:
    """The error's message; for an OSError naming no file, what it most likely was about."""
    if isinstance(exc, FileNotFoundError) and exc.filename is None:
        try:
            os.getcwd()
        except OSError as cwd_error:
            # A relative path (an argument, TVIX_STORE_HOME) was made absolute in a working
            # directory that was removed: the bare "[Errno 2]" would name nothing.
            return f"cannot get the current directory: {cwd_error.strerror}"
    return str(exc)


# Commands whose output is their stdout, read by whatever it is piped into.
_PIPE_COMMANDS = frozenset({"import", "nar", "path-info"})

# Commands that end with every service closed, every store write durable and no thread left
# working: as a program (not called from Python), they exit without interpreter teardown.
_QUICK_EXIT = frozenset({"import", "nar", "path-info"})


if __name__ == "__main__":
    sys.exit(main())
