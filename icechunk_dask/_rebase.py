"""What collides when a commit is rebased onto commits that landed first.

The commits between the session's base and the branch tip are found by
walking the tip's ancestry (a cycle is damage, not a loop); their
transaction logs are compared with the session's change set. The result is
a list of typed :class:`~icechunk_dask.Conflict`; a
:class:`~icechunk_dask._conflicts.ConflictSolver` decides what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._diff import chunk_coordinates
from icechunk_dask._exceptions import Conflict, ConflictType, CorruptObjectError
from icechunk_dask._flush import group_by_node
from icechunk_dask.format import TransactionLog
from icechunk_dask.format._locate import array_paths, node_of

__all__ = ["find_conflicts"]


def _covers(prefix: str, key: str) -> bool:
    return prefix == "" or key.startswith(prefix + "/")


async def _logs_between(
    assets: AssetManager, branch: str, since: str, tip: str
) -> list[TransactionLog] | None:
    """Transaction logs from ``tip`` back to ``since`` (``None`` if ``since`` is not an ancestor)."""
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
        current = (await assets.get_snapshot(current)).parent_id
    return [await assets.get_transaction_log(s) for s in between]


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


async def find_conflicts(
    assets: AssetManager, branch: str, cs: ChangeSet, since: str, tip: str
) -> list[Conflict]:
    """The conflicts between ``cs`` (made on ``since``) and the commits up to ``tip``.

    Returns
    -------
    list of Conflict
        Empty when the changes are disjoint; a ``BRANCH_RESET`` conflict when
        ``since`` is not an ancestor of ``tip`` (the branch was reset).
    """
    logs = await _logs_between(assets, branch, since, tip)
    if logs is None:
        return [
            Conflict(
                ConflictType.BRANCH_RESET,
                "/",
                description=f"branch {branch!r} no longer contains snapshot {since}",
            )
        ]
    tip_snap = await assets.get_snapshot(tip)
    view: dict[str, bytes | None] = {**tip_snap.meta, **cs.meta}
    arrays = tip_snap.arrays | array_paths(cs.meta)
    our_nodes = set(group_by_node(cs.chunks, arrays))
    our_meta_nodes = {k.rpartition("/")[0] for k in cs.meta}
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
            for key in sorted(cs.meta.keys() & log.meta_keys)
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
                ConflictType.DELETE_OF_UPDATED_ARRAY,
                "/" + prefix,
                description=f"changed by {by} while this session deleted it",
            )
            for prefix in sorted(cs.cleared)
            if any(_covers(prefix, k) for k in theirs)
        )
    return conflicts
