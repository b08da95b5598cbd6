"""The write graph: tasks that write blocks and return change records, and their merge tree.

:func:`build_write_graph` turns a :class:`~icechunk_dask._plan.WritePlan` into
one task per planned box of blocks. A task computes its blocks (the source
tasks that only it needs are inlined, so small blocks do not cost a scheduler
round-trip each), writes them through its own fork of the session and returns
the fork's change record: write and extract in the same task, so a retried or
duplicated task is harmless. A tree of pure merges (fan-in ``split_every``)
ends in one root task that also stores the job's result when the job must
survive its client (:mod:`icechunk_dask._jobs`). Boxes of the chunk grid
that the job fills with many references get their manifest built by the
lowest task of the tree that holds all of them (:mod:`icechunk_dask._buildboxes`).

Everything here that runs in tasks is a module-level function (importable on
workers) and never mutates its inputs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key
from zarr.storage import StorePath

from icechunk_dask._buildboxes import BoxTarget, Builds, Where, assign_boxes, build_layers, min_refs
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._compat.dask import (
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    array_optimize,
    concatenate3,
    convert_legacy_graph,
    execute_graph,
)
from icechunk_dask._compat.zarr import AsyncArray
from icechunk_dask._encode import encode_chunks
from icechunk_dask._flush import planned_layout
from icechunk_dask._jobs import load_task_records, store_result, store_task_record
from icechunk_dask._plan import Piece, WritePlan
from icechunk_dask._prebuilt import merge_records
from icechunk_dask._session import Session
from icechunk_dask._shipgraph import Shipped
from icechunk_dask._sync import run

if TYPE_CHECKING:
    import dask.array as da

    from icechunk_dask._compat.zarr import ArrayConfig, ArrayV3Metadata

__all__ = [
    "TargetSpec",
    "WriteContext",
    "build_write_graph",
    "merge_tree",
]

_WRITE = "icechunk-write-"

#: How many boxes one task writes at once (zarr writes the chunks of each box concurrently).
_CONCURRENT_PIECES = 8


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A Zarr array to write, re-opened in each task on that task's fork."""

    path: str
    metadata: ArrayV3Metadata
    config: ArrayConfig


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What every write task shares.

    Attributes
    ----------
    session : Session
        The session every task forks.
    targets : tuple of TargetSpec
        The arrays written.
    job : str
        The job's id (see :mod:`icechunk_dask._jobs`).
    keep_tasks : bool
        Store each task's record (a resumable job).
    keep_result : bool
        Store the merged result (a job that must survive its client: compute=False, resume).
    boxes : tuple of (BoxTarget or None)
        Per target, its manifest layout (``None``: manifests are left to the commit).
    builds : dict
        Which task builds which box's manifest (see :mod:`icechunk_dask._buildboxes`).
    """

    session: Session
    targets: tuple[TargetSpec, ...]
    job: str = ""
    keep_tasks: bool = False
    keep_result: bool = False
    boxes: tuple[BoxTarget | None, ...] = ()
    builds: Builds = field(default_factory=dict)


def box_targets(session: Session, targets: Sequence[TargetSpec]) -> tuple[BoxTarget | None, ...]:
    """The manifest layout the commit will give each target (as ``session`` sees it now)."""
    ws = session._workspace
    snap = run(ws.assets.get_snapshot(ws.base, expired_ok=True))
    meta = {**snap.meta, **ws.inh_meta, **ws.cs.meta}
    view = {k: v for k, v in meta.items() if v is not None}
    cleared = ws.inh_cleared | ws.cs.cleared
    out: list[BoxTarget | None] = []
    for t in targets:
        layout = planned_layout(snap, view, cleared, ws.assets.config, t.path)
        out.append(None if layout is None else BoxTarget(t.path, *layout))
    return tuple(out)


def build_write_graph(
    plan: WritePlan,
    sources: Sequence[da.Array],
    ctx: WriteContext,
    split_every: int,
    done: frozenset[int] = frozenset(),
) -> Delayed:
    """Turn ``plan`` into tasks that write and return records, plus the merge tree.

    Parameters
    ----------
    plan
        Which blocks each task computes and writes.
    sources
        The dask arrays, in the plan's order.
    ctx
        The session that every task forks, and the target arrays.
    split_every
        Fan-in of the merge tree.
    done
        Tasks of a resumed job whose records are stored: not computed again, their
        records are read by the root task.

    Returns
    -------
    dask.delayed.Delayed
        Computes to the merged :class:`ChangeSet` of all tasks plus ``ctx.session``'s own
        changes.
    """
    boxes = box_targets(ctx.session, ctx.targets)
    threshold = min_refs(ctx.session._workspace.assets.config)
    builds = assign_boxes(plan, boxes, split_every, done, threshold)
    ctx = replace(ctx, boxes=boxes, builds=builds)
    tok = uuid.uuid4().hex
    ctx_key = f"icechunk-session-{tok}"
    write_name = f"{_WRITE}{tok}"
    names = [s.name for s in sources]
    dsk: dict[Key, GraphNode] = {ctx_key: DataNode(ctx_key, ctx)}
    leaves: list[TaskRef] = []
    for t in range(len(plan.tasks)):
        if t in done:
            continue
        keys = tuple(tuple((names[p.array], *idx) for idx in p.blocks()) for p in plan.tasks[t])
        key = (write_name, t)
        # the blocks are inputs for now; whoever materialises the graph (the scheduler, on a
        # cluster) inlines the source tasks only this write task needs (optimize_write_graph)
        blocks = tuple(k for piece_keys in keys for k in piece_keys)
        dsk[key] = Task(
            key,
            _write_task,
            TaskRef(ctx_key),
            t,
            plan.tasks[t],
            keys,
            {},
            blocks,
            *(TaskRef(k) for k in blocks),
        )
        leaves.append(TaskRef(key))
    # the root also carries the base fork's own changes (to_zarr's metadata and eager writes)
    # and reads the stored records of the tasks a resumed job does not compute again
    root = merge_tree(dsk, leaves, tok, split_every, ctx_key=ctx_key)
    final = f"icechunk-result-{tok}"
    dsk[final] = Task(
        final, _finish_job, TaskRef(ctx_key), ctx.session.changes(), sorted(done), TaskRef(root)
    )
    graph = HighLevelGraph.from_collections(
        final, dsk, dependencies=[cast("Any", s) for s in sources]
    )
    return _WriteJob(final, graph)  # type: ignore[no-untyped-call]


class _WriteJob(Delayed):
    """The lazy write job: a Delayed whose graph optimisation inlines the source tasks."""

    __slots__ = ()

    @staticmethod
    def __dask_optimize__(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return optimize_write_graph(dsk, keys, **kwargs)


def optimize_write_graph(dsk: Any, keys: Any, **kwargs: Any) -> dict[Key, GraphNode]:
    """Materialise a write job's graph, inlining into each write task what only it needs.

    Runs where the graph is materialised: on the scheduler with distributed
    (so that the client only builds a few small layers), in the calling
    thread otherwise. The sources are optimised as dask optimises arrays
    (blockwise fusion, culling) with their blocks as outputs. Each write
    task's private subgraph and block keys are :class:`Shipped`: once sent to a
    worker, the scheduler keeps them only as compressed bytes.
    """
    graph: HighLevelGraph = (
        dsk
        if isinstance(dsk, HighLevelGraph)
        else HighLevelGraph.from_collections(str(uuid.uuid4()), dict(dsk), dependencies=())
    )
    ours: dict[Key, GraphNode] = {}
    source_layers = {}
    for name, layer in graph.layers.items():
        if name.startswith("icechunk-"):
            ours.update(convert_legacy_graph(dict(layer)))
        else:
            source_layers[name] = layer
    writes = [k for k in ours if isinstance(k, tuple) and str(k[0]).startswith(_WRITE)]
    blocks = {b for k in writes for b in cast("Task", ours[k]).args[5]}
    src: dict[Key, GraphNode] = {}
    if source_layers:
        deps = {
            n: {d for d in graph.dependencies.get(n, set()) if d in source_layers}
            for n in source_layers
        }
        src = convert_legacy_graph(
            array_optimize(HighLevelGraph(source_layers, deps), list(blocks))
        )
    consumers: Counter[Key] = Counter()
    for node in src.values():
        consumers.update(node.dependencies)
    for k in writes:
        consumers.update(set(cast("Task", ours[k]).args[5]))
    inlined: set[Key] = set()
    for k in writes:
        task = cast("Task", ours[k])
        ctx_ref, index, pieces, piece_keys = task.args[:4]
        inner, external = _private_subgraph(src, set(task.args[5]), consumers)
        inlined.update(inner)
        ours[k] = Task(
            k,
            _write_task,
            ctx_ref,
            index,
            pieces,
            Shipped(piece_keys),
            Shipped(inner),
            external,
            *(TaskRef(d) for d in external),
        )
    ours.update((k, v) for k, v in src.items() if k not in inlined)
    return ours


def _private_subgraph(
    src: Mapping[Key, GraphNode], blocks: set[Key], consumers: Counter[Key]
) -> tuple[dict[Key, GraphNode], tuple[Key, ...]]:
    """The source tasks only this write task needs (inlined), and its external inputs."""
    seen: Counter[Key] = Counter()
    inner: dict[Key, GraphNode] = {}
    stack = []
    for k in blocks:
        seen[k] += 1
        if seen[k] == consumers[k] and k in src:
            stack.append(k)
    while stack:
        k = stack.pop()
        node = inner[k] = src[k]
        for d in node.dependencies:
            seen[d] += 1
            if seen[d] == consumers[d] and d in src:
                stack.append(d)
    external = {d for node in inner.values() for d in node.dependencies if d not in inner}
    external.update(k for k in blocks if k not in inner)
    return inner, tuple(external)


# -- what runs in the tasks ------------------------------------------------------------


def _write_task(
    ctx: WriteContext,
    index: int,
    pieces: tuple[Piece, ...],
    keys: tuple[tuple[Key, ...], ...] | Shipped[tuple[tuple[Key, ...], ...]],
    inner: dict[Key, GraphNode] | Shipped[dict[Key, GraphNode]],
    external: tuple[Key, ...],
    *values: Any,
) -> ChangeSet:
    """Compute the blocks, write them through a new fork, return (and keep) the fork's record."""
    cache: dict[Key, Any] = dict(zip(external, values, strict=True))
    # an optimised graph ships them (_shipgraph); a graph computed unoptimised has them bare
    keys = keys.get() if isinstance(keys, Shipped) else keys
    inner = inner.get() if isinstance(inner, Shipped) else inner
    if inner:
        wanted = {k for ks in keys for k in ks}
        cache = dict(execute_graph(inner, cache=cache, keys=wanted))
    fork = ctx.session._fork()
    arrays: dict[int, AsyncArray[Any]] = {}
    jobs: list[tuple[AsyncArray[Any], tuple[slice, ...], Any]] = []
    encoded: list[tuple[str, bytes | None]] = []
    for piece, piece_keys in zip(pieces, keys, strict=True):
        if piece.array not in arrays:
            t = ctx.targets[piece.array]
            arrays[piece.array] = AsyncArray(t.metadata, StorePath(fork.store, t.path), t.config)
        data = _assemble(piece.grid, [cache[k] for k in piece_keys])
        # whole chunks are encoded here, in the task's thread; anything else goes to zarr
        chunks = encode_chunks(arrays[piece.array], piece.selection, data)
        if chunks is None:
            jobs.append((arrays[piece.array], piece.selection, data))
        else:
            encoded.extend(chunks)
    del cache
    run(_set_all(jobs, fork, encoded))
    record = fork.changes()
    build = ctx.builds.get(("leaf", index))
    if build:
        run(build_layers(fork._workspace.assets, record, build, ctx.boxes))
    if ctx.keep_tasks:
        run(store_task_record(fork._workspace.assets, ctx.job, index, record))
    return record


def _assemble(grid: tuple[int, ...], blocks: list[Any]) -> Any:
    if len(blocks) == 1:
        return blocks[0]

    def nest(items: list[Any], dims: tuple[int, ...]) -> Any:
        if not dims:
            return items[0]
        n = len(items) // dims[0]
        return [nest(items[i * n : (i + 1) * n], dims[1:]) for i in range(dims[0])]

    return concatenate3(nest([np.asarray(b) for b in blocks], grid))


async def _set_all(
    jobs: list[tuple[AsyncArray[Any], tuple[slice, ...], Any]],
    fork: Session,
    encoded: list[tuple[str, bytes | None]],
) -> None:
    sem = asyncio.Semaphore(_CONCURRENT_PIECES)

    async def one(array: AsyncArray[Any], selection: tuple[slice, ...], data: Any) -> None:
        async with sem:
            await array.setitem(selection, data)

    async def store(key: str, value: bytes | None) -> None:
        ws = fork._workspace
        await (ws.remove(key) if value is None else ws.write(key, value))

    await asyncio.gather(*(one(*job) for job in jobs), *(store(*c) for c in encoded))


def _merge_records(*records: ChangeSet | None) -> ChangeSet | None:
    """Merge change records (pure: the inputs are left untouched); ``None`` if there are none."""
    present = [r for r in records if r is not None]
    return ChangeSet.merge_all(present) if present else None


def _merge_and_build(
    ctx: WriteContext, where: Where, *records: ChangeSet | None
) -> ChangeSet | None:
    """Merge a job's records, then build the manifests of the boxes they now hold whole."""
    present = [r for r in records if r is not None]
    if not present:
        return None
    assets = ctx.session._workspace.assets
    merged = run(merge_records(assets, present[0], present[1:]))
    build = ctx.builds.get(where)
    if build:
        run(build_layers(assets, merged, build, ctx.boxes))
    return merged


def _finish_job(
    ctx: WriteContext, own: ChangeSet, done: list[int], merged: ChangeSet | None
) -> ChangeSet:
    """The job's result: the tasks' records, the stored ones of a resumed job, the base's own."""
    assets = ctx.session._workspace.assets
    stored = run(load_task_records(assets, ctx.job, done)) if done else []
    for rec in stored:
        # records of a resumed job may predate commits that landed since (the plan matched,
        # so they write the same regions of the same arrays): they apply on the new base
        rec.base = own.base
    result = run(merge_records(assets, own, [*stored, *([merged] if merged is not None else [])]))
    build = ctx.builds.get(("finish",))
    if build:
        run(build_layers(assets, result, build, ctx.boxes))
    result.jobs.add(ctx.job)
    if ctx.keep_result:
        run(store_result(assets, ctx.job, result))
    return result


def merge_tree(
    dsk: dict[Key, GraphNode],
    leaves: list[TaskRef],
    tok: str,
    split_every: int,
    *extra: ChangeSet,
    ctx_key: str | None = None,
) -> str:
    """Add a tree of merge tasks (fan-in ``split_every``) over ``leaves``; return its root key.

    With ``ctx_key`` (a write job's :class:`WriteContext`), the merge tasks also
    build the manifests the job's plan assigned to them.
    """

    def merge(key: Key, where: Where, inputs: list[Any]) -> Task:
        if ctx_key is None:
            return Task(key, _merge_records, *inputs)
        return Task(key, _merge_and_build, TaskRef(ctx_key), where, *inputs)

    level = 0
    while len(leaves) > split_every:
        merged = []
        for i in range(0, len(leaves), split_every):
            key = (f"icechunk-merge-{tok}", level, i // split_every)
            dsk[key] = merge(key, ("merge", level, i // split_every), leaves[i : i + split_every])
            merged.append(TaskRef(key))
        leaves, level = merged, level + 1
    root = f"icechunk-changes-{tok}"
    dsk[root] = merge(root, ("root",), [*extra, *leaves])
    return root
