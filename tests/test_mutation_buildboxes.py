"""Which task of a write job builds which box, and building it (``_buildboxes``), exactly.

The end-to-end tests of ``test_worker_manifests.py`` check that the data read
back is right, which it stays when a box is built by a task higher up the
tree than needed (or not at all). These pin the assignment against the shape
of the merge tree of ``_writegraph.merge_tree`` and what ``build_layers``
leaves in the record (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask import Repository, RepositoryConfig, in_memory_storage
from icechunk_dask._buildboxes import (
    BoxTarget,
    _levels,
    _piece_boxes,
    assign_boxes,
    build_layers,
    min_refs,
)
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._plan import ArrayWrite, Piece, WritePlan
from icechunk_dask._sync import run
from icechunk_dask.format import ChunkRef, Layer, NodeManifests, new_id

ENC = ("default", "/")


def _array(name: str, rows: int, cols: int = 4) -> ArrayWrite:
    region = (slice(0, rows), slice(0, cols))
    return ArrayWrite(name, (rows, cols), (1, 1), region, ((1,) * rows, (cols,)), 4)


def _row(array: int, r: int, n: int = 1, cols: int = 4) -> Piece:
    """A piece writing rows ``r`` to ``r + n`` of ``array`` (chunks of one element)."""
    return Piece(array, (r, 0), (r + n, 1), (slice(r, r + n), slice(0, cols)), 4 * n * cols)


def _one_row_per_task(rows: int = 8) -> WritePlan:
    return WritePlan((_array("a", rows),), tuple((_row(0, t),) for t in range(rows)))


def _target(split_rows: int, path: str = "a") -> BoxTarget:
    return BoxTarget(path, ENC, (split_rows, 4))


@pytest.mark.parametrize(
    ("manifest_box_refs", "expected"), [(64, 8), (65, 8), (72, 9), (15, 1), (7, 1), (1, 1)]
)
def test_a_worker_builds_boxes_of_an_eighth_of_their_size_or_more(
    manifest_box_refs: int, expected: int
) -> None:
    config = Repository.create(
        in_memory_storage(), RepositoryConfig(manifest_box_refs=manifest_box_refs)
    )._assets.config
    assert min_refs(config) == expected


@pytest.mark.parametrize(
    ("leaves", "split_every", "levels"),
    [(1, 2, 0), (2, 2, 0), (3, 2, 1), (4, 2, 1), (5, 2, 2), (8, 2, 2), (9, 2, 3), (16, 4, 1)],
)
def test_merge_levels_match_the_merge_tree(leaves: int, split_every: int, levels: int) -> None:
    assert _levels(leaves, split_every) == levels


def test_a_piece_counts_its_chunk_keys_per_box() -> None:
    # chunks of 2 x 2 elements; rows 1-4 are in chunks 0-2; boxes of 2 x 1 chunks
    sel = (slice(1, 5), slice(0, 4))
    assert _piece_boxes(sel, (2, 2), (2, 1)) == [("0.0", 2), ("0.1", 2), ("1.0", 1), ("1.1", 1)]
    assert _piece_boxes((slice(3, 8), slice(2, 3)), (1, 1), (4, 4)) == [("0.0", 1), ("1.0", 4)]
    assert _piece_boxes((slice(3, 3), slice(0, 4)), (1, 1), (4, 4)) == []
    assert _piece_boxes((slice(0, 4), slice(2, 2)), (1, 1), (4, 4)) == []


@pytest.mark.parametrize(
    ("split_rows", "expected"),
    [
        (1, {("leaf", t): ((0, f"{t}.0"),) for t in range(8)}),  # one writer: the write task
        (2, {("merge", 0, i): ((0, f"{i}.0"),) for i in range(4)}),  # two: their merge
        (4, {("merge", 1, 0): ((0, "0.0"),), ("merge", 1, 1): ((0, "1.0"),)}),
        (8, {("root",): ((0, "0.0"),)}),  # every task: the last merge
    ],
)
def test_a_box_is_built_by_the_lowest_task_holding_all_its_writes(
    split_rows: int, expected: dict[tuple[object, ...], tuple[tuple[int, str], ...]]
) -> None:
    plan = _one_row_per_task()
    assert assign_boxes(plan, [_target(split_rows)], 2, frozenset(), 1) == expected


def test_boxes_below_the_threshold_stay_with_the_commit() -> None:
    plan = _one_row_per_task()
    targets = [_target(2)]  # 8 keys per box
    assert len(assign_boxes(plan, targets, 2, frozenset(), 8)) == 4
    assert assign_boxes(plan, targets, 2, frozenset(), 9) == {}
    # the counts add up over the tasks writing into the box
    assert assign_boxes(plan, [_target(1)], 2, frozenset(), 5) == {}


def test_a_box_of_a_stored_task_of_a_resumed_job_is_built_by_the_last_task() -> None:
    plan = _one_row_per_task()
    # task 0 done: the others are leaves 0..6 of the tree (levels: 7 -> 4 -> 2)
    got = assign_boxes(plan, [_target(2)], 2, frozenset({0}), 1)
    assert got == {
        ("finish",): ((0, "0.0"),),
        ("merge", 1, 0): ((0, "1.0"),),  # leaves 1, 2
        ("root",): ((0, "2.0"),),  # leaves 3, 4
        ("merge", 1, 1): ((0, "3.0"),),  # leaves 5, 6
    }


def test_arrays_without_a_layout_are_skipped_and_boxes_group_by_task() -> None:
    arrays = (_array("a", 4), _array("b", 4))
    tasks = tuple((_row(0, t), _row(1, t)) for t in range(4))
    plan = WritePlan(arrays, tasks)
    got = assign_boxes(plan, [None, _target(2, "b")], 2, frozenset(), 1)
    assert got == {("merge", 0, 0): ((1, "0.0"),), ("merge", 0, 1): ((1, "1.0"),)}
    both = assign_boxes(plan, [_target(4), _target(2, "b")], 2, frozenset(), 1)
    assert both == {
        ("root",): ((0, "0.0"),),
        ("merge", 0, 0): ((1, "0.0"),),
        ("merge", 0, 1): ((1, "1.0"),),
    }


def _ref(i: int) -> ChunkRef:
    return (new_id(), 0, 10, i)


def test_build_layers_moves_the_boxes_entries_into_layers_stacked_on_older_ones() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    assets = repo._assets
    record = ChangeSet(repo._assets.config.repo_id, "base")
    refs = {f"g/a/c/{r}/0": _ref(r) for r in range(4)}
    refs["g/a/c/0/0"] = None  # a deletion in box 0.0
    other = {"g/b/c/0/0": _ref(9), "g/ab/c/0/0": _ref(8)}
    record.chunks.update(refs)
    record.chunks.update(other)
    old = Layer(new_id(), 1)
    record.layers = {"g/a": NodeManifests(ENC, (2, 4), {"0.0": (old,)})}
    targets = [None, BoxTarget("zz", ENC, (2, 4)), BoxTarget("g/a", ENC, (2, 4))]
    # no layout, then no keys: skipped, and the next target is still built
    run(build_layers(assets, record, [(0, "9.9"), (1, "0.0"), (2, "0.0")], targets))
    # box 1.0 (rows 2-3) was not asked for; the other node and a non-chunk key stay
    assert record.chunks == {
        "g/a/c/2/0": refs["g/a/c/2/0"],
        "g/a/c/3/0": refs["g/a/c/3/0"],
        **other,
    }
    nm = record.layers["g/a"]
    assert (nm.encoding, nm.split) == (ENC, (2, 4))
    new, below = nm.boxes["0.0"]
    assert below == old
    assert (new.n_set, new.n_del) == (1, 1)
    stored = run(assets.get_manifest(new.id, "g/a", "0.0"))
    assert stored == {"c/0/0": None, "c/1/0": refs["g/a/c/1/0"]}


def test_build_layers_at_the_root_node_and_with_nothing_to_build() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    assets = repo._assets
    record = ChangeSet(repo._assets.config.repo_id, "base")
    record.chunks.update({"c/0/0": _ref(1), "c/1/0": _ref(2)})
    run(build_layers(assets, record, [(0, "1.0")], [BoxTarget("", ENC, (4, 4))]))
    assert record.chunks == {"c/0/0": record.chunks["c/0/0"], "c/1/0": record.chunks["c/1/0"]}
    assert record.layers == {}  # no key in box 1.0
    run(build_layers(assets, record, [(0, "0.0")], [BoxTarget("", ENC, (4, 4))]))
    assert record.chunks == {}
    assert (record.layers[""].encoding, record.layers[""].split) == (ENC, (4, 4))
    (layer,) = record.layers[""].boxes["0.0"]
    assert layer.n_set == 2
    assert set(run(assets.get_manifest(layer.id, "", "0.0"))) == {"c/0/0", "c/1/0"}
    empty = ChangeSet(repo._assets.config.repo_id, "base")
    run(build_layers(assets, empty, [(0, "0.0")], [BoxTarget("x", ENC, (4, 4))]))
    assert empty.layers == {} and empty.chunks == {}


def test_a_small_box_does_not_stop_the_assignment_of_the_big_ones() -> None:
    arrays = (_array("a", 4), _array("b", 4))
    plan = WritePlan(arrays, tuple((_row(0, t), _row(1, t)) for t in range(4)))
    # "a": boxes of one row (4 keys each); "b": one box of 16 keys
    got = assign_boxes(plan, [_target(1), _target(4, "b")], 2, frozenset(), 5)
    assert got == {("root",): ((1, "0.0"),)}
