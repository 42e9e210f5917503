"""Names of directory entries (tvix ``PathComponent``) and symlink targets."""

from __future__ import annotations

from tvix_castore.errors import NodeError

MAX_NAME_LEN = 255
MAX_TARGET_LEN = 4095


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
        raise NodeError(f"invalid name {name!r}: {problem}")
    return name


def validate_symlink_target(target: bytes) -> bytes:
    """Return target if it is a valid symlink target, else raise NodeError."""
    if not target:
        raise NodeError("invalid symlink target: cannot be empty")
    if len(target) > MAX_TARGET_LEN:
        raise NodeError(f"invalid symlink target: cannot be over {MAX_TARGET_LEN} bytes long")
    if b"\0" in target:
        raise NodeError(f"invalid symlink target {target!r}: cannot contain null bytes")
    return target
