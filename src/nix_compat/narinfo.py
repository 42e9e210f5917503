"""narinfo: the ``Key: value`` text a Nix binary cache serves for each store path (spec §6.5, §6.6).

``NarInfo.parse`` accepts what Nix and cache.nixos.org write; ``render`` writes the keys in Nix's
order so that parse→render reproduces Nix's files byte for byte. What does not survive a round
trip, on purpose (as in tvix): unknown keys (ignored), a hex ``NarHash`` (rendered in nixbase32).
A missing ``Compression`` line stays missing (``compression is None``), and Nix reads it as bzip2
(``effective_compression``).

The fingerprint and signature helpers work with the keys in nix_compat.signing.
"""

from __future__ import annotations

from collections.abc import Iterable

from nix_compat import nixbase32
from nix_compat.errors import NarInfoError, NixCompatError
from nix_compat.frozen import Frozen
from nix_compat.nixhash import CAHash
from nix_compat.signing import Signature, SigningKey, VerifyingKey
from nix_compat.store_path import STORE_DIR_WITH_SLASH, StorePath

__all__ = ["NarInfo", "fingerprint"]

_U64_LIMIT = 1 << 64
_SINGLE_KEYS = (
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
)


def fingerprint(
    store_path: StorePath, nar_sha256: bytes, nar_size: int, references: Iterable[StorePath]
) -> bytes:
    """The bytes narinfo signatures are made over (spec §6.6).

    ``1;<store path>;sha256:<nixbase32 NAR hash>;<NAR size>;<comma-separated reference paths>``,
    references in the given order.
    """
    refs = ",".join(r.absolute() for r in references)
    text = f"1;{store_path.absolute()};sha256:{nixbase32.encode(nar_sha256)};{nar_size};{refs}"
    return text.encode()


class NarInfo(Frozen):
    """A parsed, validated narinfo.

    ``deriver`` is the derivation's store path without its ``.drv`` suffix (as in PathInfo);
    ``compression`` is the ``Compression`` value as written, None when the line is absent.
    """

    __slots__ = (
        "ca",
        "compression",
        "deriver",
        "file_hash",
        "file_size",
        "nar_hash",
        "nar_size",
        "references",
        "signatures",
        "store_path",
        "system",
        "url",
    )
    store_path: StorePath
    url: str
    nar_hash: bytes
    nar_size: int
    references: tuple[StorePath, ...]
    compression: str | None
    file_hash: bytes | None
    file_size: int | None
    deriver: StorePath | None
    system: str | None
    signatures: tuple[Signature, ...]
    ca: CAHash | None

    def __init__(
        self,
        store_path: StorePath,
        url: str,
        nar_hash: bytes,
        nar_size: int,
        references: Iterable[StorePath] = (),
        compression: str | None = None,
        file_hash: bytes | None = None,
        file_size: int | None = None,
        deriver: StorePath | None = None,
        system: str | None = None,
        signatures: Iterable[Signature] = (),
        ca: CAHash | None = None,
    ) -> None:
        if len(nar_hash) != 32:
            raise NarInfoError(f"NarHash must be 32 bytes, not {len(nar_hash)}")
        if file_hash is not None and len(file_hash) != 32:
            raise NarInfoError(f"FileHash must be 32 bytes, not {len(file_hash)}")
        for key, size in (("NarSize", nar_size), ("FileSize", file_size)):
            if size is not None and not 0 <= size < _U64_LIMIT:
                raise NarInfoError(f"{key} out of range: {size}")
        for key, value in (("URL", url), ("Compression", compression), ("System", system)):
            if value is not None and (not value or "\n" in value or "\r" in value):
                raise NarInfoError(f"field {key} may not be empty or contain line breaks: {value!r}")
        object.__setattr__(self, "store_path", store_path)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "nar_hash", nar_hash)
        object.__setattr__(self, "nar_size", nar_size)
        object.__setattr__(self, "references", tuple(references))
        object.__setattr__(self, "compression", compression)
        object.__setattr__(self, "file_hash", file_hash)
        object.__setattr__(self, "file_size", file_size)
        object.__setattr__(self, "deriver", deriver)
        object.__setattr__(self, "system", system)
        object.__setattr__(self, "signatures", tuple(signatures))
        object.__setattr__(self, "ca", ca)

    # -- text form -----------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | bytes) -> NarInfo:
        """Parse narinfo text.

        Raises:
            NarInfoError: a malformed line, a bad value (naming the line and key), a duplicate
                or missing field.

        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NarInfoError(f"narinfo is not valid UTF-8: {exc}") from exc
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        fields: dict[str, tuple[int, str]] = {}
        signatures: list[Signature] = []
        for lineno, raw_line in enumerate(lines, 1):
            line = raw_line.removesuffix("\r")
            key, colon, rest = line.partition(":")
            if not colon or not rest.startswith(" "):
                raise NarInfoError(f"line {lineno}: invalid line {line!r}: expected 'Key: value'")
            value = rest[1:]
            if key == "Sig":
                try:
                    signatures.append(Signature.parse(value))
                except NixCompatError as exc:
                    raise NarInfoError(
                        f"line {lineno}: unable to parse signature #{len(signatures)}: {exc}"
                    ) from exc
            elif key in _SINGLE_KEYS:
                if key in fields:
                    raise NarInfoError(
                        f"line {lineno}: duplicate field {key} (first on line {fields[key][0]})"
                    )
                fields[key] = (lineno, value)
            # Other keys are ignored, as Nix does.

        def get(key: str) -> tuple[int, str] | None:
            return fields.get(key)

        def required(key: str) -> tuple[int, str]:
            found = fields.get(key)
            if found is None:
                raise NarInfoError(f"missing field: {key}")
            return found

        try:
            lineno, value = required("StorePath")
            store_path = _parse_store_path_line(lineno, "StorePath", value)
            lineno, url = required("URL")
            if not url:
                raise _bad(lineno, "URL", "may not be empty")
            compression = None
            if (found := get("Compression")) is not None:
                lineno, compression = found
                if not compression:
                    raise _bad(lineno, "Compression", "may not be empty")
            file_hash = None
            if (found := get("FileHash")) is not None:
                file_hash = _parse_sha256(*found, "FileHash", allow_hex=False)
            file_size = None
            if (found := get("FileSize")) is not None:
                file_size = _parse_u64(*found, "FileSize")
            nar_hash = _parse_sha256(*required("NarHash"), "NarHash", allow_hex=True)
            nar_size = _parse_u64(*required("NarSize"), "NarSize")
            lineno, value = required("References")
            references: list[StorePath] = []
            if value:
                for i, basename in enumerate(value.split(" ")):
                    try:
                        references.append(StorePath.from_bytes(basename))
                    except NixCompatError as exc:
                        raise _bad(lineno, "References", f"unable to parse reference #{i}: {exc}") from exc
            deriver = None
            if (found := get("Deriver")) is not None:
                deriver = _parse_deriver(*found)
            system = None
            if (found := get("System")) is not None:
                lineno, system = found
                if not system:
                    raise _bad(lineno, "System", "may not be empty")
            ca = None
            if (found := get("CA")) is not None:
                lineno, value = found
                try:
                    ca = CAHash.parse(value)
                except NixCompatError as exc:
                    raise _bad(lineno, "CA", f"unable to parse {value!r}: {exc}") from exc
            return cls(
                store_path=store_path,
                url=url,
                nar_hash=nar_hash,
                nar_size=nar_size,
                references=tuple(references),
                compression=compression,
                file_hash=file_hash,
                file_size=file_size,
                deriver=deriver,
                system=system,
                signatures=tuple(signatures),
                ca=ca,
            )
        except NarInfoError:
            raise
        except NixCompatError as exc:  # validation in a constructor
            raise NarInfoError(str(exc)) from exc

    def render(self) -> str:
        """The narinfo text, keys in Nix's order, every line newline-terminated."""
        out = [f"StorePath: {self.store_path.absolute()}\n", f"URL: {self.url}\n"]
        if self.compression is not None:
            out.append(f"Compression: {self.compression}\n")
        if self.file_hash is not None:
            out.append(f"FileHash: sha256:{nixbase32.encode(self.file_hash)}\n")
        if self.file_size is not None:
            out.append(f"FileSize: {self.file_size}\n")
        out.append(f"NarHash: sha256:{nixbase32.encode(self.nar_hash)}\n")
        out.append(f"NarSize: {self.nar_size}\n")
        # Nix writes "References: " with the trailing space even when there are none.
        out.append("References: " + " ".join(r.basename() for r in self.references) + "\n")
        if self.deriver is not None:
            out.append(f"Deriver: {self.deriver.basename()}.drv\n")
        if self.system is not None:
            out.append(f"System: {self.system}\n")
        out.extend(f"Sig: {sig}\n" for sig in self.signatures)
        if self.ca is not None:
            out.append(f"CA: {self.ca.to_nix_string()}\n")
        return "".join(out)

    def __str__(self) -> str:
        return self.render()

    @property
    def effective_compression(self) -> str:
        """The compression Nix applies: the ``Compression`` value, ``bzip2`` when it is absent."""
        return "bzip2" if self.compression is None else self.compression

    # -- signatures ----------------------------------------------------------------------------

    def fingerprint(self) -> bytes:
        """The bytes the signatures are made over (spec §6.6)."""
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def valid_signatures(self, keys: Iterable[VerifyingKey]) -> tuple[Signature, ...]:
        """The signatures that verify under one of keys (a key only checks its own name)."""
        by_name: dict[str, list[VerifyingKey]] = {}
        for key in keys:
            by_name.setdefault(key.name, []).append(key)
        fingerprints = [self.fingerprint()]
        in_nix_order = sorted(self.references, key=StorePath.basename)
        if list(self.references) != in_nix_order:
            # Nix signs over the references sorted, whatever order a narinfo lists them in.
            fingerprints.append(fingerprint(self.store_path, self.nar_hash, self.nar_size, in_nix_order))
        return tuple(
            sig
            for sig in self.signatures
            if any(k.verify(fp, sig) for k in by_name.get(sig.name, ()) for fp in fingerprints)
        )

    def verify(self, keys: Iterable[VerifyingKey]) -> bool:
        """True if at least one signature verifies under one of keys."""
        return bool(self.valid_signatures(keys))

    def add_signature(self, key: SigningKey) -> NarInfo:
        """A copy signed with key; an existing signature under the same key name is replaced."""
        sig = key.sign(self.fingerprint())
        kept = tuple(s for s in self.signatures if s.name != key.name)
        return self.replace(signatures=(*kept, sig))


def _bad(lineno: int, key: str, problem: str) -> NarInfoError:
    return NarInfoError(f"line {lineno}: invalid {key}: {problem}")


def _parse_store_path_line(lineno: int, key: str, value: str) -> StorePath:
    if not value.startswith(STORE_DIR_WITH_SLASH):
        raise _bad(lineno, key, f"{value!r} is not in {STORE_DIR_WITH_SLASH}")
    try:
        return StorePath.from_bytes(value[len(STORE_DIR_WITH_SLASH) :])
    except NixCompatError as exc:
        raise _bad(lineno, key, str(exc)) from exc


def _parse_deriver(lineno: int, value: str) -> StorePath:
    try:
        path = StorePath.from_bytes(value)
    except NixCompatError as exc:
        raise _bad(lineno, "Deriver", str(exc)) from exc
    name = path.name.removesuffix(".drv")
    if name == path.name:
        raise _bad(lineno, "Deriver", f"{value!r} must end with .drv")
    try:
        return StorePath(path.digest, name)
    except NixCompatError as exc:
        raise _bad(lineno, "Deriver", f"{value!r}: {exc}") from exc


def _parse_sha256(lineno: int, value: str, key: str, allow_hex: bool) -> bytes:
    if not value.startswith("sha256:"):
        raise _bad(lineno, key, f"{value!r} lacks the 'sha256:' prefix")
    digest = value[len("sha256:") :]
    try:
        if allow_hex and len(digest) == 64:
            if digest != digest.lower():
                raise ValueError("not lowercase")
            return bytes.fromhex(digest)
        if len(digest) != nixbase32.encode_len(32):
            raise ValueError(f"length {len(digest)}")
        return nixbase32.decode(digest)
    except (ValueError, NixCompatError) as exc:
        raise _bad(lineno, key, f"unable to decode {value!r}: {exc}") from exc


def _parse_u64(lineno: int, value: str, key: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= _U64_LIMIT:
        raise _bad(lineno, key, f"{value!r} is not an unsigned 64-bit integer")
    return int(value)
