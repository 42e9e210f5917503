"""Logging set-up from ``--log-level`` and ``RUST_LOG`` directives (spec §11, decision 3).

``RUST_LOG`` is tvix's syntax (tracing's EnvFilter): comma-separated ``level``, ``target`` or
``target=level``; levels error|warn|info|debug|trace|off or 0-5 (``trace`` sits below DEBUG; a
target without a level gets trace). Targets are logger names, written either Python-style
(``tvix_castore.fs``) or Rust-style (``tvix_castore::fs``); modules whose tvix counterpart has
another path log under tvix's name. As in tracing, a target covers every logger whose name
starts with it (``tvix`` covers ``tvix_store`` and ``tvix_castore``), and the longest matching
target decides. Logs go to stderr.

Parsing needs no ``logging``: the short commands defer importing it to their first record that
passes the levels (``tvix_castore.lazy_logging``), and most never log one.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from tvix_castore import lazy_logging
from tvix_castore.frozen import Frozen

if TYPE_CHECKING:
    import logging

TRACE = 5

# logging's numbers for the levels (its CRITICAL is 50).
LEVELS = {
    "error": lazy_logging.ERROR,
    "warn": lazy_logging.WARNING,
    "info": lazy_logging.INFO,
    "debug": lazy_logging.DEBUG,
    "trace": TRACE,
    "off": 60,
}
# tracing's numeric spellings: 0 is off, 1 error … 5 trace.
_NUMERIC = dict(zip("012345", ("off", "error", "warn", "info", "debug", "trace"), strict=True))
# A directive as tracing's EnvFilter reads one: a target (Rust or Python spelling, hyphens
# allowed), an optional [span] filter, an optional =level (empty or absent: trace).
_DIRECTIVE_RE = re.compile(r"(?P<target>[\w:.-]+)?(?P<span>\[[^\]]*\])?(?:=(?P<level>.*))?", re.DOTALL)


class LogConfigError(ValueError):
    """An invalid ``--log-level`` or ``RUST_LOG`` directive."""


class Directives(Frozen):
    """A default level plus per-target levels."""

    __slots__ = ("default", "ignored", "targets")
    default: int
    targets: tuple[tuple[str, int], ...]
    # Directives that parse but cannot apply here (span filters), warned about at set-up.
    ignored: tuple[str, ...]

    def __init__(
        self, default: int, targets: tuple[tuple[str, int], ...], ignored: tuple[str, ...] = ()
    ) -> None:
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "ignored", ignored)

    def level_for(self, name: str) -> int:
        """The level of the logger called name; the default when no target covers it.

        The longest target the name starts with decides (tracing compares plain strings:
        ``tvix_store.imp`` covers ``tvix_store.import``); of equal targets, the last given.
        """
        best = -1
        level = self.default
        for target, target_level in self.targets:
            if len(target) >= best and name.startswith(target):
                best, level = len(target), target_level
        return level


def parse_level(text: str) -> int:
    """A level name (case-insensitive) or tracing's digit 0-5 -> logging level."""
    word = text.strip().lower()
    level = LEVELS.get(_NUMERIC.get(word, word))
    if level is None:
        raise LogConfigError(f"invalid log level {text!r} (expected one of {', '.join(LEVELS)}, or 0-5)")
    return level


def parse_directives(spec: str, default: int) -> Directives:
    """Parse a RUST_LOG value; raises LogConfigError naming the bad directive.

    default (``--log-level``) applies only when the value holds no directive at all, as
    tracing's ``with_default_directive``: ``tvix_castore=trace`` alone shows that target and
    nothing else. Span filters (``target[span]=level``) cannot apply to Python loggers: such a
    directive is skipped with a warning rather than widening or narrowing what its target logs.
    """
    targets: list[tuple[str, int]] = []
    ignored: list[str] = []
    level_given: int | None = None
    for raw in spec.split(","):
        directive = raw.strip()
        if not directive:
            continue
        word = directive.lower()
        if _NUMERIC.get(word, word) in LEVELS:
            level_given = parse_level(word)
            continue
        match = _DIRECTIVE_RE.fullmatch(directive)
        if match is None or not (match["target"] or match["span"]):
            raise LogConfigError(f"invalid RUST_LOG directive {directive!r}")
        try:
            level = parse_level(match["level"]) if match["level"] else TRACE
        except LogConfigError as exc:
            raise LogConfigError(f"invalid RUST_LOG directive {directive!r}: {exc}") from None
        if match["span"]:
            ignored.append(directive)
            continue
        targets.append((match["target"].replace("::", "."), level))
    if level_given is not None:
        default = level_given
    elif targets or ignored:
        default = LEVELS["off"]
    return Directives(default, tuple(targets), tuple(ignored))


def _handler(stream: object) -> logging.Handler:
    """A handler writing log lines to stream, below any progress line (taken away first)."""
    import logging

    from tvix_store.progress import line_cleared

    class Handler(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            with line_cleared(self.stream):
                super().emit(record)

    return Handler(stream)


def setup_logging(log_level: str = "info", rust_log: str | None = None, *, defer: bool = False) -> Directives:
    """Configure the root logger; RUST_LOG (from the environment if not given) wins.

    With defer, ``logging`` is configured (and imported) only when a record passes the levels.
    """
    default = parse_level(log_level)
    if rust_log is None:
        rust_log = os.environ.get("RUST_LOG")
    directives = parse_directives(rust_log, default) if rust_log else Directives(default, ())
    if defer and not directives.ignored:
        lazy_logging.defer_setup(directives.level_for, lambda: _apply(directives))
    else:
        _apply(directives)
    return directives


def _apply(directives: Directives) -> None:
    import logging

    logging.addLevelName(TRACE, "TRACE")
    handler = _handler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min([directives.default, *(level for _, level in directives.targets)]))
    if directives.targets:
        # Targets match by prefix, not along the dotted hierarchy of loggers: the root lets
        # through what any target wants, and the handler keeps what the record's own target does.
        levels: dict[str, int] = {}

        def wanted(record: logging.LogRecord) -> bool:
            level = levels.get(record.name)
            if level is None:
                level = levels[record.name] = directives.level_for(record.name)
            return record.levelno >= level

        handler.addFilter(wanted)
    own = logging.getLogger(__name__)
    for directive in directives.ignored:
        # Shown whatever the levels: the directive that would have chosen them is the one ignored.
        message = "RUST_LOG directive %r ignored: span filters are not supported"
        own.handle(own.makeRecord(__name__, logging.WARNING, __file__, 0, message, (directive,), None))
