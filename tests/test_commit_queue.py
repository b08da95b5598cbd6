"""The commit queue: commits that lost a race go in the order they lost (``_queue``).

The queue is advice on top of the branch log, so the tests check both sides:
a waiting commit does not write its branch entry while an older ticket is
ahead, and nothing in the queue (a ticket left behind, a storage that
refuses tickets or fails listings) can lose or block a commit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    RebaseFailedError,
    Repository,
    Session,
    _commit,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask._queue import QUEUE_PREFIX, CommitQueue
from icechunk_dask._sync import run
from icechunk_dask.storage import FaultyStorage, Storage
from tests.lifecycle_helpers import age

QUEUE = f"{QUEUE_PREFIX}branch.main/"
#: a queue that never lets a commit go would hang: fail instead
pytestmark = pytest.mark.timeout(300)


class _Recording(FaultyStorage):
    """Records ``(operation, key)`` of the calls that matter to the queue, in order.

    ``land_first`` commits run (through another view) just before the next
    branch-entry writes, one each: the commit writing that entry loses the race.
    """

    def __init__(self, inner: Storage, land_first: Iterable[Callable[[], object]] = ()) -> None:
        super().__init__(inner)
        self.log: list[tuple[str, str]] = []
        self.land_first = list(land_first)
        self._lock = threading.Lock()

    def _note(self, op: str, key: str) -> None:
        with self._lock:
            self.log.append((op, key))

    def seen(self, op: str, prefix: str) -> int:
        with self._lock:
            return sum(1 for o, k in self.log if o == op and k.startswith(prefix))

    async def list(self, prefix: str) -> list[str]:
        self._note("list", prefix)
        return await super().list(prefix)

    async def put(self, key: str, data: bytes) -> None:
        self._note("put", key)
        await super().put(key, data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        self._note("put_if_absent", key)
        if key.startswith("refs/branch.main/") and self.land_first:
            # in a thread: the other commit runs on the event loop this call waits on
            await asyncio.to_thread(self.land_first.pop(0))
        return await super().put_if_absent(key, data)

    async def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._note("delete", key)
        await super().delete(keys)


def _until(test: Callable[[], bool], what: str) -> None:
    """Wait (up to a minute) until ``test()`` holds; what is awaited is an event, not a time."""
    deadline = time.monotonic() + 60
    while not test():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


def _tickets(storage: Storage) -> list[str]:
    return sorted(run(storage.list(QUEUE_PREFIX)))


# -- the queue alone -----------------------------------------------------------------


def test_tickets_go_in_the_order_their_commits_lost() -> None:
    async def scenario() -> None:
        storage = _Recording(in_memory_storage())
        queue = CommitQueue(storage, "main")
        later = await queue.join(5)
        earlier = await queue.join(3)
        last = await queue.join(5)  # lost the same entry as ``later``, after it
        assert later is not None and earlier is not None and last is not None
        assert sorted([later, earlier, last]) == [earlier, later, last]
        waiter = asyncio.create_task(queue.wait_turn(last, stale_after=3600))
        for gone in (earlier, later):
            looked = storage.seen("list", QUEUE)
            while storage.seen("list", QUEUE) < looked + 2:  # it looked again and waits on
                await asyncio.sleep(0.001)
            assert not waiter.done()
            await queue.leave(gone)
        await asyncio.wait_for(waiter, 60)
        assert await storage.list(QUEUE) == [last]

    asyncio.run(scenario())


def test_a_ticket_left_first_is_skipped_and_deleted_after_the_waiters_patience() -> None:
    async def scenario() -> None:
        storage = in_memory_storage()
        queue = CommitQueue(storage, "main")
        dead = await queue.join(1)  # its process was killed: nobody deletes it
        mine = await queue.join(2)
        assert dead is not None and mine is not None
        await asyncio.wait_for(queue.wait_turn(mine, stale_after=0.05), 60)
        assert await storage.list(QUEUE) == [mine]

    asyncio.run(scenario())


def test_a_listing_that_fails_ends_the_wait_and_a_refused_ticket_is_none() -> None:
    async def scenario() -> None:
        inner = in_memory_storage()
        ahead = await CommitQueue(inner, "main").join(1)
        failing = FaultyStorage(inner, fail_on={"list": range(1, 100), "put": 1})
        queue = CommitQueue(failing, "main")
        assert await queue.join(2) is None  # the storage refused it: no order, no error
        assert not await queue.waiting()  # an unreadable queue counts as empty
        await asyncio.wait_for(queue.wait_turn(f"{QUEUE}999", stale_after=3600), 60)
        assert await inner.list(QUEUE) == [ahead]

    asyncio.run(scenario())


@pytest.mark.parametrize(("ahead", "expected"), [(2, [1]), (5, [2, 1])])
def test_a_waiter_near_the_front_rebases_as_tickets_ahead_leave(
    ahead: int, expected: list[int]
) -> None:
    async def scenario() -> None:
        storage = _Recording(in_memory_storage())
        queue = CommitQueue(storage, "main")
        tickets = [await queue.join(i) for i in range(ahead + 1)]
        assert None not in tickets
        *front, mine = [t for t in tickets if t is not None]
        rebased: list[int] = []

        async def meanwhile() -> None:
            rebased.append(len(await storage.list(QUEUE)) - 1)  # tickets still ahead

        waiter = asyncio.create_task(queue.wait_turn(mine, 3600, meanwhile))
        for gone in front:
            looked = storage.seen("list", QUEUE)
            while storage.seen("list", QUEUE) < looked + 2:
                await asyncio.sleep(0.001)
            await queue.leave(gone)
        await asyncio.wait_for(waiter, 60)
        # with two or fewer still ahead it follows each commit that lands; further back it
        # waits (the last one to leave ends the wait: the attempt itself reads its commit)
        assert rebased == expected

    asyncio.run(scenario())


# -- commits through the queue ---------------------------------------------------------


def _repo(storage: Storage) -> Repository:
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(8,), chunks=(1,), dtype="i4", fill_value=0)
    s.commit("base")
    return repo


def _write(repo: Repository, index: int, value: int) -> Session:
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[index] = value
    return session


def _commit_in_thread(session: Session, message: str) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def go() -> None:
        try:
            out.append(session.commit(message))
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.append(e)

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def _lands(repo: Repository, index: int, value: int, message: str) -> Callable[[], object]:
    return lambda: _write(repo, index, value).commit(message)


def _race(
    monkeypatch: pytest.MonkeyPatch, stale_after: float, *first: tuple[int, int, str]
) -> tuple[Storage, Repository, _Recording]:
    """A repository, and a recording view of it before whose entries ``first`` commits land."""
    monkeypatch.setattr(_commit, "STALE_AFTER", stale_after)
    inner = in_memory_storage()
    repo = _repo(inner)
    return inner, repo, _Recording(inner, [_lands(repo, *f) for f in first])


def test_a_loser_waits_behind_an_older_ticket_and_lands_after_it_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the older ticket is alive: no patience runs out
    inner, repo, recording = _race(monkeypatch, 3600.0, (4, 44, "lands first"))
    session = _write(Repository.open(recording), 3, 33)
    older = run(CommitQueue(inner, "main").join(0))  # a commit that lost before this one
    thread, out = _commit_in_thread(session, "mine")
    _until(lambda: recording.seen("list", QUEUE) >= 2, "the loser looks at the queue twice")
    assert recording.seen("put_if_absent", "refs/branch.main/") == 1  # the lost race only
    assert recording.seen("put", QUEUE) == 1  # its ticket
    run(inner.delete([older]))
    thread.join(60)
    assert isinstance(out[0], str) and repo.lookup_branch("main") == out[0]
    assert recording.seen("put_if_absent", "refs/branch.main/") == 2  # lost, then its turn
    assert _tickets(inner) == []  # it left the queue
    np.testing.assert_array_equal(
        zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[:],
        [0, 0, 0, 33, 44, 0, 0, 0],
    )


def test_a_process_that_lost_lately_queues_before_its_first_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, repo, recording = _race(monkeypatch, 3600.0, (2, 22, "lands first"))
    mine = Repository.open(recording)
    _write(mine, 1, 11).commit("lost once, then landed")
    assert recording.seen("put", QUEUE) == 1 and _tickets(inner) == []
    waiting = run(CommitQueue(inner, "main").join(0))  # lost before any other
    session = _write(mine, 5, 55)
    before = recording.seen("put_if_absent", "refs/branch.main/")
    thread, out = _commit_in_thread(session, "queued first")
    _until(lambda: recording.seen("put", QUEUE) == 2, "it joins the queue")
    lists = recording.seen("list", QUEUE)
    _until(lambda: recording.seen("list", QUEUE) >= lists + 2, "it waits in the queue")
    assert recording.seen("put_if_absent", "refs/branch.main/") == before  # no attempt yet
    run(inner.delete([waiting]))
    thread.join(60)
    assert isinstance(out[0], str) and repo.lookup_branch("main") == out[0]
    assert recording.seen("put_if_absent", "refs/branch.main/") == before + 1  # one attempt
    assert _tickets(inner) == []


def test_a_process_that_never_lost_does_not_read_the_queue() -> None:
    inner = in_memory_storage()
    repo = _repo(inner)
    left = run(CommitQueue(inner, "main").join(0))  # left behind by a killed process
    _write(repo, 0, 1).commit("moves the tip: the next commit rebases, but loses no race")
    recording = _Recording(inner)
    session = _write(Repository.open(recording), 6, 66)
    _write(repo, 0, 2).commit("lands before it commits")
    sid = session.commit("uncontended")
    assert repo.lookup_branch("main") == sid
    assert recording.seen("list", QUEUE_PREFIX) == 0 and recording.seen("put", QUEUE_PREFIX) == 0
    assert _tickets(inner) == [left]


def test_a_conflict_found_while_waiting_fails_the_commit_and_leaves_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, repo, recording = _race(monkeypatch, 3600.0, (0, 1, "lands first, no conflict"))
    session = _write(Repository.open(recording), 7, 77)
    older = run(CommitQueue(inner, "main").join(0))
    thread, out = _commit_in_thread(session, "mine")
    _until(lambda: recording.seen("list", QUEUE) >= 2, "the loser waits")
    _write(repo, 7, 70).commit("the same chunk, while it waits")
    run(inner.delete([older]))
    thread.join(60)
    assert isinstance(out[0], RebaseFailedError)
    assert _tickets(inner) == []
    assert zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")[7] == 70


def test_a_conflict_with_the_winner_fails_the_commit_before_it_queues() -> None:
    inner = in_memory_storage()
    repo = _repo(inner)
    recording = _Recording(inner, [_lands(repo, 7, 70, "the same chunk, first")])
    session = _write(Repository.open(recording), 7, 77)
    with pytest.raises(RebaseFailedError):
        session.commit("mine")
    assert recording.seen("put", QUEUE_PREFIX) == 0 and recording.seen("list", QUEUE_PREFIX) == 0


def test_a_ticket_left_by_a_killed_process_delays_a_loser_but_never_blocks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner, repo, recording = _race(monkeypatch, 0.05, (4, 44, "lands first"))
    run(CommitQueue(inner, "main").join(0))
    sid = _write(Repository.open(recording), 3, 33).commit("lands after the ticket is skipped")
    assert repo.lookup_branch("main") == sid
    assert _tickets(inner) == []  # the abandoned ticket was deleted, its own too


def test_garbage_collection_deletes_tickets_older_than_the_cutoff(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path, durable=False)
    repo = _repo(storage)
    old = run(CommitQueue(storage, "main").join(1))
    age(tmp_path)
    new = run(CommitQueue(storage, "main").join(2))
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["queue"].objects == 1
    assert summary.recent["queue"].objects == 1
    assert old is not None and new is not None and _tickets(storage) == [new]
    assert repo.storage_usage().unreachable["queue"].objects == 1
