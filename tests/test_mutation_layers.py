"""The layer arithmetic of one box (``_layers.write_box``/``stack_box``), exactly.

The end-to-end layout tests check bounds (at most so many layers); these pin
which layers a commit merges, when it compacts, which tombstones it drops and
what the new manifest holds, at the boundaries of the merge budget and of
``manifest_max_layers`` (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from icechunk_dask import CorruptObjectError, Repository, RepositoryConfig, in_memory_storage
from icechunk_dask._layers import LayerWriter, stack_box, write_box
from icechunk_dask._sync import run
from icechunk_dask.format import ChunkRef, Layer, new_id

NODE, BOX = "a", "0"
_OID = new_id()


def _writer(max_layers: int = 8) -> LayerWriter:
    repo = Repository.create(in_memory_storage(), RepositoryConfig(manifest_max_layers=max_layers))
    return LayerWriter(repo._assets)


def _ref(i: int) -> ChunkRef:
    return (_OID, 100 * i, 10, i)


def _inline(i: int) -> ChunkRef:
    return (bytes([i]), 0, 1, i)


def _layer(w: LayerWriter, entries: dict[str, ChunkRef | None]) -> Layer:
    return run(w.write(NODE, BOX, list(entries), list(entries.values())))


def _sized(w: LayerWriter, sizes: Sequence[int]) -> list[Layer]:
    """Layers (newest first) of the given sizes, over disjoint keys ``k<layer>.<i>``."""
    return [_layer(w, {f"k{n}.{i}": _ref(i) for i in range(size)}) for n, size in enumerate(sizes)]


def _entries(w: LayerWriter, layers: Sequence[Layer]) -> dict[str, ChunkRef | None]:
    return run(w.load(NODE, BOX, layers))


def _write(
    w: LayerWriter, layers: Sequence[Layer], changes: dict[str, ChunkRef | None], strip: str = ""
) -> tuple[Layer, ...]:
    return run(write_box(w, NODE, BOX, layers, list(changes), list(changes.values()), strip))


def test_write_stores_every_entry_and_counts_tombstones() -> None:
    w = _writer()
    refs = {"x": _ref(1), "y": None, "z": _inline(3)}
    layer = _layer(w, refs)
    assert (layer.n_set, layer.n_del) == (2, 1)
    assert run(w.assets.get_manifest(layer.id, NODE, BOX)) == refs
    plain = _layer(w, {"p": _ref(1), "q": _ref(2)})  # the columnar path
    assert (plain.n_set, plain.n_del) == (2, 0)
    assert run(w.assets.get_manifest(plain.id, NODE, BOX)) == {"p": _ref(1), "q": _ref(2)}


@pytest.mark.parametrize("inline", [False, True])
def test_write_strips_the_prefix_from_the_stored_keys(inline: bool) -> None:
    w = _writer()
    make = _inline if inline else _ref
    layer = run(w.write(NODE, BOX, ["c/0", "c/1"], [make(1), make(2)], strip="c/"))
    assert run(w.assets.get_manifest(layer.id, NODE, BOX)) == {"0": make(1), "1": make(2)}


def test_load_lets_newer_layers_win() -> None:
    w = _writer()
    old = _layer(w, {"x": _ref(1), "y": _ref(2)})
    new = _layer(w, {"x": _ref(3), "y": None})
    assert _entries(w, [new, old]) == {"x": _ref(3), "y": None}


@pytest.mark.parametrize(
    ("sizes", "changes", "merged"),
    [
        ([4, 1], 2, 1),  # 4 == 2 * 2: absorbed exactly at the budget; 4 + 1 is past it
        ([5], 2, 0),  # past the budget: a new layer of just the changes
        ([1, 1, 1, 1, 1, 1], 2, 4),  # the sizes add up: 4 fit, the 5th is past
        ([3, 2], 3, 2),  # budget 6: both fit
        ([2, 2, 2, 2], 1, 1),  # budget 2: one fits
    ],
)
def test_a_commit_merges_the_newest_layers_within_twice_its_size(
    sizes: list[int], changes: int, merged: int
) -> None:
    w = _writer(max_layers=8)
    layers = _sized(w, sizes)
    before = _entries(w, layers)
    new = {f"n{i}": _ref(50 + i) for i in range(changes)}
    after = _write(w, layers, new)
    assert after[1:] == tuple(layers[merged:])
    assert after[0].size == changes + sum(sizes[:merged])
    assert after[0].id not in {x.id for x in layers}
    assert _entries(w, after) == {**before, **new}


@pytest.mark.parametrize(("max_layers", "compacted"), [(3, False), (2, True)])
def test_a_box_past_the_maximum_is_compacted_into_one_layer(
    max_layers: int, compacted: bool
) -> None:
    w = _writer(max_layers=max_layers)
    layers = _sized(w, [10, 10])  # too big to merge: the new layer would be a third
    before = _entries(w, layers)
    after = _write(w, layers, {"k0.0": _ref(9)})
    assert len(after) == (1 if compacted else 3)
    if compacted:
        assert after[0].size == 20
    else:
        assert after[1:] == tuple(layers)
    assert _entries(w, after) == {**before, "k0.0": _ref(9)}


def test_tombstones_are_dropped_only_when_nothing_older_is_left() -> None:
    w = _writer()
    # an empty box: deleting keys keeps no tombstone, deleting only keys writes nothing
    assert _write(w, [], {"x": None}) == ()
    (only,) = _write(w, [], {"x": None, "y": _ref(2)})
    assert (only.n_set, only.n_del) == (1, 0)
    assert _entries(w, [only]) == {"y": _ref(2)}
    # a big older layer is left: the tombstone must stay to hide it
    base = _sized(w, [10])
    kept = _write(w, base, {"k0.1": None})
    assert len(kept) == 2 and (kept[0].n_set, kept[0].n_del) == (0, 1)
    assert _entries(w, kept)["k0.1"] is None
    # the merge reaches the oldest layer: tombstones go, also those already stored
    small = _layer(w, {"x": _ref(1), "y": None})
    merged = _write(w, [small], {"x": None})
    assert merged == ()
    # the merge does not reach the oldest layer: tombstones stay
    layers = [_layer(w, {"x": _ref(1)}), *_sized(w, [10])]
    partial = _write(w, layers, {"x": None})
    assert len(partial) == 2 and partial[0].n_del == 1 and partial[1] == layers[1]


def test_a_merge_strips_the_prefix_of_the_changed_keys() -> None:
    w = _writer()
    layers = [_layer(w, {"0": _ref(1)})]
    after = run(write_box(w, NODE, BOX, layers, ["c/1"], [_ref(2)], "c/"))
    assert len(after) == 1
    assert _entries(w, after) == {"0": _ref(1), "1": _ref(2)}


def test_stacked_layers_are_compacted_past_the_maximum_without_tombstones() -> None:
    w = _writer(max_layers=2)
    two = [_layer(w, {"x": _ref(2), "y": None}), _layer(w, {"x": _ref(1), "y": _ref(1)})]
    assert run(stack_box(w, NODE, BOX, two)) == tuple(two)
    three = [_layer(w, {"z": _ref(3)}), *two]
    (one,) = run(stack_box(w, NODE, BOX, three))
    assert (one.n_set, one.n_del) == (2, 0)
    assert _entries(w, [one]) == {"x": _ref(2), "z": _ref(3)}
    gone = [_layer(w, {"x": None}), _layer(w, {"y": None}), _layer(w, {"x": _ref(1)})]
    assert run(stack_box(w, NODE, BOX, gone)) == ()


def test_a_layer_of_another_node_or_box_is_refused() -> None:
    w = _writer()
    layer = _layer(w, {"x": _ref(1)})
    with pytest.raises(CorruptObjectError):
        run(w.load("b", BOX, [layer]))
    with pytest.raises(CorruptObjectError):
        run(w.load(NODE, "1", [layer]))


def test_merges_and_compactions_refuse_a_layer_of_another_node_or_box() -> None:
    w = _writer(max_layers=1)
    layer = _layer(w, {"x": _ref(1)})  # a manifest of node "a", box "0"
    for node, box in (("b", BOX), (NODE, "1")):
        with pytest.raises(CorruptObjectError):  # merged into the new layer
            run(write_box(w, node, box, [layer], ["y"], [_ref(2)]))
        with pytest.raises(CorruptObjectError):  # compacted
            run(stack_box(w, node, box, [layer, layer]))


def test_keys_are_stored_whole_by_default() -> None:
    w = _writer()
    (new,) = run(write_box(w, NODE, BOX, [], ["c/0", "c/1"], [_ref(1), _ref(2)]))
    assert _entries(w, [new]) == {"c/0": _ref(1), "c/1": _ref(2)}
    (merged,) = run(write_box(w, NODE, BOX, [new], ["c/2"], [_ref(3)]))
    assert _entries(w, [merged]) == {"c/0": _ref(1), "c/1": _ref(2), "c/2": _ref(3)}
