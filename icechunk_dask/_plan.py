"""Which blocks each Dask write task computes and writes: pure planning, no graph.

A *plan* assigns every block of every source array to exactly one task, as
plain data, before anything is written (rechunker-style: the Dask graph
builder in :mod:`icechunk_dask.dask` only turns the plan into tasks).

Rules:

* A task writes whole Zarr *write units* (shards when the array is sharded,
  chunks otherwise). Two dask blocks whose boundary falls inside a write unit
  would each store their own version of that unit, so the planner refuses them
  (``group_shared=False``, xarray's ``safe_chunks``), or puts them in the same
  task (``group_shared=True``, the ``align_chunks`` behaviour, without
  rechunking). Region edges need no alignment: only this job writes there, and
  the task reads the rest of the unit from the session.
* Two writes into one array whose regions touch a common write unit are refused.
* Small blocks are batched: a task takes a box of neighbouring blocks of about
  :data:`TARGET_TASK_BYTES`, so that 4 KiB chunks do not pay one scheduler
  round-trip each, while there are still about :data:`MIN_TASKS` tasks to
  spread over the workers. Boxes of small arrays are packed together.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from icechunk_dask._exceptions import ErrorKind, InvalidInputError

__all__ = [
    "MAX_BLOCKS_PER_TASK",
    "MIN_TASKS",
    "TARGET_TASK_BYTES",
    "ArrayWrite",
    "Piece",
    "WritePlan",
    "normalize_region",
    "plan_writes",
]

#: A task computes and writes about this many bytes when blocks are smaller.
TARGET_TASK_BYTES = 4 * 2**20
#: Batching stops making tasks bigger once there would be fewer than this many.
MIN_TASKS = 32
#: Upper bound on the number of dask blocks one task computes.
MAX_BLOCKS_PER_TASK = 4096


@dataclass(frozen=True, slots=True)
class ArrayWrite:
    """One source array written into one region of one Zarr array.

    Attributes
    ----------
    name
        The Zarr array's path (for messages and overlap checks).
    shape
        The Zarr array's shape.
    unit
        The write unit along each axis: the shard shape, else the chunk shape.
    region
        Where the source goes, with concrete ``start``/``stop`` on every axis.
    chunks
        The source's dask chunks.
    itemsize
        Bytes per element of the source.
    sharded
        Whether ``unit`` is a shard shape (for messages).
    """

    name: str
    shape: tuple[int, ...]
    unit: tuple[int, ...]
    region: tuple[slice, ...]
    chunks: tuple[tuple[int, ...], ...]
    itemsize: int
    sharded: bool = False

    @property
    def nblocks(self) -> int:
        """Number of dask blocks of the source."""
        return math.prod(len(c) for c in self.chunks)


@dataclass(frozen=True, slots=True)
class Piece:
    """A box of neighbouring blocks of one source, written with one Zarr call.

    Attributes
    ----------
    array
        Index of the :class:`ArrayWrite` (and of the source/target pair).
    start, stop
        First and one-past-last block index along each axis.
    selection
        The part of the Zarr array that the box covers.
    nbytes
        Size of the box's data.
    """

    array: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    selection: tuple[slice, ...]
    nbytes: int

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def nblocks(self) -> int:
        """Number of blocks in the box."""
        return math.prod(self.grid)

    def blocks(self) -> Iterator[tuple[int, ...]]:
        """Block indices of the box, in C order."""
        return itertools.product(*(range(a, b) for a, b in zip(self.start, self.stop, strict=True)))


@dataclass(frozen=True, slots=True)
class WritePlan:
    """Every block of every source, assigned to one task.

    Attributes
    ----------
    arrays
        The writes, in the order of the sources.
    tasks
        For each task, the pieces it computes and writes.
    """

    arrays: tuple[ArrayWrite, ...]
    tasks: tuple[tuple[Piece, ...], ...]

    @property
    def nblocks(self) -> int:
        """Total number of dask blocks written."""
        return sum(p.nblocks for t in self.tasks for p in t)


def normalize_region(
    region: Sequence[slice] | None,
    shape: tuple[int, ...],
    source_shape: tuple[int, ...],
    name: str,
) -> tuple[slice, ...]:
    """Return ``region`` with concrete bounds, checked against both shapes.

    Parameters
    ----------
    region
        A tuple of slices with step 1 (``None`` or missing trailing axes mean
        the whole axis), or ``None`` for the whole array.
    shape
        The Zarr array's shape.
    source_shape
        The source's shape; each region extent must equal it.
    name
        The array's path, for messages.

    Returns
    -------
    tuple of slice
        One ``slice(start, stop)`` per axis.

    Raises
    ------
    InvalidInputError
        If the region is not slices with step 1, lies outside the array or
        does not match the source's shape.
    """
    given = tuple(region) if region is not None else ()
    if len(given) > len(shape):
        raise InvalidInputError(
            f"region {given!r} has {len(given)} axes but array {name!r} has {len(shape)}"
        )
    out: list[slice] = []
    for axis, size in enumerate(shape):
        sl = given[axis] if axis < len(given) else slice(None)
        if not isinstance(sl, slice):
            raise InvalidInputError(
                f"region for array {name!r} must be a tuple of slices, got {sl!r} on axis {axis}"
            )
        start, stop, step = sl.indices(size)
        if (
            step != 1
            or (sl.start is not None and sl.start < 0)
            or (sl.stop is not None and (sl.stop < 0 or sl.stop > size))
        ):
            raise InvalidInputError(
                f"region {sl!r} on axis {axis} of array {name!r} (length {size}) must be a "
                "slice with non-negative bounds inside the array and step 1"
            )
        out.append(slice(start, max(start, stop)))
    extents = tuple(s.stop - s.start for s in out)
    if extents != tuple(source_shape):
        raise InvalidInputError(
            f"the source has shape {tuple(source_shape)} but the region "
            f"{_fmt_region(tuple(out))} of array {name!r} has shape {extents}; "
            "they must be equal"
        )
    return tuple(out)


def plan_writes(
    arrays: Sequence[ArrayWrite],
    *,
    group_shared: bool = False,
    fixes: Sequence[str] = (),
    target_task_bytes: int = TARGET_TASK_BYTES,
    min_tasks: int = MIN_TASKS,
    max_blocks_per_task: int = MAX_BLOCKS_PER_TASK,
) -> WritePlan:
    """Assign every block of every source to one task.

    Parameters
    ----------
    arrays
        The writes.
    group_shared
        Put blocks that share a write unit in the same task instead of refusing.
    fixes
        Remedies listed in the error message for misaligned blocks.
    target_task_bytes, min_tasks, max_blocks_per_task
        Batching knobs (see the module docstring).

    Returns
    -------
    WritePlan
        The plan.

    Raises
    ------
    InvalidInputError
        If blocks of different tasks would share a write unit (kind
        ``unaligned-write``), or two writes into one array overlap.
    """
    _check_overlaps(arrays)
    groups = [_atomic_groups(a, group_shared, fixes) for a in arrays]
    total = sum(a.nblocks for a in arrays)
    max_blocks = max(1, min(max_blocks_per_task, math.ceil(total / max(1, min_tasks))))
    pieces: list[Piece] = []
    for index, (a, axis_groups) in enumerate(zip(arrays, groups, strict=True)):
        if a.nblocks == 0 or any(s.stop == s.start for s in a.region):
            continue
        block_bytes = math.prod(max(c) for c in a.chunks) * a.itemsize
        per_piece = max(1, min(max_blocks, target_task_bytes // max(1, block_bytes)))
        pieces.extend(_pieces(index, a, axis_groups, per_piece))
    tasks: list[tuple[Piece, ...]] = []
    current: list[Piece] = []
    nbytes = nblocks = 0
    for p in pieces:
        if current and (nbytes + p.nbytes > target_task_bytes or nblocks + p.nblocks > max_blocks):
            tasks.append(tuple(current))
            current, nbytes, nblocks = [], 0, 0
        current.append(p)
        nbytes += p.nbytes
        nblocks += p.nblocks
    if current:
        tasks.append(tuple(current))
    return WritePlan(tuple(arrays), tuple(tasks))


# -- alignment ------------------------------------------------------------------


def _atomic_groups(
    a: ArrayWrite, group_shared: bool, fixes: Sequence[str]
) -> list[list[tuple[int, int]]]:
    """Per axis, runs ``[first, stop)`` of blocks that must be written by one task."""
    out: list[list[tuple[int, int]]] = []
    for axis, (chunks, sl, unit) in enumerate(zip(a.chunks, a.region, a.unit, strict=True)):
        runs: list[tuple[int, int]] = []
        first, pos = 0, sl.start
        for i, c in enumerate(chunks[:-1]):
            pos += c
            if pos % unit:
                if not group_shared:
                    raise InvalidInputError(
                        _misaligned_message(a, axis, i, pos, fixes),
                        kind=ErrorKind.UNALIGNED_WRITE,
                    )
                continue
            runs.append((first, i + 1))
            first = i + 1
        runs.append((first, len(chunks)))
        out.append(runs)
    return out


def _misaligned_message(a: ArrayWrite, axis: int, i: int, pos: int, fixes: Sequence[str]) -> str:
    unit = a.unit[axis]
    lo = pos - pos % unit
    what = "shard" if a.sharded else "chunk"
    aligned = _aligned_chunks(a.chunks[axis], a.region[axis].start, unit)
    lines = [
        (
            f"Dask blocks {i} and {i + 1} on axis {axis} of the data written to array "
            f"{a.name!r} meet at index {pos}, inside the Zarr {what} [{lo}, {lo + unit}) "
            f"({what} size {unit} on that axis; dask chunks {_short(a.chunks[axis])}, region "
            f"{_fmt_region(a.region)}). Two tasks writing parts of one {what} in parallel "
            "would each store their own version of it, so nothing was written. To fix this, "
            "choose one of:"
        ),
        (
            f"- rechunk the dask array so that block boundaries fall on multiples of {unit} "
            f"(from the start of the array), e.g. chunks {_short(aligned)} on axis {axis};"
        ),
        *(f"- {fix}" for fix in fixes),
    ]
    return "\n".join(lines)


def _aligned_chunks(chunks: tuple[int, ...], start: int, unit: int) -> tuple[int, ...]:
    """A chunking of the same axis whose inner boundaries fall on multiples of ``unit``."""
    stop = start + sum(chunks)
    size = unit * max(1, max(chunks) // unit)
    edges = [start, *range((start // size + 1) * size, stop, size), stop]
    return tuple(b - a for a, b in itertools.pairwise(edges))


def _short(chunks: tuple[int, ...]) -> str:
    if len(chunks) <= 6:
        return repr(chunks)
    return f"({', '.join(map(str, chunks[:3]))}, ..., {', '.join(map(str, chunks[-2:]))})"


def _fmt_region(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in region) + "]"


def _check_overlaps(arrays: Sequence[ArrayWrite]) -> None:
    by_name: dict[str, list[int]] = {}
    for i, a in enumerate(arrays):
        by_name.setdefault(a.name, []).append(i)
    for name, idx in by_name.items():
        boxes = [(i, _unit_box(arrays[i])) for i in idx]
        for (i, bi), (j, bj) in itertools.combinations(boxes, 2):
            if bi is None or bj is None:
                continue
            if all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(bi, bj, strict=True)):
                raise InvalidInputError(
                    f"sources {i} and {j} both write to array {name!r}, in regions "
                    f"{_fmt_region(arrays[i].region)} and {_fmt_region(arrays[j].region)} that "
                    "share Zarr chunks; each chunk must be written by one task. Nothing was "
                    "written. Write disjoint regions aligned to whole chunks, or combine the "
                    "sources into one array first",
                    kind=ErrorKind.UNALIGNED_WRITE,
                )


def _unit_box(a: ArrayWrite) -> list[tuple[int, int]] | None:
    if any(s.stop == s.start for s in a.region):
        return None
    return [(s.start // u, -(-s.stop // u)) for s, u in zip(a.region, a.unit, strict=True)]


# -- batching -------------------------------------------------------------------


def _pieces(
    index: int, a: ArrayWrite, axis_groups: list[list[tuple[int, int]]], per_piece: int
) -> Iterator[Piece]:
    """Cut the block grid into boxes of about ``per_piece`` blocks (last axes first)."""
    ndim = len(a.chunks)
    factors = [1] * ndim
    remaining = per_piece
    for axis in reversed(range(ndim)):
        runs = axis_groups[axis]
        avg = max(1, len(a.chunks[axis]) // max(1, len(runs)))
        factors[axis] = max(1, min(len(runs), remaining // avg))
        remaining = max(1, remaining // (factors[axis] * avg))
    per_axis: list[list[tuple[int, int]]] = []
    for axis in range(ndim):
        runs, f = axis_groups[axis], factors[axis]
        per_axis.append(
            [(runs[k][0], runs[min(k + f, len(runs)) - 1][1]) for k in range(0, len(runs), f)]
        )
    offsets = [list(itertools.accumulate(c, initial=0)) for c in a.chunks]
    for box in itertools.product(*per_axis):
        start = tuple(b[0] for b in box)
        stop = tuple(b[1] for b in box)
        selection = tuple(
            slice(sl.start + off[b0], sl.start + off[b1])
            for sl, off, b0, b1 in zip(a.region, offsets, start, stop, strict=True)
        )
        nbytes = math.prod(s.stop - s.start for s in selection) * a.itemsize
        yield Piece(index, start, stop, selection, nbytes)
