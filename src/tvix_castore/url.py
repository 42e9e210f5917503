"""Service URLs: parsing, the scheme-tag rule, and a small registry type used per service.

The registry tag is the scheme up to the first ``+`` (``grpc+unix`` -> ``grpc``), as in tvix.
"""

from __future__ import annotations

import importlib
import re
from typing import Generic, TypeVar

from tvix_castore.errors import InvalidRequest
from tvix_castore.frozen import Frozen

T = TypeVar("T")

# ``scheme:///path`` with nothing that urlsplit would strip or split on and no ``%`` to decode:
# every command with the default store parses one, and urllib.parse (with ipaddress) costs more
# to import than such a split. Anything else goes through urlsplit.
_PLAIN_PATH_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://(/[\x21-\x22\x24\x26-\x3e\x40-\x7e]*)")


def path_url(scheme: str, path: str) -> str:
    """``scheme://`` + an absolute filesystem path, escaped where a URL parser would misread it.

    ``#``, ``?``, ``%`` and other bytes are percent-encoded (``ServiceUrl.parse`` decodes them
    again, bytes that are not UTF-8 included); an ordinary path stays as it is.
    """
    url = f"{scheme}://{path}"
    if _PLAIN_PATH_URL.fullmatch(url):
        return url
    from urllib.parse import quote

    return f"{scheme}://{quote(path, safe='/', errors='surrogateescape')}"


class ServiceUrl(Frozen):
    """A parsed service address; ``path`` is percent-decoded."""

    __slots__ = ("host", "path", "port", "query", "raw", "scheme", "tag")
    raw: str
    scheme: str
    tag: str
    host: str
    port: int | None
    path: str
    query: dict[str, list[str]]

    def __init__(
        self,
        raw: str,
        scheme: str,
        tag: str,
        host: str,
        port: int | None,
        path: str,
        query: dict[str, list[str]],
    ) -> None:
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "query", query)

    @classmethod
    def parse(cls, raw: str) -> ServiceUrl:
        """Split a URL; raises InvalidRequest when it has no scheme."""
        plain = _PLAIN_PATH_URL.fullmatch(raw)
        if plain is not None:
            scheme = plain.group(1).lower()
            return cls(raw, scheme, scheme.split("+", 1)[0], "", None, plain.group(2), {})
        from urllib.parse import parse_qs, unquote, urlsplit

        try:
            parts = urlsplit(raw)
            port = parts.port
        except ValueError as exc:  # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
            raise InvalidRequest(f"invalid service address {raw!r}: {exc}") from exc
        # ``scheme:/path`` (no authority) is a URL too, as tvix's parser reads it:
        # ``grpc+unix:/run/tvix.sock``.
        if not parts.scheme or not raw[len(parts.scheme) + 1 :].startswith("/"):
            raise InvalidRequest(f"invalid service address {raw!r}: expected scheme://...")
        path = unquote(parts.path, errors="surrogateescape")
        if "\x00" in path:
            raise InvalidRequest(f"invalid service address {raw!r}: the path contains a NUL byte")
        return cls(
            raw=raw,
            scheme=parts.scheme,
            tag=parts.scheme.split("+", 1)[0],
            host=parts.hostname or "",
            port=port,
            path=path,
            query=parse_qs(parts.query, keep_blank_values=True),
        )

    @property
    def netloc(self) -> str:
        """``host[:port]`` as written (IPv6 hosts keep their brackets)."""
        if _PLAIN_PATH_URL.fullmatch(self.raw):
            return ""
        from urllib.parse import urlsplit

        return urlsplit(self.raw).netloc

    def require_no_host(self) -> None:
        """Refuse a host part."""
        if self.netloc:
            raise InvalidRequest(f"invalid service address {self.raw!r}: no host allowed")

    def require_no_path(self) -> None:
        """Refuse a path part."""
        if self.path:
            raise InvalidRequest(f"invalid service address {self.raw!r}: no path allowed")

    def require_no_query(self, allowed: tuple[str, ...] = ()) -> None:
        """Refuse query keys not in allowed."""
        unknown = sorted(set(self.query) - set(allowed))
        if unknown:
            raise InvalidRequest(f"invalid service address {self.raw!r}: unknown option {unknown[0]!r}")


class Registry(Generic[T]):
    """Scheme tag -> backend class, imported only when a URL names it.

    Backends are registered as ``"module:Class"`` strings so that ``memory://`` does not pull
    in lmdb or grpc. ``from_addr(url, *extra)`` calls ``Class.from_url(parsed_url, *extra)``.
    A duplicate tag is a programming error.
    """

    def __init__(self, kind: str, backends: dict[str, str]) -> None:
        self._kind = kind
        self._backends: dict[str, str] = {}
        for tag, target in backends.items():
            self.register(tag, target)

    def register(self, tag: str, target: str) -> None:
        """Add a backend ``"module:Class"`` for URLs whose scheme starts with tag."""
        if tag in self._backends:
            raise RuntimeError(f"{self._kind}: scheme {tag!r} registered twice")
        self._backends[tag] = target

    def from_addr(self, raw: str, *extra: object) -> T:
        """Build the backend a URL names; raises InvalidRequest for unknown or bad URLs."""
        url = ServiceUrl.parse(raw)
        target = self._backends.get(url.tag)
        if target is None:
            raise InvalidRequest(f"invalid {self._kind} address {raw!r}: Unknown type: {url.tag}")
        module, _, cls = target.partition(":")
        built: T = getattr(importlib.import_module(module), cls).from_url(url, *extra)
        return built
