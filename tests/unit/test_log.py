"""RUST_LOG as tvix reads it (tracing's EnvFilter syntax, decision 3) and tvix's log targets."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
from tvix_cli import cli_env, tvix

from tvix_store.log import LEVELS, TRACE, Directives, LogConfigError, parse_directives, parse_level

OFF = LEVELS["off"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "info,tvix_store=trace,tvix_castore=trace",
            Directives(logging.INFO, (("tvix_store", TRACE), ("tvix_castore", TRACE))),
        ),
        # Directives without a bare level: the default (--log-level) is not added, as with
        # tracing's with_default_directive; nothing but the targets named logs.
        ("tvix_castore::fs=debug", Directives(OFF, (("tvix_castore.fs", logging.DEBUG),))),
        ("5", Directives(TRACE, ())),
        ("0,tvix_store=3", Directives(OFF, (("tvix_store", logging.INFO),))),
        ("tvix_store=3,debug", Directives(logging.DEBUG, (("tvix_store", logging.INFO),))),
        ("DEBUG", Directives(logging.DEBUG, ())),
        # A target without a level, or with an empty one, is everything (trace) for it.
        ("tvix_store", Directives(OFF, (("tvix_store", TRACE),))),
        ("tvix_store=", Directives(OFF, (("tvix_store", TRACE),))),
        ("tvix-store=debug", Directives(OFF, (("tvix-store", logging.DEBUG),))),
        # Span filters parse, but cannot apply to Python loggers: kept aside to warn about.
        ("tvix_store[import]=debug", Directives(OFF, (), ("tvix_store[import]=debug",))),
        ("[span]", Directives(OFF, (), ("[span]",))),
        (" info , ,tvix_store=off ", Directives(logging.INFO, (("tvix_store", OFF),))),
        # No directive at all: the default stays.
        (" , ", Directives(logging.WARNING, ())),
    ],
)
def test_directives(spec: str, expected: Directives) -> None:
    assert parse_directives(spec, logging.WARNING) == expected


@pytest.mark.parametrize("spec", ["tvix_store=loud", "=debug", "a=b=c", "tvix store=debug", "[x]=7"])
def test_invalid_directives(spec: str) -> None:
    with pytest.raises(LogConfigError, match="invalid RUST_LOG directive"):
        parse_directives(spec, logging.INFO)


def test_targets_match_by_prefix_and_the_longest_decides() -> None:
    """As tracing's EnvFilter: a target covers every logger name that starts with it, dotted
    boundary or not, and of several the longest decides."""
    directives = parse_directives(
        "warn,tvix=info,tvix_castore=debug,tvix_castore.fs=error,tvix_store::imp=trace", logging.INFO
    )
    expected = {
        "tvix_castore": logging.DEBUG,
        "tvix_castore.lmdb": logging.DEBUG,
        "tvix_castore.fs": logging.ERROR,
        "tvix_castore.fs.fuse": logging.ERROR,
        "tvix_castore.fsx": logging.ERROR,
        "tvix_store": logging.INFO,
        "tvix_store.import": TRACE,
        "tvix": logging.INFO,
        "tvi": logging.WARNING,
        "other.module": logging.WARNING,
    }
    assert {name: directives.level_for(name) for name in expected} == expected
    # Of two equal targets the later one counts.
    assert parse_directives("tvix=debug,tvix=error", logging.INFO).level_for("tvix_store") == logging.ERROR


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
    # tracing matches targets by prefix: "tvix" covers both crates, "tvix_store::imp" the module.
    for prefix in ("tvix", "tvix_store::imp"):
        shown = tvix(store, "import", root / "f", env=cli_env(store, RUST_LOG=f"{prefix}=debug")).stderr
        assert b"DEBUG tvix_store.import" in shown, (prefix, shown)
    # A longer target that turns the module down wins over the shorter one that turns it up.
    env = cli_env(store, RUST_LOG="tvix=debug,tvix_store::import=info")
    quieted = tvix(store, "import", root / "f", env=env)
    assert b"tvix_store.import" not in quieted.stderr, quieted.stderr


def test_rust_log_targets_replace_the_log_level(tmp_path: Path) -> None:
    """With RUST_LOG naming only targets, --log-level adds nothing (tracing's default directive
    applies only to an empty filter); an ignored span filter is still warned about."""
    (tmp_path / "f").write_bytes(b"x")
    store = tmp_path / "store"
    env = cli_env(store, RUST_LOG="tvix_castore=trace")
    res = tvix(store, "--log-level", "debug", "import", tmp_path / "f", env=env)
    assert b"tvix_store.import" not in res.stderr, res.stderr
    shown = tvix(store, "--log-level", "debug", "import", tmp_path / "f", env=cli_env(store, RUST_LOG=""))
    assert b"DEBUG tvix_store.import" in shown.stderr
    span = tvix(store, "import", tmp_path / "f", env=cli_env(store, RUST_LOG="tvix_store[x]=debug")).stderr
    assert span.count(b"\n") == 1 and b"WARNING tvix_store.log: RUST_LOG directive" in span, span


def test_log_lines_and_progress_redraws_do_not_interleave() -> None:
    """A log record is written whole while the progress line is away: a redraw from another
    thread cannot land between the erase and the record (copy's download threads draw while
    its workers log retries)."""
    import io
    import logging
    import sys
    import threading

    from tvix_store.log import _handler
    from tvix_store.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    handler = _handler(term)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logger = logging.getLogger("test-interleave")
    logger.propagate = False
    logger.addHandler(handler)
    progress = Progress("drawing", stream=term, enabled=True)
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            progress._draw()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    drawer = threading.Thread(target=draw)
    drawer.start()
    try:
        for i in range(3000):
            logger.warning("retry %d", i)
    finally:
        stop.set()
        drawer.join()
        sys.setswitchinterval(old)
        logger.removeHandler(handler)
    text = term.getvalue()
    assert text.count("LOG retry") == 3000
    assert "s)LOG" not in text  # a record run on from the end of a progress line
