"""Snapshots and node manifests (``format/_snapshot.py``), exactly.

The stored form (header, body, ``NodeManifests.to_json``) is pinned field by
field; format-1 snapshots are decoded into legacy shards; every refusal is
checked with its message; the counts a node reports without reading a
manifest (``upper_count``, ``exact``, ``surely_nonempty``) are checked on
fixed layer stacks (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import base64
import json
import struct

import pytest

from icechunk_dask import CorruptObjectError
from icechunk_dask.format import Layer, NodeManifests, ObjectKind, Snapshot, decode_object
from icechunk_dask.format import encode_object as _encode_object
from icechunk_dask.format._snapshot import key_id
from tests.helpers import as_format

PREFIX = struct.Struct("<4sBBHIQI")
ARRAY = b'{"zarr_format": 3, "node_type": "array", "shape": [2]}'


def _v1(data: bytes) -> bytes:
    """The same envelope marked as format 1 (valid checksum)."""
    return as_format(data, 1)


def _snap(**changes: object) -> Snapshot:
    fields: dict[str, object] = {
        "id": "S2",
        "parent_id": "S1",
        "written_at": "2026-12-01T00:00:00+00:00",
        "message": "msg",
        "metadata": {"who": "me"},
        "meta": {"a/zarr.json": ARRAY, "bin/.zattrs": b"\xff\x00", "zarr.json": b"{}"},
        "nodes": {
            "a": NodeManifests(("default", "/"), (2,), {"0": (Layer("L1", 3, 1), Layer("L0", 2))}),
            "d": NodeManifests(boxes={"": (Layer("F", 1),)}),
            "old": NodeManifests(legacy=("M0", None, "M2"), legacy_count=7),
        },
    }
    fields.update(changes)
    return Snapshot(**fields)  # type: ignore[arg-type]


def test_key_id() -> None:
    assert key_id("snapshots/ABC") == "ABC"
    assert key_id("ABC") == "ABC"
    assert key_id("a/b/c") == "c"


def test_layer_size() -> None:
    assert Layer("x", 3, 2).size == 5
    assert Layer("x", 3).size == 3


def test_node_counts() -> None:
    nm = NodeManifests(
        ("default", "/"),
        (2,),
        {"0": (Layer("a", 3, 1), Layer("b", 2)), "1": (Layer("c", 4),)},
        legacy=("m", None),
        legacy_count=5,
    )
    assert nm.is_legacy
    assert nm.upper_count == 5 + 3 + 2 + 4
    assert not nm.exact
    assert nm.manifest_ids() == ["m", "a", "b", "c"]
    plain = NodeManifests(boxes={"0": (Layer("a", 3),), "1": (Layer("b", 1),)})
    assert not plain.is_legacy and plain.exact and plain.upper_count == 4
    assert not NodeManifests(boxes={"0": (Layer("a", 3, 1),)}).exact  # a tombstone
    assert not NodeManifests(boxes={"0": (Layer("a", 3), Layer("b", 1))}).exact  # hides one
    assert not NodeManifests(legacy=("m",)).exact
    assert NodeManifests().exact and NodeManifests().upper_count == 0


@pytest.mark.parametrize(
    ("layers", "nonempty"),
    [
        ((), False),
        ((Layer("a", 1),), True),
        ((Layer("a", 0, 2),), False),
        ((Layer("a", 0, 2), Layer("b", 2)), False),  # two tombstones may hide both
        ((Layer("a", 0, 2), Layer("b", 3)), True),
        ((Layer("a", 1, 1), Layer("b", 1)), True),  # the newest sets one
        ((Layer("a", 0, 1), Layer("b", 0, 1), Layer("c", 2)), False),
        ((Layer("a", 0, 1), Layer("b", 0, 1), Layer("c", 3)), True),
    ],
)
def test_surely_nonempty(layers: tuple[Layer, ...], nonempty: bool) -> None:
    assert NodeManifests(boxes={"0": layers}).surely_nonempty is nonempty
    # another box decides on its own
    two = NodeManifests(boxes={"0": (Layer("z", 0, 5),), "1": layers})
    assert two.surely_nonempty is nonempty


def test_node_manifests_stored_form() -> None:
    nm = _snap().nodes
    assert nm["a"].to_json() == {
        "enc": ["default", "/"],
        "split": [2],
        "boxes": {"0": [["L1", 3, 1], ["L0", 2, 0]]},
    }
    assert nm["d"].to_json() == {"enc": None, "split": None, "boxes": {"": [["F", 1, 0]]}}
    assert nm["old"].to_json() == {
        "enc": None,
        "split": None,
        "boxes": {},
        "legacy": [["M0", None, "M2"], 7],
    }
    for n in nm.values():
        assert NodeManifests.from_json(json.loads(json.dumps(n.to_json()))) == n
    # the stored values are read as the types they stand for
    doc = {"enc": ["v2", "."], "split": ["3", 4.0], "boxes": {0: [[7, "2", "1"]]}}
    got = NodeManifests.from_json(doc)
    assert got == NodeManifests(("v2", "."), (3, 4), {"0": (Layer("7", 2, 1),)})
    assert type(got.split[0]) is int  # type: ignore[index]
    legacy = NodeManifests.from_json(
        {"enc": None, "split": None, "boxes": {}, "legacy": [["m", None], "3"]}
    )
    assert legacy.legacy == ("m", None) and legacy.legacy_count == 3


def test_snapshot_stored_form() -> None:
    snap = _snap()
    header, body = decode_object(snap.encode(), "snapshots/S2", ObjectKind.SNAPSHOT)
    assert header == {
        "id": "S2",
        "parent": "S1",
        "time": "2026-12-01T00:00:00+00:00",
        "message": "msg",
        "metadata": {"who": "me"},
    }
    doc = json.loads(body)
    assert doc["meta_text"] == {"a/zarr.json": ARRAY.decode(), "zarr.json": "{}"}
    assert doc["meta_b64"] == {"bin/.zattrs": base64.b64encode(b"\xff\x00").decode()}
    assert doc["nodes"] == {p: n.to_json() for p, n in snap.nodes.items()}
    back = Snapshot.decode(snap.encode(), "snapshots/S2")
    assert back == snap
    assert back.arrays == frozenset({"a"})
    root = Snapshot.decode(_snap(parent_id=None).encode(), "snapshots/S2")
    assert root.parent_id is None


def test_format1_snapshots_decode_into_legacy_shards() -> None:
    header = {"id": "S1", "parent": None, "time": "t", "message": "m", "metadata": {}}
    body = {
        "meta_text": {"a/zarr.json": ARRAY.decode()},
        "meta_b64": {},
        "nodes": {"a": [["X", None], 4]},
    }
    data = _v1(_encode_object(ObjectKind.SNAPSHOT, header, json.dumps(body).encode()))
    snap = Snapshot.decode(data, "snapshots/S1")
    assert snap.nodes == {"a": NodeManifests(legacy=("X", None), legacy_count=4)}
    assert snap.meta == {"a/zarr.json": ARRAY}
    assert (snap.id, snap.parent_id, snap.written_at, snap.message) == ("S1", None, "t", "m")


def _refused(data: bytes, key: str, message: str) -> None:
    with pytest.raises(CorruptObjectError) as info:
        Snapshot.decode(data, key)
    assert str(info.value) == message
    assert info.value.key == key


def test_a_snapshot_copied_over_another_is_refused() -> None:
    _refused(
        _snap().encode(),
        "snapshots/OTHER",
        "object 'snapshots/OTHER' holds snapshot 'S2', not the one its key names: an object "
        "was copied over another; the repository is damaged",
    )


def test_a_snapshot_that_is_its_own_parent_is_refused() -> None:
    _refused(
        _snap(parent_id="S2").encode(),
        "snapshots/S2",
        "snapshot 'snapshots/S2' names itself as its parent",
    )


@pytest.mark.parametrize(
    ("header", "body", "error"),
    [
        ({"parent": None, "time": "t", "message": "m", "metadata": {}}, None, "KeyError('id')"),
        ({"id": "S", "time": "t", "message": "m", "metadata": {}}, None, "KeyError('parent')"),
        ({"id": "S", "parent": None, "message": "m", "metadata": {}}, None, "KeyError('time')"),
        ({"id": "S", "parent": None, "time": "t", "metadata": {}}, None, "KeyError('message')"),
        ({"id": "S", "parent": None, "time": "t", "message": "m"}, None, "KeyError('metadata')"),
        (None, {"meta_b64": {}, "nodes": {}}, "KeyError('meta_text')"),
        (None, {"meta_text": {}, "nodes": {}}, "KeyError('meta_b64')"),
        (None, {"meta_text": {}, "meta_b64": {}}, "KeyError('nodes')"),
        (
            None,
            {"meta_text": {}, "meta_b64": {}, "nodes": {"a": {"split": None, "boxes": {}}}},
            "KeyError('enc')",
        ),
        (
            None,
            {"meta_text": {}, "meta_b64": {}, "nodes": {"a": {"enc": None, "boxes": {}}}},
            "KeyError('split')",
        ),
        (
            None,
            {"meta_text": {}, "meta_b64": {}, "nodes": {"a": {"enc": None, "split": None}}},
            "KeyError('boxes')",
        ),
        (None, {"meta_text": {}, "meta_b64": {"k": "a"}, "nodes": {}}, "Error("),
        (
            None,
            {
                "meta_text": {},
                "meta_b64": {},
                "nodes": {"a": {"enc": [], "split": None, "boxes": {}}},
            },
            "IndexError",
        ),
        (
            None,
            {
                "meta_text": {},
                "meta_b64": {},
                "nodes": {"a": {"enc": None, "split": 5, "boxes": {}}},
            },
            "TypeError",
        ),
        (
            None,
            {
                "meta_text": {},
                "meta_b64": {},
                "nodes": {"a": {"enc": None, "split": None, "boxes": {"0": [["i", "x", 0]]}}},
            },
            "ValueError",
        ),
    ],
)
def test_a_snapshot_that_does_not_decode_is_refused(
    header: dict[str, object] | None, body: dict[str, object] | None, error: str
) -> None:
    header = header or {"id": "S", "parent": None, "time": "t", "message": "m", "metadata": {}}
    body = body or {"meta_text": {}, "meta_b64": {}, "nodes": {}}
    data = _encode_object(ObjectKind.SNAPSHOT, header, json.dumps(body).encode())
    with pytest.raises(
        CorruptObjectError, match="object 'snapshots/S' cannot be decoded: "
    ) as info:
        Snapshot.decode(data, "snapshots/S")
    assert error in str(info.value)
    assert info.value.key == "snapshots/S"


def test_a_body_that_is_not_json_is_refused() -> None:
    header = {"id": "S", "parent": None, "time": "t", "message": "m", "metadata": {}}
    data = _encode_object(ObjectKind.SNAPSHOT, header, b"{not json")
    with pytest.raises(CorruptObjectError, match="cannot be decoded: JSONDecodeError"):
        Snapshot.decode(data, "snapshots/S")
    v1 = _v1(
        _encode_object(
            ObjectKind.SNAPSHOT, header, b'{"meta_text": {}, "meta_b64": {}, "nodes": {"a": [1]}}'
        )
    )
    with pytest.raises(CorruptObjectError, match=r"cannot be decoded: ValueError\("):
        Snapshot.decode(v1, "snapshots/S")
