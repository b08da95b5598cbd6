"""What collides when a commit is rebased onto commits that landed first.

The commits between the session's base and the branch tip are found by
walking the tip's ancestry (a cycle is damage, not a loop); their
transaction logs are compared with the session's change set. The result is
a list of typed :class:`~icechunk_dask.Conflict`; a
:class:`~icechunk_dask._conflicts.ConflictSolver` decides what to do.

Pre-built manifest layers are compared by their keys: the session's layers
of a node that those commits touched are loaded into its change set first
(so that a solver can drop single keys), and the keys of their layers are
read from their manifests for the nodes the session touched. A rebase reads
what the commits in between and the session changed, never the repository.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from icechunk_dask._assets import AssetManager
from icechunk_dask._bynode import group_by_node
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._diff import chunk_coordinates
from icechunk_dask._exceptions import (
    Conflict,
    ConflictType,
    CorruptObjectError,
    ExpiredSnapshotError,
    NotFoundError,
    RebaseFailedError,
)
from icechunk_dask._prebuilt import box_entries, materialize
from icechunk_dask.format import Layer, Snapshot, TransactionLog
from icechunk_dask.format._locate import array_paths, node_of

__all__ = ["find_conflicts"]


def _covers(prefix: str, key: str) -> bool:
    return prefix == "" or key.startswith(prefix + "/")


async def _logs_between(
    assets: AssetManager, branch: str, since: str, tip: str
) -> list[TransactionLog] | None:
    """Transaction logs from ``tip`` back to ``since`` (``None`` if ``since`` is not an ancestor).

    The walk follows the parents the snapshots record, expired ones included
    (their changes must be checked too); if expiration and garbage collection
    already removed one, the changes cannot be checked and the commit is refused.
    """
    between: list[str] = []
    current: str | None = tip
    while current != since:
        if current in between:
            raise CorruptObjectError(
                f"the history of branch {branch!r} has a cycle at snapshot {current}: the "
                "repository is damaged (run icechunk-dask verify)",
                key=f"snapshots/{current}",
            )
        if current is None:
            return None
        between.append(current)
        try:
            current = (await assets.get_snapshot(current, expired_ok=True)).parent_id
        except ExpiredSnapshotError:
            raise _collected(branch, current, since) from None
    try:
        return [await assets.get_transaction_log(s) for s in between]
    except NotFoundError as e:
        if not any([await assets.get_expiry(s) is not None for s in between]):
            raise
        raise _collected(branch, None, since) from e


def _collected(branch: str, snapshot_id: str | None, since: str) -> RebaseFailedError:
    which = f"snapshot {snapshot_id}" if snapshot_id else "snapshots"
    return RebaseFailedError(
        f"branch {branch!r} moved since this session started at snapshot {since}, and "
        f"{which} in between were expired and garbage-collected, so this session's changes "
        "cannot be checked against theirs. Nothing was committed; start a new session on the "
        "branch and write again (garbage collection keeps what is newer than its cutoff: "
        "choose a cutoff older than your longest session)"
    )


def _chunk_conflicts(
    keys: Iterable[str], arrays: frozenset[str], meta: dict[str, bytes | None], by: str
) -> list[Conflict]:
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(node_of(key, arrays)[0], []).append(key)
    out = []
    for node, node_keys in sorted(grouped.items()):
        coords = chunk_coordinates(node, node_keys, arrays, meta)
        out.append(
            Conflict(
                ConflictType.CHUNK_DOUBLE_UPDATE,
                "/" + node,
                conflicted_chunks=tuple(coords) if coords is not None else None,
                keys=tuple(sorted(node_keys)),
                description=f"{len(node_keys)} chunk(s) also written by {by}",
            )
        )
    return out


def _log_nodes(log: TransactionLog, arrays: frozenset[str]) -> set[str]:
    """Nodes whose chunks or metadata a commit changed."""
    nodes = set(group_by_node(dict.fromkeys(log.chunk_keys), arrays)) | set(log.layers)
    nodes.update(node_of(k, arrays)[0] for k in log.meta_keys)
    return nodes


async def _expand(assets: AssetManager, log: TransactionLog, nodes: set[str]) -> TransactionLog:
    """``log`` with the keys of its pre-built layers in ``nodes`` listed in ``chunk_keys``."""
    wanted = [
        (n, b, ids) for n, boxes in log.layers.items() if n in nodes for b, ids in boxes.items()
    ]
    if not wanted:
        return log
    parts = await asyncio.gather(
        *(box_entries(assets, n, b, [Layer(i, 0) for i in ids]) for n, b, ids in wanted)
    )
    keys = set(log.chunk_keys)
    for (n, _, _), entries in zip(wanted, parts, strict=True):
        head = f"{n}/" if n else ""
        keys.update(head + s for s in entries)
    return TransactionLog(log.snapshot_id, log.parent_id, log.meta_keys, keys, log.cleared)


async def find_conflicts(
    assets: AssetManager, branch: str, cs: ChangeSet, since: str, tip: str
) -> tuple[list[Conflict], ChangeSet]:
    """The conflicts between ``cs`` (made on ``since``) and the commits up to ``tip``.

    Returns
    -------
    list of Conflict
        Empty when the changes are disjoint; a ``BRANCH_RESET`` conflict when
        ``since`` is not an ancestor of ``tip`` (the branch was reset).
    ChangeSet
        ``cs``, or a copy whose pre-built layers of nodes that those commits
        touched are loaded into chunk entries (what the solver then works on).
    """
    logs = await _logs_between(assets, branch, since, tip)
    if logs is None:
        return [
            Conflict(
                ConflictType.BRANCH_RESET,
                "/",
                description=f"branch {branch!r} no longer contains snapshot {since}",
            )
        ], cs
    tip_snap = await assets.get_snapshot(tip)
    arrays = tip_snap.arrays | array_paths(cs.meta)
    if cs.layers:
        theirs_nodes = set().union(*(_log_nodes(log, arrays) for log in logs))
        hit = {
            n
            for n in cs.layers
            if n in theirs_nodes or any(_covers(p, f"{n}/") for log in logs for p in log.cleared)
        }
        if hit:
            cs = cs.copy()
            await materialize(assets, cs, dict.fromkeys(hit))
    mine = set(group_by_node(cs.chunks, arrays)) | {node_of(k, arrays)[0] for k in cs.meta}
    mine.update(  # what this session deleted: their keys there conflict
        n for log in logs for n in log.layers if any(_covers(p, f"{n}/") for p in cs.cleared)
    )
    logs = [await _expand(assets, log, mine) for log in logs]
    return _conflicts(
        cs, logs, tip_snap, since_arrays=(await assets.get_snapshot(since, expired_ok=True)).arrays
    ), cs


def _conflicts(
    cs: ChangeSet, logs: list[TransactionLog], tip_snap: Snapshot, since_arrays: frozenset[str]
) -> list[Conflict]:
    base_arrays = since_arrays
    view: dict[str, bytes | None] = {**tip_snap.meta, **cs.meta}
    arrays = tip_snap.arrays | array_paths(cs.meta)
    our_nodes = set(group_by_node(cs.chunks, arrays))
    # metadata this session removed with a delete_dir: a deletion (DeleteOf...), not a change
    deleted = {
        k for k, doc in cs.meta.items() if doc is None and any(_covers(p, k) for p in cs.cleared)
    }
    our_meta_nodes = {k.rpartition("/")[0] for k in cs.meta if k not in deleted}
    ours = [*cs.chunks, *cs.meta]
    conflicts: list[Conflict] = []
    for log in logs:
        by = f"commit {log.snapshot_id}"
        conflicts.extend(
            Conflict(
                ConflictType.ZARR_METADATA_DOUBLE_UPDATE,
                "/" + key.rpartition("/")[0],
                keys=(key,),
                description=f"metadata also changed by {by}",
            )
            for key in sorted((cs.meta.keys() - deleted) & log.meta_keys)
            if tip_snap.meta.get(key) != cs.meta[key]
        )
        conflicts.extend(_chunk_conflicts(cs.chunks.keys() & log.chunk_keys, arrays, view, by))
        their_meta_nodes = {k.rpartition("/")[0] for k in log.meta_keys}
        conflicts.extend(
            Conflict(
                ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
                "/" + node,
                description=f"chunks written here, array metadata changed by {by}",
            )
            for node in sorted(our_nodes & their_meta_nodes)
        )
        their_nodes = set(group_by_node(dict.fromkeys(log.chunk_keys), arrays))
        conflicts.extend(
            Conflict(
                ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
                "/" + node,
                description=f"array metadata changed here, chunks written by {by}",
            )
            for node in sorted((our_meta_nodes & their_nodes) - our_nodes)
        )
        conflicts.extend(
            Conflict(
                ConflictType.CHUNKS_UPDATED_IN_DELETED_ARRAY,
                "/" + prefix,
                description=f"deleted by {by} while this session changed it",
            )
            for prefix in sorted(log.cleared)
            if any(_covers(prefix, k) for k in ours)
        )
        theirs = [*log.chunk_keys, *log.meta_keys]
        conflicts.extend(
            Conflict(
                ConflictType.DELETE_OF_UPDATED_ARRAY
                if prefix in arrays or prefix in base_arrays
                else ConflictType.DELETE_OF_UPDATED_GROUP,
                "/" + prefix,
                description=f"changed by {by} while this session deleted it",
            )
            for prefix in sorted(cs.cleared)
            if any(_covers(prefix, k) for k in theirs)
        )
    return conflicts
