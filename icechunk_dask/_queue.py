"""An order among the commits that lost the race for a branch (the commit queue).

Commits race for their branch's next log entry, which is create-only, so
each step has exactly one winner. Without an order a commit that keeps
losing waits without bound while fresh commits race past it, and every
loser rebuilds its commit each round: sixteen commits at once cost the last
one about sixteen rounds against all the others.

A commit that lost once writes a ticket, an empty object
``queue/branch.<name>/<seq>-<time>-<token>``, and tries again only when no
older ticket is ahead of it; it deletes its ticket when it lands or fails.
Tickets sort by the log entry their commit lost (then by the writer's clock
and a random token), so the commits that lost first go first. While it
waits, a commit near the front rebases onto each commit that lands, so its
turn costs one short rebase.

Tickets are advice, never needed for correctness: the branch log alone
decides what lands. A ticket that could not be written, that another
process deleted, or that a killed process left behind costs fairness, never
a commit. A ticket that stays first longer than a waiter allows (timed by
that waiter's own clock, so no two clocks are compared) is taken as
abandoned and deleted, and a storage error while waiting ends the wait.
Garbage collection deletes tickets older than its cutoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

from icechunk_dask._exceptions import StorageError
from icechunk_dask.storage import Storage

__all__ = ["QUEUE_PREFIX", "STALE_AFTER", "CommitQueue"]

#: Where the tickets of every branch's queue are stored.
QUEUE_PREFIX = "queue/"

#: How long a ticket may stay first, as seen by a waiter behind it, before the waiter
#: takes it as abandoned (seconds; a commit whose own attempt took long waits longer).
STALE_AFTER = 2.0
#: Seconds between two looks at the queue with one ticket ahead (at least; twice the time a
#: listing took if that is longer), times the square of the tickets ahead, and at most:
#: the next in line notices its turn at once, the ones far back look rarely.
_POLL, _LONGEST_POLL = 0.002, 0.25
#: Waiters with at most this many tickets ahead rebase as commits land; the others
#: rebase once, when they get there (what each reads is the same; they read it later).
_REBASE_WITHIN = 2


class CommitQueue:
    """The queue of commits waiting to advance one branch.

    Parameters
    ----------
    storage : Storage
        The repository's storage.
    branch : str
        The branch the commits go to.
    """

    def __init__(self, storage: Storage, branch: str) -> None:
        self._storage = storage
        self._prefix = f"{QUEUE_PREFIX}branch.{branch}/"

    async def join(self, seq: int) -> str | None:
        """Write a ticket for a commit that wants log entry ``seq`` (and lost it, or will).

        Parameters
        ----------
        seq : int
            The branch log entry the commit lost (or, joining before its first
            attempt, the next one).

        Returns
        -------
        str or None
            The ticket, or None if the storage refused it: the commit then
            waits without an order.
        """
        ticket = f"{self._prefix}{seq:012d}-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        try:
            await self._storage.put(ticket, b"")
        except StorageError:
            return None
        return ticket

    async def waiting(self) -> bool:
        """Whether any ticket is in the queue (a storage error counts as none)."""
        try:
            return bool(await self._storage.list(self._prefix))
        except StorageError:
            return False

    async def wait_turn(
        self,
        ticket: str,
        stale_after: float = STALE_AFTER,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Return when no ticket older than ``ticket`` is left.

        Parameters
        ----------
        ticket : str
            This commit's ticket (from :meth:`join`).
        stale_after : float
            Seconds a ticket may stay first before it is deleted as abandoned.
        meanwhile : callable, optional
            Awaited when a ticket ahead is gone while at most two others are
            still ahead (a commit has likely landed; the waiter rebases). Its
            errors propagate: a conflict ends the wait.
        """
        first_seen: dict[str, float] = {}
        abandoned: set[str] = set()
        before: set[str] | None = None
        while True:
            started = time.monotonic()
            try:
                keys = await self._storage.list(self._prefix)
            except StorageError:
                return
            listing = time.monotonic() - started
            ahead = sorted(k for k in keys if k < ticket and k not in abandoned)
            if not ahead:
                return
            now_ahead = set(ahead)
            if (
                meanwhile is not None
                and before is not None
                and not before <= now_ahead
                and len(ahead) <= _REBASE_WITHIN
            ):
                await meanwhile()
            before = now_ahead
            now = time.monotonic()
            if now - first_seen.setdefault(ahead[0], now) > stale_after:
                abandoned.add(ahead[0])
                await self.leave(ahead[0])
                continue
            await asyncio.sleep(min(_LONGEST_POLL, max(_POLL, 2 * listing) * len(ahead) ** 2))

    async def leave(self, ticket: str) -> None:
        """Delete ``ticket`` (an error is ignored: a ticket left behind goes stale)."""
        with contextlib.suppress(StorageError):
            await self._storage.delete([ticket])
