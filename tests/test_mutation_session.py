"""Mutation-campaign tests for icechunk_dask/_session.py (issue 13, part 4b).

Fixed inputs, in-memory repositories: the full messages of every refusal of ``commit``,
``fork`` and ``merge``, what a commit leaves behind, the pickled forms of sessions and
forks (what a copy carries, the scratch object stored once), ``allow_pickling``'s nesting
and hooks, and ``repr``.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from icechunk_dask import (
    BasicConflictSolver,
    ChangeSet,
    ConflictDetector,
    ConflictError,
    InvalidInputError,
    NoChangesToCommitError,
    PicklingNotAllowedError,
    ReadOnlyError,
    RebaseFailedError,
    Repository,
    RepositoryConfig,
    Session,
    SessionStateError,
    UnmergedWritesError,
    in_memory_storage,
)
from icechunk_dask import _session as session_module
from icechunk_dask._buildboxes import BoxTarget, build_layers
from icechunk_dask._fork import PICKLING_MESSAGE, UNMERGED_FORK_MESSAGE, UNMERGED_MESSAGE
from icechunk_dask._session import ForkSession, _RefusedSession
from icechunk_dask._sync import run
from icechunk_dask.format._envelope import ObjectKind, decode_object
from icechunk_dask.storage import FaultyStorage
from tests.helpers import memory_repo_with_array

_repo = memory_repo_with_array


def _write(session: Session, value: int, where: slice = slice(None)) -> None:
    zarr.open_array(session.store, path="a")[where] = value


def _read(session: Session) -> list[int]:
    return [int(x) for x in zarr.open_array(session.store, path="a", mode="r")[:]]


def _set(session: Session, key: str, data: bytes) -> None:
    run(session.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _get(session: Session, key: str) -> bytes:
    buf = run(session.store.get(key, default_buffer_prototype()))
    assert buf is not None
    return buf.to_bytes()


def _keys(repo: Repository, prefix: str) -> list[str]:
    return sorted(run(repo.storage.list(prefix)))


# -- commit: refusals, in order, with their full messages ------------------------------


def test_commit_refuses_bad_arguments_with_full_messages() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1)
    with pytest.raises(InvalidInputError) as e:
        s.commit(b"bytes")  # type: ignore[arg-type]
    assert str(e.value) == "the commit message must be a str, got b'bytes'"
    for tries in (True, False, -1, "3", 1.0, None):
        with pytest.raises(InvalidInputError) as e:
            s.commit("m", rebase_tries=tries)  # type: ignore[arg-type]
        assert str(e.value) == (
            f"rebase_tries must be an int >= 0 (0: never rebase), got {tries!r}"
        )
    with pytest.raises(InvalidInputError) as e:
        s.commit("m", metadata={"when": object})
    assert str(e.value).startswith("commit metadata must be JSON-serialisable: ")
    assert "is not JSON serializable" in str(e.value)
    assert isinstance(e.value.__cause__, TypeError)
    with pytest.raises(InvalidInputError) as e:
        s.commit("m", metadata={"x": float("nan")} | {1j: 1})  # type: ignore[dict-item]
    assert str(e.value).startswith("commit metadata must be JSON-serialisable: ")
    for not_a_dict in ([1, 2], "text", 3):
        with pytest.raises(InvalidInputError) as e:
            s.commit("m", metadata=not_a_dict)  # type: ignore[arg-type]
        assert str(e.value) == "commit metadata must be a dict"
    with pytest.raises(InvalidInputError) as e:
        s.commit("m", rebase_with=BasicConflictSolver)  # type: ignore[arg-type]
    assert str(e.value) == (
        "rebase_with takes a solver instance, got the class BasicConflictSolver; pass "
        "BasicConflictSolver() (with its options)"
    )
    with pytest.raises(InvalidInputError) as e:
        s.commit("m", rebase_with="theirs")  # type: ignore[arg-type]
    assert str(e.value) == (
        "rebase_with must be a conflict solver such as ConflictDetector() or "
        "BasicConflictSolver(...), got 'theirs'"
    )
    # nothing was committed, the session is intact and still commits
    assert s.has_uncommitted_changes and not s.read_only
    assert s.commit("fine", rebase_tries=0, metadata={}) == repo.lookup_branch("main")


def test_commit_accepts_zero_tries_falsy_metadata_and_a_solver() -> None:
    repo = _repo()
    for kw in (
        {"rebase_tries": 0},
        {"metadata": None},
        {"metadata": {}},
        {"rebase_with": ConflictDetector()},
        {"rebase_with": BasicConflictSolver()},
    ):
        s = repo.writable_session("main")
        _write(s, 1 + len(str(kw)))
        assert s.commit("m", **kw) == repo.lookup_branch("main")  # type: ignore[arg-type]
    s = repo.writable_session("main")
    _write(s, 7)
    sid = s.commit("with metadata", metadata={"k": [1, "x"], "n": None})
    assert next(iter(repo.ancestry(snapshot_id=sid))).metadata == {"k": [1, "x"], "n": None}


def test_commit_of_a_committed_session_and_of_a_fork_is_refused() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    fork = s.fork()
    _write(fork, 3)
    with pytest.raises(SessionStateError) as e:
        fork.commit("fork")
    assert str(e.value) == (
        "a fork cannot commit: merge it into the session it was forked from "
        "(session.merge(fork) or merge_sessions(session, fork)) and commit that one"
    )
    s.merge(fork)
    sid = s.commit("merged")
    with pytest.raises(SessionStateError) as e:
        s.commit("again")
    assert str(e.value) == (
        f"this session was already committed (as snapshot {sid}); a session commits once. "
        "Open a new one with repo.writable_session(branch) to commit more"
    )
    with pytest.raises(SessionStateError) as e:
        s.commit("again", allow_empty=True)
    ro = repo.readonly_session("main")
    with pytest.raises(ReadOnlyError):
        ro.commit("read-only")


def test_a_commit_leaves_the_session_read_only_at_the_new_snapshot() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    base = s.snapshot_id
    _write(s, 5)
    assert s.has_uncommitted_changes
    sid = s.commit("five")
    assert sid != base
    assert s.snapshot_id == sid == repo.lookup_branch("main")
    assert s.read_only and not s.has_uncommitted_changes
    assert _read(s) == [5, 5, 5, 5]
    with pytest.raises(ReadOnlyError) as e:
        _write(s, 6)
    assert "it was committed" in str(e.value)
    # the session's changes are gone: an empty change set on the new snapshot
    assert s.changes().base == sid
    assert not s.changes()
    # ... of this repository: a new session merges it (nothing to merge)
    assert s.changes().repo_id == repo.repo_id
    later = repo.writable_session("main")
    later.merge(s.changes())
    assert not later.has_uncommitted_changes


def test_nothing_to_commit_and_allow_empty() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    with pytest.raises(NoChangesToCommitError) as e:
        s.commit("nothing")
    assert str(e.value) == (
        "there are no changes to commit; write data through session.store first "
        "(or pass allow_empty=True to record a commit anyway)"
    )
    assert not s.read_only
    tip = repo.lookup_branch("main")
    sid = s.commit("empty", allow_empty=True)
    assert sid != tip and repo.lookup_branch("main") == sid


def test_an_unmerged_fork_stops_the_commit_and_counts_in_the_message() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1, slice(0, 2))
    forks = [s.fork(), s.fork(), s.fork()]
    _write(forks[0], 2, slice(2, 4))
    _write(forks[1], 3, slice(2, 4))
    with pytest.raises(UnmergedWritesError) as e:
        s.commit("two lost")
    assert str(e.value) == f"2 fork(s) {UNMERGED_FORK_MESSAGE}"
    s.merge(forks[0])
    with pytest.raises(UnmergedWritesError) as e:
        s.commit("one lost")
    assert str(e.value) == f"1 fork(s) {UNMERGED_FORK_MESSAGE}"
    forks[1].discard_changes()
    s.commit("all back")  # the third fork never wrote
    assert _read(repo.readonly_session("main")) == [1, 1, 2, 2]


def test_a_copy_that_wrote_and_never_came_back_stops_an_empty_commit() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    _write(copy, 9)  # leaves a marker in storage
    with pytest.raises(UnmergedWritesError) as e:
        s.commit("nothing of mine")
    assert str(e.value) == f"some {UNMERGED_MESSAGE}"
    s.merge(copy)
    s.commit("merged")
    assert _read(repo.readonly_session("main")) == [9, 9, 9, 9]


def test_metadata_is_checked_before_anything_is_written() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _set(s, "b/zarr.json", b'{"zarr_format": 2}')
    before = _keys(repo, "")
    with pytest.raises(InvalidInputError) as e:
        s.commit("bad")
    assert str(e.value).startswith("'b/zarr.json' is not Zarr v3 metadata")
    assert _keys(repo, "") == before
    run(s.store.delete("b/zarr.json"))
    _write(s, 4)
    s.commit("good")


# -- lazy writes -----------------------------------------------------------------------


def test_lazy_writes_never_delivered_are_named_in_order() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1)
    s._expect_job("job-one", "to_zarr of a")
    s._expect_job("job-two", "store of b")
    with pytest.raises(UnmergedWritesError) as e:
        s.commit("m")
    assert str(e.value) == (
        "2 lazy write(s) built from this session never delivered their result: "
        "to_zarr of a; store of b. Compute them before commit (dask.compute(...) and wait "
        "for any distributed future), or call session.discard_changes() to drop them "
        "deliberately. Nothing was committed"
    )
    assert not s.read_only and s.has_uncommitted_changes
    s.discard_changes()
    assert not s.has_uncommitted_changes
    with pytest.raises(NoChangesToCommitError):
        s.commit("the jobs were forgotten too")


# -- fork and merge --------------------------------------------------------------------


def test_fork_of_a_read_only_session_is_refused() -> None:
    repo = _repo()
    for s in (repo.readonly_session("main"), _committed(repo)):
        with pytest.raises(SessionStateError) as e:
            s.fork()
        assert str(e.value) == (
            "cannot fork a read-only or committed session; forks are for writing. Use "
            "repo.writable_session(branch).fork()"
        )


def _committed(repo: Repository) -> Session:
    s = repo.writable_session("main")
    _write(s, 8)
    s.commit("m")
    return s


def test_a_fork_sees_its_parents_changes_and_records_only_its_own() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1, slice(0, 2))
    _set(s, "a/zarr.json", _get(s, "a/zarr.json"))
    fork = s.fork()
    assert isinstance(fork, ForkSession) and fork.is_fork and not s.is_fork
    assert fork.read_only is False
    assert fork.session_id == s.session_id and fork.branch == "main"
    assert fork.snapshot_id == s.snapshot_id
    assert _read(fork) == [1, 1, 0, 0]
    assert not fork.has_uncommitted_changes
    _write(fork, 2, slice(2, 4))
    assert fork.has_uncommitted_changes
    own = fork.changes()
    assert sorted(own.chunks) == ["a/c/1"] and not own.meta
    # a fork of the fork inherits both
    grandchild = fork.fork()
    assert _read(grandchild) == [1, 1, 2, 2]
    _write(grandchild, 3, slice(0, 1))
    fork.merge(grandchild)
    s.merge(fork)
    assert _read(s) == [3, 1, 2, 2]


def test_a_fork_inherits_deletions_and_metadata_of_its_parent() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    g = zarr.create_group(s.store, path="g")
    zarr.create_array(g.store, name="g/x", shape=(2,), chunks=(1,), dtype="i4", fill_value=0)
    s.commit("g")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="g/x")[:] = 4
    fork = s.fork()
    run(fork.store.delete_dir("g"))
    _write(fork, 6)
    s.merge(fork)
    assert "g/x/zarr.json" not in run(_list(s, ""))
    # a fork of a session that deleted a directory does not see it
    s2 = repo.writable_session("main")
    run(s2.store.delete_dir("g"))
    child = s2.fork()
    assert "g/x/zarr.json" not in run(_list(child, ""))
    assert "a/zarr.json" in run(_list(child, ""))
    s2.merge(child)
    s2.commit("deleted g")
    assert sorted(run(_list(repo.readonly_session("main"), ""))) == [
        "a/c/0",
        "a/c/1",
        "a/zarr.json",
        "zarr.json",
    ] or "g/zarr.json" not in run(_list(repo.readonly_session("main"), ""))


async def _list(s: Session, prefix: str) -> list[str]:
    return [k async for k in s.store.list_prefix(prefix)]


def test_merge_refuses_other_objects_and_ignores_the_session_itself() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1)
    with pytest.raises(TypeError) as e:
        s.merge(s.fork(), 42)  # type: ignore[arg-type]
    assert str(e.value) == "merge accepts Session and ChangeSet objects, got int"
    s.merge(s)  # a no-op
    s.merge()
    assert _read(s) == [1, 1, 1, 1]
    fork = s.fork()
    _write(fork, 2, slice(0, 2))
    s.merge(fork.changes())  # a change record
    assert _read(s) == [2, 2, 1, 1]
    ro = repo.readonly_session("main")
    with pytest.raises(ReadOnlyError):
        ro.merge(ChangeSet(repo._assets.repo_id, ro.snapshot_id))


# -- status and discard ----------------------------------------------------------------


def test_status_names_what_the_session_and_its_parent_changed() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="b", shape=(2,), chunks=(1,), dtype="i4", fill_value=0)
    _write(s, 1, slice(0, 2))
    fork = s.fork()
    _write(fork, 2, slice(2, 4))
    diff = fork.status()
    assert set(diff.new_arrays) == {"/b"}  # inherited metadata counts
    assert diff.updated_chunks == {"/a": [(1,)]}
    diff = s.status()
    assert set(diff.new_arrays) == {"/b"}
    assert diff.updated_chunks == {"/a": [(0,)]}
    s.discard_changes()
    assert not s.has_uncommitted_changes
    assert s.status().is_empty()
    with pytest.raises(ReadOnlyError):
        repo.readonly_session("main").discard_changes()


# -- pickling --------------------------------------------------------------------------


def test_pickling_is_allowed_only_inside_allow_pickling_and_nests() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    assert not s.pickling_allowed
    with pytest.raises(PicklingNotAllowedError) as e:
        pickle.dumps(s)
    assert str(e.value) == PICKLING_MESSAGE
    with s.allow_pickling():
        assert s.pickling_allowed
        with s.allow_pickling():
            assert s.pickling_allowed
        assert s.pickling_allowed  # still inside the outer block
        pickle.dumps(s)
    assert not s.pickling_allowed
    with pytest.raises(PicklingNotAllowedError):
        pickle.dumps(s)
    # a block that raises still ends
    with pytest.raises(KeyError), s.allow_pickling():
        raise KeyError("x")
    assert not s.pickling_allowed
    assert repo.readonly_session("main").pickling_allowed
    assert s.fork().pickling_allowed


def test_allow_pickling_enters_its_hooks_at_the_outermost_level_only() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    seen: list[str] = []

    @contextlib.contextmanager
    def hook(session: Session) -> Iterator[None]:
        assert session is s
        seen.append("enter")
        try:
            yield
        finally:
            seen.append("exit")

    session_module.ALLOW_PICKLING_HOOKS.append(hook)
    try:
        with s.allow_pickling():
            assert seen == ["enter"]
            with s.allow_pickling():
                assert seen == ["enter"]
            assert seen == ["enter"]
        assert seen == ["enter", "exit"]
        with s.allow_pickling():
            pass
        assert seen == ["enter", "exit", "enter", "exit"]
    finally:
        session_module.ALLOW_PICKLING_HOOKS.remove(hook)


def test_a_read_only_session_pickles_as_itself() -> None:
    repo = _repo()
    s = repo.readonly_session("main")
    copy = pickle.loads(pickle.dumps(s))
    assert type(copy) is Session
    assert copy.read_only and not copy.is_fork
    assert (copy.snapshot_id, copy.branch, copy.session_id) == (
        s.snapshot_id,
        "main",
        s.session_id,
    )
    assert _read(copy) == [0, 0, 0, 0]
    committed = _committed(repo)
    copy = pickle.loads(pickle.dumps(committed))
    assert copy.read_only and copy.snapshot_id == committed.snapshot_id


def test_a_pickled_copy_carries_the_parents_uncommitted_state() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="b", shape=(2,), chunks=(1,), dtype="i4", fill_value=0)
    _write(s, 1, slice(0, 2))
    with s.allow_pickling():
        data = pickle.dumps(s)
    copy = pickle.loads(data)
    assert isinstance(copy, ForkSession) and copy.is_fork and copy.read_only is False
    assert (copy.snapshot_id, copy.branch, copy.session_id) == (
        s.snapshot_id,
        "main",
        s.session_id,
    )
    assert _read(copy) == [1, 1, 0, 0]
    assert "b/zarr.json" in run(_list(copy, "b"))
    assert not copy.has_uncommitted_changes  # inherited, not its own
    _write(copy, 2, slice(2, 4))
    assert sorted(copy.changes().chunks) == ["a/c/1"]
    # a copy of the copy travels with the copy's own changes and what it inherited
    again = pickle.loads(pickle.dumps(copy))
    assert (again.snapshot_id, again.branch, again.session_id) == (
        s.snapshot_id,
        "main",
        s.session_id,
    )
    assert _read(again) == [1, 1, 2, 2]
    assert sorted(again.changes().chunks) == ["a/c/1"]
    s.merge(again)
    s.commit("all")
    assert _read(repo.readonly_session("main")) == [1, 1, 2, 2]


def test_the_scratch_object_is_stored_once_per_version_of_the_chunks() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    with s.allow_pickling():
        pickle.dumps(s)
        assert _keys(repo, "scratch/") == []  # no uncommitted chunks: no scratch
        zarr.create_array(s.store, name="b", shape=(2,), chunks=(1,), dtype="i4")
        pickle.dumps(s)
        assert _keys(repo, "scratch/") == []  # metadata travels in the pickle
        _write(s, 1, slice(0, 2))
        pickle.dumps(s)
        first = _keys(repo, "scratch/")
        assert len(first) == 1
        # docs/format.md: header {"base": snapshot id}, body the references
        data = run(repo.storage.get(first[0]))
        assert decode_object(data, first[0], ObjectKind.SCRATCH)[0] == {"base": s.snapshot_id}
        pickle.dumps(s)
        pickle.dumps(s)
        assert _keys(repo, "scratch/") == first  # the same chunks: the same scratch
        _write(s, 2, slice(2, 4))
        copy = pickle.loads(pickle.dumps(s))
        second = _keys(repo, "scratch/")
        assert len(second) == 2
    # a copy holding inherited chunks and no scratch of its own yet (an in-process fork)
    # stores one when pickled; the copy above already has one and stores none
    pickle.dumps(copy)
    assert _keys(repo, "scratch/") == second
    assert _read(copy) == [1, 1, 2, 2]  # its inherited chunks are loaded now
    pickle.dumps(copy)
    assert _keys(repo, "scratch/") == second
    fork = s.fork()
    pickle.dumps(fork)
    third = _keys(repo, "scratch/")
    assert len(third) == 3
    pickle.dumps(fork)  # its cache
    assert _keys(repo, "scratch/") == third
    assert _read(pickle.loads(pickle.dumps(fork))) == [1, 1, 2, 2]


def test_a_fork_without_inherited_chunks_stores_no_scratch() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    fork = s.fork()
    _write(fork, 3)
    copy = pickle.loads(pickle.dumps(fork))
    assert _keys(repo, "scratch/") == []
    assert _read(copy) == [3, 3, 3, 3]
    assert copy.has_uncommitted_changes


def test_the_stand_in_of_a_refused_session() -> None:
    stand_in = _RefusedSession("sid", "snap")
    assert (stand_in.session_id, stand_in.snapshot_id) == ("sid", "snap")
    assert stand_in.read_only is False and stand_in.is_fork is False
    copy = pickle.loads(pickle.dumps(stand_in))
    assert isinstance(copy, _RefusedSession)
    assert (copy.session_id, copy.snapshot_id) == ("sid", "snap")
    with pytest.raises(PicklingNotAllowedError) as e:
        copy.store  # noqa: B018
    assert str(e.value) == PICKLING_MESSAGE


# -- repr --------------------------------------------------------------------------------


def test_repr_names_the_kind_branch_snapshot_and_changes() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    tip = s.snapshot_id
    assert repr(s) == f"<Session writable branch='main' snapshot={tip} changes=0>"
    _write(s, 1)
    assert repr(s) == f"<Session writable branch='main' snapshot={tip} changes=2>"
    fork = s.fork()
    assert repr(fork) == f"<ForkSession fork branch='main' snapshot={tip} changes=0>"
    ro = repo.readonly_session(snapshot_id=tip)
    assert repr(ro) == f"<Session read-only branch=None snapshot={tip} changes=0>"
    s.merge(fork)
    sid = s.commit("m")
    assert repr(s) == f"<Session read-only branch='main' snapshot={sid} changes=0>"
    assert re.fullmatch(r"<Session read-only branch='main' snapshot=\S+ changes=0>", repr(s))
    assert np.array_equal(_read(s), [1, 1, 1, 1])


def _layered_record(repo: Repository) -> ChangeSet:
    """A record whose two chunks of ``a`` are in a pre-built layer (as a Dask job's)."""
    writer = repo.writable_session("main")
    _write(writer, 7)
    record = writer.changes()
    target = BoxTarget("a", ("default", "/"), (4,))
    run(build_layers(repo._assets, record, [(0, "0")], [target]))
    assert not record.chunks and record.layers
    return record


def test_status_names_the_chunks_of_pre_built_layers_once() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    s.merge(_layered_record(repo))
    assert s.status().updated_chunks == {"/a": [(0,), (1,)]}
    _write(s, 8, slice(0, 1))  # also written directly, after the job
    assert s.status().updated_chunks == {"/a": [(0,), (1,)]}
    assert _read(s) == [8, 7, 7, 7]


def test_status_of_a_session_whose_base_snapshot_expired() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 1, slice(0, 2))
    for value in (2, 3):
        other = repo.writable_session("main")
        _write(other, value, slice(2, 4))
        other.commit(f"{value}")
    assert repo.expire_snapshots(datetime.now(UTC))  # s's base is expired now
    assert s.status().updated_chunks == {"/a": [(0,)]}


def _packed(repo: Repository) -> Session:
    """A session holding two 1 KiB chunks in its open pack (not stored yet)."""
    s = repo.writable_session("main")
    big = zarr.create_array(
        s.store, name="p", shape=(512,), chunks=(256,), dtype="i4", fill_value=0, compressors=None
    )
    big[:] = np.arange(512, dtype="i4")
    assert _keys(repo, "chunks/") == []  # buffered in the open pack
    return s


@pytest.mark.parametrize("how", ["pickle", "fork", "fork-pickle", "changes"])
def test_chunks_in_the_open_pack_are_stored_before_they_leave(how: str) -> None:
    repo = _repo()
    s = _packed(repo)
    if how == "pickle":
        with s.allow_pickling():
            other = pickle.loads(pickle.dumps(s))
    elif how == "fork":
        other = s.fork()
    elif how == "fork-pickle":
        fork = s.fork()
        zarr.open_array(fork.store, path="p")[:256] = 7  # in the fork's own open pack
        stored = len(_keys(repo, "chunks/"))  # the parent's pack, stored by fork()
        other = pickle.loads(pickle.dumps(fork))
        assert len(_keys(repo, "chunks/")) == stored + 1  # and now the fork's
    else:
        other = repo.writable_session("main")
        other.merge(s.changes())
    assert len(_keys(repo, "chunks/")) >= 1
    expected = np.arange(512, dtype="i4")
    if how == "fork-pickle":
        expected[:256] = 7
    np.testing.assert_array_equal(zarr.open_array(other.store, path="p", mode="r")[:], expected)


# -- pre-built layers through forks, copies and merges ---------------------------------


def test_forks_and_copies_read_the_pre_built_layers_of_their_parent() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    s.merge(_layered_record(repo))
    own = s.changes()
    assert own.layers and not own.chunks  # a root session keeps the layers as they are
    fork = s.fork()
    assert _read(fork) == [7, 7, 7, 7]
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    assert _read(copy) == [7, 7, 7, 7]
    _write(fork, 1, slice(0, 1))
    again = pickle.loads(pickle.dumps(fork))  # a fork travels with what it inherited
    assert _read(again) == [1, 7, 7, 7]
    assert _read(pickle.loads(pickle.dumps(copy))) == [7, 7, 7, 7]
    s.merge(again)
    s.commit("layers")
    assert _read(repo.readonly_session("main")) == [1, 7, 7, 7]


def test_a_session_that_inherits_chunks_flattens_the_layers_it_merges() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    _write(s, 5, slice(2, 4))
    fork = s.fork()  # inherits a chunk: keeps no layers of its own
    fork.merge(_layered_record(repo))
    own = fork.changes()
    assert not own.layers
    assert sorted(own.chunks) == ["a/c/0", "a/c/1"]
    assert _read(fork) == [7, 7, 7, 7]


def test_merging_two_records_that_change_one_pre_built_box() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    records = []
    for value, where in ((7, slice(2, 4)), (9, slice(0, 2))):
        writer = repo.writable_session("main")
        _write(writer, value, where)
        record = writer.changes()
        target = BoxTarget("a", ("default", "/"), (4,))
        run(build_layers(repo._assets, record, [(0, "0")], [target]))
        records.append(record)
    first, second = records
    s.merge(first)
    s.merge(second)  # the box is loaded from both layers
    assert _read(s) == [9, 9, 7, 7]
    s.commit("two jobs")
    assert _read(repo.readonly_session("main")) == [9, 9, 7, 7]


def test_copies_pickled_after_merges_carry_the_merged_chunks() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    with s.allow_pickling():
        for i, where in enumerate((slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 4))):
            fork = s.fork()
            _write(fork, 10 + i, where)
            s.merge(fork)
            copy = pickle.loads(pickle.dumps(s))
            assert _read(copy) == _read(s)
    assert _read(s) == [10, 11, 12, 13]
    assert len(_keys(repo, "scratch/")) == 4  # one per version of the chunks


def test_a_pickled_copy_and_a_fork_of_it_do_not_see_what_delete_dir_removed() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_group(s.store, path="g")
    _array_in(s, "g/x")
    s.commit("g")
    s = repo.writable_session("main")
    run(s.store.delete_dir("g"))
    _write(s, 2)
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    grandchild = copy.fork()  # no chunks of its own: inherits the copy's scratch
    for view in (copy, grandchild, pickle.loads(pickle.dumps(grandchild))):
        keys = run(_list(view, ""))
        assert not any(k.startswith("g/") for k in keys)
        assert _read(view) == [2, 2, 2, 2]


def _array_in(s: Session, name: str) -> None:
    zarr.create_array(s.store, name=name, shape=(2,), chunks=(1,), dtype="i4", fill_value=0)
    zarr.open_array(s.store, path=name)[:] = 1


def test_distributed_pickles_a_session_without_allow_pickling_as_a_stand_in() -> None:
    from distributed.protocol import pickle as dpickle

    repo = _repo()
    s = repo.writable_session("main")
    stand_in = dpickle.loads(dpickle.dumps(s))
    assert isinstance(stand_in, _RefusedSession)
    assert (stand_in.session_id, stand_in.snapshot_id) == (s.session_id, s.snapshot_id)
    with s.allow_pickling():
        copy = dpickle.loads(dpickle.dumps(s))
    assert isinstance(copy, ForkSession)


# -- what commit hands the commit protocol -----------------------------------------------


def test_a_commit_records_its_message_parent_and_metadata() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    base = s.snapshot_id
    _write(s, 3)
    sid = s.commit("the message", metadata={"k": 1})
    info = next(iter(repo.ancestry(branch="main")))
    assert (info.id, info.message, info.metadata) == (sid, "the message", {"k": 1})
    assert info.parent_id == base


def test_commit_rebases_as_rebase_tries_and_rebase_with_say() -> None:
    repo = _repo()
    late = repo.writable_session("main")
    _write(late, 1, slice(0, 2))
    first = repo.writable_session("main")
    _write(first, 2, slice(2, 4))
    first.commit("first")
    with pytest.raises(ConflictError):
        late.commit("no rebase", rebase_tries=0)
    sid = late.commit("rebased")  # disjoint chunks: rebased onto "first"
    assert _read(repo.readonly_session(snapshot_id=sid)) == [1, 1, 2, 2]
    # one chunk written by both: the detector refuses, the basic solver keeps ours
    ours = repo.writable_session("main")
    _write(ours, 8, slice(0, 2))
    theirs = repo.writable_session("main")
    _write(theirs, 9, slice(0, 2))
    theirs.commit("theirs")
    with pytest.raises(RebaseFailedError):
        ours.commit("detected")
    ours.commit("solved", rebase_with=BasicConflictSolver())
    assert _read(repo.readonly_session("main")) == [8, 8, 2, 2]


def test_a_commit_clears_the_markers_of_the_copies_it_merged() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    _write(copy, 4)
    assert len(_keys(repo, f"sessions/{s.session_id}/")) == 1
    s.merge(copy)
    s.commit("merged")
    assert _keys(repo, "sessions/") == []


def test_forking_a_copy_without_chunks_of_its_own_reads_nothing() -> None:
    storage = FaultyStorage(in_memory_storage())
    repo = Repository.create(storage, RepositoryConfig())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    _write(s, 1)
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))  # inherits a scratch object, not loaded yet
    counted = copy._workspace.assets.storage
    assert isinstance(counted, FaultyStorage)
    before = counted.calls.get("get", 0)
    child = copy.fork()  # no chunk of its own: hands the scratch key on, unread
    assert counted.calls.get("get", 0) == before
    assert _read(child) == [1, 1, 1, 1]


def test_a_merge_moves_the_chunks_version_on_like_a_write() -> None:
    """Each change of the chunks gives a version not seen before (the scratch cache key)."""
    repo = _repo()
    s = repo.writable_session("main")
    with s.allow_pickling():
        _write(s, 1, slice(0, 1))  # version 1
        _write(s, 2, slice(2, 3))  # version 2
        assert _read(pickle.loads(pickle.dumps(s))) == [1, 0, 2, 0]  # scratch cached at 2
        fork = s.fork()
        _write(fork, 3, slice(1, 2))
        s.merge(fork)  # version 3 (a step back would meet the cached version again)
        _write(s, 4, slice(3, 4))
        assert _read(pickle.loads(pickle.dumps(s))) == [1, 3, 2, 4]
        fork = s.fork()
        _write(fork, 5, slice(0, 1))
        s.merge(fork)
        _write(s, 6, slice(2, 3))
        _write(s, 7, slice(3, 4))
        assert _read(pickle.loads(pickle.dumps(s))) == [5, 3, 6, 7]
