"""The pure write planner: every block in exactly one task, no chunk shared between tasks."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icechunk_dask import ErrorKind, InvalidInputError
from icechunk_dask._plan import ArrayWrite, WritePlan, normalize_region, plan_writes


@st.composite
def array_writes(draw: st.DrawFn) -> ArrayWrite:
    ndim = draw(st.integers(1, 3))
    shape, unit, region, chunks = [], [], [], []
    for _ in range(ndim):
        size = draw(st.integers(1, 30))
        start = draw(st.integers(0, size - 1))
        stop = draw(st.integers(start + 1, size))
        parts: list[int] = []
        left = stop - start
        while left:
            c = draw(st.integers(1, left))
            parts.append(c)
            left -= c
        shape.append(size)
        unit.append(draw(st.integers(1, 7)))
        region.append(slice(start, stop))
        chunks.append(tuple(parts))
    return ArrayWrite(
        name="a",
        shape=tuple(shape),
        unit=tuple(unit),
        region=tuple(region),
        chunks=tuple(chunks),
        itemsize=draw(st.sampled_from([1, 4, 8])),
    )


def _units(a: ArrayWrite, start: tuple[int, ...], stop: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The write units touched by the blocks [start, stop) of ``a``."""
    offsets = [list(itertools.accumulate(c, initial=0)) for c in a.chunks]
    ranges = []
    for sl, off, b0, b1, u in zip(a.region, offsets, start, stop, a.unit, strict=True):
        lo, hi = sl.start + off[b0], sl.start + off[b1]
        ranges.append(range(lo // u, -(-hi // u)))
    return set(itertools.product(*ranges))


def _check_plan(plan: WritePlan, a: ArrayWrite) -> None:
    seen: list[tuple[int, ...]] = [b for task in plan.tasks for p in task for b in p.blocks()]
    assert sorted(seen) == sorted(itertools.product(*(range(len(c)) for c in a.chunks)))
    owner: dict[tuple[int, ...], int] = {}
    offsets = [list(itertools.accumulate(c, initial=0)) for c in a.chunks]
    for t, task in enumerate(plan.tasks):
        for p in task:
            for sl, off, b0, b1, r in zip(
                p.selection, offsets, p.start, p.stop, a.region, strict=True
            ):
                assert (sl.start, sl.stop) == (r.start + off[b0], r.start + off[b1])
            assert p.nbytes == math.prod(s.stop - s.start for s in p.selection) * a.itemsize
            for u in _units(a, p.start, p.stop):
                assert owner.setdefault(u, t) == t, f"unit {u} written by tasks {owner[u]} and {t}"


@settings(max_examples=300, deadline=None)
@given(a=array_writes(), target=st.integers(1, 4096), min_tasks=st.integers(1, 40))
def test_grouped_plans_cover_every_block_once_and_never_share_units(
    a: ArrayWrite, target: int, min_tasks: int
) -> None:
    plan = plan_writes([a], group_shared=True, target_task_bytes=target, min_tasks=min_tasks)
    _check_plan(plan, a)


@settings(max_examples=300, deadline=None)
@given(a=array_writes(), target=st.integers(1, 4096))
def test_strict_plans_refuse_exactly_the_misaligned_layouts(a: ArrayWrite, target: int) -> None:
    misaligned = any(
        pos % u
        for c, sl, u in zip(a.chunks, a.region, a.unit, strict=True)
        for pos in itertools.accumulate(c[:-1], initial=sl.start)
        if pos != sl.start
    )
    if misaligned:
        with pytest.raises(InvalidInputError) as info:
            plan_writes([a], target_task_bytes=target)
        assert info.value.kind == ErrorKind.UNALIGNED_WRITE
    else:
        _check_plan(plan_writes([a], target_task_bytes=target), a)


def test_small_blocks_are_batched_and_big_ones_are_not() -> None:
    small = ArrayWrite("s", (1000, 1000), (10, 10), (slice(0, 1000),) * 2, ((10,) * 100,) * 2, 4)
    plan = plan_writes([small], target_task_bytes=2**20, min_tasks=32)
    assert len(plan.tasks) <= 40 and plan.nblocks == 10_000
    big = ArrayWrite("b", (4096,), (1024,), (slice(0, 4096),), ((1024,) * 4,), 2**14)
    plan = plan_writes([big], target_task_bytes=2**20)
    assert [len(t) for t in plan.tasks] == [1, 1, 1, 1]


def test_small_arrays_are_packed_into_one_task() -> None:
    arrays = [ArrayWrite(f"v{i}", (4,), (4,), (slice(0, 4),), ((4,),), 8) for i in range(10)]
    plan = plan_writes(arrays, min_tasks=1)
    assert len(plan.tasks) == 1 and {p.array for p in plan.tasks[0]} == set(range(10))


def test_error_message_names_the_place_and_the_fixes() -> None:
    a = ArrayWrite("temp", (100,), (10,), (slice(0, 100),), ((15, 85),), 8)
    with pytest.raises(InvalidInputError) as info:
        plan_writes([a], fixes=["pass align_chunks=True."])
    msg = str(info.value)
    assert "'temp'" in msg and "blocks 0 and 1 on axis 0" in msg and "[10, 20)" in msg
    assert "multiples of 10" in msg and "e.g. chunks (80, 20) on axis 0" in msg
    assert msg.endswith("- pass align_chunks=True.")


def test_normalize_region() -> None:
    assert normalize_region(None, (10, 5), (10, 5), "a") == (slice(0, 10), slice(0, 5))
    assert normalize_region((slice(2, None),), (10, 5), (8, 5), "a") == (slice(2, 10), slice(0, 5))
    with pytest.raises(InvalidInputError, match="shape"):
        normalize_region((slice(0, 3),), (10,), (4,), "a")
    with pytest.raises(InvalidInputError, match="step 1"):
        normalize_region((slice(0, 10, 2),), (10,), (5,), "a")
    with pytest.raises(InvalidInputError, match="tuple of slices"):
        normalize_region((3,), (10,), (1,), "a")  # type: ignore[arg-type]
