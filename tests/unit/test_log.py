"""RUST_LOG as tvix reads it (tracing's EnvFilter syntax, decision 3) and tvix's log targets."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
from tvix_cli import cli_env, tvix

from tvix_store.log import TRACE, Directives, LogConfigError, parse_directives, parse_level


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "info,tvix_store=trace,tvix_castore=trace",
            Directives(logging.INFO, (("tvix_store", TRACE), ("tvix_castore", TRACE))),
        ),
        ("tvix_castore::fs=debug", Directives(logging.WARNING, (("tvix_castore.fs", logging.DEBUG),))),
        ("5", Directives(TRACE, ())),
        ("0,tvix_store=3", Directives(logging.CRITICAL + 10, (("tvix_store", logging.INFO),))),
        ("DEBUG", Directives(logging.DEBUG, ())),
        # A target without a level, or with an empty one, is everything (trace) for it.
        ("tvix_store", Directives(logging.WARNING, (("tvix_store", TRACE),))),
        ("tvix_store=", Directives(logging.WARNING, (("tvix_store", TRACE),))),
        ("tvix-store=debug", Directives(logging.WARNING, (("tvix-store", logging.DEBUG),))),
        # Span filters parse, but cannot apply to Python loggers: kept aside to warn about.
        ("tvix_store[import]=debug", Directives(logging.WARNING, (), ("tvix_store[import]=debug",))),
        ("[span]", Directives(logging.WARNING, (), ("[span]",))),
        (" info , ,tvix_store=off ", Directives(logging.INFO, (("tvix_store", logging.CRITICAL + 10),))),
    ],
)
def test_directives(spec: str, expected: Directives) -> None:
    assert parse_directives(spec, logging.WARNING) == expected


@pytest.mark.parametrize("spec", ["tvix_store=loud", "=debug", "a=b=c", "tvix store=debug", "[x]=7"])
def test_invalid_directives(spec: str) -> None:
    with pytest.raises(LogConfigError, match="invalid RUST_LOG directive"):
        parse_directives(spec, logging.INFO)


def test_levels() -> None:
    assert [parse_level(t) for t in ("1", "2", "3", "4", "5", "Trace")] == [
        logging.ERROR,
        logging.WARNING,
        logging.INFO,
        logging.DEBUG,
        TRACE,
        TRACE,
    ]
    with pytest.raises(LogConfigError, match="invalid log level"):
        parse_level("verbose")


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("tvix_castore.blobservice.grpc_client", "tvix_castore.blobservice.grpc"),
        ("tvix_castore.directoryservice.grpc_client", "tvix_castore.directoryservice.grpc"),
        ("tvix_store.pathinfoservice.grpc_client", "tvix_store.pathinfoservice.grpc"),
        ("tvix_castore.grpc.blob_servicer", "tvix_castore.proto.grpc_blobservice_wrapper"),
        ("tvix_castore.grpc.directory_servicer", "tvix_castore.proto.grpc_directoryservice_wrapper"),
        ("tvix_store.grpc.pathinfo_servicer", "tvix_store.proto.grpc_pathinfoservice_wrapper"),
        ("tvix_store.import_path", "tvix_store.import"),
    ],
)
def test_tvix_targets(module: str, target: str) -> None:
    """Code whose tvix counterpart lives at another module path logs under tvix's target."""
    assert importlib.import_module(module).log.name == target


def test_rust_log_target_of_tvix_reaches_our_logger(tmp_path: Path) -> None:
    """RUST_LOG=tvix_store::import=debug shows the import's debug lines, as it does for tvix."""
    root = tmp_path
    (root / "f").write_bytes(b"x")
    store = root / "store"
    quiet = tvix(store, "import", root / "f").stderr
    assert b"DEBUG tvix_store.import" not in quiet
    loud = tvix(store, "import", root / "f", env=cli_env(store, RUST_LOG="tvix_store::import=debug")).stderr
    assert b"DEBUG tvix_store.import" in loud
