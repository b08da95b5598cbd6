"""The Dask write planner (``_plan.py``) on fixed inputs, decision by decision.

``test_dask_plan.py`` checks the plan's invariants on random layouts; these pin what mutation
testing found unchecked (issue 13): the exact boxes and tasks of small plans, the batching
knobs at their boundaries, which writes into one array overlap, the region checks and every
message in full.
"""

from __future__ import annotations

import pytest

from icechunk_dask import ErrorKind, InvalidInputError
from icechunk_dask._plan import (
    MAX_BLOCKS_PER_TASK,
    MIN_TASKS,
    TARGET_TASK_BYTES,
    ArrayWrite,
    Piece,
    WritePlan,
    _aligned_chunks,
    _atomic_groups,
    _fmt_region,
    _short,
    normalize_region,
    plan_writes,
)


def _write(
    chunks: tuple[tuple[int, ...], ...],
    unit: tuple[int, ...],
    *,
    start: tuple[int, ...] | None = None,
    shape: tuple[int, ...] | None = None,
    itemsize: int = 1,
    name: str = "a",
    sharded: bool = False,
) -> ArrayWrite:
    start = start or (0,) * len(chunks)
    region = tuple(slice(s, s + sum(c)) for s, c in zip(start, chunks, strict=True))
    shape = shape or tuple(r.stop for r in region)
    return ArrayWrite(name, shape, unit, region, chunks, itemsize, sharded)


def _boxes(plan: WritePlan) -> list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]]:
    return [[(p.array, p.start, p.stop) for p in task] for task in plan.tasks]


def test_the_knobs_have_their_documented_values() -> None:
    assert TARGET_TASK_BYTES == 4 * 2**20
    assert MIN_TASKS == 32
    assert MAX_BLOCKS_PER_TASK == 4096


def test_piece_and_plan_count_their_blocks() -> None:
    p = Piece(0, (1, 2), (3, 5), (slice(0, 1), slice(0, 1)), 7)
    assert p.grid == (2, 3)
    assert p.nblocks == 6
    assert list(p.blocks()) == [(1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4)]
    q = Piece(0, (0,), (4,), (slice(0, 4),), 4)
    plan = WritePlan((), ((p,), (q, q)))
    assert plan.nblocks == 14
    assert _write(((1, 2, 3), (4, 4)), (1, 1)).nblocks == 6
    assert _write(((), (4,)), (1, 1)).nblocks == 0


def test_normalize_region_fills_in_missing_axes_and_bounds() -> None:
    assert normalize_region(None, (4, 6), [4, 6], "a") == (slice(0, 4), slice(0, 6))  # type: ignore[arg-type]
    assert normalize_region([slice(1, 3)], (4, 6), (2, 6), "a") == (slice(1, 3), slice(0, 6))
    assert normalize_region((slice(None, 2), slice(3, None)), (4, 6), (2, 3), "a") == (
        slice(0, 2),
        slice(3, 6),
    )
    assert normalize_region((slice(0, 4, 1), slice(0, 6)), (4, 6), (4, 6), "a") == (
        slice(0, 4),
        slice(0, 6),
    )
    # a stop before the start is an empty region at the start
    assert normalize_region((slice(3, 1),), (4,), (0,), "a") == (slice(3, 3),)
    assert normalize_region((slice(4, 4),), (4,), (0,), "a") == (slice(4, 4),)


def test_normalize_region_refuses_with_the_whole_message() -> None:
    with pytest.raises(InvalidInputError) as info:
        normalize_region((slice(0, 1), slice(0, 1)), (4,), (1,), "x")
    assert str(info.value) == (
        "region (slice(0, 1, None), slice(0, 1, None)) has 2 axes but array 'x' has 1"
    )
    with pytest.raises(InvalidInputError) as info:
        normalize_region((slice(0, 4), 2), (4, 4), (4, 1), "x")  # type: ignore[arg-type]
    assert str(info.value) == ("region for array 'x' must be a tuple of slices, got 2 on axis 1")
    for sl in (slice(-1, 4), slice(0, -1), slice(0, 5), slice(0, 4, 2), slice(3, 0, -1)):
        with pytest.raises(InvalidInputError) as info:
            normalize_region((slice(0, 1), sl), (1, 4), (1, 4), "x")
        assert str(info.value) == (
            f"region {sl!r} on axis 1 of array 'x' (length 4) must be a "
            "slice with non-negative bounds inside the array and step 1"
        )
    with pytest.raises(InvalidInputError) as info:
        normalize_region((slice(1, 3),), (4, 2), (3, 2), "x")
    assert str(info.value) == (
        "the source has shape (3, 2) but the region [1:3, 0:2] of array 'x' has shape (2, 2); "
        "they must be equal"
    )
    # bounds at the edges are fine
    assert normalize_region((slice(0, 4),), (4,), (4,), "x") == (slice(0, 4),)


def test_atomic_groups_follow_the_write_units_from_the_region_start() -> None:
    # the boundary at 5 + 5 = 10 is a unit boundary: two runs
    assert _atomic_groups(_write(((5, 10),), (10,), start=(5,)), False, ()) == [[(0, 1), (1, 2)]]
    # the last block's end needs no alignment
    assert _atomic_groups(_write(((10, 3),), (10,)), False, ()) == [[(0, 1), (1, 2)]]
    assert _atomic_groups(_write(((4, 4, 2, 10), (3,)), (4, 3)), True, ()) == [
        [(0, 1), (1, 2), (2, 4)],
        [(0, 1)],
    ]
    assert _atomic_groups(_write(((2, 2, 2, 2),), (4,)), True, ()) == [[(0, 2), (2, 4)]]
    assert _atomic_groups(_write(((3, 3, 2),), (4,)), True, ()) == [[(0, 3)]]
    with pytest.raises(InvalidInputError) as info:
        _atomic_groups(_write(((4, 4), (2, 2)), (4, 4)), False, ())
    assert info.value.kind is ErrorKind.UNALIGNED_WRITE
    assert "Dask blocks 0 and 1 on axis 1 " in str(info.value)


def test_the_misaligned_message_in_full() -> None:
    a = _write(((15, 85), (4,)), (10, 4), start=(3, 0), shape=(200, 4), name="temp")
    with pytest.raises(InvalidInputError) as info:
        plan_writes([a], fixes=["pass align_chunks=True.", "or this."])
    assert info.value.kind is ErrorKind.UNALIGNED_WRITE
    assert str(info.value) == (
        "Dask blocks 0 and 1 on axis 0 of the data written to array 'temp' meet at index 18, "
        "inside the Zarr chunk [10, 20) (chunk size 10 on that axis; dask chunks (15, 85), "
        "region [3:103, 0:4]). Two tasks writing parts of one chunk in parallel would each "
        "store their own version of it, so nothing was written. To fix this, choose one of:\n"
        "- rechunk the dask array so that block boundaries fall on multiples of 10 (from the "
        "start of the array), e.g. chunks (77, 23) on axis 0;\n"
        "- pass align_chunks=True.\n"
        "- or this."
    )
    s = _write(((4,), (3, 5)), (4, 4), sharded=True, name="s")
    with pytest.raises(InvalidInputError) as info:
        plan_writes([s])
    assert str(info.value) == (
        "Dask blocks 0 and 1 on axis 1 of the data written to array 's' meet at index 3, "
        "inside the Zarr shard [0, 4) (shard size 4 on that axis; dask chunks (3, 5), "
        "region [0:4, 0:8]). Two tasks writing parts of one shard in parallel would each "
        "store their own version of it, so nothing was written. To fix this, choose one of:\n"
        "- rechunk the dask array so that block boundaries fall on multiples of 4 (from the "
        "start of the array), e.g. chunks (4, 4) on axis 1;"
    )


def test_aligned_chunks_short_and_region_formats() -> None:
    # pieces as big as the biggest dask chunk (rounded down to units), cut at unit multiples
    assert _aligned_chunks((15, 85), 0, 10) == (80, 20)
    assert _aligned_chunks((15, 85), 3, 10) == (77, 23)
    assert _aligned_chunks((3, 3, 3), 1, 2) == (1, 2, 2, 2, 2)
    assert _aligned_chunks((35, 5), 0, 10) == (30, 10)
    assert _aligned_chunks((3, 5), 0, 4) == (4, 4)
    assert _aligned_chunks((5,), 2, 4) == (2, 3)
    assert _aligned_chunks((4, 4), 4, 4) == (4, 4)
    assert _short((1, 2, 3, 4, 5, 6)) == "(1, 2, 3, 4, 5, 6)"
    assert _short((1, 2, 3, 4, 5, 6, 7)) == "(1, 2, 3, ..., 6, 7)"
    assert _fmt_region((slice(0, 4), slice(2, 3))) == "[0:4, 2:3]"
    assert _fmt_region(()) == "[]"


def test_writes_into_one_array_that_share_a_unit_are_refused() -> None:
    left = _write(((5,),), (10,), shape=(20,))
    right = _write(((5,),), (10,), start=(5,), shape=(20,))
    with pytest.raises(InvalidInputError) as info:
        plan_writes([left, _write(((4,),), (4,), name="b"), right])
    assert info.value.kind is ErrorKind.UNALIGNED_WRITE
    assert str(info.value) == (
        "sources 0 and 2 both write to array 'a', in regions [0:5] and [5:10] that share "
        "Zarr chunks; each chunk must be written by one task. Nothing was written. Write "
        "disjoint regions aligned to whole chunks, or combine the sources into one array first"
    )
    # the second axis overlaps too: only both axes together make an overlap
    a = _write(((4,), (4,)), (4, 4), shape=(8, 8))
    with pytest.raises(InvalidInputError):
        plan_writes([a, _write(((4,), (2,)), (4, 4), start=(0, 2), shape=(8, 8))])
    with pytest.raises(InvalidInputError):
        plan_writes([a, _write(((1,), (4,)), (4, 4), start=(3, 0), shape=(8, 8))])


def test_writes_into_one_array_on_separate_units_are_planned() -> None:
    a = _write(((4,), (4,)), (4, 4), shape=(8, 8))
    beside = [
        _write(((4,), (4,)), (4, 4), start=(4, 0), shape=(8, 8)),
        _write(((4,), (4,)), (4, 4), start=(0, 4), shape=(8, 8)),
        _write(((4,), (4,)), (4, 4), start=(4, 4), shape=(8, 8)),
    ]
    plan = plan_writes([a, *beside], min_tasks=1)
    assert _boxes(plan) == [
        [(0, (0, 0), (1, 1)), (1, (0, 0), (1, 1)), (2, (0, 0), (1, 1)), (3, (0, 0), (1, 1))]
    ]
    # the same region of another array, and an empty region inside a unit of the array
    other = _write(((4,), (4,)), (4, 4), shape=(8, 8), name="b")
    empty = ArrayWrite("a", (8, 8), (4, 4), (slice(1, 1), slice(0, 4)), ((), (4,)), 1)
    plan = plan_writes([a, other, empty], min_tasks=1)
    assert _boxes(plan) == [[(0, (0, 0), (1, 1)), (1, (0, 0), (1, 1))]]
    empty2 = ArrayWrite("a", (8, 8), (4, 4), (slice(0, 4), slice(2, 2)), ((4,), ()), 1)
    assert _boxes(plan_writes([empty2, a], min_tasks=1)) == [[(1, (0, 0), (1, 1))]]


def test_a_source_with_blocks_but_an_empty_region_axis_is_skipped() -> None:
    odd = ArrayWrite("z", (8,), (4,), (slice(2, 2),), ((0,),), 1)
    assert odd.nblocks == 1
    plan = plan_writes([odd, _write(((4,),), (4,))], min_tasks=1)
    assert _boxes(plan) == [[(1, (0,), (1,))]]
    assert plan.arrays[0] is odd


def test_one_block_per_task_when_blocks_reach_the_target() -> None:
    a = _write(((4, 4, 4),), (4,), itemsize=2)  # 8-byte blocks
    plan = plan_writes([a], target_task_bytes=8, min_tasks=1)
    assert _boxes(plan) == [[(0, (0,), (1,))], [(0, (1,), (2,))], [(0, (2,), (3,))]]
    assert [p.nbytes for t in plan.tasks for p in t] == [8, 8, 8]
    assert [p.selection for t in plan.tasks for p in t] == [
        (slice(0, 4),),
        (slice(4, 8),),
        (slice(8, 12),),
    ]
    # a byte more allows one block; one byte less than a block, still one block per task
    assert len(plan_writes([a], target_task_bytes=9, min_tasks=1).tasks) == 3
    assert len(plan_writes([a], target_task_bytes=7, min_tasks=1).tasks) == 3
    assert _boxes(plan_writes([a], target_task_bytes=16, min_tasks=1)) == [
        [(0, (0,), (2,))],
        [(0, (2,), (3,))],
    ]


def test_the_biggest_block_sets_the_bytes_per_block() -> None:
    a = _write(((1, 1, 1, 5),), (1,), itemsize=1)
    # blocks of at most 5 bytes: 2 per piece for 10 bytes, though the first three are 1 byte
    plan = plan_writes([a], target_task_bytes=10, min_tasks=1)
    assert [[(p.start, p.stop, p.nbytes) for p in t] for t in plan.tasks] == [
        [((0,), (2,), 2), ((2,), (4,), 6)],
    ]
    assert plan.tasks[0][1].selection == (slice(2, 8),)


def test_min_tasks_caps_the_blocks_per_task() -> None:
    a = _write(((1,) * 12,), (1,))
    assert [len(t) for t in plan_writes([a], min_tasks=4).tasks] == [1, 1, 1, 1]
    assert _boxes(plan_writes([a], min_tasks=4))[1] == [(0, (3,), (6,))]
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=5).tasks] == [3, 3, 3, 3]
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=12).tasks] == [1] * 12
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=1).tasks] == [12]
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=0).tasks] == [12]
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=100).tasks] == [1] * 12
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=1, max_blocks_per_task=5).tasks] == [
        5,
        5,
        2,
    ]
    assert [t[0].nblocks for t in plan_writes([a], min_tasks=1, max_blocks_per_task=0).tasks] == [
        1
    ] * 12


def test_pieces_are_packed_into_tasks_up_to_the_bytes_and_blocks() -> None:
    arrays = [_write(((4,),), (4,), name=f"v{i}", itemsize=2) for i in range(5)]  # 8 bytes each
    assert _boxes(plan_writes(arrays, target_task_bytes=16, min_tasks=1)) == [
        [(0, (0,), (1,)), (1, (0,), (1,))],
        [(2, (0,), (1,)), (3, (0,), (1,))],
        [(4, (0,), (1,))],
    ]
    assert _boxes(plan_writes(arrays, target_task_bytes=15, min_tasks=1)) == [
        [(i, (0,), (1,))] for i in range(5)
    ]
    assert _boxes(plan_writes(arrays, min_tasks=1, max_blocks_per_task=3)) == [
        [(0, (0,), (1,)), (1, (0,), (1,)), (2, (0,), (1,))],
        [(3, (0,), (1,)), (4, (0,), (1,))],
    ]
    # min_tasks over the total of all sources
    assert _boxes(plan_writes(arrays, min_tasks=2)) == [
        [(0, (0,), (1,)), (1, (0,), (1,)), (2, (0,), (1,))],
        [(3, (0,), (1,)), (4, (0,), (1,))],
    ]
    assert plan_writes([], min_tasks=1) == WritePlan((), ())


def test_boxes_grow_along_the_last_axes_first() -> None:
    a = _write(((1,) * 4, (1,) * 6), (1, 1))
    plan = plan_writes([a], target_task_bytes=12, min_tasks=1)
    assert _boxes(plan) == [
        [(0, (0, 0), (2, 6))],
        [(0, (2, 0), (4, 6))],
    ]
    plan = plan_writes([a], target_task_bytes=6, min_tasks=1)
    assert [t[0].start + t[0].stop for t in plan.tasks] == [
        (0, 0, 1, 6),
        (1, 0, 2, 6),
        (2, 0, 3, 6),
        (3, 0, 4, 6),
    ]
    plan = plan_writes([a], target_task_bytes=4, min_tasks=1)
    assert [t[0].start + t[0].stop for t in plan.tasks][:3] == [
        (0, 0, 1, 4),
        (0, 4, 1, 6),
        (1, 0, 2, 4),
    ]
    assert len(plan.tasks) == 8
    plan = plan_writes([a], target_task_bytes=30, min_tasks=1)
    assert [t[0].start + t[0].stop for t in plan.tasks] == [(0, 0, 4, 6)]
    assert plan.tasks[0][0].selection == (slice(0, 4), slice(0, 6))


def test_boxes_follow_runs_of_shared_units() -> None:
    # runs of 2 blocks on axis 1 (units of 4, blocks of 2): factors count runs, not blocks
    a = _write(((4, 4), (2,) * 6), (4, 4), start=(4, 0), shape=(12, 12))
    plan = plan_writes([a], group_shared=True, target_task_bytes=32, min_tasks=1)
    assert _boxes(plan) == [
        [(0, (0, 0), (1, 4))],
        [(0, (0, 4), (1, 6))],
        [(0, (1, 0), (2, 4))],
        [(0, (1, 4), (2, 6))],
    ]
    assert [p.selection for t in plan.tasks for p in t] == [
        (slice(4, 8), slice(0, 8)),
        (slice(4, 8), slice(8, 12)),
        (slice(8, 12), slice(0, 8)),
        (slice(8, 12), slice(8, 12)),
    ]
    assert [p.nbytes for t in plan.tasks for p in t] == [32, 16, 32, 16]
    plan = plan_writes([a], group_shared=True, target_task_bytes=64, min_tasks=1)
    assert _boxes(plan) == [[(0, (0, 0), (1, 6))], [(0, (1, 0), (2, 6))]]


def test_one_byte_blocks_and_empty_items() -> None:
    a = _write(((1,) * 12,), (1,))
    assert [t[0].nblocks for t in plan_writes([a], target_task_bytes=3, min_tasks=1).tasks] == [
        3
    ] * 4
    nothing = ArrayWrite("z", (12,), (1,), (slice(0, 12),), ((1,) * 12,), 0)
    plan = plan_writes([nothing], target_task_bytes=3, min_tasks=1)
    assert [[p.nblocks for p in t] for t in plan.tasks] == [[3, 3, 3, 3]]


def test_a_single_run_of_blocks_counts_all_its_blocks() -> None:
    # the last axis is one run of four blocks (one unit): a box takes 2 rows of 4 blocks
    a = _write(((1,) * 4, (1,) * 4), (1, 4))
    plan = plan_writes([a], group_shared=True, target_task_bytes=8, min_tasks=1)
    assert _boxes(plan) == [[(0, (0, 0), (2, 4))], [(0, (2, 0), (4, 4))]]


def test_an_empty_region_at_the_start_of_an_axis_is_fine() -> None:
    assert normalize_region((slice(0, 0),), (4,), (0,), "a") == (slice(0, 0),)
    assert normalize_region((slice(None, 0), slice(0, 4)), (4, 4), (0, 4), "a") == (
        slice(0, 0),
        slice(0, 4),
    )


def test_a_task_split_by_blocks_starts_counting_again() -> None:
    arrays = [_write(((4,),), (4,), name=f"v{i}") for i in range(6)]
    plan = plan_writes(arrays, min_tasks=1, max_blocks_per_task=3)
    assert [len(t) for t in plan.tasks] == [3, 3]


def test_overlaps_are_found_after_an_empty_region_and_in_either_order() -> None:
    a = _write(((4,),), (4,), shape=(8,))
    overlapping = _write(((2,),), (4,), start=(2,), shape=(8,))
    empty = ArrayWrite("a", (8,), (4,), (slice(5, 5),), ((),), 1)
    with pytest.raises(InvalidInputError) as info:
        plan_writes([empty, a, overlapping])
    assert "sources 1 and 2 both write to array 'a'" in str(info.value)
    # the unit boxes [1, 2) and [0, 1) touch but do not overlap, whichever comes first
    later = _write(((4,),), (4,), start=(4,), shape=(8,))
    assert _boxes(plan_writes([later, a], min_tasks=1)) == [[(0, (0,), (1,)), (1, (0,), (1,))]]
