"""Plain ``ds.to_zarr(session.store)`` on a cluster: bring the copies' writes back.

Inside ``session.allow_pickling()`` every task that holds the session (or its
store) unpickles its own copy, a fork that records that task's writes.
:func:`reroute_session_writes` rewrites such a materialised graph so that
those tasks also return their copies' change records, and a merge tree
gathers them; the original keys keep their results.

A copy leaves a marker naming its task before its first change. When a task
is run again (its worker died), the first copy's writes are lost with the
worker but the retry's come back: :func:`reconcile_markers` then drops the
markers of copies whose task's record arrived, so commit does not refuse a
job that wrote everything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import zarr
from dask.typing import Key

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._compat.dask import DataNode, GraphNode, Task, TaskRef
from icechunk_dask._compat.zarr import AsyncArray
from icechunk_dask._fork import list_markers, remove_markers
from icechunk_dask._session import Session
from icechunk_dask._store import SessionStore
from icechunk_dask._writegraph import merge_tree

__all__ = ["reconcile_markers", "reroute_session_writes"]


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
            str(key),
            deps,
            *(TaskRef(d) for d in deps),
        )
        out[key] = Task(key, _first, TaskRef(both))
        out[rec] = Task(rec, _second, TaskRef(both))
        leaves.append(TaskRef(rec))
    # the (empty) record of a fresh fork keeps the root well defined if no copy is found
    return out, merge_tree(out, leaves, tok, split_every, session._fork().changes())


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
    node: GraphNode, session_id: str, task: str, deps: tuple[Key, ...], *values: Any
) -> tuple[Any, ChangeSet | None]:
    """Run a rerouted task; return its result and the changes of the session copies it used."""
    found: dict[int, Session] = {}
    seen: set[int] = set()
    for obj in (node, *values):
        _sessions_in(obj, lambda s: s.session_id == session_id and s.is_fork, found, seen)
    for copy in found.values():  # their markers name this task
        copy._workspace.task = task
    result = node(dict(zip(deps, values, strict=True)))
    records = [s.changes() for s in found.values()]
    if not records:
        return result, None
    merged = ChangeSet.merge_all(records)
    merged.tasks.add(task)
    return result, merged


async def reconcile_markers(session: Session, record: ChangeSet) -> int:
    """Drop the markers of copies whose task's changes came back through another copy.

    Returns
    -------
    int
        How many markers were dropped.
    """
    ws = session._workspace
    stale = [
        writer
        for writer, task in (await list_markers(ws.assets, ws.session_id)).items()
        if task in record.tasks and writer not in record.writers
    ]
    await remove_markers(ws.assets, ws.session_id, stale)
    return len(stale)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _second(pair: tuple[Any, Any]) -> Any:
    return pair[1]
