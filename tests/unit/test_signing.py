"""Nix signing keys and signatures (spec §6.6; vectors from §4.4/§12.3 and cache.nixos.org)."""

from __future__ import annotations

import base64
import subprocess

import pytest

from nix_compat.errors import SignatureError
from nix_compat.signing import Signature, SigningKey, VerifyingKey

DO_NOT_USE_SECRET = (
    "do.not.use:sGPzxuK5WvWPraytx+6sjtaff866sYlfvErE6x0hFEhy5eqe7OVZ8ZMqZ/ME/HaRdKGNGvJkyGKXYTaeA6lR3A=="
)
DO_NOT_USE_PUBLIC = "do.not.use:cuXqnuzlWfGTKmfzBPx2kXShjRryZMhil2E2ngOpUdw="
DUMMY_FINGERPRINT = (
    b"1;/nix/store/00000000000000000000000000000000-dummy;"
    b"sha256:0000000000000000000000000000000000000000000000000000;0;"
    b"/nix/store/00000000000000000000000000000000-dummy"
)
DUMMY_SIG = (
    "do.not.use:xl4q2L5wQMou13ZQ9/YPqK1z/DSIYycTtndVNfp2ybT8Cpg+yPv1sCQN8VVWppnq5BXTuMhjaq7K/ebYN4LYBg=="
)

CURL_FINGERPRINT = (
    b"1;/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin;"
    b"sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0;196040;"
    b"/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0,"
    b"/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115,"
    b"/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12,"
    b"/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
)
CURL_SIG = (
    "cache.nixos.org-1:"
    "TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
)
CACHE_NIXOS_KEY = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="


def test_do_not_use_keypair():
    sk = SigningKey.parse(DO_NOT_USE_SECRET)
    assert sk.name == "do.not.use"
    assert str(sk.verifying_key()) == DO_NOT_USE_PUBLIC
    assert VerifyingKey.parse(DO_NOT_USE_PUBLIC) == sk.verifying_key()


def test_sign_is_deterministic_vector():
    sig = SigningKey.parse(DO_NOT_USE_SECRET).sign(DUMMY_FINGERPRINT)
    assert str(sig) == DUMMY_SIG
    assert VerifyingKey.parse(DO_NOT_USE_PUBLIC).verify(DUMMY_FINGERPRINT, sig)


def test_cache_nixos_vector():
    key = VerifyingKey.parse(CACHE_NIXOS_KEY)
    sig = Signature.parse(CURL_SIG)
    assert key.verify(CURL_FINGERPRINT, sig)
    assert not key.verify(CURL_FINGERPRINT + b"x", sig)
    assert not key.verify(CURL_FINGERPRINT.replace(b"196040", b"196041"), sig)
    flipped = Signature(sig.name, bytes([sig.data[0] ^ 1]) + sig.data[1:])
    assert not key.verify(CURL_FINGERPRINT, flipped)


def test_key_checks_signature_name():
    key = VerifyingKey.parse(CACHE_NIXOS_KEY)
    sig = Signature.parse(CURL_SIG)
    assert not key.verify(CURL_FINGERPRINT, Signature("cache.nixos.org-2", sig.data))
    assert not VerifyingKey("other", key.key).verify(CURL_FINGERPRINT, sig)


def test_string_round_trips():
    for text in (CURL_SIG, DUMMY_SIG):
        assert str(Signature.parse(text)) == text
    for text in (CACHE_NIXOS_KEY, DO_NOT_USE_PUBLIC):
        assert str(VerifyingKey.parse(text)) == text


def test_parse_strips_surrounding_whitespace():
    """Key files end in a newline; keys read from them must still parse."""
    assert VerifyingKey.parse(CACHE_NIXOS_KEY + "\n") == VerifyingKey.parse(CACHE_NIXOS_KEY)
    assert SigningKey.parse(DO_NOT_USE_SECRET + "\n").name == "do.not.use"


B64_64 = base64.b64encode(bytes(64)).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (B64_64, "expected name:base64"),
        (":" + B64_64, "expected name:base64"),
        ("a b:" + B64_64, "expected name:base64"),
        ("a/b:" + B64_64, "expected name:base64"),
        ("a_b:" + B64_64, "expected name:base64"),
        ("name:" + B64_64[:-2], "bad base64"),
        ("name:!!!!", "bad base64"),
        ("name:" + base64.b64encode(bytes(63)).decode(), "63 bytes, expected 64"),
        ("name:" + base64.b64encode(bytes(65)).decode(), "65 bytes, expected 64"),
    ],
)
def test_signature_parse_rejects(text, message):
    with pytest.raises(SignatureError, match=message):
        Signature.parse(text)


def test_names_may_use_letters_and_digits_of_any_script():
    assert Signature.parse("cäche-1.ü:" + B64_64).name == "cäche-1.ü"


def test_key_parse_rejects():
    with pytest.raises(SignatureError, match="31 bytes, expected 32"):
        VerifyingKey.parse("k:" + base64.b64encode(bytes(31)).decode())
    with pytest.raises(SignatureError, match="32 bytes, expected 64"):
        SigningKey.parse(CACHE_NIXOS_KEY)
    # seed of one key with the public half of another
    raw = base64.b64decode(DO_NOT_USE_SECRET.split(":")[1])
    bad = "do.not.use:" + base64.b64encode(raw[:32] + bytes(32)).decode()
    with pytest.raises(SignatureError, match="public half does not match"):
        SigningKey.parse(bad)


def test_signature_length_checked():
    with pytest.raises(SignatureError, match="expected 64"):
        Signature("x", bytes(63))


@pytest.mark.nix
def test_keys_generated_by_nix(tmp_path):
    """A key pair from `nix-store --generate-binary-cache-key` parses, matches, and signs."""
    secret, public = tmp_path / "sk", tmp_path / "pk"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", "test.key-1", str(secret), str(public)], check=True
    )
    sk = SigningKey.parse(secret.read_text())
    pk = VerifyingKey.parse(public.read_text())
    assert sk.name == pk.name == "test.key-1"
    assert sk.verifying_key() == pk
    assert pk.verify(b"fp", sk.sign(b"fp"))
