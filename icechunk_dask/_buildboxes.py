"""Manifests built on the workers: which task of a write job builds which box, and building it.

A commit stores one manifest layer per box of an array's chunk grid that it
changed (:mod:`icechunk_dask._flush`). For a big Dask job that work, and the
chunk references it reads, would all land on the client. Instead the job
plans, before anything runs, which boxes it writes and which of its tasks
writes into each; the box is then built by the lowest task of the tree
reduction whose inputs hold every write of the job into it (the write task
itself when it is the only writer, else a merge task, else the root). That
task stores the box's references as a manifest layer and passes the layer
on instead of the references: what reaches the client is O(manifests).

Only boxes that receive at least :func:`min_refs` references from the job
are built this way; smaller ones (an append of a few steps) stay with the
commit, which merges them into the box's newest layer.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._layers import LayerWriter
from icechunk_dask._plan import WritePlan
from icechunk_dask.format import Encoding, NodeManifests, RepoConfig, group_boxes

__all__ = ["BoxTarget", "Builds", "Where", "assign_boxes", "build_layers", "min_refs"]

#: Which task builds a box: ``("leaf", task)``, ``("merge", level, index)``, ``("root",)``
#: (the tree's last merge) or ``("finish",)`` (the job's last task, for resumed jobs).
Where = tuple[str | int, ...]
#: Boxes each task builds: where -> ((target index, box key), ...).
Builds = dict[Where, tuple[tuple[int, str], ...]]


@dataclass(frozen=True, slots=True)
class BoxTarget:
    """A target array's manifest layout, as the commit will use it.

    Attributes
    ----------
    path : str
        The array's path (its node).
    encoding : tuple of (str, str)
        Its chunk key encoding.
    split : tuple of int
        Box extents in chunks per dimension.
    """

    path: str
    encoding: Encoding
    split: tuple[int, ...]


def min_refs(config: RepoConfig) -> int:
    """References a job must write into a box for a worker to build its manifest."""
    return max(1, config.manifest_box_refs // 8)


def _piece_boxes(
    selection: tuple[slice, ...], unit: tuple[int, ...], split: tuple[int, ...]
) -> list[tuple[str, int]]:
    """The boxes a region of an array touches, with how many chunk keys it has in each."""
    per_dim: list[list[tuple[int, int]]] = []
    for sl, u, s in zip(selection, unit, split, strict=True):
        lo, hi = sl.start // u, -(-sl.stop // u)
        if hi <= lo:
            return []
        per_dim.append(
            [(b, min(hi, (b + 1) * s) - max(lo, b * s)) for b in range(lo // s, (hi - 1) // s + 1)]
        )
    return [
        (".".join(str(b) for b, _ in combo), math.prod(n for _, n in combo))
        for combo in itertools.product(*per_dim)
    ]


def _levels(leaves: int, split_every: int) -> int:
    """Merge levels below the root of a tree over ``leaves`` (see ``merge_tree``)."""
    levels = 0
    while leaves > split_every:
        leaves = -(-leaves // split_every)
        levels += 1
    return levels


def assign_boxes(
    plan: WritePlan,
    targets: Sequence[BoxTarget | None],
    split_every: int,
    done: frozenset[int],
    threshold: int,
) -> Builds:
    """Decide which task of the job's graph builds the manifest of each big box.

    Parameters
    ----------
    plan : WritePlan
        The job's plan (tasks in leaf order).
    targets : sequence of BoxTarget or None
        Per array of the plan, its layout (``None``: never built on workers).
    split_every : int
        Fan-in of the merge tree.
    done : frozenset of int
        Tasks of a resumed job whose records are stored (merged by the last task).
    threshold : int
        Build only boxes that receive at least this many references from the job.

    Returns
    -------
    Builds
        Where -> the boxes that task builds.
    """
    touched: dict[tuple[int, str], list[int]] = {}
    counts: dict[tuple[int, str], int] = {}
    for t, pieces in enumerate(plan.tasks):
        for piece in pieces:
            target = targets[piece.array]
            if target is None:
                continue
            unit = plan.arrays[piece.array].unit
            for box, n in _piece_boxes(piece.selection, unit, target.split):
                key = (piece.array, box)
                touched.setdefault(key, []).append(t)
                counts[key] = counts.get(key, 0) + n
    position = {t: i for i, t in enumerate(t for t in range(len(plan.tasks)) if t not in done)}
    levels = _levels(len(position), split_every)
    out: dict[Where, list[tuple[int, str]]] = {}
    for key, tasks in touched.items():
        if counts[key] < threshold:
            continue
        where: Where
        if any(t in done for t in tasks):
            where = ("finish",)
        else:
            lo, hi = position[min(tasks)], position[max(tasks)]
            where = ("root",)
            for level in range(levels + 1):
                width = split_every**level
                if lo // width == hi // width:
                    where = (
                        ("leaf", min(tasks)) if level == 0 else ("merge", level - 1, lo // width)
                    )
                    break
        out.setdefault(where, []).append(key)
    return {w: tuple(boxes) for w, boxes in out.items()}


async def build_layers(
    assets: AssetManager,
    record: ChangeSet,
    boxes: Sequence[tuple[int, str]],
    targets: Sequence[BoxTarget | None],
) -> None:
    """Store the references of ``boxes`` in ``record`` as manifest layers, in place.

    The record's entries of each box become one layer (stacked on any layer the
    record already holds for it: the entries are newer) and leave ``record.chunks``.
    """
    by_target: dict[int, set[str]] = {}
    for index, box in boxes:
        by_target.setdefault(index, set()).add(box)
    writer = LayerWriter(assets)
    jobs = []
    chunks = record.chunks
    for index, wanted in by_target.items():
        target = targets[index]
        if target is None:
            continue
        head = f"{target.path}/" if target.path else ""
        keys = [k for k in chunks if k.startswith(head)]
        if not keys:
            continue
        names, order, bounds = group_boxes(
            [k[len(head) :] for k in keys], target.encoding, target.split
        )
        idx = order.tolist()
        for j, name in enumerate(names):
            if name in wanted:
                part = [keys[i] for i in idx[bounds[j] : bounds[j + 1]]]
                jobs.append((target, name, part))
    layers = await asyncio.gather(
        *(
            writer.write(
                t.path, box, part, [chunks[k] for k in part], f"{t.path}/" if t.path else ""
            )
            for t, box, part in jobs
        )
    )
    out: dict[str, NodeManifests] = dict(record.layers)
    for (target, box, part), layer in zip(jobs, layers, strict=True):
        for k in part:
            del chunks[k]
        nm = out.get(target.path) or NodeManifests(target.encoding, target.split, {})
        stacked = {**nm.boxes, box: (layer, *nm.boxes.get(box, ()))}
        out[target.path] = NodeManifests(target.encoding, target.split, stacked)
    record.layers = out
