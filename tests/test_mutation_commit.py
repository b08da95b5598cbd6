"""The commit protocol's checks (``_commit``), at their edges.

``test_bad_input.py`` covers bad metadata one level deep; these pin which keys
are checked (nested, at the root, look-alikes), the chunk-shape rule per axis,
the messages, and the rebase count (found missing by mutation testing,
issue 13).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import zarr

from icechunk_dask import (
    ConflictError,
    CorruptObjectError,
    ErrorKind,
    InvalidInputError,
    NotFoundError,
    RebaseFailedError,
    Repository,
    Session,
    StorageError,
    _commit,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask._commit import _check_chunk_shape, validate_metadata
from icechunk_dask._sync import run
from icechunk_dask.storage import FaultyStorage, Storage
from tests.helpers import memory_repo_with_array

_ARRAY = {
    "zarr_format": 3,
    "node_type": "array",
    "shape": [8, 6],
    "data_type": "int64",
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 3]}},
    "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
    "fill_value": 0,
    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
}


def _doc(**changes: object) -> bytes:
    return json.dumps({**_ARRAY, **changes}).encode()


@pytest.mark.parametrize("key", ["zarr.json", "a/zarr.json", "g/h/a/zarr.json"])
def test_every_zarr_json_is_checked_at_any_depth(key: str) -> None:
    validate_metadata(key, _doc())
    validate_metadata(key, json.dumps({"zarr_format": 3, "node_type": "group"}).encode())
    with pytest.raises(InvalidInputError, match="is not valid JSON"):
        validate_metadata(key, b"{nope")
    with pytest.raises(InvalidInputError) as info:
        validate_metadata(key, _doc(zarr_format=2))
    assert str(info.value) == (
        f'{key!r} is not Zarr v3 metadata (no "zarr_format": 3); write arrays and groups '
        "with zarr (zarr_format=3). Nothing was committed"
    )
    with pytest.raises(InvalidInputError) as info:
        validate_metadata(key, json.dumps({"zarr_format": 3}).encode())
    assert str(info.value) == (
        f"{key!r} has node_type None; Zarr v3 knows 'array' and 'group'. Nothing was committed"
    )
    with pytest.raises(InvalidInputError, match="not valid Zarr v3 array metadata"):
        validate_metadata(key, _doc(data_type="no-such-type"))


@pytest.mark.parametrize("key", ["a/zarr.json.bak", "a/my-zarr.json", "zarr.json/c/0", "a/c/0"])
def test_other_keys_are_not_metadata(key: str) -> None:
    validate_metadata(key, b"\x00 any bytes")


def test_a_chunk_length_of_zero_is_refused_where_data_could_be() -> None:
    grid = {"name": "regular", "configuration": {"chunk_shape": [4, 0]}}
    with pytest.raises(InvalidInputError) as info:
        validate_metadata("a/zarr.json", _doc(chunk_grid=grid))
    # newer zarr refuses it while parsing; older zarr accepts it and the commit's own check
    # names the axis
    message = str(info.value)
    assert message.startswith("'a/zarr.json' ") and message.endswith("Nothing was committed")
    assert "[4, 0]" in message or "chunk length 0 on axis 1 of length 6" in message


def _parsed(shape: tuple[int, ...], chunks: tuple[int, ...] | None) -> SimpleNamespace:
    """Array metadata as zarr 3.1 parses it (zarr 3.4 reads a chunk length 0 as 1)."""
    grid = SimpleNamespace() if chunks is None else SimpleNamespace(chunk_shape=chunks)
    return SimpleNamespace(shape=shape, chunk_grid=grid)


@pytest.mark.parametrize(
    ("shape", "chunks", "axis"),
    [((8, 6), (4, 0), 1), ((6, 8), (0, 4), 0), ((1,), (0,), 0), ((0, 5, 7), (0, 1, 0), 2)],
)
def test_the_commit_refuses_a_chunk_length_of_zero_that_zarr_parsed(
    shape: tuple[int, ...], chunks: tuple[int, ...], axis: int
) -> None:
    with pytest.raises(InvalidInputError) as info:
        _check_chunk_shape("g/a/zarr.json", _parsed(shape, chunks))
    assert str(info.value) == (
        f"'g/a/zarr.json' has chunk length 0 on axis {axis} of length {shape[axis]}: no "
        "data could ever be stored. Use chunks of at least 1 element. Nothing was committed"
    )


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [((0,), (0,)), ((0, 4), (0, 1)), ((1, 1), (1, 1)), ((3,), (5,)), ((4,), None)],
)
def test_chunk_lengths_of_zero_on_empty_axes_and_other_grids_pass(
    shape: tuple[int, ...], chunks: tuple[int, ...] | None
) -> None:
    _check_chunk_shape("a/zarr.json", _parsed(shape, chunks))


_repo = memory_repo_with_array


def test_committing_to_a_deleted_branch_is_refused() -> None:
    repo = _repo()
    repo.create_branch("dev", repo.lookup_branch("main"))
    s = repo.writable_session("dev")
    zarr.open_array(s.store, path="a")[:] = 1
    repo.delete_branch("dev")
    with pytest.raises(NotFoundError) as info:
        s.commit("lost")
    assert str(info.value) == (
        "branch 'dev' was deleted; nothing was committed. Create it again with "
        "repo.create_branch or commit to another branch"
    )


def test_one_rebase_is_enough_for_one_commit_landed_first() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="a")[:2] = 1
    zarr.open_array(two.store, path="a")[2:] = 2
    first = one.commit("one")
    sid = two.commit("two", rebase_tries=1)
    assert [s.id for s in repo.ancestry(snapshot_id=sid)][:2] == [sid, first]
    stale = repo.writable_session("main")
    zarr.open_array(stale.store, path="a")[:2] = 3
    mover = repo.writable_session("main")
    zarr.open_array(mover.store, path="a")[2:] = 4
    mover.commit("moves the tip")
    with pytest.raises(ConflictError) as info:
        stale.commit("stale", rebase_tries=0)
    assert info.value.kind == ErrorKind.COMMIT_CONFLICT
    tip = repo.lookup_branch("main")
    assert str(info.value) == (
        f"branch 'main' moved to {tip} since this session started at {sid} and "
        "rebase_tries=0 never rebases. Nothing was committed; retry (a higher rebase_tries "
        "rebases onto the new tip when the changes do not conflict)"
    )


class _AckAndReadBackLost(FaultyStorage):
    """The first branch-entry write lands unacknowledged, and reading it back fails once."""

    def __init__(
        self, inner: Storage, *, deletes_fail: bool = False, error: StorageError | None = None
    ) -> None:
        super().__init__(
            inner,
            fail_on={"put_if_absent": 1, **({"delete": range(1, 100)} if deletes_fail else {})},
            fail_after_apply={"put_if_absent"},
            error=error,
        )
        self.readback_failed = False

    async def get(self, key: str) -> bytes:
        if self.injected and not self.readback_failed and key.startswith("refs/branch.main/"):
            self.readback_failed = True
            raise StorageError(f"injected failure: get {key}")
        return await super().get(key)


def _messages(storage: Storage) -> list[str]:
    return [info.message for info in Repository.open(storage).ancestry(branch="main")]


@pytest.mark.parametrize("later", [0, 1, 2])
def test_a_commit_of_unknown_outcome_is_found_below_commits_that_landed_since(
    later: int,
) -> None:
    inner = in_memory_storage()
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    s.commit("base")
    faulty = _AckAndReadBackLost(inner)
    session = Repository.open(faulty).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    with pytest.raises(StorageError, match="may or may not have landed"):
        session.commit("unknown outcome")
    ours = Repository.open(inner).lookup_branch("main")
    for i in range(later):  # other commits land on top of it
        other = Repository.open(inner).writable_session("main")
        zarr.open_array(other.store, path="a")[10 * (i + 1) : 10 * (i + 2)] = i + 1
        other.commit(f"later {i}")
    assert session.commit("unknown outcome") == ours
    assert _messages(inner).count("unknown outcome") == 1
    assert len(_messages(inner)) == 3 + later  # the repository's first commit, base, ours, later


def test_a_commit_of_unknown_outcome_on_a_reset_branch_is_committed_again() -> None:
    inner = in_memory_storage()
    repo = Repository.create(inner)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    base = s.commit("base")
    faulty = _AckAndReadBackLost(inner)
    session = Repository.open(faulty).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    with pytest.raises(StorageError, match="may or may not have landed"):
        session.commit("unknown outcome")
    lost = Repository.open(inner).lookup_branch("main")
    Repository.open(inner).reset_branch("main", base)  # our snapshot is no longer on main
    again = session.commit("unknown outcome")
    assert again != lost
    assert _messages(inner).count("unknown outcome") == 1
    back = zarr.open_array(Repository.open(inner).readonly_session("main").store, path="a")[:]
    assert list(back[:10]) == [7] * 10


def _unknown_outcome_then_two_more(inner: Storage) -> tuple[Session, list[str]]:
    """A session's commit lands unacknowledged, then two other commits land on top.

    Returns the session (over ``inner``, with a failure on its first commit) and the three
    snapshot ids, oldest first; the session's commit is to be retried.
    """
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    s.commit("base")
    session = Repository.open(_AckAndReadBackLost(inner)).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    with pytest.raises(StorageError, match="may or may not have landed"):
        session.commit("unknown outcome")
    ids = [Repository.open(inner).lookup_branch("main")]
    for i in (1, 2):
        other = Repository.open(inner).writable_session("main")
        zarr.open_array(other.store, path="a")[10 * i : 10 * (i + 1)] = i
        ids.append(other.commit(f"later {i}"))
    return session, ids


def test_a_commit_of_unknown_outcome_is_found_through_snapshots_expired_since(
    tmp_path: Path,
) -> None:
    inner = local_filesystem_storage(tmp_path / "repo", durable=False)
    session, (ours, later, _tip) = _unknown_outcome_then_two_more(inner)
    expired = Repository.open(inner).expire_snapshots(datetime.now(UTC))
    assert {ours, later} <= expired  # the walk from the tip passes through both
    assert session.commit("unknown outcome") == ours
    assert _messages(inner)[0] == "later 2"  # nothing was committed again


def test_a_cycle_above_a_commit_of_unknown_outcome_is_damage_not_a_hang(tmp_path: Path) -> None:
    inner = local_filesystem_storage(tmp_path / "repo", durable=False)
    session, (_ours, later, tip) = _unknown_outcome_then_two_more(inner)
    snap = run(Repository.open(inner)._assets.get_snapshot(later))
    looped = dataclasses.replace(snap, parent_id=tip)  # later 1 <-> later 2: neither is ours
    (tmp_path / "repo" / "snapshots" / later).write_bytes(looped.encode())
    with pytest.raises(CorruptObjectError) as info:
        session.commit("unknown outcome")
    assert str(info.value).startswith("the history of branch 'main' has a cycle at snapshot ")


def test_a_retry_reads_no_history_below_the_session_base(tmp_path: Path) -> None:
    inner = local_filesystem_storage(tmp_path / "repo", durable=False)
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    below = s.commit("below the base")
    s = Repository.open(inner).writable_session("main")
    zarr.open_array(s.store, path="a")[30:40] = 3
    base = s.commit("base")
    session = Repository.open(_AckAndReadBackLost(inner)).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    with pytest.raises(StorageError, match="may or may not have landed"):
        session.commit("unknown outcome")
    Repository.open(inner).reset_branch("main", base)  # our snapshot is not on main: not found
    (tmp_path / "repo" / "snapshots" / below).write_bytes(b"damaged, and never read")
    again = session.commit("unknown outcome")  # looked for from the tip down to its base only
    assert Repository.open(inner).lookup_branch("main") == again


@pytest.mark.parametrize("outcome", ["acknowledged", "unknown, then found"])
@pytest.mark.parametrize("deletes_fail", [False, True])
def test_a_commit_clears_the_markers_of_merged_copies_at_best(
    outcome: str, deletes_fail: bool
) -> None:
    inner = in_memory_storage()
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    s.commit("base")
    storage: Storage = _AckAndReadBackLost(inner, deletes_fail=deletes_fail)
    if outcome == "acknowledged":
        storage = FaultyStorage(inner, fail_on={"delete": range(1, 100)} if deletes_fail else {})
    session = Repository.open(storage).writable_session("main")
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))  # a tracked copy, as a Dask task gets
    zarr.open_array(copy.store, path="a")[10:20] = 8
    session.merge(copy)
    zarr.open_array(session.store, path="a")[0:10] = 7
    assert run(inner.list("sessions/"))  # the copy's marker
    if outcome != "acknowledged":
        with pytest.raises(StorageError, match="may or may not have landed"):
            session.commit("unknown outcome")
    sid = session.commit("unknown outcome")  # a marker that cannot be deleted fails nothing
    assert Repository.open(inner).lookup_branch("main") == sid
    assert bool(run(inner.list("sessions/"))) == deletes_fail
    back = zarr.open_array(Repository.open(inner).readonly_session("main").store, path="a")
    assert list(back[:20]) == [7] * 10 + [8] * 10


def test_a_retry_on_a_branch_whose_log_was_removed_says_the_branch_is_gone(
    tmp_path: Path,
) -> None:
    inner = local_filesystem_storage(tmp_path / "repo", durable=False)
    session, _ids = _unknown_outcome_then_two_more(inner)
    shutil.rmtree(tmp_path / "repo" / "refs" / "branch.main")  # damage: no log at all
    with pytest.raises(NotFoundError, match="branch 'main' was deleted; nothing was committed"):
        session.commit("unknown outcome")


class _OthersLandFirst(FaultyStorage):
    """Before each of the first ``times`` branch-entry writes, another commit lands."""

    def __init__(self, inner: Storage, times: int) -> None:
        super().__init__(inner)
        self.times = times
        self.landed: list[str] = []

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        if key.startswith("refs/branch.main/") and len(self.landed) < self.times:
            # in a thread: the other commit runs on the event loop this call waits on
            self.landed.append(await asyncio.to_thread(self._other_commit, len(self.landed)))
        return await super().put_if_absent(key, data)

    def _other_commit(self, i: int) -> str:
        other = Repository.open(self.inner).writable_session("main")
        zarr.open_array(other.store, path="a")[10 * (i + 1) : 10 * (i + 2)] = i + 1
        return other.commit(f"other {i}")


@pytest.mark.parametrize("tries", [1, 2])
def test_rebase_tries_rebases_over_commits_that_keep_landing_first(tries: int) -> None:
    inner = in_memory_storage()
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(40,), chunks=(10,), dtype="i4", fill_value=0)
    s.commit("base")
    for times in (tries, tries + 1):  # as many commits land first as it may rebase; one more
        storage = _OthersLandFirst(inner, times)
        session = Repository.open(storage).writable_session("main")
        start = session.snapshot_id
        zarr.open_array(session.store, path="a")[0:10] = 7
        if times == tries:
            sid = session.commit("ours", rebase_tries=tries)
            assert [i.id for i in Repository.open(inner).ancestry(branch="main")][:2] == [
                sid,
                storage.landed[-1],
            ]
            # the branch log's entry names the tip it moved from (docs/format.md)
            _seq, entry = run(Repository.open(inner)._assets.branch_tip("main"))
            assert entry is not None and entry.parent_id == storage.landed[-1]
            continue
        with pytest.raises(ConflictError) as info:
            session.commit("ours", rebase_tries=tries)
        assert info.value.kind == ErrorKind.COMMIT_CONFLICT
        assert str(info.value) == (
            f"branch 'main' moved to {storage.landed[-1]} since this session started at "
            f"{start}, and {tries} rebases were not enough: other commits kept landing first. "
            "Nothing was committed; retry (a higher rebase_tries rebases onto the new tip when "
            "the changes do not conflict)"
        )
        assert Repository.open(inner).lookup_branch("main") == storage.landed[-1]


def test_a_failed_rebase_names_the_branch() -> None:
    repo = _repo()
    repo.create_branch("dev", repo.lookup_branch("main"))
    one, two = repo.writable_session("dev"), repo.writable_session("dev")
    zarr.open_array(one.store, path="a")[:2] = 1
    zarr.open_array(two.store, path="a")[:2] = 2  # the same chunk
    landed = one.commit("one")
    with pytest.raises(RebaseFailedError) as info:
        two.commit("two")
    assert str(info.value).startswith(
        "cannot commit to 'dev': commits that landed since this session started changed the "
        f"same data: '/a': 1 chunk(s) also written by commit {landed} ('a/c/0')."
    )


def test_a_commit_of_unknown_outcome_keeps_the_kind_of_the_storage_error() -> None:
    inner = in_memory_storage()
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    s.commit("base")
    error = StorageError("a custom storage's own failure", kind=ErrorKind.GENERIC)
    session = Repository.open(_AckAndReadBackLost(inner, error=error)).writable_session("main")
    zarr.open_array(session.store, path="a")[:2] = 7
    with pytest.raises(StorageError) as info:
        session.commit("unknown outcome")
    assert info.value.kind == ErrorKind.GENERIC
    landed = session.commit("unknown outcome")  # it had landed: found, not written again
    assert str(info.value) == (
        f"a custom storage's own failure. The commit may or may not have landed (snapshot "
        f"{landed}): call commit again on this session, it finds out and returns the snapshot "
        "if it landed, or commits it otherwise"
    )


class _NoQueue(_OthersLandFirst):
    """Others land first, and the storage refuses every commit-queue ticket."""

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith("queue/"):
            raise StorageError(f"injected failure: put {key}")
        await super().put(key, data)


def test_a_commit_that_keeps_losing_without_a_queue_backs_off_exponentially_up_to_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner = in_memory_storage()
    s = Repository.create(inner).writable_session("main")
    zarr.create_array(s.store, name="a", shape=(120,), chunks=(10,), dtype="i4", fill_value=0)
    s.commit("base")
    storage = _NoQueue(inner, 10)
    session = Repository.open(storage).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def record(seconds: float) -> None:  # the commit's pauses recorded, not waited
        if sys._getframe(1).f_code is not _commit.commit_changes.__code__:
            await real_sleep(seconds)  # another task's sleep (zarr 3.1 has a periodic one)
            return
        pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(_commit.asyncio, "sleep", record)
    monkeypatch.setattr(_commit.random, "random", lambda: 0.5)  # the jitter's factor
    sid = session.commit("ours", rebase_tries=10)
    assert Repository.open(inner).lookup_branch("main") == sid
    # after each lost race: 5 ms doubling per attempt, times the jitter, at most 1 s
    assert pauses == [0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5]
