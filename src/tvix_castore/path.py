"""Names of directory entries (tvix ``PathComponent``), paths of entries, and symlink targets."""

from __future__ import annotations

from tvix_castore.errors import NodeError

MAX_NAME_LEN = 255
MAX_TARGET_LEN = 4095

EntryPath = tuple[bytes, ...]
"""A path relative to a root node, as name components; ``()`` is the root."""


def format_path(path: EntryPath) -> str:
    """A readable form of an entry path for messages (``.`` for the root)."""
    if not path:
        return "."
    return b"/".join(path).decode("utf-8", "backslashreplace")


def quoted(name: bytes) -> str:
    """A byte string in double quotes, as tvix's messages show one (Rust's Debug of a BStr).

    Valid UTF-8 shows as text with quotes, backslashes and control characters escaped; bytes
    that are not UTF-8 show as backslash, x, two hex digits.
    """
    text = name.decode("utf-8", "surrogateescape")
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return '"' + "".join(_escape(ch) for ch in text) + '"'


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\0": "\\0", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if "\udc80" <= ch <= "\udcff":  # an undecodable byte, kept by surrogateescape
        return f"\\x{ord(ch) - 0xDC00:02X}"
    return ch if ch.isprintable() else f"\\u{{{ord(ch):x}}}"


def name_problem(name: bytes) -> str | None:
    """Why ``name`` is not a valid entry name, or None if it is; checks in tvix's order."""
    if not name:
        return "cannot be empty"
    if name == b"..":
        return "cannot be '..'"
    if name == b".":
        return "cannot be '.'"
    if len(name) > MAX_NAME_LEN:
        return f"cannot be over {MAX_NAME_LEN} bytes long"
    if b"\0" in name:
        return "cannot contain null bytes"
    if b"/" in name:
        return "cannot contain slashes"
    return None


def validate_name(name: bytes) -> bytes:
    """Return name if it is a valid entry name, else raise NodeError."""
    problem = name_problem(name)
    if problem is not None:
        raise NodeError(f"Invalid name {quoted(name)}: {problem}")
    return name


def validate_symlink_target(target: bytes) -> bytes:
    """Return target if it is a valid symlink target, else raise NodeError."""
    if not target:
        raise NodeError("Invalid symlink target: cannot be empty")
    if len(target) > MAX_TARGET_LEN:
        raise NodeError(f"Invalid symlink target: cannot be over {MAX_TARGET_LEN} bytes long")
    if b"\0" in target:
        raise NodeError(f"Invalid symlink target {quoted(target)}: cannot contain null bytes")
    return target
