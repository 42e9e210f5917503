"""NarInfo: byte-exact parse→render, every rejection, fingerprints and signatures (spec §6.5, §6.6)."""

# ruff: noqa: E501, W291  (narinfo lines are long, and "References: " ends in a space)

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from nartree import nar_of_path, nar_to_tree, tree_to_nar

from nix_compat import nix_http, nixbase32
from nix_compat.errors import NarInfoError
from nix_compat.narinfo import NarInfo, fingerprint
from nix_compat.nixhash import CAHash, NixHash
from nix_compat.signing import Signature, SigningKey, VerifyingKey
from nix_compat.store_path import StorePath

CURL_FINGERPRINT = (
    b"1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;"
    b"sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;"
    b"/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,"
    b"/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,"
    b"/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,"
    b"/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
)
CURL_SIG = "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
CACHE_NIXOS_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
DO_NOT_USE_SECRET = (
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTaeA6lR3A=="
)
DO_NOT_USE_PUBLIC = "do.not.use:cuXqnuzlWfGTKmfzBPx2kXShjRryZMhil2E2ngOpUdw="

# The fingerprint fields are those of the signed vector; URL/FileHash/FileSize are not signed.
CURL = f"""StorePath: /nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin
URL: nar/05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56.nar.xz
Compression: xz
FileHash: sha256:05ra3y72i3qjri7xskf9qj8kb29r6naqy1sqpbs3azi3xcigmj56
FileSize: 68852
NarHash: sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0
NarSize: 196040
References: 0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0 6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115 j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12 yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n
Deriver: 5rwxzi7pal3qhpsyfc16gzkh939q1np6-curl-7.82.0.drv
Sig: {CURL_SIG}
"""

MINIMAL = """StorePath: /nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432
URL: nar/1094wph9z4nwlgvsd53abfz8i117ykiv5dwnq9nnhz846s7xqd7d.nar.xz
NarHash: sha256:0lxjvvpr59c2mdram7ympy5ay741f180kv3349hvfc3f8nrmbqf6
NarSize: 464152
References: 
"""

FULL = """StorePath: /nix/store/k20pahypzvr49fy82cw5sx72hdfg3qcr-texlive-hyphenex-37354
URL: nar/0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi.nar.xz
Compression: none
FileHash: sha256:0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi
FileSize: 5344
NarHash: sha256:1ngb69lra7wpl1wk3kfmsx3fj1qfbkvm2mrk9rld2aqdh0fipgaf
NarSize: 22552
References: k20pahypzvr49fy82cw5sx72hdfg3qcr-texlive-hyphenex-37354 00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60_p20170221182432
Deriver: 7ab1h8x4w0l9bnsjzlaayykfgjg9nm17-texlive-hyphenex-37354.drv
System: x86_64-linux
Sig: cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==
Sig: other.key-2:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==
CA: fixed:r:sha1:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw
"""


@pytest.mark.parametrize("text", [CURL, MINIMAL, FULL], ids=["curl", "minimal", "full"])
def test_round_trip_byte_exact(text):
    assert NarInfo.parse(text).render() == text
    assert str(NarInfo.parse(text.encode())) == text


def test_fields_of_full():
    ni = NarInfo.parse(FULL)
    assert ni.store_path == StorePath.from_bytes("k20pahypzvr49fy82cw5sx72hdfg3qcr-texlive-hyphenex-37354")
    assert ni.url == "nar/0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi.nar.xz"
    assert ni.compression == "none"
    assert ni.effective_compression == "none"
    assert ni.file_hash == nixbase32.decode("0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi")
    assert ni.file_size == 5344
    assert ni.nar_hash == nixbase32.decode("1ngb69lra7wpl1wk3kfmsx3fj1qfbkvm2mrk9rld2aqdh0fipgaf")
    assert ni.nar_size == 22552
    # out-of-order references are kept in their order
    assert [r.name for r in ni.references] == ["texlive-hyphenex-37354", "net-tools-1.60_p20170221182432"]
    assert ni.deriver == StorePath(
        nixbase32.decode("7ab1h8x4w0l9bnsjzlaayykfgjg9nm17"), "texlive-hyphenex-37354"
    )
    assert ni.system == "x86_64-linux"
    assert [s.name for s in ni.signatures] == ["cache.nixos.org-1", "other.key-2"]
    assert ni.ca == CAHash("nar", NixHash("sha1", nixbase32.decode("1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw")))


def test_minimal_defaults():
    ni = NarInfo.parse(MINIMAL)
    assert ni.references == ()
    assert ni.compression is None
    assert ni.effective_compression == "bzip2"
    assert (ni.file_hash, ni.file_size, ni.deriver, ni.system, ni.signatures, ni.ca) == (None,) * 4 + (
        (),
        None,
    )


def test_hex_nar_hash_accepted_and_rendered_nixbase32():
    nb = "1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"
    hexed = nixbase32.decode(nb).hex()
    ni = NarInfo.parse(CURL.replace(f"NarHash: sha256:{nb}", f"NarHash: sha256:{hexed}"))
    assert ni.nar_hash == nixbase32.decode(nb)
    assert ni.render() == CURL
    with pytest.raises(NarInfoError, match="line 6: invalid NarHash"):
        NarInfo.parse(CURL.replace(f"NarHash: sha256:{nb}", f"NarHash: sha256:{hexed.upper()}"))


def test_unknown_keys_ignored():
    text = MINIMAL + "Foo: bar\nLicense: MIT\n"
    assert NarInfo.parse(text).render() == MINIMAL


def test_crlf_and_missing_final_newline():
    assert NarInfo.parse(MINIMAL.replace("\n", "\r\n")).render() == MINIMAL
    assert NarInfo.parse(MINIMAL.rstrip("\n")).render() == MINIMAL


@pytest.mark.parametrize(
    "key",
    [
        "StorePath",
        "URL",
        "Compression",
        "FileHash",
        "FileSize",
        "NarHash",
        "NarSize",
        "References",
        "Deriver",
        "System",
        "CA",
    ],
)
def test_duplicates_rejected(key):
    line = next(line for line in FULL.splitlines() if line.startswith(f"{key}:"))
    with pytest.raises(NarInfoError, match=f"line 14: duplicate field {key} \\(first on line"):
        NarInfo.parse(FULL + line + "\n")


@pytest.mark.parametrize("key", ["StorePath", "URL", "NarHash", "NarSize", "References"])
def test_missing_required(key):
    text = "".join(line + "\n" for line in MINIMAL.splitlines() if not line.startswith(f"{key}:"))
    with pytest.raises(NarInfoError, match=f"missing field: {key}"):
        NarInfo.parse(text)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("NoColonHere", "line 6: invalid line"),
        ("URL:nospace", "line 6: invalid line"),
        ("", "line 6: invalid line"),
    ],
)
def test_invalid_lines(line, message):
    with pytest.raises(NarInfoError, match=message):
        NarInfo.parse(MINIMAL + line + "\nFoo: x\n")


def _with(text: str, key: str, value: str) -> str:
    return "".join(
        (f"{key}: {value}" if line.startswith(f"{key}:") else line) + "\n" for line in text.splitlines()
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "StorePath",
            "/nix/stor/00bgd045z0d4icpbc2yyz4gx48ak44la-x",
            "line 1: invalid StorePath: .* is not in /nix/store/",
        ),
        ("StorePath", "00bgd045z0d4icpbc2yyz4gx48ak44la-x", "invalid StorePath"),
        ("StorePath", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x y", "invalid StorePath"),
        ("StorePath", "/nix/store/e0bgd045z0d4icpbc2yyz4gx48ak44la-x", "invalid StorePath"),
        ("URL", "", "line 2: invalid URL: may not be empty"),
        ("Compression", "", "line 3: invalid Compression: may not be empty"),
        (
            "FileHash",
            "0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06yi",
            "line 4: invalid FileHash: .*sha256:",
        ),
        (
            "FileHash",
            "sha256:0i5biw0g01514llhfswxy6xfav8lxxdq1xg6ik7hgsqbpw0f06y",
            "line 4: invalid FileHash",
        ),
        ("FileHash", "sha256:" + "ab" * 32, "line 4: invalid FileHash"),
        ("FileSize", "-1", "line 5: invalid FileSize"),
        ("FileSize", "12a", "line 5: invalid FileSize"),
        ("NarHash", "md5:0i5biw0g01514llhfswxy6xfav8l", "line 6: invalid NarHash"),
        ("NarHash", "sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "line 6: invalid NarHash"),
        ("NarSize", str(1 << 64), "line 7: invalid NarSize"),
        ("NarSize", "", "line 7: invalid NarSize"),
        ("NarSize", "\uff11\uff12", "line 7: invalid NarSize"),
        (
            "References",
            "k20pahypzvr49fy82cw5sx72hdfg3qcr-a  k20pahypzvr49fy82cw5sx72hdfg3qcr-b",
            "reference #1",
        ),
        ("References", "/nix/store/k20pahypzvr49fy82cw5sx72hdfg3qcr-a", "line 8: invalid References: .*#0"),
        (
            "Deriver",
            "7ab1h8x4w0l9bnsjzlaayykfgjg9nm17-texlive-hyphenex-37354",
            "line 9: invalid Deriver: .*\\.drv",
        ),
        ("Deriver", "7ab1h8x4w0l9bnsjzlaayykfgjg9nm17-.drv", "line 9: invalid Deriver"),
        ("Deriver", "/nix/store/7ab1h8x4w0l9bnsjzlaayykfgjg9nm17-x.drv", "line 9: invalid Deriver"),
        ("System", "", "line 10: invalid System: may not be empty"),
        ("Sig", "cache.nixos.org-1:abc", "line 11: unable to parse signature #0"),
        (
            "Sig",
            "TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==",
            "signature #0",
        ),
        ("CA", "fixed:r:sha1:zzz", "line 13: invalid CA"),
        ("CA", "sha256:1ak1ymbmsfx7z8kh09jzkr3a4dvkrfjw", "line 13: invalid CA"),
    ],
)
def test_bad_values(key, value, message):
    with pytest.raises(NarInfoError, match=message):
        NarInfo.parse(_with(FULL, key, value))


def test_second_bad_signature_numbered():
    text = FULL.replace("Sig: other.key-2:TsTT", "Sig: other.key-2:!sTT")
    with pytest.raises(NarInfoError, match="line 12: unable to parse signature #1"):
        NarInfo.parse(text)


def test_not_utf8():
    with pytest.raises(NarInfoError, match="UTF-8"):
        NarInfo.parse(MINIMAL.encode() + b"Foo: \xff\n")


def test_constructor_validates():
    ni = NarInfo.parse(MINIMAL)
    with pytest.raises(NarInfoError):
        NarInfo(ni.store_path, "u", b"x" * 31, 1)
    with pytest.raises(NarInfoError):
        NarInfo(ni.store_path, "u", bytes(32), -1)
    with pytest.raises(NarInfoError):
        NarInfo(ni.store_path, "u\nSig: x", bytes(32), 1)
    with pytest.raises(NarInfoError):
        NarInfo(ni.store_path, "", bytes(32), 1)


def test_fingerprint_vector():
    """The cache.nixos.org fingerprint of spec §6.6."""
    ni = NarInfo.parse(CURL)
    assert ni.fingerprint() == CURL_FINGERPRINT
    assert fingerprint(ni.store_path, ni.nar_hash, ni.nar_size, ni.references) == CURL_FINGERPRINT


def test_cache_nixos_signature_verifies():
    ni = NarInfo.parse(CURL)
    key = VerifyingKey.parse(CACHE_NIXOS_KEY)
    assert ni.verify([key])
    assert ni.valid_signatures([key]) == ni.signatures
    # any change to a signed field breaks it; a change to an unsigned one does not
    assert not NarInfo.parse(CURL.replace("NarSize: 196040", "NarSize: 196041")).verify([key])
    assert NarInfo.parse(CURL.replace("FileSize: 68852", "FileSize: 1")).verify([key])
    # a key only accepts signatures carrying its own name
    renamed = VerifyingKey("cache.nixos.org-2", key.key)
    assert not ni.verify([renamed])
    assert not ni.verify([VerifyingKey.parse(DO_NOT_USE_PUBLIC)])
    assert not ni.verify([])


def test_add_signature_do_not_use_vector():
    """Signing the dummy PathInfo's fingerprint gives the deterministic §12.3 signature."""
    dummy = StorePath.from_bytes("00000000000000000000000000000000-dummy")
    ni = NarInfo(dummy, "nar/x.nar", bytes(32), 0, references=(dummy,))
    assert ni.fingerprint() == (
        b"1;/nix/store/00000000000000000000000000000000-dummy;"
        b"sha256:0000000000000000000000000000000000000000000000000000;0;"
        b"/nix/store/00000000000000000000000000000000-dummy"
    )
    signed = ni.add_signature(SigningKey.parse(DO_NOT_USE_SECRET))
    assert [str(s) for s in signed.signatures] == [
        "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/ebYN4LYBg=="
    ]
    assert signed.verify([VerifyingKey.parse(DO_NOT_USE_PUBLIC)])
    assert ni.signatures == ()  # the original is unchanged
    # signing again replaces the same-named signature rather than piling up copies
    again = signed.add_signature(SigningKey.parse(DO_NOT_USE_SECRET))
    assert again.signatures == signed.signatures
    assert "Sig: do.not.use:xl4q2L5" in again.render()


def test_signatures_over_sorted_references_verify_too():
    """Nix signs over the references sorted; a narinfo listing them in another order keeps
    verifying (tvix's own order is tried first)."""
    a = StorePath.from_bytes("00000000000000000000000000000000-a")
    b = StorePath.from_bytes("11111111111111111111111111111111-b")
    key = SigningKey.parse(DO_NOT_USE_SECRET)
    sorted_ni = NarInfo(a, "nar/x.nar", bytes(32), 8, references=(a, b)).add_signature(key)
    unsorted = sorted_ni.replace(references=(b, a))
    assert unsorted.fingerprint() != sorted_ni.fingerprint()
    assert unsorted.verify([VerifyingKey.parse(DO_NOT_USE_PUBLIC)])
    own_order = unsorted.replace(signatures=()).add_signature(key)
    assert own_order.verify([VerifyingKey.parse(DO_NOT_USE_PUBLIC)])


def test_add_signature_keeps_other_names():
    ni = NarInfo.parse(CURL).add_signature(SigningKey.parse(DO_NOT_USE_SECRET))
    assert [s.name for s in ni.signatures] == ["cache.nixos.org-1", "do.not.use"]
    assert (
        ni.valid_signatures([VerifyingKey.parse(CACHE_NIXOS_KEY), VerifyingKey.parse(DO_NOT_USE_PUBLIC)])
        == ni.signatures
    )
    assert ni.signatures[0] == Signature.parse(CURL_SIG)


# -- the real Nix as oracle ------------------------------------------------------------------------

NIX_EXPR = """derivation {
  name = "h1-narinfo-test";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ${builtins.toFile "h1-narinfo-dep" "x"} ${./src} > $out" ];
}
"""
NIX = ["nix", "--extra-experimental-features", "nix-command"]


@pytest.fixture(scope="module")
def nix_caches(tmp_path_factory):
    """Two file:// binary caches written by `nix copy`: signed uncompressed, and default (xz).

    The closure is a built output (references + deriver), a text path (CA text:) and a source
    directory (CA fixed:r:) holding an executable, a symlink and an empty directory.
    """
    if shutil.which("nix-build") is None:
        pytest.skip("nix not installed")
    base = tmp_path_factory.mktemp("nixcache")
    src = base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run").write_text("#!/bin/sh\necho hi\n")
    (src / "bin" / "run").chmod(0o755)
    (src / "empty").mkdir()
    (src / "link").symlink_to("bin/run")
    (src / "data").write_bytes(bytes(range(256)) * 3)
    (base / "default.nix").write_text(NIX_EXPR)
    sk, pk = base / "sk", base / "pk"
    subprocess.run(["nix-store", "--generate-binary-cache-key", "h1.test-1", sk, pk], check=True)
    out = subprocess.run(
        ["nix-build", "--no-out-link", base / "default.nix"], check=True, capture_output=True, text=True
    ).stdout.strip()
    caches = {"signed": base / "signed", "xz": base / "xz"}
    subprocess.run(
        [*NIX, "copy", "--to", f"file://{caches['signed']}?compression=none&secret-key={sk}", out], check=True
    )
    subprocess.run([*NIX, "copy", "--to", f"file://{caches['xz']}", out], check=True)
    info = json.loads(
        subprocess.run([*NIX, "path-info", "--json", "-r", out], check=True, capture_output=True).stdout
    )
    return {"caches": caches, "out": out, "path_info": {p["path"]: p for p in info}, "pk": pk.read_text()}


def _narinfos(cache: Path) -> list[tuple[Path, str]]:
    found = sorted(cache.glob("*.narinfo"))
    assert len(found) == 3
    return [(p, p.read_text()) for p in found]


@pytest.mark.nix
@pytest.mark.parametrize("cache", ["signed", "xz"])
def test_nix_written_narinfo_round_trips(nix_caches, cache):
    """parse→render reproduces Nix's .narinfo files byte for byte, and the values match path-info."""
    kinds = set()
    for path, text in _narinfos(nix_caches["caches"][cache]):
        ni = NarInfo.parse(text)
        assert ni.render() == text
        assert nix_http.parse_narinfo_str(path.name) == ni.store_path.digest
        pi = nix_caches["path_info"][ni.store_path.absolute()]
        assert ni.nar_hash == NixHash.parse(pi["narHash"]).digest
        assert ni.nar_size == pi["narSize"]
        assert [r.absolute() for r in ni.references] == pi["references"]
        assert (ni.deriver.absolute() + ".drv" if ni.deriver else None) == pi.get("deriver")
        assert (ni.ca.to_nix_string() if ni.ca else None) == pi.get("ca")
        assert ni.compression == ("none" if cache == "signed" else "xz")
        kinds.add(ni.ca.kind if ni.ca else "built")
    assert kinds == {"nar", "text", "built"}


@pytest.mark.nix
def test_nix_signatures_verify(nix_caches):
    """Signatures Nix made over our fingerprint verify with Nix's public key, and only with it."""
    pk = VerifyingKey.parse(nix_caches["pk"])
    for _, text in _narinfos(nix_caches["caches"]["signed"]):
        ni = NarInfo.parse(text)
        assert [s.name for s in ni.signatures] == ["h1.test-1"]
        assert ni.verify([pk])
        assert not ni.verify([VerifyingKey.parse(CACHE_NIXOS_KEY)])
        assert not ni.verify([VerifyingKey(pk.name, VerifyingKey.parse(DO_NOT_USE_PUBLIC).key)])
        # our own signature with Nix's secret key is the one Nix wrote (ed25519 is deterministic)
        ours = ni.replace(signatures=()).add_signature(
            SigningKey.parse((nix_caches["caches"]["signed"].parent / "sk").read_text())
        )
        assert ours.render() == text


@pytest.mark.nix
def test_nix_written_nars_parse_and_rewrite(nix_caches):
    """The uncompressed NARs Nix wrote hash to NarHash, re-encode identically, equal nix-store --dump."""
    cache = nix_caches["caches"]["signed"]
    for _, text in _narinfos(cache):
        ni = NarInfo.parse(text)
        data = (cache / ni.url).read_bytes()
        assert parse_nar_path(ni.url) == (hashlib.sha256(data).digest(), "")
        assert hashlib.sha256(data).digest() == ni.nar_hash
        assert len(data) == ni.nar_size
        assert tree_to_nar(nar_to_tree(data)) == data
        dumped = subprocess.run(
            ["nix-store", "--dump", ni.store_path.absolute()], check=True, capture_output=True
        ).stdout
        assert dumped == data
        assert nar_of_path(ni.store_path.absolute()) == data


def parse_nar_path(url: str) -> tuple[bytes, str] | None:
    assert url.startswith("nar/")
    return nix_http.parse_nar_str(url[len("nar/") :])
