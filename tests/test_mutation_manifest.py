"""Manifest layers (``format/_manifest.py``): their header, and every way decoding refuses.

A manifest's checksum catches damage before any of these checks: they are reached only
by well-formed envelopes that are wrong (a manifest copied over another, of another
node or box, a count that does not match, a format-1 manifest with a tombstone). They
are built here with a valid envelope (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from icechunk_dask import CorruptObjectError
from icechunk_dask.format import ObjectKind, decode_object, encode_object
from icechunk_dask.format._manifest import (
    decode_manifest,
    encode_manifest,
    encode_manifest_columns,
    manifest_object_ids,
)
from icechunk_dask.format._refs_codec import ChunkRef, encode_refs, ref_columns
from tests.helpers import as_format

PREFIX = struct.Struct("<4sBBHIQI")
KEY = "manifests/M1"
ENTRIES: dict[str, ChunkRef | None] = {
    "c/0/0": ("obj1", 0, 10, 1),
    "c/0/1": None,
    "c/1/0": (b"inline", 0, 6, 2),
    "c/1/1": ("obj2", 5, 3, 3),
}


def _as_version(data: bytes, version: int) -> bytes:
    """The same envelope, marked as written in another format version (valid checksum)."""
    return as_format(data, version)


def _manifest(header: dict[str, object], body: bytes) -> bytes:
    return encode_object(ObjectKind.MANIFEST, header, body)


def _header(**changes: object) -> dict[str, object]:
    return {"id": "M1", "node": "a/b", "box": "0.1", "count": 4, "n_del": 1, **changes}


# -- encoding -----------------------------------------------------------------------------------


def test_the_header_names_the_manifest_and_counts_its_entries() -> None:
    data = encode_manifest("M1", "a/b", "0.1", ENTRIES)
    header, _ = decode_object(data, KEY, ObjectKind.MANIFEST)
    assert header == _header()
    empty = encode_manifest("M2", "", "", {})
    assert decode_object(empty, "manifests/M2", ObjectKind.MANIFEST)[0] == {
        "id": "M2",
        "node": "",
        "box": "",
        "count": 0,
        "n_del": 0,
    }


def test_a_layer_round_trips_with_its_tombstones() -> None:
    data = encode_manifest("M1", "a/b", "0.1", ENTRIES)
    assert decode_manifest(data, KEY) == ENTRIES
    assert decode_manifest(data, KEY, node="a/b", box="0.1") == ENTRIES
    assert manifest_object_ids(data, KEY) == ["obj1", "obj2"]


def test_a_columnar_layer_round_trips() -> None:
    refs: list[ChunkRef | None] = [("o1", 0, 1, 1), ("o2", 2, 3, 4)]
    cols = ref_columns(refs)
    assert cols is not None
    data = encode_manifest_columns("M1", "n", "", ["c/0", "c/1"], cols)  # strip: the default
    assert decode_object(data, KEY, ObjectKind.MANIFEST)[0] == {
        "id": "M1",
        "node": "n",
        "box": "",
        "count": 2,
        "n_del": 0,
    }
    assert decode_manifest(data, KEY, node="n", box="") == {"c/0": refs[0], "c/1": refs[1]}
    stripped = encode_manifest_columns("M1", "n", "", ["n/c/0", "n/c/1"], cols, strip="n/")
    assert stripped == data
    assert manifest_object_ids(data, KEY) == ["o1", "o2"]


# -- refusals -----------------------------------------------------------------------------------


def _refused(data: bytes, message: str, **kw: str) -> None:
    with pytest.raises(CorruptObjectError, match=message) as info:
        decode_manifest(data, KEY, **kw)
    assert info.value.key == KEY


def test_a_manifest_copied_over_another_is_refused() -> None:
    data = encode_manifest("OTHER", "a/b", "0.1", ENTRIES)
    msg = (
        "object 'manifests/M1' is manifest 'OTHER' of node 'a/b' box '0.1', not the one "
        "expected there: an object was copied over another; the repository is damaged"
    )
    _refused(data, msg)
    _refused(data, msg, node="a/b", box="0.1")
    with pytest.raises(CorruptObjectError) as info:
        manifest_object_ids(data, KEY)
    assert str(info.value) == (
        "object 'manifests/M1' is manifest 'OTHER', not the one its key names: an object was "
        "copied over another; the repository is damaged"
    )
    assert info.value.key == KEY


def test_a_damaged_manifest_is_reported_with_its_key() -> None:
    data = encode_manifest("M1", "a/b", "0.1", ENTRIES)
    for bad in (data[:10], data[:-1], data[:-1] + bytes([data[-1] ^ 1])):
        with pytest.raises(CorruptObjectError, match=r"^object 'manifests/M1' ") as info:
            decode_manifest(bad, KEY)
        assert info.value.key == KEY
        with pytest.raises(CorruptObjectError, match=r"^object 'manifests/M1' ") as info:
            manifest_object_ids(bad, KEY)
        assert info.value.key == KEY


@pytest.mark.parametrize(
    ("node", "box", "bad"),
    [
        ("a/x", "0.1", "node"),
        ("a/b", "0.2", "box"),
        ("a", "0.1", "node"),
        ("a/b", "", "box"),
    ],
)
def test_a_manifest_of_another_node_or_box_is_refused(node: str, box: str, bad: str) -> None:
    data = encode_manifest("M1", "a/b", "0.1", ENTRIES)
    _refused(
        data, "is manifest 'M1' of node 'a/b' box '0.1', not the one expected", node=node, box=box
    )
    # only what the caller names is checked
    if bad == "node":
        assert decode_manifest(data, KEY, box="0.1") == ENTRIES
        _refused(data, "not the one expected", node=node)
    else:
        assert decode_manifest(data, KEY, node="a/b") == ENTRIES
        _refused(data, "not the one expected", box=box)


def test_a_count_that_does_not_match_is_refused() -> None:
    body = encode_refs(list(ENTRIES), list(ENTRIES.values()))
    for count in (3, 5):
        _refused(
            _manifest(_header(count=count), body),
            r"object 'manifests/M1' cannot be decoded: ValueError\('count mismatch'\)",
        )


@pytest.mark.parametrize("missing", ["id", "node", "box", "count"])
def test_a_header_without_a_field_is_refused(missing: str) -> None:
    header = _header()
    del header[missing]
    body = encode_refs(list(ENTRIES), list(ENTRIES.values()))
    _refused(_manifest(header, body), rf"cannot be decoded: KeyError\('{missing}'\)")


@pytest.mark.parametrize("body", [b"", b"short", bytes(31)])
def test_a_body_too_short_for_its_columns_is_refused(body: bytes) -> None:
    data = _manifest(_header(count=0, n_del=0), body)
    _refused(data, r"cannot be decoded: ValueError\('chunk reference columns have the wrong size")
    with pytest.raises(CorruptObjectError, match="cannot be decoded: ValueError") as info:
        manifest_object_ids(data, KEY)
    assert info.value.key == KEY


def test_a_body_that_is_not_text_is_refused() -> None:
    body = b"".join((struct.pack("<QQQQ", 1, 1, 1, 0), b"\xff", b"o", b"\0", bytes(24)))
    data = _manifest(_header(count=1, n_del=0), body)
    _refused(data, "cannot be decoded: UnicodeDecodeError")
    assert manifest_object_ids(data, KEY) == ["o"]  # keys are not read
    bad_id = b"".join((struct.pack("<QQQQ", 1, 1, 1, 0), b"k", b"\xff", b"\0", bytes(24)))
    with pytest.raises(CorruptObjectError, match="cannot be decoded: UnicodeDecodeError"):
        manifest_object_ids(_manifest(_header(count=1, n_del=0), bad_id), KEY)


# -- format 1 -----------------------------------------------------------------------------------


def test_format1_manifests_are_checked_for_their_node_only() -> None:
    live = {k: r for k, r in ENTRIES.items() if r is not None}
    data = _as_version(encode_manifest("ANY", "a/b", "0.1", live), 1)
    # format 1 manifests do not name their key or box
    assert decode_manifest(data, KEY) == live
    assert decode_manifest(data, KEY, node="a/b", box="other") == live
    assert manifest_object_ids(data, KEY) == ["obj1", "obj2"]
    with pytest.raises(CorruptObjectError) as info:
        decode_manifest(data, KEY, node="a/x")
    assert str(info.value) == "object 'manifests/M1' is a manifest of node 'a/b', not of 'a/x'"
    assert info.value.key == KEY


def test_a_format1_manifest_with_a_tombstone_is_refused() -> None:
    data = _as_version(encode_manifest("M1", "a/b", "0.1", ENTRIES), 1)
    with pytest.raises(CorruptObjectError) as info:
        decode_manifest(data, KEY)
    assert str(info.value) == (
        "object 'manifests/M1' cannot be decoded: ValueError('deletion in a manifest')"
    )
    assert info.value.key == KEY


def test_format1_count_is_still_checked() -> None:
    body = encode_refs(["c/0"], [("o", 0, 1, 1)])
    data = _as_version(_manifest(_header(count=2, n_del=0), body), 1)
    _refused(data, r"ValueError\('count mismatch'\)")


def test_columns_keep_their_dtype_through_the_header() -> None:
    cols = (b"o", np.array([1], dtype=np.int64), np.array([2]), np.array([3]))
    data = encode_manifest_columns("M1", "n", "", ["c/0"], cols)
    assert decode_manifest(data, KEY) == {"c/0": ("o", 1, 2, 3)}
