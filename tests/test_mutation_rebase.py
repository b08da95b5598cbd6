"""What a rebase finds colliding (``_rebase.find_conflicts``), one conflict type at a time.

Two sessions start on one snapshot; the first commits, the second commits
with the default solver and the test reads the exact conflicts it reports
(type, path, keys, description), or checks that disjoint changes land
(found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from icechunk_dask import (
    BasicConflictSolver,
    Conflict,
    ConflictType,
    CorruptObjectError,
    NotFoundError,
    RebaseFailedError,
    Repository,
    RepositoryConfig,
    Session,
    in_memory_storage,
    local_filesystem_storage,
    store_sessions,
)
from icechunk_dask._sync import run
from icechunk_dask.format import Snapshot
from icechunk_dask.format._manifest import encode_manifest


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
    stale_base = stale.snapshot_id
    with pytest.raises(RebaseFailedError, match="was reset") as info:
        stale.commit("stale")
    assert info.value.conflicts == [
        Conflict(
            ConflictType.BRANCH_RESET,
            "/",
            description=f"branch 'main' no longer contains snapshot {stale_base}",
        )
    ]


# -- keys that only the view's array paths place right --------------------------------------


def test_chunks_of_an_array_named_c_in_a_group() -> None:
    """``g/c/c/0`` is a chunk of the array ``g/c``, not a key ``c/c/0`` of the group ``g``."""
    repo = _repo()
    s = repo.writable_session("main")
    zarr.open_group(s.store, path="g").create_array(
        "c", shape=(4,), chunks=(2,), dtype="i4", fill_value=0
    )
    s.commit("g/c")
    one, two = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(one.store, path="g/c")[:2] = 5
    zarr.open_array(two.store, path="g/c")[:2] = 6
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNK_DOUBLE_UPDATE,
            "/g/c",
            conflicted_chunks=((0,),),
            keys=("g/c/c/0",),
            description=f"1 chunk(s) also written by commit {sid}",
        )
    ]


def test_a_key_that_is_no_chunk_written_twice_has_no_coordinates() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    for s, value in ((one, b"1"), (two, b"2")):
        run(s.store.set("extra/blob", default_buffer_prototype().buffer.from_bytes(value)))
    sid, conflicts = _conflicts(repo, one, two)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNK_DOUBLE_UPDATE,
            "/extra",
            conflicted_chunks=None,
            keys=("extra/blob",),
            description=f"1 chunk(s) also written by commit {sid}",
        )
    ]


def test_writing_under_a_root_the_other_side_deleted() -> None:
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    run(one.store.delete_dir(""))
    _a(two)[:2, :2] = 6
    sid, conflicts = _conflicts(repo, one, two)
    assert (
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_DELETED_ARRAY,
            "/",
            description=f"deleted by commit {sid} while this session changed it",
        )
        in conflicts
    )


def test_deleting_an_array_the_other_side_deleted_first() -> None:
    """The array is gone at the tip but was one at the base: still DeleteOfUpdatedArray."""
    repo = _repo()
    one, two = repo.writable_session("main"), repo.writable_session("main")
    run(one.store.delete_dir("g/a"))
    run(two.store.delete_dir("g/a"))
    sid, conflicts = _conflicts(repo, one, two)
    assert (
        Conflict(
            ConflictType.DELETE_OF_UPDATED_ARRAY,
            "/g/a",
            description=f"changed by commit {sid} while this session deleted it",
        )
        in conflicts
    )
    assert ConflictType.DELETE_OF_UPDATED_GROUP not in {c.conflict_type for c in conflicts}


# -- history that cannot be walked ----------------------------------------------------------


def _history_repo(tmp_path: Path) -> tuple[Repository, Session, list[str]]:
    """A writer on snapshot ``ids[0]`` of a fresh handle; the branch then moves to ``ids[2]``."""
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    repo = Repository.create(storage, RepositoryConfig())
    ids = []
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    ids.append(s.commit("v1"))
    writer = Repository.open(storage).writable_session("main")  # its own, empty caches
    zarr.create_array(writer.store, name="w", shape=(2,), chunks=(2,), dtype="i4", fill_value=0)
    for v in (2, 3):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[:] = v
        ids.append(s.commit(f"v{v}"))
    return repo, writer, ids


def _collected_message(since: str, which: str) -> str:
    return (
        f"branch 'main' moved since this session started at snapshot {since}, and "
        f"{which} in between were expired and garbage-collected, so this session's changes "
        "cannot be checked against theirs. Nothing was committed; start a new session on the "
        "branch and write again (garbage collection keeps what is newer than its cutoff: "
        "choose a cutoff older than your longest session)"
    )


def test_a_collected_snapshot_in_between_is_named(tmp_path: Path) -> None:
    repo, writer, ids = _history_repo(tmp_path)
    assert ids[1] in repo.expire_snapshots(datetime.now(UTC))
    (tmp_path / "repo" / "snapshots" / ids[1]).unlink()  # what garbage collection does
    with pytest.raises(RebaseFailedError) as info:
        writer.commit("w")
    assert str(info.value) == _collected_message(ids[0], f"snapshot {ids[1]}")
    assert repo.lookup_branch("main") == ids[2]


def test_collected_transaction_logs_in_between(tmp_path: Path) -> None:
    repo, writer, ids = _history_repo(tmp_path)
    assert ids[1] in repo.expire_snapshots(datetime.now(UTC))
    (tmp_path / "repo" / "transactions" / ids[1]).unlink()
    with pytest.raises(RebaseFailedError) as info:
        writer.commit("w")
    assert str(info.value) == _collected_message(ids[0], "snapshots")


def test_a_missing_transaction_log_of_a_live_snapshot_is_not_found(tmp_path: Path) -> None:
    """No expiry explains it: not reported as garbage collection, the NotFoundError stays."""
    repo, writer, ids = _history_repo(tmp_path)
    (tmp_path / "repo" / "transactions" / ids[1]).unlink()
    with pytest.raises(NotFoundError) as info:
        writer.commit("w")
    assert not isinstance(info.value, RebaseFailedError)
    assert repo.lookup_branch("main") == ids[2]


def test_a_cycle_in_the_history_is_damage(tmp_path: Path) -> None:
    repo, writer, ids = _history_repo(tmp_path)
    snap = run(repo._assets.get_snapshot(ids[1]))
    looped = dataclasses.replace(snap, parent_id=ids[2])  # v2's parent: v3
    (tmp_path / "repo" / "snapshots" / ids[1]).write_bytes(looped.encode())
    assert Snapshot.decode(looped.encode(), f"snapshots/{ids[1]}").parent_id == ids[2]
    with pytest.raises(CorruptObjectError) as info:
        writer.commit("w")
    assert str(info.value) == (
        f"the history of branch 'main' has a cycle at snapshot {ids[2]}: the "
        "repository is damaged (run icechunk-dask verify)"
    )
    assert info.value.key == f"snapshots/{ids[2]}"


# -- layers built by Dask workers (a job's session holds layers, not chunk references) --------

SHAPE = (64, 32)  # 32 x 16 chunks of (2, 2); boxes of 64 references: workers build layers


def _layer_repo(tmp_path: Path, name: str = "a") -> Repository:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    repo = Repository.create(storage, RepositoryConfig(manifest_box_refs=64))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name=name, shape=SHAPE, chunks=(2, 2), dtype="i4", fill_value=-1)
    if name:  # (a root array has no children)
        b = zarr.create_array(s.store, name="b", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
        b[:] = 1
    s.commit("create")
    return repo


def _job(repo: Repository, name: str = "a") -> Session:
    """A session whose chunks of ``name`` are all in layers built by Dask tasks."""
    job = repo.writable_session("main")
    data = np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)
    target = zarr.open_array(job.store, path=name)
    with dask.config.set(scheduler="threads"):
        store_sessions([da.from_array(data, chunks=(4, 8))], [target], job)
    assert job.changes().layers and not job.changes().chunks
    return job


@pytest.mark.parametrize("name", ["a", "g/c"])
def test_chunks_in_layers_where_the_other_side_changed_the_metadata(
    tmp_path: Path, name: str
) -> None:
    repo = _layer_repo(tmp_path, name)
    job = _job(repo, name)
    other = repo.writable_session("main")
    zarr.open_array(other.store, path=name).attrs["x"] = 1
    sid, conflicts = _conflicts(repo, other, job)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
            "/" + name,
            description=f"chunks written here, array metadata changed by commit {sid}",
        )
    ]


@pytest.mark.parametrize("name", ["a", "", "g/c"])
def test_a_chunk_also_in_their_layers(tmp_path: Path, name: str) -> None:
    """Their layers are read key by key (at the root too); the rest of their log stays."""
    repo = _layer_repo(tmp_path, name)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path=name)[4:6, 2:4] = 3
    job = _job(repo, name)
    if name:  # their commit also deletes an array this session writes
        zarr.open_array(writer.store, path="b")[:2] = 3
        run(job.store.delete_dir("b"))
    sid, conflicts = _conflicts(repo, job, writer)
    assert conflicts[0] == Conflict(
        ConflictType.CHUNK_DOUBLE_UPDATE,
        "/" + name,
        conflicted_chunks=((2, 1),),
        keys=(f"{name}/c/2/1" if name else "c/2/1",),
        description=f"1 chunk(s) also written by commit {sid}",
    )
    assert conflicts[1:] == (
        [
            Conflict(
                ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
                "/b",
                description=f"chunks written here, array metadata changed by commit {sid}",
            ),
            Conflict(
                ConflictType.CHUNKS_UPDATED_IN_DELETED_ARRAY,
                "/b",
                description=f"deleted by commit {sid} while this session changed it",
            ),
        ]
        if name
        else []
    )


@pytest.mark.parametrize("name", ["a", "g/c"])
def test_metadata_changed_where_their_layers_wrote_chunks(tmp_path: Path, name: str) -> None:
    repo = _layer_repo(tmp_path, name)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path=name).attrs["x"] = 1
    job = _job(repo, name)
    sid, conflicts = _conflicts(repo, job, writer)
    assert conflicts == [
        Conflict(
            ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
            "/" + name,
            description=f"array metadata changed here, chunks written by commit {sid}",
        )
    ]


def _data() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype="i4").reshape(SHAPE)


def test_layers_rebase_over_a_deletion_elsewhere(tmp_path: Path) -> None:
    """Their commit deleted another array: this session's layers need no loading."""
    repo = _layer_repo(tmp_path)
    job = _job(repo)
    other = repo.writable_session("main")
    run(other.store.delete_dir("b"))
    other.commit("delete b")
    job.commit("job")
    after = repo.readonly_session("main")
    np.testing.assert_array_equal(zarr.open_array(after.store, path="a")[:], _data())
    assert not any(k.startswith("b/") for k in run(_list(after, "")))


def test_a_deletion_elsewhere_rebases_over_their_layers(tmp_path: Path) -> None:
    repo = _layer_repo(tmp_path)
    other = repo.writable_session("main")
    run(other.store.delete_dir("b"))
    _job(repo).commit("job")
    other.commit("delete b")
    after = repo.readonly_session("main")
    np.testing.assert_array_equal(zarr.open_array(after.store, path="a")[:], _data())
    assert not any(k.startswith("b/") for k in run(_list(after, "")))


@pytest.mark.parametrize("where", ["box", "node"])
def test_their_layer_that_belongs_elsewhere_is_damage(tmp_path: Path, where: str) -> None:
    """Their layers are checked against the node and box their commit names.

    The manifest is rewritten under its own id with another box (or node) in its
    header: only that check finds it (a copy of another manifest fails the id check).
    """
    repo = _layer_repo(tmp_path)
    writer = Repository.open(repo.storage).writable_session("main")  # its own, empty caches
    zarr.open_array(writer.store, path="a")[4:6, 2:4] = 3
    sid = _job(repo).commit("job")
    boxes = run(repo._assets.get_snapshot(sid)).nodes["a"].boxes
    first, second = sorted(boxes)[:2]
    target = boxes[first][0].id
    entries = run(repo._assets.get_manifest(target, "a", first))
    node, box = ("a", second) if where == "box" else ("d", first)
    (tmp_path / "repo" / "manifests" / target).write_bytes(
        encode_manifest(target, node, box, entries)
    )
    with pytest.raises(CorruptObjectError) as info:
        writer.commit("late")
    assert info.value.key == f"manifests/{target}"
    assert repo.lookup_branch("main") == sid
