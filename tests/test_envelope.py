"""The object envelope (format/_envelope.py): its exact bytes, and every way decoding refuses.

Added for the survivors of the mutation pilot (docs/reliability.md, "Mutation testing"):
damage is caught by the checksum before the kind, flag and decoding checks run, so those
checks are reached only by well-formed envelopes that are wrong: an object of another kind
at the key (a substitution), unknown flags, a body that does not decode. They are built
here from the layout documented in the module, with a valid checksum.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from numcodecs import Zstd

from icechunk_dask import CorruptObjectError, Repository, local_filesystem_storage
from icechunk_dask.format import ObjectKind, decode_object, encode_object

PREFIX = struct.Struct("<4sBBHIQI")  # magic, format, kind, flags, header_len, body_len, crc
HEADER = {"zeta": [1, 2.5, "x"], "alpha": {"b": None, "a": True}}  # keys out of order
BODY = bytes(range(256)) * 4 + b"abcabcabd" * 50 + bytes(range(255, 0, -3)) * 3


def _envelope(kind: int, flags: int, head: bytes, body: bytes, version: int = 1) -> bytes:
    """An envelope with any field values and a correct checksum."""
    prefix = PREFIX.pack(b"ICDK", version, kind, flags, len(head), len(body), 0)[:-4]
    crc = zlib.crc32(body, zlib.crc32(head, zlib.crc32(prefix)))
    return prefix + crc.to_bytes(4, "little") + head + body


def _unpacked(data: bytes) -> bytes:
    """Magic, format, kind and flags, the header and the decompressed body of an envelope."""
    head_len = PREFIX.unpack_from(data)[4]
    return (
        data[:8]
        + data[PREFIX.size : PREFIX.size + head_len]
        + Zstd().decode(data[PREFIX.size + head_len :])
    )


# -- the stored bytes are pinned: a change of the format must be deliberate (format 3) ---------

GOLDEN = {
    # compact JSON with sorted keys, no body (the default), nothing to compress
    "header only": (
        lambda: encode_object(ObjectKind.TAG_REF, HEADER),
        72,
        "64e140af5825eb35d38082a1b98b299efff18852129b5b675c23b9d714ece6cc",
    ),
    # the body compressed by default, with Zstandard level 1 (flag bit 1); the compressed
    # bytes depend on the zstd library's version, so the pinned form holds the body unpacked
    "compressed": (
        lambda: _unpacked(encode_object(ObjectKind.MANIFEST, HEADER, BODY)),
        1785,
        "c0d70cad6680a91e512cd9271b2938dcd2bc8ed08f4ccdab929b3570ed6dcb33",
    ),
    # compress=False stores the body as it is
    "raw": (
        lambda: encode_object(ObjectKind.SNAPSHOT, HEADER, b"raw body", compress=False),
        80,
        "f2366782f050027ed7dcd0cb01988298f19f07baf428a7ded9149931c6f3a944",
    ),
}


@pytest.mark.parametrize("case", GOLDEN)
def test_encoding_is_pinned(case: str) -> None:
    make, size, digest = GOLDEN[case]
    data = make()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, digest)


def test_encoding_layout_and_round_trip() -> None:
    data = encode_object(ObjectKind.MANIFEST, HEADER, BODY)
    magic, version, kind, flags, head_len, body_len, _ = PREFIX.unpack_from(data)
    head = b'{"alpha":{"a":true,"b":null},"zeta":[1,2.5,"x"]}'
    assert (magic, version, kind, flags, head_len) == (b"ICDK", 3, 3, 2, len(head))
    assert data[PREFIX.size : PREFIX.size + head_len] == head
    assert Zstd().decode(data[PREFIX.size + head_len :]) == BODY
    assert body_len == len(data) - PREFIX.size - head_len
    assert decode_object(data, "k", ObjectKind.MANIFEST) == (HEADER, BODY)
    assert decode_object(encode_object(ObjectKind.TAG_REF, {}), "k", ObjectKind.TAG_REF) == (
        {},
        b"",
    )


# -- well-formed but wrong envelopes -----------------------------------------------------------


def test_length_mismatch_says_truncated_or_damaged() -> None:
    data = encode_object(ObjectKind.SNAPSHOT, HEADER, BODY)
    for damaged in (data[:-1], data + b"\0"):
        with pytest.raises(CorruptObjectError) as e:
            decode_object(damaged, "snapshots/x", ObjectKind.SNAPSHOT)
        assert e.value.key == "snapshots/x"
        assert str(e.value) == (
            f"object 'snapshots/x' has {len(damaged)} bytes but its header says {len(data)}: "
            "it is truncated or damaged"
        )


def test_an_object_of_another_kind_is_refused() -> None:
    snapshot = encode_object(ObjectKind.SNAPSHOT, HEADER, BODY)
    with pytest.raises(CorruptObjectError) as e:
        decode_object(snapshot, "manifests/m", ObjectKind.MANIFEST)
    assert e.value.key == "manifests/m"
    assert str(e.value) == "object 'manifests/m' is a snapshot, expected a manifest"


def test_an_unknown_kind_is_refused() -> None:
    data = _envelope(99, 0, b"{}", b"")
    with pytest.raises(CorruptObjectError) as e:
        decode_object(data, "refs/tag.v1.json", ObjectKind.TAG_REF)
    assert e.value.key == "refs/tag.v1.json"
    assert str(e.value) == "object 'refs/tag.v1.json' is a kind 99, expected a tag_ref"


def test_zlib_bodies_of_formats_1_and_2_are_read() -> None:
    for version in (1, 2):
        data = _envelope(int(ObjectKind.MANIFEST), 1, b"{}", zlib.compress(BODY, 1), version)
        assert decode_object(data, "k", ObjectKind.MANIFEST) == ({}, BODY)


@pytest.mark.parametrize(
    ("flags", "version"),
    [(2, 1), (2, 2), (3, 3), (4, 3), (0x8001, 3), (0xFFFF, 3)],
    ids=["zstd-in-format-1", "zstd-in-format-2", "zlib-and-zstd", "bit-2", "high", "all"],
)
def test_unknown_flags_are_refused(flags: int, version: int) -> None:
    data = _envelope(int(ObjectKind.CONFIG), flags, b"{}", b"", version)
    with pytest.raises(CorruptObjectError) as e:
        decode_object(data, "config.json", ObjectKind.CONFIG)
    assert e.value.key == "config.json"
    assert str(e.value) == f"object 'config.json' has unknown flags {flags:#x}"


@pytest.mark.parametrize(
    ("flags", "head", "body", "why"),
    [
        (1, b"{}", b"not zlib", "Error -3 while decompressing data"),
        (2, b"{}", b"not zstd", "Zstd decompression error"),
        (0, b"{not json", b"", "Expecting property name"),
        (0, b"\xff\xfe", b"", "Expecting value"),
    ],
    ids=["zlib-body", "zstd-body", "json", "utf8"],
)
def test_an_undecodable_envelope_is_refused(flags: int, head: bytes, body: bytes, why: str) -> None:
    data = _envelope(int(ObjectKind.MANIFEST), flags, head, body, 3)
    with pytest.raises(CorruptObjectError) as e:
        decode_object(data, "manifests/m", ObjectKind.MANIFEST)
    assert e.value.key == "manifests/m"
    assert str(e.value).startswith("object 'manifests/m' cannot be decoded: ")
    assert why in str(e.value)


def test_a_snapshot_copied_over_a_manifest_is_reported(tmp_path: Path) -> None:
    # the substitution through the public API: the manifest's key is named, no data returned
    path = tmp_path / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    session = repo.writable_session("main")
    array = zarr.create_array(session.store, name="a", shape=(64,), chunks=(16,), dtype="i8")
    array[:] = np.arange(64)
    snapshot = session.commit("one")
    (manifest,) = (path / "manifests").iterdir()
    shutil.copyfile(path / "snapshots" / snapshot, manifest)
    fresh = Repository.open(local_filesystem_storage(path))
    read = zarr.open_array(fresh.readonly_session("main").store, path="a", mode="r")
    with pytest.raises(CorruptObjectError) as e:
        read[:]
    assert e.value.key == f"manifests/{manifest.name}"
    assert "is a snapshot, expected a manifest" in str(e.value)
