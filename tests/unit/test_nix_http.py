"""Binary-cache file names and MIME types (spec §6.7)."""

from __future__ import annotations

import pytest

from nix_compat import nix_http
from nix_compat.nix_http import parse_nar_str, parse_narinfo_str

NAR_DIGEST = bytes.fromhex("13a8cf7ca57f68a9f1752acee36a72a55187d3a954443c112818926f26109d91")
NAR_NB32 = "14cx20k6z4hq508kqi2lm79qfld5f9mf7kiafpqsjs3zlmycza0k"


def test_mime_types():
    assert nix_http.MIME_TYPE_NAR == "application/x-nix-nar"
    assert nix_http.MIME_TYPE_NARINFO == "text/x-nix-narinfo"
    assert nix_http.MIME_TYPE_CACHE_INFO == "text/x-nix-cache-info"


@pytest.mark.parametrize("suffix", ["", ".xz", ".bz2", ".zst", ".br", ".lz4"])
def test_parse_nar_str(suffix):
    assert parse_nar_str(f"{NAR_NB32}.nar{suffix}") == (NAR_DIGEST, suffix)


@pytest.mark.parametrize(
    "name",
    [
        "",
        NAR_NB32,
        NAR_NB32[:-1],
        NAR_NB32[:-1] + ".nar",
        NAR_NB32 + "x.nar",
        NAR_NB32 + ".narinfo"[:3],
        NAR_NB32[:-1] + "\U0001f98a.nar",
        NAR_NB32.replace("1", "e") + ".nar",  # 'e' is not in the alphabet
        "zz" + NAR_NB32[2:] + ".nar",  # non-canonical: overflows 32 bytes
        "/" + NAR_NB32 + ".nar",
    ],
)
def test_parse_nar_str_rejects(name):
    assert parse_nar_str(name) is None


def test_parse_narinfo_str():
    assert parse_narinfo_str("00bgd045z0d4icpbc2yyz4gx48ak44la.narinfo") == bytes.fromhex(
        "8a12321522fd91efbd60ebb2481af88580f61600"
    )


@pytest.mark.parametrize(
    "name",
    [
        "00bgd045z0d4icpbc2yyz4gx48ak44la",
        "/00bgd045z0d4icpbc2yyz4gx48ak44la",
        "000000",
        "00bgd045z0d4icpbc2yyz4gx48ak44l\U0001f98a.narinfo",
        "00bgd045z0d4icpbc2yyz4gx48ak44la.narinfo.xz",
        "00bgd045z0d4icpbc2yyz4gx48ak44lax.narinfo",
        "00bgd045z0d4icpbc2yyz4gx48ak44l.narinfo",
        "00bgd045z0d4icpbc2yyz4gx48ak44le.narinfo",
        "00bgd045z0d4icpbc2yyz4gx48ak44la.NARINFO",
    ],
)
def test_parse_narinfo_str_rejects(name):
    assert parse_narinfo_str(name) is None


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("00bgd045z0d4icpbc2yyz4gx48ak44la.ls", "listing"),
        ("log/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12.drv", "log"),
        ("log/00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12", "log"),  # Nix logs by any path
        ("debuginfo/" + "0123456789abcdef" * 2 + "01234567", "debuginfo"),  # 40 hex: Nix's
        ("debuginfo/" + "0123456789abcdef" * 2 + "01234567.debug", "debuginfo"),  # Nix 2.8's
        ("realisations/sha256:" + "ab" * 32 + "!out.doi", "realisation"),
        ("realisations/sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0!dev.doi", "realisation"),
    ],
)
def test_parse_cache_file_str(path, kind):
    assert nix_http.parse_cache_file_str(path) == kind


@pytest.mark.parametrize(
    "path",
    [
        "00bgd045z0d4icpbc2yyz4gx48ak44l.ls",  # 31 characters
        "00bgd045z0d4icpbc2yyz4gx48ak44lu.ls",  # u is not nixbase32
        "x/00bgd045z0d4icpbc2yyz4gx48ak44la.ls",
        "00bgd045z0d4icpbc2yyz4gx48ak44la.narinfo",
        "nar/1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0.nar",
        "log/",
        "log/hello.drv",
        "log/00bgd045z0d4icpbc2yyz4gx48ak44la-hello/x",
        "log/../00bgd045z0d4icpbc2yyz4gx48ak44la-x",
        "debuginfo/",
        "debuginfo/ABCDEF",  # Nix writes lower case
        "debuginfo/a",
        "debuginfo/.debug",
        "debuginfo/abcd.debug.debug",
        "debuginfo/" + "a" * 129,
        "realisations/sha256:abc.doi",  # no output
        "realisations/sha256:abc!out",  # no .doi
        "realisations/sha256:abc!o/ut.doi",
        "realisations/sha256:ab/cd!out.doi",
        "realisations/abc!out.doi",  # no algorithm
        "nix-cache-info",
        "",
    ],
)
def test_parse_cache_file_str_rejects(path):
    assert nix_http.parse_cache_file_str(path) is None
