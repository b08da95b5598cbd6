"""Reading a node's references from its manifests (``_manifests.py``), exactly.

On hand-made layers (both formats): which box a key is in, which layer answers
a lookup (newest first, tombstones), what loading a box or a node leaves
(tombstones applied, format-1 shards without a manifest), and that layers are
read as the node and box that hold them (found missing by mutation testing,
issue 13).
"""

from __future__ import annotations

import struct

import pytest

from icechunk_dask import CorruptObjectError, Repository, RepositoryConfig, in_memory_storage
from icechunk_dask._layers import LayerWriter
from icechunk_dask._manifests import box_of, load_box, load_node, lookup
from icechunk_dask._sync import run
from icechunk_dask.format import FLAT, ChunkRef, Layer, NodeManifests, new_id, shard_of
from icechunk_dask.format._manifest import encode_manifest
from tests.helpers import as_format

ENC = ("default", "/")
PREFIX = struct.Struct("<4sBBHIQI")
_OID = new_id()


def _ref(i: int) -> ChunkRef:
    return (_OID, 10 * i, 10, i)


class _Repo:
    def __init__(self) -> None:
        self.storage = in_memory_storage()
        self.repo = Repository.create(self.storage, RepositoryConfig())
        self.writer = LayerWriter(self.repo._assets)

    def layer(self, node: str, box: str, entries: dict[str, ChunkRef | None]) -> Layer:
        return run(self.writer.write(node, box, list(entries), list(entries.values())))

    def format1(self, node: str, entries: dict[str, ChunkRef | None]) -> str:
        """A format-1 manifest (no box, not named by its key) stored by hand."""
        mid = new_id()
        data = encode_manifest(mid, node, "", entries)
        run(self.storage.put(f"manifests/{mid}", as_format(data, 1)))
        return mid

    def fresh(self) -> Repository:
        """The repository opened again: nothing cached, every manifest checked when read."""
        return Repository.open(self.storage)


@pytest.fixture
def r() -> _Repo:
    return _Repo()


def test_box_of() -> None:
    nm = NodeManifests(ENC, (2, 4))
    assert box_of("c/0/0", nm) == "0.0"
    assert box_of("c/3/9", nm) == "1.2"
    assert box_of("c/3", nm) == FLAT  # not a chunk key of a 2-d array
    assert box_of("zarr.json", nm) == FLAT
    assert box_of("c/0/0", NodeManifests(ENC, None)) == FLAT
    assert box_of("c/0/0", NodeManifests(None, (2, 4))) == FLAT
    assert box_of("0.5", NodeManifests(("v2", "."), (1, 2))) == "0.2"


def test_a_lookup_reads_the_newest_layer_that_has_the_key(r: _Repo) -> None:
    new = r.layer("a", "0.0", {"c/0/0": _ref(2), "c/1/0": None})
    old = r.layer("a", "0.0", {"c/0/0": _ref(1), "c/1/0": _ref(1), "c/0/1": _ref(1)})
    other = r.layer("a", "1.0", {"c/2/0": _ref(3)})
    nm = NodeManifests(ENC, (2, 4), {"0.0": (new, old), "1.0": (other,)})
    repo = r.fresh()
    assets = repo._assets
    assert run(lookup(assets, "a", nm, "c/0/0")) == _ref(2)
    assert run(lookup(assets, "a", nm, "c/1/0")) is None  # a tombstone
    assert run(lookup(assets, "a", nm, "c/0/1")) == _ref(1)  # only in the older layer
    assert run(lookup(assets, "a", nm, "c/2/0")) == _ref(3)
    assert run(lookup(assets, "a", nm, "c/2/1")) is None  # in no layer of its box
    assert run(lookup(assets, "a", nm, "c/4/0")) is None  # no such box
    assert run(lookup(assets, "a", nm, "c/0/0/0")) is None  # the flat box: none here


def test_a_lookup_reads_layers_as_the_node_and_box_that_hold_them(r: _Repo) -> None:
    lay = r.layer("a", "0.0", {"c/0/0": _ref(1)})
    wrong_box = NodeManifests(ENC, (2, 4), {"1.0": (lay,)})
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(lookup(r.fresh()._assets, "a", wrong_box, "c/2/0"))
    right = NodeManifests(ENC, (2, 4), {"0.0": (lay,)})
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(lookup(r.fresh()._assets, "b", right, "c/0/0"))
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(load_box(r.fresh()._assets, "a", "1.0", (lay,)))
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(load_box(r.fresh()._assets, "b", "0.0", (lay,)))
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(load_node(r.fresh()._assets, "a", wrong_box))
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        run(load_node(r.fresh()._assets, "b", right))


def test_loading_a_box_applies_newer_layers_and_tombstones(r: _Repo) -> None:
    new = r.layer("a", "0", {"c/0": _ref(2), "c/1": None, "c/5": None})
    mid = r.layer("a", "0", {"c/2": _ref(5), "c/3": None})
    old = r.layer("a", "0", {"c/0": _ref(1), "c/1": _ref(1), "c/2": _ref(1), "c/3": _ref(1)})
    assets = r.fresh()._assets
    assert run(load_box(assets, "a", "0", (new, mid, old))) == {"c/0": _ref(2), "c/2": _ref(5)}
    assert run(load_box(assets, "a", "0", (old,))) == {f"c/{i}": _ref(1) for i in range(4)}
    assert run(load_box(assets, "a", "0", ())) == {}


def test_loading_a_node_joins_its_boxes(r: _Repo) -> None:
    b0 = r.layer("a", "0", {"c/0": _ref(0), "c/1": None})
    b0_old = r.layer("a", "0", {"c/1": _ref(1)})
    b1 = r.layer("a", "1", {"c/2": _ref(2)})
    flat = r.layer("a", "", {"odd": _ref(9)})
    nm = NodeManifests(ENC, (2,), {"0": (b0, b0_old), "1": (b1,), "": (flat,)})
    got = run(load_node(r.fresh()._assets, "a", nm))
    assert got == {"c/0": _ref(0), "c/2": _ref(2), "odd": _ref(9)}
    assert run(load_node(r.fresh()._assets, "a", NodeManifests())) == {}


def test_format1_nodes_are_read_from_their_hash_shards(r: _Repo) -> None:
    keys = [f"c/{i}" for i in range(12)]
    shards: list[dict[str, ChunkRef | None]] = [{}, {}, {}]
    for i, k in enumerate(keys):
        shards[shard_of(k, 3)][k] = _ref(i)
    assert all(shards[:2]), "the fixture needs two non-empty shards"
    shards[2] = {}  # ... and a shard without a manifest
    missing = [k for k in keys if shard_of(k, 3) == 2]
    assert missing
    legacy = (r.format1("a", shards[0]), r.format1("a", shards[1]), None)
    nm = NodeManifests(legacy=legacy, legacy_count=12 - len(missing))
    assets = r.fresh()._assets
    for i, k in enumerate(keys):
        want = None if k in missing else _ref(i)
        assert run(lookup(assets, "a", nm, k)) == want
    absent = next(k for k in (f"x{i}" for i in range(100)) if shard_of(k, 3) != 2)
    assert run(lookup(assets, "a", nm, absent)) is None  # not in its shard
    want_all = {k: _ref(i) for i, k in enumerate(keys) if k not in missing}
    assert run(load_node(r.fresh()._assets, "a", nm)) == want_all
    # format-1 manifests are checked for their node
    with pytest.raises(CorruptObjectError, match="is a manifest of node 'a', not of 'b'"):
        run(load_node(r.fresh()._assets, "b", nm))
    with pytest.raises(CorruptObjectError, match="is a manifest of node 'a', not of 'b'"):
        run(lookup(r.fresh()._assets, "b", nm, keys[0] if keys[0] not in missing else keys[1]))


def test_a_single_shard_holds_every_key(r: _Repo) -> None:
    mid = r.format1("a", {"x": _ref(1), "c/0": _ref(2)})
    nm = NodeManifests(legacy=(mid,), legacy_count=2)
    assets = r.fresh()._assets
    assert run(lookup(assets, "a", nm, "x")) == _ref(1)
    assert run(lookup(assets, "a", nm, "c/0")) == _ref(2)
    assert run(lookup(assets, "a", nm, "c/1")) is None
    assert run(load_node(assets, "a", nm)) == {"x": _ref(1), "c/0": _ref(2)}
