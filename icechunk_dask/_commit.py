"""Commit protocol: validate, check for unmerged writers, write, publish, rebase on races.

A commit writes its manifests, transaction log and snapshot under fresh ids,
makes them durable, then appends one entry to the branch's create-only log.
Losing that race means another commit landed: the transaction logs of the
commits in between are checked against this change set; if they touched
none of its keys the commit is rebuilt on the new tip and retried with
jittered exponential backoff, else :class:`RebaseFailedError` names the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import TYPE_CHECKING, Any

from icechunk_dask._compat.zarr import parse_array_metadata
from icechunk_dask._exceptions import (
    ConflictError,
    CorruptObjectError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
    RebaseFailedError,
    UnmergedWritesError,
)
from icechunk_dask._flush import group_by_node, write_snapshot
from icechunk_dask._fork import UNMERGED_MESSAGE, clear_markers, unmerged_writers
from icechunk_dask.format import now_iso
from icechunk_dask.format._locate import array_paths

if TYPE_CHECKING:
    from icechunk_dask._assets import AssetManager
    from icechunk_dask._changeset import ChangeSet

__all__ = ["check_rebase", "commit_changes", "validate_metadata"]


def validate_metadata(key: str, doc: bytes) -> None:
    """Refuse ``zarr.json`` documents that are not valid Zarr v3 metadata."""
    if key.rpartition("/")[2] != "zarr.json":
        return
    try:
        parsed = json.loads(doc)
    except ValueError as e:
        raise InvalidInputError(f"{key!r} is not valid JSON ({e}); nothing was committed") from e
    if not isinstance(parsed, dict) or parsed.get("zarr_format") != 3:
        raise InvalidInputError(
            f'{key!r} is not Zarr v3 metadata (no "zarr_format": 3); write arrays and groups '
            "with zarr (zarr_format=3). Nothing was committed"
        )
    node_type = parsed.get("node_type")
    if node_type == "array":
        try:
            array_meta = parse_array_metadata(dict(parsed))
        except Exception as e:
            raise InvalidInputError(
                f"{key!r} is not valid Zarr v3 array metadata: {e}. Nothing was committed"
            ) from e
        _check_chunk_shape(key, array_meta)
    elif node_type != "group":
        raise InvalidInputError(
            f"{key!r} has node_type {node_type!r}; Zarr v3 knows 'array' and 'group'. "
            "Nothing was committed"
        )


def _check_chunk_shape(key: str, meta: Any) -> None:
    # zarr accepts a chunk length of 0 in metadata, but no data can ever be stored that way
    chunks = getattr(meta.chunk_grid, "chunk_shape", None)
    if chunks is None:
        return
    for axis, (size, chunk) in enumerate(zip(meta.shape, chunks, strict=False)):
        if chunk == 0 and size > 0:
            raise InvalidInputError(
                f"{key!r} has chunk length 0 on axis {axis} of length {size}: no data could "
                "ever be stored. Use chunks of at least 1 element. Nothing was committed"
            )


async def commit_changes(
    assets: AssetManager,
    branch: str,
    session_id: str,
    base: str,
    cs: ChangeSet,
    message: str,
    metadata: dict[str, Any],
    tries: int,
) -> str:
    """Publish ``cs`` (made on ``base``) as a new snapshot at the tip of ``branch``.

    Writes manifests, transaction log and snapshot, makes them durable, then
    appends one entry to the branch's create-only log. If another commit got
    there first, checks the commits in between for conflicts, rebases and
    retries with jittered exponential backoff.

    Returns
    -------
    str
        The new snapshot id.
    """
    unmerged = await unmerged_writers(assets, session_id, cs)
    if unmerged:
        raise UnmergedWritesError(f"{len(unmerged)} {UNMERGED_MESSAGE}")
    checked = base
    rebases = 0
    attempt = 0
    while True:
        seq, ref = await assets.branch_tip(branch)
        if ref is None or ref.deleted or ref.snapshot_id is None:
            raise NotFoundError(
                f"branch {branch!r} was deleted; nothing was committed. Create it again "
                "with repo.create_branch or commit to another branch"
            )
        tip = ref.snapshot_id
        if tip != checked:
            if rebases >= tries:
                raise ConflictError(
                    f"branch {branch!r} moved to {tip} since this session started at {base}"
                    + (
                        " and rebase_tries=0 never rebases"
                        if tries == 0
                        else f", and {tries} rebases were not enough: other commits kept "
                        "landing first"
                    )
                    + ". Nothing was committed; retry (a higher rebase_tries rebases onto the "
                    "new tip when the changes do not conflict)",
                    kind=ErrorKind.COMMIT_CONFLICT,
                )
            await check_rebase(assets, branch, cs, checked, tip)
            checked = tip
            rebases += 1
        parent = await assets.get_snapshot(tip)
        snap = await write_snapshot(assets, parent, cs, message, metadata, now_iso())
        await assets.storage.durability_barrier()
        if await assets.try_advance_branch(branch, seq + 1, snap.id, tip):
            with contextlib.suppress(Exception):
                await clear_markers(assets, session_id, cs.writers)
            return snap.id
        await asyncio.sleep(min(1.0, 0.005 * 2 ** min(attempt, 8)) * random.random())
        attempt += 1


async def check_rebase(
    assets: AssetManager, branch: str, cs: ChangeSet, since: str, tip: str
) -> None:
    """Raise :class:`RebaseFailedError` if commits from ``since`` to ``tip`` touched ``cs``'s keys."""
    # Walk the chain first: after a reset the base is not an ancestor of the tip, and the
    # walk ends at the root snapshot, which has no transaction log.
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
            raise RebaseFailedError(
                f"branch {branch!r} was reset to a history that does not contain this "
                f"session's base snapshot {since}; nothing was committed. Start a new "
                "session and redo the writes",
                conflicts=[("", "branch reset")],
            )
        between.append(current)
        current = (await assets.get_snapshot(current)).parent_id
    logs = [await assets.get_transaction_log(snapshot_id) for snapshot_id in between]
    tip_snap = await assets.get_snapshot(tip)
    arrays = tip_snap.arrays | array_paths(cs.meta)
    our_nodes = set(group_by_node(cs.chunks, arrays))
    our_meta_nodes = {k.rpartition("/")[0] for k in cs.meta}
    conflicts: list[tuple[str, str]] = []
    for log in logs:
        by = f"commit {log.snapshot_id}"
        conflicts.extend(
            (key, f"metadata also changed by {by}")
            for key in cs.meta.keys() & log.meta_keys
            if tip_snap.meta.get(key) != cs.meta[key]
        )
        conflicts.extend(
            (key, f"chunk also written by {by}") for key in cs.chunks.keys() & log.chunk_keys
        )
        their_meta_nodes = {k.rpartition("/")[0] for k in log.meta_keys}
        conflicts.extend(
            (node, f"array metadata changed by {by}") for node in our_nodes & their_meta_nodes
        )
        their_nodes = set(group_by_node(dict.fromkeys(log.chunk_keys), arrays))
        conflicts.extend(
            (node, f"chunks written by {by} under changed metadata")
            for node in (our_meta_nodes & their_nodes) - our_nodes
        )
        ours = [*cs.chunks, *cs.meta]
        conflicts.extend(
            (prefix or "/", f"deleted by {by} while this session changed it")
            for prefix in log.cleared
            if any(_covers(prefix, k) for k in ours)
        )
        theirs = [*log.chunk_keys, *log.meta_keys]
        conflicts.extend(
            (prefix or "/", f"changed by {by} while this session deleted it")
            for prefix in cs.cleared
            if any(_covers(prefix, k) for k in theirs)
        )
    if conflicts:
        shown = "; ".join(f"{k!r}: {why}" for k, why in conflicts[:10])
        more = f" (and {len(conflicts) - 10} more)" if len(conflicts) > 10 else ""
        raise RebaseFailedError(
            f"cannot commit to {branch!r}: commits that landed since this session "
            f"started changed the same data: {shown}{more}. Nothing was committed; start a "
            "new session on the branch tip and redo the conflicting writes",
            conflicts=conflicts,
        )


def _covers(prefix: str, key: str) -> bool:
    return prefix == "" or key.startswith(prefix + "/")
