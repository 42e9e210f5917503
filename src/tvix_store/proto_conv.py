"""PathInfo <-> tvix.store.v1 protobuf, with the validation of spec §4.3 in tvix's order.

The only tvix_store module (besides the gRPC shells) that imports generated code, and only when
it encodes or meets an unusual input: stored PathInfos are read with castore's small wire reader
(``parse_message``), so that reading commands never import protobuf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nix_compat.errors import NixCompatError
from nix_compat.nixhash import DIGEST_LENGTHS, CAHash, NixHash
from nix_compat.signing import Signature
from nix_compat.store_path import StorePath
from tvix_castore.errors import NodeError
from tvix_castore.path import quoted
from tvix_castore.proto_conv import (
    NODE_SCHEMA,
    Fallback,
    Schema,
    encode_node,
    length_delimited,
    named_node_from_proto,
    node_to_proto,
    parse_message,
    varint,
)
from tvix_store.errors import PathInfoError
from tvix_store.path_info import PathInfo

if TYPE_CHECKING:
    from tvix.store.protos import pathinfo_pb2 as pb


def _pb() -> Any:
    from tvix.store.protos import pathinfo_pb2

    return pathinfo_pb2


# NARInfo.CA.Hash's numbers (pathinfo.proto); a test checks them against the generated enum.
_CA_TO_PROTO: dict[tuple[str, str], int] = {
    ("nar", "sha256"): 0,
    ("nar", "sha1"): 1,
    ("nar", "sha512"): 2,
    ("nar", "md5"): 3,
    ("text", "sha256"): 4,
    ("flat", "sha1"): 5,
    ("flat", "md5"): 6,
    ("flat", "sha256"): 7,
    ("flat", "sha512"): 8,
}
_CA_FROM_PROTO = {v: k for k, v in _CA_TO_PROTO.items()}


def path_info_to_proto(info: PathInfo) -> pb.PathInfo:
    """Domain -> wire."""
    msg: pb.PathInfo = _pb().PathInfo()
    msg.node.CopyFrom(node_to_proto(info.store_path.basename().encode(), info.node))
    msg.references.extend(r.digest for r in info.references)
    ni = msg.narinfo
    ni.nar_size = info.nar_size
    ni.nar_sha256 = info.nar_sha256
    for sig in info.signatures:
        ni.signatures.add(name=sig.name, data=sig.data)
    ni.reference_names.extend(r.basename() for r in info.references)
    if info.deriver is not None:
        ni.deriver.name = info.deriver.name
        ni.deriver.digest = info.deriver.digest
    if info.ca is not None:
        ni.ca.type = _CA_TO_PROTO[(info.ca.kind, info.ca.hash.algo)]  # type: ignore[assignment]
        ni.ca.digest = info.ca.hash.digest
    return msg


def path_info_from_proto(msg: pb.PathInfo) -> PathInfo:
    """Wire -> domain, validating in the order of spec §4.3; raises PathInfoError."""
    if not msg.HasField("narinfo"):
        raise PathInfoError("The narinfo field is missing")
    ni = msg.narinfo
    for i, raw_ref in enumerate(msg.references):
        if len(raw_ref) != 20:
            raise PathInfoError(f"Invalid length of digest at position {i}, expected 20, got {len(raw_ref)}")
    if len(ni.reference_names) != len(msg.references):
        raise PathInfoError(
            f"Inconsistent Number of References: {len(msg.references)} (references) vs "
            f"{len(ni.reference_names)} (narinfo)"
        )
    references: list[StorePath] = []
    for i, (ref_digest, ref_name) in enumerate(zip(msg.references, ni.reference_names, strict=True)):
        try:
            ref = StorePath.from_bytes(ref_name)
        except NixCompatError as exc:
            raise PathInfoError(f"Invalid reference_name at position {i}: {exc}") from exc
        if ref.digest != ref_digest:
            raise PathInfoError(f"digest in reference_name at position {i} does not match digest in PathInfo")
        references.append(ref)
    if not msg.HasField("node"):
        raise PathInfoError("No node present")
    try:
        name, node = named_node_from_proto(msg.node)
    except NodeError as exc:
        raise PathInfoError(f"Invalid root node: {exc}") from exc
    try:
        store_path = StorePath.from_bytes(name)
    except NixCompatError as exc:
        raise PathInfoError(f"Failed to parse {quoted(name)} as StorePath: {exc}") from exc
    if len(ni.nar_sha256) != 32:
        raise PathInfoError(f"Invalid narinfo.nar_sha256 length: expected 32, got {len(ni.nar_sha256)}")
    deriver = None
    if ni.HasField("deriver"):
        try:
            deriver = StorePath(ni.deriver.digest, ni.deriver.name)
        except NixCompatError as exc:
            raise PathInfoError(f"deriver field is invalid: {exc}") from exc
    signatures = []
    for i, sig in enumerate(ni.signatures):
        try:
            signatures.append(Signature(sig.name, sig.data))
        except NixCompatError as exc:
            raise PathInfoError(f"The signature at position {i} is invalid: {exc}") from exc
    ca = None
    if ni.HasField("ca"):
        kind_algo = _CA_FROM_PROTO.get(ni.ca.type)
        if kind_algo is None:
            raise PathInfoError(f"The ca field is invalid: Unknown hash type: {ni.ca.type}")
        kind, algo = kind_algo
        if len(ni.ca.digest) != DIGEST_LENGTHS[algo]:
            raise PathInfoError(
                f"The ca field is invalid: Invalid digest length '{len(ni.ca.digest)}' "
                f"for type {kind.capitalize()}{algo.capitalize()}"
            )
        try:
            ca = CAHash(kind, NixHash(algo, ni.ca.digest))  # type: ignore[arg-type]
        except NixCompatError as exc:
            raise PathInfoError(f"The ca field is invalid: {exc}") from exc
    return PathInfo(
        store_path=store_path,
        node=node,
        nar_size=ni.nar_size,
        nar_sha256=ni.nar_sha256,
        references=tuple(references),
        signatures=tuple(signatures),
        deriver=deriver,
        ca=ca,
    )


def encode_path_info(info: PathInfo) -> bytes:
    """Serialized wire form, written directly (so that importing never needs protobuf).

    Byte for byte what ``path_info_to_proto(info).SerializeToString(deterministic=True)`` gives.
    """
    out = [length_delimited(1, encode_node(info.store_path.basename().encode(), info.node))]
    out += [length_delimited(2, r.digest) for r in info.references]
    ni = [varint(0x08) + varint(info.nar_size)] if info.nar_size else []
    if info.nar_sha256:
        ni.append(length_delimited(2, info.nar_sha256))
    for sig in info.signatures:
        payload = (length_delimited(1, sig.name.encode()) if sig.name else b"") + (
            length_delimited(2, sig.data) if sig.data else b""
        )
        ni.append(length_delimited(3, payload))
    ni += [length_delimited(4, r.basename().encode()) for r in info.references]
    if info.deriver is not None:
        d = info.deriver
        payload = (length_delimited(1, d.name.encode()) if d.name else b"") + (
            length_delimited(2, d.digest) if d.digest else b""
        )
        ni.append(length_delimited(5, payload))
    if info.ca is not None:
        number = _CA_TO_PROTO[(info.ca.kind, info.ca.hash.algo)]
        payload = (b"\x08" + varint(number) if number else b"") + (
            length_delimited(2, info.ca.hash.digest) if info.ca.hash.digest else b""
        )
        ni.append(length_delimited(6, payload))
    out.append(length_delimited(3, b"".join(ni)))
    return b"".join(out)


def decode_path_info(data: bytes) -> PathInfo:
    """Parse and validate a serialized PathInfo."""
    try:
        fast: Any = parse_message(data, _PATH_INFO)
    except Fallback:
        pass
    else:
        return path_info_from_proto(fast)
    msg: pb.PathInfo = _pb().PathInfo()
    try:
        msg.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise PathInfoError(f"cannot decode PathInfo: {exc}") from exc
    return path_info_from_proto(msg)


_NARINFO: Schema = {
    1: ("nar_size", "uint64", None, False),
    2: ("nar_sha256", "bytes", None, False),
    3: (
        "signatures",
        "message",
        {1: ("name", "string", None, False), 2: ("data", "bytes", None, False)},
        True,
    ),
    4: ("reference_names", "string", None, True),
    5: (
        "deriver",
        "message",
        {1: ("name", "string", None, False), 2: ("digest", "bytes", None, False)},
        False,
    ),
    6: ("ca", "message", {1: ("type", "enum", None, False), 2: ("digest", "bytes", None, False)}, False),
}
_PATH_INFO: Schema = {
    1: ("node", "message", NODE_SCHEMA, False),
    2: ("references", "bytes", None, True),
    3: ("narinfo", "message", _NARINFO, False),
}
