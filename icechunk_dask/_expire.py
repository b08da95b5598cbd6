"""Expiring snapshots: dropping old history without rewriting any snapshot.

``expire_snapshots(older_than)`` walks the history of every branch tip and
tag and expires each snapshot committed before ``older_than``, except the
snapshots refs point at and the repository's first snapshot. Snapshots are
immutable, so expiring one writes a create-only marker
(:class:`~icechunk_dask.format.ExpiryMarker`, ``expired/<id>``); from then on
history walks skip it (the history of a descendant continues with its
nearest ancestor that is not expired) and reading it is an
:class:`~icechunk_dask.ExpiredSnapshotError`. Its objects stay until
:func:`~icechunk_dask._gc.garbage_collect` deletes what nothing else needs.

With ``delete_expired_branches`` / ``delete_expired_tags``, branches (except
``main``) and tags whose own snapshot is older than ``older_than`` are deleted
first (each only if it still points there), and their snapshots expire too.

Safe while other processes commit: a commit never moves a branch onto an
old snapshot. A ref moved onto a snapshot while it is being expired (a
``reset_branch`` or ``create_tag`` racing the expiration) is noticed when the
refs are read again at the end, and that snapshot's marker is withdrawn.
"""

from __future__ import annotations

from datetime import datetime

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import ConflictError, NotFoundError
from icechunk_dask._history import next_in_history
from icechunk_dask._reach import as_utc, live_refs
from icechunk_dask._refs import delete_tag, set_branch
from icechunk_dask.format import ExpiryMarker, Snapshot, expiry_key, now_iso

__all__ = ["expire_snapshots"]

#: Per snapshot of the histories walked: (next visible ancestor, recorded parent, commit time).
_Info = tuple[str | None, str | None, datetime]


async def _delete_old_refs(
    assets: AssetManager, refs: dict[str, str], cutoff: datetime, branches: bool, tags: bool
) -> set[str]:
    """Delete the refs whose own snapshot is older than ``cutoff``; return their labels."""
    deleted: set[str] = set()
    for label, sid in refs.items():
        kind, name = label.split(" ", 1)
        if not ((kind == "branch" and branches and name != "main") or (kind == "tag" and tags)):
            continue
        snap = await assets.get_snapshot(sid, expired_ok=True)
        if datetime.fromisoformat(snap.written_at) >= cutoff:
            continue
        try:
            if kind == "branch":
                await set_branch(assets, name, None, create=False, expected=sid)
            else:
                await delete_tag(assets, name, expected=sid)
        except (ConflictError, NotFoundError):  # moved or deleted meanwhile: leave it
            continue
        deleted.add(label)
    return deleted


async def _histories(assets: AssetManager, starts: list[str]) -> dict[str, _Info]:
    """The visible histories of ``starts`` (already expired snapshots skipped)."""
    info: dict[str, _Info] = {}
    for start in starts:
        if start in info:
            continue
        path = {start}
        snap: Snapshot | None = await assets.get_snapshot(start, expired_ok=True)
        while snap is not None and snap.id not in info:
            nxt = await next_in_history(assets, snap.parent_id, path)
            when = datetime.fromisoformat(snap.written_at)
            info[snap.id] = (nxt.id if nxt is not None else None, snap.parent_id, when)
            snap = nxt
    return info


async def expire_snapshots(
    assets: AssetManager,
    older_than: datetime,
    *,
    delete_expired_branches: bool = False,
    delete_expired_tags: bool = False,
) -> set[str]:
    """Expire the snapshots committed before ``older_than`` (see the module docstring).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    older_than : datetime
        Snapshots committed before this time expire (naive means UTC).
    delete_expired_branches, delete_expired_tags : bool
        Also delete the branches (not ``main``) and tags that point at such snapshots.

    Returns
    -------
    set of str
        The ids of the snapshots expired by this call.
    """
    cutoff = as_utc(older_than)
    refs = await live_refs(assets)
    gone: set[str] = set()
    if delete_expired_branches or delete_expired_tags:
        gone = await _delete_old_refs(
            assets, refs, cutoff, delete_expired_branches, delete_expired_tags
        )
    protected = {sid for label, sid in refs.items() if label not in gone}
    info = await _histories(assets, sorted(set(refs.values())))
    doomed = {
        sid
        for sid, (_, parent, when) in info.items()
        if when < cutoff and sid not in protected and parent is not None
    }
    expired_at = now_iso()
    markers = []
    # oldest first: if this stops half-way, every marker written skips to a snapshot that
    # is still visible
    for sid in sorted(doomed, key=lambda s: (info[s][2], s)):
        nxt = info[sid][0]
        while nxt is not None and nxt in doomed:
            nxt = info[nxt][0]
        when, parent = info[sid][2], info[sid][1]
        markers.append(ExpiryMarker(sid, parent, nxt, when.isoformat(), expired_at))
    done: set[str] = set()
    for marker in markers:
        if await assets.storage.put_if_absent(expiry_key(marker.snapshot_id), marker.encode()):
            done.add(marker.snapshot_id)
            assets.note_expired(marker)
        else:  # expired concurrently by another process: its marker stands
            stored = await assets.get_expiry(marker.snapshot_id)
            if stored is not None:
                assets.note_expired(stored)
    # a ref moved onto a snapshot expired meanwhile: withdraw that expiry
    for sid in set((await live_refs(assets)).values()) & done:
        await assets.storage.delete([expiry_key(sid)])
        assets.forget_expired(sid)
        done.discard(sid)
    return done
