"""Logging set-up from ``--log-level`` and ``RUST_LOG`` directives (spec §11, decision 3).

``RUST_LOG`` is tvix's syntax: comma-separated ``level`` or ``target=level``, levels
error|warn|info|debug|trace (``trace`` sits below DEBUG). Targets are logger names, written
either Python-style (``tvix_castore.fs``) or Rust-style (``tvix_castore::fs``). Logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
    "off": logging.CRITICAL + 10,
}
_TARGET_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:::|\.)[A-Za-z_][A-Za-z0-9_]*)*")


class LogConfigError(ValueError):
    """An invalid ``--log-level`` or ``RUST_LOG`` directive."""


@dataclass(frozen=True, slots=True)
class Directives:
    """A default level plus per-target levels."""

    default: int
    targets: tuple[tuple[str, int], ...]


def parse_level(text: str) -> int:
    """A level name (case-insensitive) -> logging level."""
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise LogConfigError(f"invalid log level {text!r} (expected one of {', '.join(LEVELS)})")
    return level


def parse_directives(spec: str, default: int) -> Directives:
    """Parse a RUST_LOG value; raises LogConfigError naming the bad directive."""
    targets: list[tuple[str, int]] = []
    for raw in spec.split(","):
        directive = raw.strip()
        if not directive:
            continue
        target, sep, level_text = directive.partition("=")
        if not sep:
            if directive.lower() in LEVELS:
                default = LEVELS[directive.lower()]
                continue
            if _TARGET_RE.fullmatch(directive):
                # A bare target enables everything for it, as tracing's EnvFilter does.
                targets.append((directive.replace("::", "."), TRACE))
                continue
            raise LogConfigError(f"invalid RUST_LOG directive {directive!r}")
        if not _TARGET_RE.fullmatch(target.strip()):
            raise LogConfigError(f"invalid RUST_LOG directive {directive!r}: bad target {target!r}")
        try:
            level = parse_level(level_text)
        except LogConfigError as exc:
            raise LogConfigError(f"invalid RUST_LOG directive {directive!r}: {exc}") from None
        targets.append((target.strip().replace("::", "."), level))
    return Directives(default, tuple(targets))


def setup_logging(log_level: str = "info", rust_log: str | None = None) -> Directives:
    """Configure the root logger; RUST_LOG (from the environment if not given) wins."""
    default = parse_level(log_level)
    if rust_log is None:
        rust_log = os.environ.get("RUST_LOG")
    directives = parse_directives(rust_log, default) if rust_log else Directives(default, ())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(directives.default)
    for target, level in directives.targets:
        logging.getLogger(target).setLevel(level)
    return directives
