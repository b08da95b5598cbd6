"""What a rebase finds colliding (``_rebase.find_conflicts``), one conflict type at a time.

Two sessions start on one snapshot; the first commits, the second commits
with the default solver and the test reads the exact conflicts it reports
(type, path, keys, description), or checks that disjoint changes land
(found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    BasicConflictSolver,
    Conflict,
    ConflictType,
    RebaseFailedError,
    Repository,
    RepositoryConfig,
    Session,
    in_memory_storage,
)
from icechunk_dask._sync import run


def _repo() -> Repository:
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w")
    g = root.create_group("g")
    g.create_array("a", shape=(4, 4), chunks=(2, 2), dtype="i4", fill_value=0)[:] = 1
    root.create_array("b", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)[:] = 1
    s.commit("base")
    return repo


def _a(s: Session) -> zarr.Array:
    return zarr.open_array(s.store, path="g/a")


def _conflicts(repo: Repository, first: Session, second: Session) -> tuple[str, list[Conflict]]:
    sid = first.commit("first")
    with pytest.raises(RebaseFailedError) as info:
        second.commit("second")
    assert repo.lookup_branch("main") == sid  # nothing committed
    return sid, list(info.value.conflicts)


def test_disjoint_changes_rebase_and_keep_both() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one)[:2, :2] = 5
    _a(two)[2:, 2:] = 6
    zarr.open_array(two.store, path="b").attrs["x"] = 1
    one.commit("one")
    two.commit("two")
    back = _a(repo.readonly_session("main"))[:]
    assert back[0, 0] == 5 and back[3, 3] == 6 and back[0, 3] == 1
    assert zarr.open_array(repo.readonly_session("main").store, path="b").attrs["x"] == 1


def test_the_same_chunk_written_twice() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one)[:2, :2] = 5
    _a(two)[:4, :2] = 6
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNK_DOUBLE_UPDATE,
            "/g/a",
            conflicted_chunks=((0, 0),),
            keys=("g/a/c/0/0",),
            description=f"1 chunk(s) also written by commit {sid}",
        )
    ]


def test_metadata_changed_on_both_sides_differently_or_alike() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one).attrs["x"] = 1
    _a(two).attrs["x"] = 2
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.ZARR_METADATA_DOUBLE_UPDATE,
            "/g/a",
            keys=("g/a/zarr.json",),
            description=f"metadata also changed by commit {sid}",
        )
    ]
    alike = repo.writable_session("main")
    again = repo.writable_session("main")
    _a(alike).attrs["y"] = 1
    _a(again).attrs["y"] = 1
    alike.commit("alike")
    again.commit("the same document: no conflict")


def test_chunks_written_where_the_other_side_changed_the_metadata() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one).attrs["x"] = 1
    _a(two)[:2, :2] = 6
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
            "/g/a",
            description=f"chunks written here, array metadata changed by commit {sid}",
        )
    ]
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one)[:2, :2] = 7
    _a(two).attrs["x"] = 3
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
            "/g/a",
            description=f"array metadata changed here, chunks written by commit {sid}",
        )
    ]


def test_changes_under_what_the_other_side_deleted() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    run(one.store.delete_dir("g"))
    _a(two)[:2, :2] = 6
    sid, conflicts = _conflicts(repo, one, two)
    # (the deletion of g/a/zarr.json is also reported as a metadata change)
    assert (
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_DELETED_ARRAY,
            "/g",
            description=f"deleted by commit {sid} while this session changed it",
        )
        in conflicts
    )


@pytest.mark.parametrize(
    ("deleted", "kind"),
    [("g/a", ConflictType.DELETE_OF_UPDATED_ARRAY), ("g", ConflictType.DELETE_OF_UPDATED_GROUP)],
)
@pytest.mark.parametrize("theirs", ["chunks", "metadata"])
def test_deleting_what_the_other_side_changed(
    deleted: str, kind: ConflictType, theirs: str
) -> None:
    """A delete_dir of what they changed is one DeleteOf... conflict, which a solver may settle."""
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    if theirs == "chunks":
        _a(one)[:2, :2] = 5
    else:
        _a(one).attrs["x"] = 1
    run(two.store.delete_dir(deleted))
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            kind,
            "/" + deleted,
            description=f"changed by commit {sid} while this session deleted it",
        )
    ]
    # BasicConflictSolver's default: the deletion wins
    three, four = repo.writable_session("main"), repo.writable_session("main")
    _a(three)[2:, 2:] = 8
    _a(three).attrs["y"] = 2
    run(four.store.delete_dir(deleted))
    three.commit("three")
    with pytest.raises(RebaseFailedError):
        four.commit("four", rebase_with=BasicConflictSolver(**{_option(kind): True}))
    four.commit("four", rebase_with=BasicConflictSolver())
    listed = run(_list(repo.readonly_session("main"), ""))
    assert not any(k.startswith(deleted + "/") for k in listed)
    assert ("b/zarr.json" in listed) and (deleted != "g/a" or "g/zarr.json" in listed)


def _option(kind: ConflictType) -> str:
    if kind is ConflictType.DELETE_OF_UPDATED_ARRAY:
        return "fail_on_delete_of_updated_array"
    return "fail_on_delete_of_updated_group"


def test_deleting_and_recreating_an_array_they_wrote_stays_a_conflict() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one)[:2, :2] = 5
    run(two.store.delete_dir("g/a"))
    zarr.open_group(two.store, path="g").create_array(
        "a", shape=(2,), chunks=(1,), dtype="i4", fill_value=0
    )
    _, conflicts = _conflicts(repo, one, two)
    assert {c.conflict_type for c in conflicts} == {
        ConflictType.DELETE_OF_UPDATED_ARRAY,
        ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
    }


async def _list(s: Session, prefix: str) -> list[str]:
    return [k async for k in s.store.list_prefix(prefix)]


def test_a_deletion_of_an_unrelated_path_is_no_conflict() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    _a(one)[:2, :2] = 5
    run(two.store.delete_dir("b"))
    one.commit("one")
    two.commit("two")
    listed = run(_list(repo.readonly_session("main"), ""))
    assert not any(k.startswith("b/") for k in listed)
    np.testing.assert_array_equal(_a(repo.readonly_session("main"))[:2, :2], 5)


def test_a_branch_reset_behind_the_base_is_reported() -> None:
    repo = _repo()
    base = repo.lookup_branch("main")
    s = repo.writable_session("main")
    _a(s)[:2, :2] = 5
    s.commit("ahead")
    stale = repo.writable_session("main")  # based on "ahead"
    _a(stale)[2:, 2:] = 6
    repo.reset_branch("main", base)
    other = repo.writable_session("main")
    _a(other)[:2, 2:] = 7
    other.commit("a new history")
    with pytest.raises(RebaseFailedError, match="was reset") as info:
        stale.commit("stale")
    (c,) = info.value.conflicts
    assert c.conflict_type is ConflictType.BRANCH_RESET and c.path == "/"
