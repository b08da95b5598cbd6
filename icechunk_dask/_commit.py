"""Commit protocol: validate, check for unmerged writers, write, publish, rebase on races.

A commit writes its manifests, transaction log and snapshot under fresh ids,
makes them durable, then appends one entry to the branch's create-only log.
Losing that race means another commit landed: the transaction logs of the
commits in between are compared with this change set
(:mod:`icechunk_dask._rebase`) and the conflict solver decides (by default:
rebase only disjoint changes), or :class:`RebaseFailedError` lists the
conflicts. A commit that lost waits its turn in the branch's commit queue
(:mod:`icechunk_dask._queue`), rebasing as commits ahead of it land, and
tries again when no older loser is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import TYPE_CHECKING, Any

from icechunk_dask._compat.zarr import parse_array_metadata
from icechunk_dask._conflicts import ConflictSolver
from icechunk_dask._exceptions import (
    ConflictError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
    StorageError,
    UnmergedWritesError,
)
from icechunk_dask._flush import write_snapshot
from icechunk_dask._fork import UNMERGED_MESSAGE, clear_markers, unmerged_writers
from icechunk_dask._gcpause import PAUSE_GC_FROM, gc_paused
from icechunk_dask._queue import STALE_AFTER, CommitQueue
from icechunk_dask._rebase import find_conflicts
from icechunk_dask.format import now_iso

if TYPE_CHECKING:
    from icechunk_dask._assets import AssetManager
    from icechunk_dask._changeset import ChangeSet

__all__ = ["commit_changes", "validate_metadata"]


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
    solver: ConflictSolver,
    maybe_landed: set[str] | None = None,
) -> str:
    """Publish ``cs`` (made on ``base``) as a new snapshot at the tip of ``branch``.

    Writes manifests, transaction log and snapshot, makes them durable, then
    appends one entry to the branch's create-only log. If another commit got
    there first, it rebases (checking the commits in between for conflicts),
    joins the branch's commit queue (:mod:`icechunk_dask._queue`), rebases
    onto the commits that land while it waits, and tries again when its turn
    comes. A process that lost a race on the branch in the last minute looks
    at the queue before its first attempt too, and queues if others wait.

    ``maybe_landed`` holds the snapshots of earlier attempts of this session
    whose branch entry may have been written without acknowledgement (the
    read-back failed too): if one of them is on the branch since ``base``, it
    is the result, and nothing is written. A new such attempt is added to it.

    Returns
    -------
    str
        The new snapshot id.
    """
    if maybe_landed:
        landed = await _landed(assets, branch, base, maybe_landed)
        if landed is not None:
            with contextlib.suppress(Exception):
                await clear_markers(assets, session_id, cs.writers)
            return landed
    unmerged = await unmerged_writers(assets, session_id, cs)
    if unmerged:
        raise UnmergedWritesError(f"{len(unmerged)} {UNMERGED_MESSAGE}")
    change = _Rebasing(assets, branch, base, cs, tries, solver)
    queue = CommitQueue(assets.storage, branch)
    ticket: str | None = None
    attempt = 0
    try:
        while True:
            started = time.monotonic()
            if ticket is None and _lost_lately(assets, branch, started):
                (seq, tip), waiting = await asyncio.gather(change.tip(), queue.waiting())
                if waiting:
                    ticket = await queue.join(seq + 1)
                    if ticket is not None:
                        await queue.wait_turn(ticket, STALE_AFTER, change.catch_up)
                        continue
            else:
                seq, tip = await change.tip()
            snap_id = await change.attempt(seq, tip, message, metadata, maybe_landed)
            if snap_id is not None:
                if ticket is not None:
                    await queue.leave(ticket)
                    ticket = None
                with contextlib.suppress(Exception):
                    await clear_markers(assets, session_id, change.cs.writers)
                return snap_id
            assets.lost_race_at[branch] = time.monotonic()
            await change.catch_up()  # a conflict with the winner ends the commit here
            if ticket is None:
                ticket = await queue.join(seq + 1)
            if ticket is None:  # no queue (the storage refused the ticket): back off
                await asyncio.sleep(_backoff(attempt))
                attempt += 1
            else:
                took = time.monotonic() - started
                await queue.wait_turn(ticket, max(STALE_AFTER, 4 * took), change.catch_up)
    finally:
        if ticket is not None:
            await queue.leave(ticket)


#: For how long after losing a race a process looks at the queue before its first attempt (s).
_LOOK_AFTER_LOSS = 60.0


def _lost_lately(assets: AssetManager, branch: str, now: float) -> bool:
    lost = assets.lost_race_at.get(branch)
    return lost is not None and now - lost < _LOOK_AFTER_LOSS


class _Rebasing:
    """A change set made on ``base``, rebased onto each newer tip of the branch it sees.

    ``rebase_tries`` bounds the attempts that needed a rebase (the rebases
    made while waiting in the queue count with the attempt that follows).
    """

    def __init__(
        self,
        assets: AssetManager,
        branch: str,
        base: str,
        cs: ChangeSet,
        tries: int,
        solver: ConflictSolver,
    ) -> None:
        self.assets, self.branch, self.base = assets, branch, base
        self.cs, self.tries, self.solver = cs, tries, solver
        self.checked = base
        self.rebases = 0
        self._counted = False  # the next attempt's rebase is counted already

    async def tip(self) -> tuple[int, str]:
        """The branch's newest log entry and its snapshot."""
        seq, ref = await self.assets.branch_tip(self.branch)
        if ref is None or ref.deleted or ref.snapshot_id is None:
            raise NotFoundError(
                f"branch {self.branch!r} was deleted; nothing was committed. Create it again "
                "with repo.create_branch or commit to another branch"
            )
        return seq, ref.snapshot_id

    async def onto(self, tip: str) -> None:
        """Check the commits up to ``tip`` for conflicts and rebase onto it."""
        if tip == self.checked:
            return
        if not self._counted:
            if self.rebases >= self.tries:
                raise ConflictError(
                    f"branch {self.branch!r} moved to {tip} since this session started at "
                    f"{self.base}"
                    + (
                        " and rebase_tries=0 never rebases"
                        if self.tries == 0
                        else f", and {self.tries} rebases were not enough: other commits kept "
                        "landing first"
                    )
                    + ". Nothing was committed; retry (a higher rebase_tries rebases onto the "
                    "new tip when the changes do not conflict)",
                    kind=ErrorKind.COMMIT_CONFLICT,
                )
            self.rebases += 1
            self._counted = True
        conflicts, cs = await find_conflicts(self.assets, self.branch, self.cs, self.checked, tip)
        self.cs = self.solver.solve(conflicts, cs, self.branch)
        self.checked = tip

    async def catch_up(self) -> None:
        """Rebase onto the branch's current tip (while waiting for a turn)."""
        await self.onto((await self.tip())[1])

    async def attempt(
        self,
        seq: int,
        tip: str,
        message: str,
        metadata: dict[str, Any],
        maybe_landed: set[str] | None,
    ) -> str | None:
        """Write the commit on ``tip`` and try to append it as entry ``seq + 1``.

        Returns the new snapshot id, or None if another commit got there first.
        """
        await self.onto(tip)
        self._counted = False
        parent = await self.assets.get_snapshot(tip)
        with gc_paused(len(self.cs.chunks) >= PAUSE_GC_FROM):
            snap = await write_snapshot(self.assets, parent, self.cs, message, metadata, now_iso())
        await self.assets.storage.durability_barrier()
        try:
            won = await self.assets.try_advance_branch(self.branch, seq + 1, snap.id, tip)
        except StorageError as e:
            if maybe_landed is None:
                raise
            maybe_landed.add(snap.id)
            raise StorageError(
                f"{e}. The commit may or may not have landed (snapshot {snap.id}): call "
                "commit again on this session, it finds out and returns the snapshot if it "
                "landed, or commits it otherwise",
                kind=e.kind,
            ) from e
        return snap.id if won else None


#: The first and the longest wait between two attempts of a commit (seconds, before jitter).
_FIRST_WAIT, _LONGEST_WAIT = 0.005, 1.0


def _backoff(attempt: int) -> float:
    """How long to wait after losing the race ``attempt + 1`` times (jittered, doubling).

    Used only when the storage refused a queue ticket. Losing means another
    commit landed, so every round has a winner; the wait spreads the
    contenders out and keeps losers from burning the CPU and I/O that the
    winners need. Measured with 16 processes committing at once on 2 cores
    (``bench/RESULTS.md``): a cap of 100 ms instead of 1 s, a flat 10 ms or
    no wait at all made the median commit 3-15x slower and the slowest no
    faster; the queue bounds the slowest.
    """
    return min(_LONGEST_WAIT, _FIRST_WAIT * 2.0 ** min(attempt, 16)) * random.random()


async def _landed(assets: AssetManager, branch: str, base: str, candidates: set[str]) -> str | None:
    """The candidate snapshot on ``branch`` since ``base``, if any."""
    _, ref = await assets.branch_tip(branch)
    current = ref.snapshot_id if ref is not None and not ref.deleted else None
    seen: set[str] = set()
    while current is not None and current != base and current not in seen:
        if current in candidates:
            return current
        seen.add(current)
        current = (await assets.get_snapshot(current, expired_ok=True)).parent_id
    return None
