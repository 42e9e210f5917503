"""``tvix-store copy --from file://…`` against caches the real Nix wrote (issue 5 points 1, 4, 5)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cache_helpers import COMPRESSIONS, NIX, _sri_to_nix, assert_same_as_nix, stored_paths
from tvix_cli import all_paths, nix_dump, nix_store, one_line_error, tvix

from nix_compat import nixbase32
from nix_compat.narinfo import NarInfo
from nix_compat.store_path import StorePath

pytestmark = pytest.mark.nix


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_copy_closure_from_file_cache(tmp_path, nix_closure, compression):
    """copy --from file:// TOP copies the whole closure; metadata and NARs equal Nix's."""
    store = tmp_path / "store"
    cache = nix_closure["caches"][compression]
    res = tvix(store, "copy", "--from", f"file://{cache}", nix_closure["top"])
    assert res.stdout == b""
    listed = stored_paths(store)
    assert listed == nix_closure["paths"]
    assert_same_as_nix(store, nix_closure, nix_closure["paths"])


def test_copy_skips_present_and_keeps_signatures(tmp_path, nix_closure):
    """With a trusted key the signed cache copies; signatures are kept; a second copy is a no-op."""
    store = tmp_path / "store"
    cache = f"file://{nix_closure['caches']['signed']}"
    tvix(store, "copy", "--from", cache, "--trusted-public-keys", nix_closure["pk"], nix_closure["top"])
    ours = json.loads(tvix(store, "path-info", "--json", "--all").stdout)
    assert len(ours) == 5
    for o in ours:
        assert [s.split(":")[0] for s in o["signatures"]] == ["h6.test-1"]
    # everything present: nothing is fetched, even from a cache that no longer exists
    tvix(store, "copy", "--from", f"file://{tmp_path}/gone", nix_closure["top"])
    assert stored_paths(store) == nix_closure["paths"]


def test_copy_json_closure(tmp_path, nix_closure):
    """tvix's form: an exportReferencesGraph closure is ingested from the local /nix/store."""
    closure = [
        {
            "path": p,
            "narHash": i["narHash"],
            "narSize": i["narSize"],
            "references": i["references"],
            "closureSize": 0,
        }
        for p, i in nix_closure["path_info"].items()
    ]
    f = tmp_path / "attrs.json"
    f.write_text(json.dumps({"closure": closure}))
    store = tmp_path / "store"
    tvix(store, "copy", f)
    assert stored_paths(store) == nix_closure["paths"]
    assert_same_as_nix(store, nix_closure, nix_closure["paths"], full=False)
    # a narHash that the files do not have is refused, and nothing is stored
    store2 = tmp_path / "store2"
    closure[0]["narHash"] = "sha256:" + "0" * 52
    f.write_text(json.dumps({"closure": closure}))
    err = one_line_error(tvix(store2, "copy", f, check=False))
    assert closure[0]["path"] in err and "closure file says" in err
    assert all_paths(store2) == b""
    # JSON's true is not a size, though Python's bool is an int
    closure[0]["narSize"] = True
    f.write_text(json.dumps({"closure": closure}))
    assert "invalid narSize True" in one_line_error(tvix(store2, "copy", f, check=False))
    assert all_paths(store2) == b""


# -- bad input: clear error, nothing stored -----------------------------------------------------------


def _broken_cache(tmp_path: Path, nix_closure: dict, compression: str = "none") -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(nix_closure["caches"][compression], cache)
    return cache


def _narinfo_of(cache: Path, path: str) -> Path:
    return cache / (path.removeprefix("/nix/store/")[:32] + ".narinfo")


def _leaf(nix_closure: dict) -> str:
    return next(p for p in nix_closure["paths"] if p.endswith("-h6-leaf"))


def _check_refused(
    tmp_path: Path, cache: Path, nix_closure: dict, *words: str, keys: str | None = None
) -> str:
    store = tmp_path / "store"
    extra = ["--trusted-public-keys", keys] if keys else []
    err = one_line_error(
        tvix(store, "copy", "--from", f"file://{cache}", *extra, nix_closure["top"], check=False)
    )
    for w in words:
        assert w in err, err
    assert all_paths(store) == b""
    return err


def test_nar_hash_mismatch(tmp_path, nix_closure):
    """A NAR whose bytes differ (same size) from NarHash is refused; nothing is stored."""
    cache = _broken_cache(tmp_path, nix_closure)
    leaf = _leaf(nix_closure)
    ni = NarInfo.parse(_narinfo_of(cache, leaf).read_text())
    nar = cache / ni.url
    data = bytearray(nar.read_bytes())
    i = data.index(b"line 5 of")
    data[i : i + 6] = b"LINE 5"
    nar.write_bytes(bytes(data))
    _check_refused(tmp_path, cache, nix_closure, "NarHash mismatch", leaf)


def _edit_narinfo_line(cache: Path, path: str, field: str, value: str) -> None:
    """Set a field of path's narinfo (the caches here are unsigned, or no signature covers it)."""
    f = _narinfo_of(cache, path)
    lines = [
        f"{field}: {value}" if line.startswith(f"{field}: ") else line for line in f.read_text().splitlines()
    ]
    assert f"{field}: {value}" in lines
    f.write_text("\n".join(lines) + "\n")


def test_nar_size_mismatch(tmp_path, nix_closure):
    """A NarSize the NAR does not have is refused even when NarHash matches (an unsigned cache)."""
    cache = _broken_cache(tmp_path, nix_closure)
    leaf = _leaf(nix_closure)
    ni = NarInfo.parse(_narinfo_of(cache, leaf).read_text())
    _edit_narinfo_line(cache, leaf, "NarSize", str(ni.nar_size + 8))
    _check_refused(tmp_path, cache, nix_closure, "NarSize mismatch", leaf, f"says {ni.nar_size + 8}")


@pytest.mark.parametrize("compression", ["xz", "none"])
def test_file_size_and_hash_mismatch(tmp_path, nix_closure, compression):
    """FileSize and FileHash describe the downloaded (compressed) file: a cache that misstates
    either is refused, though the NAR inside is fine."""
    from nix_compat import nixbase32

    leaf = _leaf(nix_closure)
    for field, value, words in (
        ("FileSize", None, ("FileSize mismatch", leaf)),
        (
            "FileHash",
            "sha256:" + nixbase32.encode(hashlib.sha256(b"other bytes").digest()),
            ("FileHash mismatch", leaf),
        ),
    ):
        cache = _broken_cache(tmp_path / field, nix_closure, compression)
        ni = NarInfo.parse(_narinfo_of(cache, leaf).read_text())
        assert ni.file_size is not None and ni.file_hash is not None
        _edit_narinfo_line(cache, leaf, field, value or str(ni.file_size + 1))
        _check_refused(tmp_path / field, cache, nix_closure, *words)


def test_a_narinfo_of_another_path_is_refused(tmp_path, nix_closure):
    """<hash>.narinfo must describe that store path: one that describes another (even a good,
    signed one) is refused by copy and by the nix+http path info service, and nothing is stored."""
    from tvix_store.binary_cache import BinaryCacheError
    from tvix_store.pathinfoservice.nix_http import NixHttpPathInfoService
    from tvix_store.services import construct_services

    cache = tmp_path / "cache"
    shutil.copytree(nix_closure["caches"]["signed"], cache)
    leaf = _leaf(nix_closure)
    other = next(p for p in nix_closure["paths"] if p not in (leaf, nix_closure["top"]))
    shutil.copy(_narinfo_of(cache, other), _narinfo_of(cache, leaf))
    _check_refused(
        tmp_path, cache, nix_closure, "narinfo is for another store path", other, keys=nix_closure["pk"]
    )
    services = construct_services("memory://", "memory://", "memory://")
    try:
        service = NixHttpPathInfoService(f"file://{cache}", services.blob_service, services.directory_service)
        with pytest.raises(BinaryCacheError, match="narinfo is for another store path"):
            service.get(StorePath.from_absolute_path(leaf).digest)
    finally:
        services.close()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_truncated_nar(tmp_path, nix_closure, compression):
    """A truncated NAR download (plain or compressed) is refused with its URL named."""
    cache = _broken_cache(tmp_path, nix_closure, compression)
    leaf = _leaf(nix_closure)
    ni = NarInfo.parse(_narinfo_of(cache, leaf).read_text())
    nar = cache / ni.url
    data = nar.read_bytes()
    nar.write_bytes(data[: len(data) * 2 // 3])
    _check_refused(tmp_path, cache, nix_closure, ni.url, leaf)


def test_narinfo_missing_field(tmp_path, nix_closure):
    """A narinfo without NarHash is refused, naming the file and the field."""
    cache = _broken_cache(tmp_path, nix_closure)
    f = _narinfo_of(cache, _leaf(nix_closure))
    f.write_text(
        "".join(line + "\n" for line in f.read_text().splitlines() if not line.startswith("NarHash"))
    )
    _check_refused(tmp_path, cache, nix_closure, f.name, "missing field: NarHash")


def test_bad_signature_with_trusted_keys(tmp_path, nix_closure):
    """A signature that does not verify (tampered narinfo) is refused while keys are trusted."""
    cache = tmp_path / "cache"
    shutil.copytree(nix_closure["caches"]["signed"], cache)
    f = _narinfo_of(cache, _leaf(nix_closure))
    # NarSize is part of the fingerprint: the signature no longer verifies
    text = f.read_text()
    ni = NarInfo.parse(text)
    f.write_text(text.replace(f"NarSize: {ni.nar_size}", f"NarSize: {ni.nar_size + 1}"))
    _check_refused(tmp_path, cache, nix_closure, "no valid signature", keys=nix_closure["pk"])
    # an unsigned cache with trusted keys: refused too
    _check_refused(
        tmp_path, nix_closure["caches"]["none"], nix_closure, "no valid signature", keys=nix_closure["pk"]
    )


def test_content_addressed_paths_need_no_signature(tmp_path, nix_closure):
    """With trusted keys, an unsigned content-addressed path is copied, as Nix copies it (its
    store path follows from its content, which is checked); a tampered one is still refused."""
    ca_paths = sorted(p for p, info in nix_closure["path_info"].items() if info.get("ca"))
    assert len(ca_paths) == 2, ca_paths  # builtins.toFile (text:) and ./src (fixed:r:)
    unsigned = nix_closure["caches"]["none"]
    keys = ["--trusted-public-keys", nix_closure["pk"]]
    nixroot = tmp_path / "nixroot"
    nix = subprocess.run(
        [*NIX, "copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys",
         nix_closure["pk"], "--from", f"file://{unsigned}", "--to", f"local?root={nixroot}", *ca_paths],
        capture_output=True, text=True, timeout=600,
    )
    assert nix.returncode == 0, nix.stderr  # the oracle takes them
    store = tmp_path / "store"
    tvix(store, "copy", "--from", f"file://{unsigned}", *keys, *ca_paths)
    assert stored_paths(store) == ca_paths
    assert_same_as_nix(store, nix_closure, ca_paths)

    # The same through copy_closure alone (no downloads started early, as for references).
    from tvix_store.binary_cache.copy import copy_closure
    from tvix_store.binary_cache.download import parse_trusted_keys
    from tvix_store.services import construct_services

    services = construct_services("memory://", "memory://", "memory://")
    try:
        wanted = [StorePath.from_absolute_path(p) for p in ca_paths]
        result = copy_closure(services, f"file://{unsigned}", wanted, parse_trusted_keys(nix_closure["pk"]))
        assert sorted(i.store_path.absolute() for i in result.copied) == ca_paths
    finally:
        services.close()

    # The text file's content changed, and the narinfo's hashes with it (no signature covers
    # them): its store path no longer follows from its content.
    cache = _broken_cache(tmp_path, nix_closure)
    note = next(p for p in ca_paths if p.endswith("-h6-note"))
    narinfo = _narinfo_of(cache, note)
    text = narinfo.read_text()
    ni = NarInfo.parse(text)
    nar = cache / ni.url
    data = nar.read_bytes().replace(b"a text file", b"a TEXT file")
    nar.write_bytes(data)
    new_hash = "sha256:" + nixbase32.encode(hashlib.sha256(data).digest())
    old_hash = "sha256:" + nixbase32.encode(ni.nar_hash)
    assert ni.file_hash in (None, ni.nar_hash)  # uncompressed: the file is the NAR
    narinfo.write_text(text.replace(old_hash, new_hash))
    err = one_line_error(
        tvix(tmp_path / "store2", "copy", "--from", f"file://{cache}", *keys, note, check=False)
    )
    assert "NarHash mismatch" not in err and note in err, err
    assert all_paths(tmp_path / "store2") == b""


def test_reference_404(tmp_path, nix_closure):
    """A Reference whose narinfo is missing stops the copy before anything is stored."""
    cache = _broken_cache(tmp_path, nix_closure)
    leaf = _leaf(nix_closure)
    _narinfo_of(cache, leaf).unlink()
    _check_refused(tmp_path, cache, nix_closure, leaf, "referenced by", "not in the binary cache")


def test_downloads_started_early_are_used_or_abandoned(tmp_path, nix_closure):
    """``copy`` starts the NARs it was asked for before it opens the store: copy_closure ingests
    from such a download (which ends closed, its helper gone), and abandons one whose path turns
    out to be present (its helper stops); the dict of started downloads is emptied either way."""
    from tvix_store.binary_cache.copy import copy_closure
    from tvix_store.binary_cache.download import parse_wanted_path, start_downloads
    from tvix_store.services import construct_services

    cache = f"file://{nix_closure['caches']['xz']}"
    top = parse_wanted_path(nix_closure["top"])
    url = f"lmdb://{tmp_path / 'store'}"
    services = construct_services(url, url, url)
    try:
        started = start_downloads(cache, [top])
        assert list(started) == [top.digest]
        first = started[top.digest]
        result = copy_closure(services, cache, [top], started=started)
        assert started == {}
        assert sorted(i.store_path.absolute() for i in result.copied) == nix_closure["paths"]
        assert not first.take_download()._thread.is_alive()

        again = start_downloads(cache, [top])
        second = again[top.digest]
        result = copy_closure(services, cache, [top], started=again)
        assert again == {} and result.copied == [] and result.present == [top]
        assert second._done.wait(10)
        download = second._download  # None when abandoned before the NAR was opened
        if download is not None:
            download._thread.join(10)
            assert not download._thread.is_alive()
    finally:
        services.close()
    assert stored_paths(tmp_path / "store") == nix_closure["paths"]


def test_the_closure_is_put_at_once_references_first(tmp_path, nix_closure, monkeypatch):
    """The copied PathInfos go to the store in one put_many, each after its references: in the
    LMDB store one commit and one sync for the closure, not two flushes a path."""
    from tvix_store.binary_cache.copy import copy_closure
    from tvix_store.binary_cache.download import parse_wanted_path
    from tvix_store.pathinfoservice.lmdb_store import LmdbPathInfoService
    from tvix_store.services import construct_services

    batches = []
    real_put_many = LmdbPathInfoService.put_many

    def recording_put_many(self, infos):
        batches.append(list(infos))
        return real_put_many(self, infos)

    monkeypatch.setattr(LmdbPathInfoService, "put_many", recording_put_many)
    cache = f"file://{nix_closure['caches']['xz']}"
    url = f"lmdb://{tmp_path / 'store'}"
    services = construct_services(url, url, url)
    try:
        result = copy_closure(services, cache, [parse_wanted_path(nix_closure["top"])])
    finally:
        services.close()
    assert len(batches) == 1
    (batch,) = batches
    assert sorted(i.store_path.absolute() for i in batch) == nix_closure["paths"]
    assert result.copied == batch
    position = {info.store_path: n for n, info in enumerate(batch)}
    for info in batch:
        for ref in info.references:
            if ref != info.store_path:
                assert position[ref] < position[info.store_path], (ref, info.store_path)
    assert stored_paths(tmp_path / "store") == nix_closure["paths"]


def test_early_start_hands_its_outcome_to_the_copy(tmp_path, nix_closure):
    """A path started early is asked for once: its narinfo, a verification failure or its
    absence is what the copy then gets, not asked for again."""
    from tvix_store.binary_cache import BinaryCacheError
    from tvix_store.binary_cache.download import parse_trusted_keys, parse_wanted_path, start_downloads

    cache = f"file://{nix_closure['caches']['signed']}"
    top = parse_wanted_path(nix_closure["top"])
    other_key = "other-1:" + "A" * 43 + "="
    untrusted = start_downloads(cache, [top], ())
    assert list(untrusted) == [top.digest]
    narinfo = untrusted[top.digest].narinfo()
    assert narinfo is not None and narinfo.store_path == top
    untrusted[top.digest].take_download().close()

    wrong_key = start_downloads(cache, [top], parse_trusted_keys(other_key))
    with pytest.raises(BinaryCacheError, match="no valid signature"):
        wrong_key[top.digest].narinfo()
    assert start_downloads(f"file://{tmp_path}/gone", [top])[top.digest].narinfo() is None


def test_early_starts_respect_the_limit(nix_closure):
    """At most limit paths (copy passes min(4, --jobs)) are started early."""
    from tvix_store.binary_cache.download import parse_wanted_path, start_downloads

    cache = f"file://{nix_closure['caches']['xz']}"
    paths = [parse_wanted_path(p) for p in nix_closure["paths"]]
    assert len(paths) > 1
    for limit in (1, 2):
        started = start_downloads(cache, paths, limit=limit)
        assert list(started) == [p.digest for p in paths[:limit]]
        for early in started.values():
            early.abandon()


def _with_ca(cache: Path, path: str, ca: str) -> None:
    """Give path's narinfo the CA line ca (replacing any): no signature covers that line."""
    f = _narinfo_of(cache, path)
    lines = [line for line in f.read_text().splitlines() if not line.startswith("CA: ")]
    f.write_text("\n".join([*lines, f"CA: {ca}"]) + "\n")


def test_a_ca_line_the_path_does_not_follow_from_is_refused(tmp_path, nix_closure):
    """A CA line claims the path is computed from the address (with its name and references),
    as Nix checks when it adds the path ("claims to be content-addressed but isn't"): a path
    that is not is refused, whatever the content. Nothing is stored."""
    leaf = _leaf(nix_closure)
    source = next(p for p in nix_closure["paths"] if p.endswith("-src"))
    nar_hash = nix_closure["path_info"][leaf]["narHash"]
    other_address = "but with its name and references that address is"
    cases = [
        (leaf, f"text:{_sri_to_nix(nar_hash)}", other_address),
        (leaf, f"fixed:{_sri_to_nix(nar_hash)}", other_address),
        (nix_closure["top"], f"fixed:{_sri_to_nix(nar_hash)}", "cannot have references"),
        (leaf, f"fixed:r:{_sri_to_nix(nar_hash)}", other_address),  # its true NAR hash, even
        (source, "fixed:r:sha1:" + "0" * 32, other_address),
    ]
    for i, (path, ca, words) in enumerate(cases):
        cache = tmp_path / f"cache{i}"
        shutil.copytree(nix_closure["caches"]["none"], cache)
        _with_ca(cache, path, ca)
        _check_refused(tmp_path / f"c{i}", cache, nix_closure, words, path)


def test_a_ca_path_whose_content_is_another_is_refused(tmp_path):
    """A content-addressed path served with other content (and a NarHash to match it): the path
    follows from its CA line, the content does not. Refused, for a flat file address given a
    directory and for one given another file; nothing is stored."""
    root = tmp_path / "nixroot"
    f = tmp_path / "flat.txt"
    f.write_text("flat contents\n")
    path = nix_store(root, "--add-fixed", "sha512", f).decode().strip()
    cache = tmp_path / "cache"
    subprocess.run(
        [*NIX, "copy", "--from", f"local?root={root}", "--to", f"file://{cache}?compression=none", path],
        check=True,
        capture_output=True,
        timeout=600,
    )
    other_file = tmp_path / "other.txt"
    other_file.write_text("other contents\n")
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "x").write_text("x\n")
    for i, (content, words) in enumerate(
        ((other_file, "CA mismatch for"), (directory, "which needs a regular file, not a directory"))
    ):
        broken = tmp_path / f"cache{i}"
        shutil.copytree(cache, broken)
        nar = nix_dump(content)
        narinfo = _narinfo_of(broken, path)
        ni = NarInfo.parse(narinfo.read_text())
        (broken / ni.url).write_bytes(nar)
        nar_hash = "sha256:" + nixbase32.encode(hashlib.sha256(nar).digest())
        _edit_narinfo_line(broken, path, "NarHash", nar_hash)
        _edit_narinfo_line(broken, path, "NarSize", str(len(nar)))
        _edit_narinfo_line(broken, path, "FileHash", nar_hash)
        _edit_narinfo_line(broken, path, "FileSize", str(len(nar)))
        store = tmp_path / f"store{i}"
        res = tvix(store, "copy", "--from", f"file://{broken}", path, check=False)
        err = one_line_error(res)
        assert words in err and path in err, err
        assert all_paths(store) == b""


def test_ca_paths_of_other_kinds_and_hashes_are_copied(tmp_path):
    """Paths Nix added with ``--add-fixed`` (a directory by its NAR's sha1, a file by its
    contents' sha512): their CA lines check out, and are kept."""
    root = tmp_path / "nixroot"
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("some file\n")
    f = tmp_path / "flat.txt"
    f.write_text("flat contents\n")
    store_opt = f"local?root={root}"
    added = [
        nix_store(root, "--add-fixed", "--recursive", "sha1", d).decode().strip(),
        nix_store(root, "--add-fixed", "sha512", f).decode().strip(),
    ]
    cache = tmp_path / "cache"
    res = subprocess.run(
        [*NIX, "copy", "--from", store_opt, "--to", f"file://{cache}?compression=xz", *added],
        capture_output=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr.decode()
    store = tmp_path / "store"
    tvix(store, "copy", "--from", f"file://{cache}", *added)
    text = all_paths(store).decode()
    assert "CA: fixed:r:sha1:" in text and "CA: fixed:sha512:" in text, text
    for p in added:
        assert tvix(store, "nar", p).stdout == nix_dump(root / p.lstrip("/"))


_SELF_REFERENCING_CA = r"""
derivation {
  name = "h6-selfref";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo $out > $out" ];
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
"""


def test_a_self_referencing_ca_path_built_by_nix(tmp_path):
    """A content-addressed derivation whose output names itself (Nix's ``ca-derivations``): its
    path is the spec's "source" path with ``:self`` (§5.4), and copy checks its CA line modulo
    its own hash part and takes it, self reference included."""
    from nix_compat import nixbase32
    from nix_compat.store_path import build_nar_sha256_path

    if shutil.which("nix-build") is None:
        pytest.skip("nix not installed")
    expr = tmp_path / "selfref.nix"
    expr.write_text(_SELF_REFERENCING_CA)
    features = ["--extra-experimental-features", "nix-command ca-derivations"]
    built = subprocess.run(
        ["nix-build", *features, "--option", "substituters", "", "--no-out-link", str(expr)],
        capture_output=True,
        timeout=600,
    )
    if built.returncode != 0 and b"experimental Nix feature 'ca-derivations' is disabled" in built.stderr:
        pytest.skip("the Nix daemon does not allow ca-derivations")
    assert built.returncode == 0, built.stderr.decode()
    path = built.stdout.decode().strip()
    (info,) = json.loads(subprocess.check_output(["nix", *features, "path-info", "--json", path], timeout=60))
    assert info["references"] == [path]
    ca = info["ca"]
    assert ca.startswith("fixed:r:sha256:")
    name = path.split("-", 1)[1]
    digest = nixbase32.decode(ca.removeprefix("fixed:r:sha256:"))
    assert build_nar_sha256_path(name, digest, [], self_reference=True).absolute() == path
    assert build_nar_sha256_path(name, digest, []).absolute() != path

    cache = tmp_path / "cache"
    subprocess.run([*NIX, "copy", "--to", f"file://{cache}?compression=xz", path], check=True, timeout=600)
    store = tmp_path / "store"
    tvix(store, "copy", "--from", f"file://{cache}", path)
    text = all_paths(store).decode()
    assert f"CA: {ca}" in text and f"References: {path.removeprefix('/nix/store/')}" in text, text
    assert tvix(store, "nar", path).stdout == nix_dump(path)
