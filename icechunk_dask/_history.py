"""Walking a snapshot's history: parents, expired snapshots skipped, cycles reported.

``expire_snapshots`` cannot rewrite immutable snapshots, so an expired
snapshot stays named as its child's parent; walks skip it. The history of a
snapshot continues with its nearest ancestor that is not expired (at the
latest the repository's first snapshot, which never expires): a walk that
meets an expired parent follows the ``next`` pointer of its expiry marker,
which names that ancestor, so it never needs the expired snapshot itself
(garbage collection may have deleted it). The snapshot a walk *starts* at
must not be expired (:class:`~icechunk_dask.ExpiredSnapshotError`).

Every walk records what it visited: a snapshot seen twice is a cycle, which
only damage can create, reported as :class:`~icechunk_dask.CorruptObjectError`
instead of looping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import CorruptObjectError, ExpiredSnapshotError
from icechunk_dask._sync import run
from icechunk_dask.format import Snapshot

__all__ = ["ancestry", "cycle_error", "next_in_history", "walk"]


def cycle_error(snapshot_id: str) -> CorruptObjectError:
    """The error for a history that comes back to ``snapshot_id``."""
    return CorruptObjectError(
        f"the history has a cycle at snapshot {snapshot_id}: the repository is damaged "
        "(run icechunk-dask verify)",
        key=f"snapshots/{snapshot_id}",
    )


async def next_in_history(
    assets: AssetManager, parent_id: str | None, seen: set[str]
) -> Snapshot | None:
    """The snapshot that comes after a snapshot whose parent is ``parent_id`` in its history.

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    parent_id : str or None
        The parent the snapshot records.
    seen : set of str
        Snapshots visited so far by this walk (updated).

    Returns
    -------
    Snapshot or None
        The parent, or its nearest ancestor that is not expired; ``None`` at the end.

    Raises
    ------
    CorruptObjectError
        If the history has a cycle, or an object on the way is damaged.
    """
    current = parent_id
    while current is not None:
        if current in seen:
            raise cycle_error(current)
        seen.add(current)
        try:
            return await assets.get_snapshot(current)
        except ExpiredSnapshotError:
            marker = await assets.get_expiry(current)
            current = marker.next_id if marker is not None else None
    return None


async def walk(assets: AssetManager, start: str) -> AsyncIterator[Snapshot]:
    """Yield ``start`` and its history, newest first (expired snapshots skipped).

    Raises
    ------
    ExpiredSnapshotError
        If ``start`` itself was expired.
    NotFoundError
        If ``start`` does not exist.
    CorruptObjectError
        If the history has a cycle or a damaged snapshot.
    """
    seen = {start}
    snap: Snapshot | None = await assets.get_snapshot(start)
    while snap is not None:
        yield snap
        snap = await next_in_history(assets, snap.parent_id, seen)


def ancestry(assets: AssetManager, start: str) -> Iterator[Snapshot]:
    """Synchronous :func:`walk`, one snapshot read at a time (for generators in the public API)."""
    seen = {start}
    snap: Snapshot | None = run(assets.get_snapshot(start))
    while snap is not None:
        yield snap
        snap = run(next_in_history(assets, snap.parent_id, seen))
