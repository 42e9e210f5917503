"""Errors raised by the Nix format code.

Tree::

    NixCompatError (ValueError)
     +-- Nixbase32Error       text that is not canonical nixbase32
     +-- StorePathError       a store path or store-path name that Nix would refuse
     +-- NixHashError         a hash string or digest of the wrong form or length
     +-- NarError             a NAR stream that is malformed (ordering, names, padding, lengths)
     +-- NarInfoError         narinfo text that cannot be parsed
     +-- SignatureError       a key or signature string of the wrong form
"""

from __future__ import annotations


class NixCompatError(ValueError):
    """Base class: input that does not follow a Nix format."""


class Nixbase32Error(NixCompatError):
    """Text that is not canonical nixbase32."""


class StorePathError(NixCompatError):
    """A store path, or the name part of one, that Nix would refuse."""


class NixHashError(NixCompatError):
    """A hash string or digest of the wrong form or length."""


class NarError(NixCompatError):
    """A NAR stream that is malformed or truncated."""


class NarInfoError(NixCompatError):
    """narinfo text that cannot be parsed."""


class SignatureError(NixCompatError):
    """A key or signature string of the wrong form."""
