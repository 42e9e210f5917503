"""ServiceUrl's quick split of ``scheme:///path`` agrees with urllib's urlsplit (path percent-decoded,
a NUL in it refused) on any input."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tvix_castore.errors import InvalidRequest
from tvix_castore.url import _PLAIN_PATH_URL, ServiceUrl

_SCHEMES = st.sampled_from(["lmdb", "LMDB", "grpc+unix", "objectstore+file", "memory", "x.y-z", "1a", ""])
# Printable ASCII plus what urlsplit strips or treats specially (tab, newline, space, ?, #, [, @, :),
# and percent escapes (of a letter, NUL, a slash).
_TAIL = st.lists(
    st.characters(min_codepoint=0, max_codepoint=0x7F) | st.sampled_from(["é", "ü", "%41", "%00", "%2F"]),
    max_size=30,
).map("".join)


def _reference(raw: str) -> tuple[object, ...] | None:
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not raw[len(parts.scheme) + 1 :].startswith("/"):
        return None  # neither scheme://… nor scheme:/path
    path = unquote(parts.path, errors="surrogateescape")
    if "\x00" in path:
        return None  # no filesystem path has one
    query = parse_qs(parts.query, keep_blank_values=True)
    return (
        parts.scheme,
        parts.scheme.split("+", 1)[0],
        parts.hostname or "",
        port,
        path,
        query,
        parts.netloc,
    )


@given(_SCHEMES, st.sampled_from([":///", "://", ":////", ":/", "://host/"]), _TAIL)
def test_parse_matches_urlsplit(scheme: str, sep: str, tail: str) -> None:
    raw = scheme + sep + tail
    expected = _reference(raw)
    try:
        url = ServiceUrl.parse(raw)
    except InvalidRequest:
        assert expected is None
        return
    assert expected == (url.scheme, url.tag, url.host, url.port, url.path, url.query, url.netloc)


@pytest.mark.parametrize("raw", ["lmdb://[x/y", "grpc+http://[::1:8000", "grpc+http://host:99999"])
def test_malformed_authority_is_an_invalid_request(raw: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid service address"):
        ServiceUrl.parse(raw)


def test_the_default_store_url_takes_the_quick_split() -> None:
    # Guards the point of the quick split: the URL every default command parses must use it.
    assert _PLAIN_PATH_URL.fullmatch("lmdb:///var/lib/tvix-store") is not None
    assert _PLAIN_PATH_URL.fullmatch("lmdb:///home/a b") is None
