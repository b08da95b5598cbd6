"""The Dask graphs: write tasks that return change records, merge trees, rerouting.

Two builders share one merge tree of pure :meth:`ChangeSet.merge_all` tasks:

* :func:`build_write_graph` turns a :class:`~icechunk_dask._plan.WritePlan`
  into one task per planned box of blocks. A task computes its blocks (the
  source tasks that only it needs are inlined, so small blocks do not cost a
  scheduler round-trip each), writes them through its own fork of the
  session and returns the fork's change record: write and extract in the
  same task, so a retried or duplicated task is harmless.
* :func:`reroute_session_writes` rewrites a materialised graph (plain
  ``ds.to_zarr(session.store)`` on a cluster) so that tasks holding copies of
  a session also return those copies' change records.

Everything here that runs in tasks is a module-level function (importable on
workers) and never mutates its inputs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from dask.typing import Key
from zarr.storage import StorePath

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._compat.dask import (
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    collections_to_expr,
    concatenate3,
    convert_legacy_graph,
    execute_graph,
)
from icechunk_dask._compat.zarr import AsyncArray
from icechunk_dask._encode import encode_chunks
from icechunk_dask._plan import Piece, WritePlan
from icechunk_dask._session import Session
from icechunk_dask._store import SessionStore
from icechunk_dask._sync import run

if TYPE_CHECKING:
    import dask.array as da

    from icechunk_dask._compat.zarr import ArrayConfig, ArrayV3Metadata

__all__ = [
    "TargetSpec",
    "WriteContext",
    "build_write_graph",
    "reroute_session_writes",
]

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
    """What every write task shares: the session to fork and the target arrays."""

    session: Session
    targets: tuple[TargetSpec, ...]


def build_write_graph(
    plan: WritePlan, sources: Sequence[da.Array], ctx: WriteContext, split_every: int
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

    Returns
    -------
    dask.delayed.Delayed
        Computes to the merged :class:`ChangeSet` of all tasks plus ``ctx.session``'s own
        changes.
    """
    tok = uuid.uuid4().hex
    ctx_key = f"icechunk-session-{tok}"
    write_name = f"icechunk-write-{tok}"
    src: dict[Key, GraphNode] = (
        convert_legacy_graph(
            collections_to_expr(list(sources), optimize_graph=True).__dask_graph__()
        )
        if sources
        else {}
    )
    names = [s.name for s in sources]
    task_keys = [
        tuple(tuple((names[p.array], *idx) for idx in p.blocks()) for p in pieces)
        for pieces in plan.tasks
    ]
    consumers: Counter[Key] = Counter()
    for node in src.values():
        consumers.update(node.dependencies)
    for keys in task_keys:
        consumers.update({k for piece_keys in keys for k in piece_keys})
    dsk: dict[Key, GraphNode] = {ctx_key: DataNode(ctx_key, ctx)}
    inlined: set[Key] = set()
    leaves: list[TaskRef] = []
    for t, (pieces, keys) in enumerate(zip(plan.tasks, task_keys, strict=True)):
        inner, external = _private_subgraph(src, {k for ks in keys for k in ks}, consumers)
        inlined.update(inner)
        key = (write_name, t)
        dsk[key] = Task(
            key,
            _write_task,
            TaskRef(ctx_key),
            pieces,
            keys,
            inner,
            external,
            *(TaskRef(k) for k in external),
        )
        leaves.append(TaskRef(key))
    dsk.update((k, v) for k, v in src.items() if k not in inlined)
    # the root also carries the base fork's own changes (to_zarr's metadata and eager writes)
    root = _merge_tree(dsk, leaves, tok, split_every, ctx.session.changes())
    return Delayed(root, HighLevelGraph.from_collections(root, dsk, dependencies=()))


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
    pieces: tuple[Piece, ...],
    keys: tuple[tuple[Key, ...], ...],
    inner: dict[Key, GraphNode],
    external: tuple[Key, ...],
    *values: Any,
) -> ChangeSet:
    """Compute the blocks, write them through a new fork, return the fork's record."""
    cache: dict[Key, Any] = dict(zip(external, values, strict=True))
    if inner:
        wanted = {k for ks in keys for k in ks}
        cache = dict(execute_graph(inner, cache=cache, keys=wanted))
    fork = ctx.session.fork()
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
    return fork.changes()


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


def _merge_records(*records: ChangeSet | None) -> ChangeSet:
    """Merge change records (pure: the inputs are left untouched)."""
    return ChangeSet.merge_all(r for r in records if r is not None)


def _merge_tree(
    dsk: dict[Key, GraphNode],
    leaves: list[TaskRef],
    tok: str,
    split_every: int,
    *extra: ChangeSet,
) -> str:
    """Add a tree of merge tasks (fan-in ``split_every``) over ``leaves``; return its root key."""
    level = 0
    while len(leaves) > split_every:
        merged = []
        for i in range(0, len(leaves), split_every):
            key = (f"icechunk-merge-{tok}", level, i // split_every)
            dsk[key] = Task(key, _merge_records, *leaves[i : i + split_every])
            merged.append(TaskRef(key))
        leaves, level = merged, level + 1
    root = f"icechunk-changes-{tok}"
    dsk[root] = Task(root, _merge_records, *extra, *leaves)
    return root


# -- rerouting a plain graph ---------------------------------------------------------


def reroute_session_writes(
    dsk: dict[Key, GraphNode], session: Session, *, split_every: int
) -> tuple[dict[Key, GraphNode], Key] | None:
    """Make the tasks that hold ``session`` (or its store) also return their change records.

    Each such task (and each task that receives a graph value holding the
    session) becomes a task that runs the original and returns ``(result,
    record)``, where ``record`` merges the changes of the session copies it
    used (unpickled copies made under ``allow_pickling``, which commit tracks);
    the original key then picks the result, and a merge tree gathers the
    records. Nothing is substituted: a copy that is missed still leaves its
    marker, and commit refuses rather than losing its writes.

    Parameters
    ----------
    dsk
        A materialised graph.
    session
        The session whose copies the tasks hold.
    split_every
        Fan-in of the merge tree.

    Returns
    -------
    tuple or None
        ``None`` when no task holds the session; else the new graph (same keys,
        same results) and the key of the merged change record.
    """

    def holds(node: GraphNode) -> bool:
        found: dict[int, Session] = {}
        _sessions_in(node, lambda s: s is session, found, set())
        return bool(found)

    holders = {key for key, node in dsk.items() if holds(node)}
    touched = {k for k in holders if isinstance(dsk[k], Task)}
    touched.update(
        k
        for k, node in dsk.items()
        if isinstance(node, Task) and any(d in holders for d in node.dependencies)
    )
    if not touched:
        return None
    tok = uuid.uuid4().hex
    out = dict(dsk)
    leaves: list[TaskRef] = []
    for i, key in enumerate(touched):
        node = dsk[key]
        deps = tuple(node.dependencies)
        both = (f"icechunk-routed-{tok}", i)
        rec = (f"icechunk-record-{tok}", i)
        out[both] = Task(
            both,
            _run_and_extract,
            DataNode(None, node),
            session.session_id,
            deps,
            *(TaskRef(d) for d in deps),
        )
        out[key] = Task(key, _first, TaskRef(both))
        out[rec] = Task(rec, _second, TaskRef(both))
        leaves.append(TaskRef(rec))
    # the (empty) record of a fresh fork keeps the root well defined if no copy is found
    return out, _merge_tree(out, leaves, tok, split_every, session.fork().changes())


def _sessions_in(
    obj: Any, match: Callable[[Session], bool], found: dict[int, Session], seen: set[int]
) -> None:
    """Collect the sessions that ``obj`` refers to (through tasks, stores, arrays, containers)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Task):
        for a in (*obj.args, *obj.kwargs.values()):
            _sessions_in(a, match, found, seen)
    elif isinstance(obj, DataNode):
        _sessions_in(obj.value, match, found, seen)
    elif isinstance(obj, zarr.Array | AsyncArray):
        _sessions_in(obj.store_path.store, match, found, seen)
    elif isinstance(obj, SessionStore):
        _sessions_in(obj.session, match, found, seen)
    elif isinstance(obj, Session):
        if match(obj):
            found[id(obj)] = obj
    elif isinstance(obj, tuple | list | set | frozenset):
        for v in obj:
            _sessions_in(v, match, found, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            _sessions_in(v, match, found, seen)


def _run_and_extract(
    node: GraphNode, session_id: str, deps: tuple[Key, ...], *values: Any
) -> tuple[Any, ChangeSet | None]:
    """Run a rerouted task; return its result and the changes of the session copies it used."""
    result = node(dict(zip(deps, values, strict=True)))
    found: dict[int, Session] = {}
    seen: set[int] = set()
    for obj in (node, *values):
        _sessions_in(obj, lambda s: s.session_id == session_id and s.is_fork, found, seen)
    records = [s.changes() for s in found.values()]
    return result, (ChangeSet.merge_all(records) if records else None)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]
