"""NAR wire encoding: strings, padding, the fixed token sequences, and name/target rules.

Every NAR string is ``u64le(len) ‖ bytes ‖ zero padding to a multiple of 8`` (spec §6.1). The
token constants are the pre-encoded runs of syntax strings that always appear together, so the
writer emits them with one append and the reader compares them with one slice.
"""

from __future__ import annotations

import struct

MAX_NAME_LEN = 255
MAX_TARGET_LEN = 4095
MAX_DEPTH = 2048
"""Directories a NAR may nest. Nix dumps and restores trees through whole paths of at most
PATH_MAX (4096) bytes, two or more per level, so no NAR Nix makes or can unpack goes deeper;
deeper ones only cost a reader memory and time."""

_U64 = struct.Struct("<Q")
pack_u64 = _U64.pack
unpack_u64 = _U64.unpack_from
ZEROS = bytes(8)


def padding_len(n: int) -> int:
    """Number of zero bytes that follow a string of n bytes."""
    return -n % 8


def encode_str(s: bytes) -> bytes:
    """A single NAR string: length, bytes, zero padding."""
    return pack_u64(len(s)) + s + ZEROS[: -len(s) % 8]


def _tokens(*parts: bytes) -> bytes:
    return b"".join(encode_str(p) for p in parts)


MAGIC = encode_str(b"nix-archive-1")
TOK_NAR = _tokens(b"nix-archive-1", b"(", b"type")
TOK_SYM = _tokens(b"symlink", b"target")
TOK_REG = _tokens(b"regular", b"contents")
TOK_EXE = _tokens(b"regular", b"executable", b"", b"contents")
TOK_DIR = _tokens(b"directory")
TOK_ENT = _tokens(b"entry", b"(", b"name")
TOK_NOD = _tokens(b"node", b"(", b"type")
TOK_PAR = _tokens(b")")
# Suffixes used by the reader after it has read the first string of a choice.
TOK_OPEN_TYPE = _tokens(b"(", b"type")
TOK_OPEN_NAME = _tokens(b"(", b"name")
TOK_TARGET = _tokens(b"target")
TOK_EMPTY_CONTENTS = _tokens(b"", b"contents")


def name_problem(name: bytes) -> str | None:
    """Why a directory entry name is not allowed in a NAR, or None if it is fine.

    Same rules (and check order) as castore names, spec §1.3.
    """
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


def target_problem(target: bytes) -> str | None:
    """Why a symlink target is not allowed in a NAR, or None if it is fine (spec §1.4)."""
    if not target:
        return "cannot be empty"
    if len(target) > MAX_TARGET_LEN:
        return f"cannot be over {MAX_TARGET_LEN} bytes long"
    if b"\0" in target:
        return "cannot contain null bytes"
    return None
