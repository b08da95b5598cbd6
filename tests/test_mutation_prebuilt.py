"""Reading and loading pre-built manifest layers of change sets (``_prebuilt``), exactly.

``test_worker_manifests.py`` checks whole jobs end to end; these pin the
helpers on small hand-made layers: which node owns a key, which box and
layer answers a lookup (tombstones included), what loading a box leaves in
the record and which side wins (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask import CorruptObjectError, Repository, RepositoryConfig, in_memory_storage
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._layers import LayerWriter
from icechunk_dask._prebuilt import (
    MISSING,
    LoadedBoxes,
    apply_loaded,
    box_entries,
    layered_keys,
    layered_node,
    lookup_layered,
    materialize,
    merge_records,
    node_entries,
    preload,
    without_boxes,
)
from icechunk_dask._sync import run
from icechunk_dask.format import FLAT, ChunkRef, Layer, NodeManifests, new_id

ENC = ("default", "/")
_OID = new_id()


def _ref(i: int) -> ChunkRef:
    return (_OID, 10 * i, 10, i)


class _Box:
    """A repository and a layer writer for hand-made layers."""

    def __init__(self) -> None:
        self.repo = Repository.create(in_memory_storage(), RepositoryConfig())
        self.assets = self.repo._assets
        self.writer = LayerWriter(self.assets)

    def layer(self, node: str, box: str, entries: dict[str, ChunkRef | None]) -> Layer:
        return run(self.writer.write(node, box, list(entries), list(entries.values())))

    def record(self) -> ChangeSet:
        return ChangeSet(self.assets.config.repo_id, "base")


@pytest.fixture
def box() -> _Box:
    return _Box()


def _nm(boxes: dict[str, tuple[Layer, ...]], split: tuple[int, ...] = (2, 4)) -> NodeManifests:
    return NodeManifests(ENC, split, boxes)


def test_the_deepest_node_owns_a_key() -> None:
    layers = {"g": NodeManifests(), "g/a": NodeManifests()}
    assert layered_node(layers, "g/a/c/0/0") == "g/a"
    assert layered_node(layers, "g/ab/c/0") == "g"  # "g/a" is not a prefix of the node "g/ab"
    assert layered_node(layers, "g") is None  # a node's own key is not under it
    assert layered_node(layers, "h/c/0") is None
    assert layered_node({"": NodeManifests(), "g": NodeManifests()}, "x/c/0") == ""
    assert layered_node({"g/a": NodeManifests(), "g": NodeManifests()}, "g/a/c") == "g/a"


def test_a_lookup_reads_the_newest_layer_of_the_keys_box(box: _Box) -> None:
    new = box.layer("a", "0.0", {"c/0/0": _ref(2), "c/1/0": None})
    old = box.layer("a", "0.0", {"c/0/0": _ref(1), "c/1/0": _ref(1), "c/0/1": _ref(1)})
    other = box.layer("a", "1.0", {"c/2/0": _ref(3)})
    layers = {"a": _nm({"0.0": (new, old), "1.0": (other,)})}

    def look(key: str) -> object:
        return run(lookup_layered(box.assets, layers, key))

    assert look("a/c/0/0") == _ref(2)
    assert look("a/c/1/0") is None  # a tombstone hides the older layer
    assert look("a/c/0/1") == _ref(1)
    assert look("a/c/2/0") == _ref(3)
    assert look("a/c/3/0") is MISSING  # its box has no such key
    assert look("a/c/4/0") is MISSING  # no such box
    assert look("b/c/0/0") is MISSING  # no such node


def test_a_lookup_without_a_layout_or_of_a_non_chunk_key_reads_the_flat_box(box: _Box) -> None:
    flat = box.layer("a", FLAT, {"c/7/7": _ref(7), "x": _ref(8)})
    assert run(
        lookup_layered(box.assets, {"a": NodeManifests(None, None, {FLAT: (flat,)})}, "a/c/7/7")
    ) == _ref(7)
    layers = {"a": _nm({FLAT: (flat,)})}
    assert run(lookup_layered(box.assets, layers, "a/x")) == _ref(8)
    assert run(
        lookup_layered(box.assets, {"a": NodeManifests(ENC, None, {FLAT: (flat,)})}, "a/c/7/7")
    ) == _ref(7)


def test_entries_of_boxes_nodes_and_layers(box: _Box) -> None:
    new = box.layer("g/a", "0.0", {"c/0/0": _ref(2), "c/1/0": None})
    old = box.layer("g/a", "0.0", {"c/0/0": _ref(1), "c/1/0": _ref(1)})
    other = box.layer("g/a", "1.0", {"c/2/0": _ref(3)})
    root = box.layer("", "0.0", {"c/0/0": _ref(9)})
    nm = _nm({"0.0": (new, old), "1.0": (other,)})
    assert run(box_entries(box.assets, "g/a", "0.0", (new, old))) == {
        "c/0/0": _ref(2),
        "c/1/0": None,
    }
    everything = {"g/a/c/0/0": _ref(2), "g/a/c/1/0": None, "g/a/c/2/0": _ref(3)}
    assert run(node_entries(box.assets, "g/a", nm)) == everything
    assert run(node_entries(box.assets, "g/a", nm, ["1.0", "9.9"])) == {"g/a/c/2/0": _ref(3)}
    layers = {"g/a": nm, "": _nm({"0.0": (root,)})}
    assert run(layered_keys(box.assets, layers)) == {**everything, "c/0/0": _ref(9)}
    assert run(layered_keys(box.assets, layers, ["g/a", "zz"])) == everything


def test_without_boxes_drops_boxes_then_the_node_and_leaves_the_input_alone() -> None:
    a, b = Layer("x", 1), Layer("y", 1)
    layers = {"n": _nm({"0.0": (a,), "1.0": (b,)}), "m": _nm({"0.0": (a,)})}
    one = without_boxes(layers, "n", ["0.0"])
    assert one == {"n": _nm({"1.0": (b,)}), "m": layers["m"]}
    assert one["n"].encoding == ENC and one["n"].split == (2, 4)
    assert without_boxes(layers, "n", ["0.0", "1.0"]) == {"m": layers["m"]}
    assert without_boxes(layers, "n", None) == {"m": layers["m"]}
    assert without_boxes(layers, "zz", None) == layers
    assert without_boxes(layers, "n", []) == layers
    assert set(layers["n"].boxes) == {"0.0", "1.0"}  # unchanged


def test_loaded_entries_are_older_than_the_records_own(box: _Box) -> None:
    l0 = box.layer("a", "0.0", {"c/0/0": _ref(1), "c/1/0": _ref(1)})
    l1 = box.layer("a", "1.0", {"c/2/0": _ref(2)})
    cs = box.record()
    cs.layers = {"a": _nm({"0.0": (l0,), "1.0": (l1,)})}
    cs.chunks["a/c/0/0"] = None  # deleted after the job
    cache: LoadedBoxes = {}
    assert apply_loaded(cs, {"a": {"0.0"}}, cache) is False  # not loaded: nothing changes
    assert cs.chunks == {"a/c/0/0": None} and set(cs.layers["a"].boxes) == {"0.0", "1.0"}
    run(preload(box.assets, [(cs.layers, {"zz": None, "a": {"0.0"}})], cache))
    assert cache == {("a", "0.0", (l0.id,)): {"a/c/0/0": _ref(1), "a/c/1/0": _ref(1)}}
    assert apply_loaded(cs, {"a": {"0.0"}}, cache) is True
    assert cs.chunks == {"a/c/0/0": None, "a/c/1/0": _ref(1)}
    assert cs.layers == {"a": _nm({"1.0": (l1,)})}


def test_materialize_turns_every_layer_of_a_node_into_entries(box: _Box) -> None:
    l0 = box.layer("a", "0.0", {"c/0/0": _ref(1)})
    l1 = box.layer("a", "1.0", {"c/2/0": _ref(2)})
    lb = box.layer("b", "0.0", {"c/0/0": _ref(3)})
    cs = box.record()
    cs.layers = {"a": _nm({"0.0": (l0,), "1.0": (l1,)}), "b": _nm({"0.0": (lb,)})}
    cs.chunks["a/c/2/0"] = _ref(5)
    run(materialize(box.assets, cs, {"a": None}))
    assert cs.chunks == {"a/c/0/0": _ref(1), "a/c/2/0": _ref(5)}
    assert cs.layers == {"b": _nm({"0.0": (lb,)})}
    run(materialize(box.assets, cs, {"b": ["0.0"]}))
    assert cs.chunks["b/c/0/0"] == _ref(3) and cs.layers == {}


def test_merging_records_loads_only_the_colliding_boxes(box: _Box) -> None:
    l0 = box.layer("a", "0.0", {"c/0/0": _ref(1), "c/1/0": _ref(1)})
    l1 = box.layer("a", "1.0", {"c/2/0": _ref(2)})
    layered = box.record()
    layered.layers = {"a": _nm({"0.0": (l0,), "1.0": (l1,)})}
    plain = box.record()
    plain.chunks["a/c/1/0"] = _ref(1)  # the same chunk as the layer: no conflict
    plain.chunks["a/c/5/0"] = _ref(6)
    merged = run(merge_records(box.assets, layered, [plain]))
    assert merged.chunks == {"a/c/0/0": _ref(1), "a/c/1/0": _ref(1), "a/c/5/0": _ref(6)}
    assert merged.layers == {"a": _nm({"1.0": (l1,)})}
    assert set(layered.layers["a"].boxes) == {"0.0", "1.0"} and not layered.chunks  # unchanged
    assert plain.chunks == {"a/c/1/0": _ref(1), "a/c/5/0": _ref(6)}
    # the other way round: the record merged in holds the layers
    back = run(merge_records(box.assets, plain, [layered]))
    assert back.chunks == merged.chunks and back.layers == merged.layers
    # flatten: every layer of the records merged in is loaded
    flat = run(merge_records(box.assets, box.record(), [layered], flatten=True))
    assert flat.layers == {}
    assert flat.chunks == {"a/c/0/0": _ref(1), "a/c/1/0": _ref(1), "a/c/2/0": _ref(2)}
    kept = run(merge_records(box.assets, box.record(), [layered]))
    assert kept.layers == layered.layers and not kept.chunks


def test_layers_are_read_as_the_node_and_box_that_hold_them(box: _Box) -> None:
    layer = box.layer("a", "0.0", {"c/0/0": _ref(1)})  # a manifest of node "a", box "0.0"
    wrong_node = {"b": _nm({"0.0": (layer,)})}
    with pytest.raises(CorruptObjectError):
        run(lookup_layered(box.assets, wrong_node, "b/c/0/0"))
    with pytest.raises(CorruptObjectError):
        run(layered_keys(box.assets, wrong_node))
    with pytest.raises(CorruptObjectError):
        run(box_entries(box.assets, "a", "1.0", [layer]))
    wrong_box = {"a": _nm({"1.0": (layer,)})}  # keys of box 0.0 looked up in box 1.0
    with pytest.raises(CorruptObjectError):
        run(lookup_layered(box.assets, wrong_box, "a/c/2/0"))
    with pytest.raises(CorruptObjectError):
        run(layered_keys(box.assets, wrong_box))
    for layers, where in ((wrong_node, {"b": None}), (wrong_box, {"a": {"1.0"}})):
        with pytest.raises(CorruptObjectError):
            run(preload(box.assets, [(layers, where)], {}))


def test_materialize_loads_only_the_boxes_asked_for(box: _Box) -> None:
    l0 = box.layer("a", "0.0", {"c/0/0": _ref(1)})
    l1 = box.layer("a", "1.0", {"c/2/0": _ref(2)})
    cs = box.record()
    cs.layers = {"a": _nm({"0.0": (l0,), "1.0": (l1,)})}
    run(materialize(box.assets, cs, {"a": ["1.0"]}))
    assert cs.chunks == {"a/c/2/0": _ref(2)}
    assert cs.layers == {"a": _nm({"0.0": (l0,)})}


def test_a_merge_loads_the_box_from_the_record_that_holds_it(box: _Box) -> None:
    l0 = box.layer("a", "0.0", {"c/0/0": _ref(1)})
    l1 = box.layer("a", "1.0", {"c/2/0": _ref(2)})
    into = box.record()
    into.layers = {"a": _nm({"1.0": (l1,)})}  # the node, without the colliding box
    into.chunks["a/c/1/0"] = _ref(3)  # a write into box 0.0
    rec = box.record()
    rec.layers = {"a": _nm({"0.0": (l0,)})}
    merged = run(merge_records(box.assets, into, [rec]))
    assert merged.chunks == {"a/c/0/0": _ref(1), "a/c/1/0": _ref(3)}
    assert merged.layers == {"a": _nm({"1.0": (l1,)})}
