"""Manifests built on the workers: a Dask job hands the client layers, not references.

A repository with small boxes (``manifest_box_refs=64``: a worker builds a box
once the job writes 8 references into it) makes every path run with a few
hundred chunks. Each test compares what is read back with the data written:
pre-built layers change what a commit costs, never what any operation returns.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from icechunk_dask import (
    ConflictError,
    ErrorKind,
    InvalidInputError,
    Repository,
    RepositoryConfig,
    Session,
    local_filesystem_storage,
    merge_sessions,
    store_sessions,
)
from icechunk_dask._buildboxes import BoxTarget, build_layers
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._sync import run

pytest_plugins = ["tests.dask_fixtures"]

SHAPE = (64, 32)
CHUNKS = (2, 2)  # 32 x 16 chunk grid; boxes of 64 refs: 4 rows of chunks


def _repo(tmp_path: Path, **config: object) -> Repository:
    cfg = RepositoryConfig(**{"manifest_box_refs": 64, **config})  # type: ignore[arg-type]
    return Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False), cfg)


def _create(repo: Repository, name: str = "a") -> None:
    s = repo.writable_session("main")
    zarr.create_array(s.store, name=name, shape=SHAPE, chunks=CHUNKS, dtype="i4", fill_value=-1)
    s.commit(f"create {name}")


def _data(offset: int = 0) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) + offset).astype("i4")


def _write(
    session: Session, data: np.ndarray, name: str = "a", region: tuple[slice, ...] | None = None
) -> None:
    target = zarr.open_array(session.store, path=name)
    store_sessions([da.from_array(data, chunks=(4, 8))], [target], session, regions=[region])


def _read(session: Session, name: str = "a") -> np.ndarray:
    return zarr.open_array(session.store, path=name)[:]


def _manifests(repo: Repository) -> set[str]:
    return set(run(repo._assets.storage.list("manifests/")))


def test_a_job_hands_the_client_layers_and_the_commit_adds_them_as_they_are(
    tmp_path: Path, scheduler: str
) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    cs = s.changes()
    assert not cs.chunks  # every reference is in a layer built by a task
    assert cs.nchunks == 512
    assert {b: len(st) for b, st in cs.layers["a"].boxes.items()} == {f"{i}.0": 1 for i in range(8)}
    assert len(pickle.dumps(cs)) < 4096  # O(manifests), whatever the chunk count
    before = _manifests(repo)
    sid = s.commit("write")
    after = _manifests(repo)
    assert after - before == set()  # the commit wrote no manifest: the workers did
    snap = run(repo._assets.get_snapshot(sid))
    assert snap.nodes["a"].boxes == cs.layers["a"].boxes
    log = run(repo._assets.get_transaction_log(sid))
    assert not log.chunk_keys
    assert dict(log.layers["a"]) == {
        b: tuple(x.id for x in st) for b, st in cs.layers["a"].boxes.items()
    }
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), _data())
    diff = repo.diff(from_snapshot_id=snap.parent_id, to_snapshot_id=sid)
    assert len(diff.updated_chunks["/a"]) == 512


def test_the_session_reads_lists_and_reports_what_its_layers_hold(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    assert s.changes().layers
    np.testing.assert_array_equal(_read(s), _data())
    assert len(s.status().updated_chunks["/a"]) == 512

    async def listing() -> tuple[list[str], list[str], list[str]]:
        root = [k async for k in s.store.list_dir("")]
        node = [k async for k in s.store.list_dir("a")]
        keys = [k async for k in s.store.list_prefix("a/c/")]
        return root, node, keys

    root, node, keys = run(listing())
    assert "a" in root
    assert sorted(node) == ["c", "zarr.json"]
    assert len(keys) == 512


def test_writes_and_deletions_after_the_job_win_over_its_layers(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    a = zarr.open_array(s.store, path="a")
    a[0:2, 0:2] = 7  # a chunk of a pre-built box
    a[10:12, 4:6] = -1  # back to the fill value: the chunk is deleted
    expected = _data()
    expected[0:2, 0:2] = 7
    expected[10:12, 4:6] = -1
    np.testing.assert_array_equal(_read(s), expected)
    s.commit("write and fix")
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), expected)


def test_deleting_the_array_after_the_job_drops_its_layers(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    zarr.create_array(
        s.store, name="a", shape=SHAPE, chunks=CHUNKS, dtype="i4", fill_value=-1, overwrite=True
    )
    assert "a" not in s.changes().layers
    s.commit("recreate")
    assert (_read(repo.readonly_session(branch="main")) == -1).all()


def test_two_jobs_into_one_box_merge_their_layers_by_loading_them(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    top, bottom = _data()[:, :16], _data(10_000)[:, 16:]
    _write(s, top, region=(slice(None), slice(0, 16)))
    _write(s, bottom, region=(slice(None), slice(16, 32)))  # the same boxes, other chunks
    expected = np.concatenate([top, bottom], axis=1)
    np.testing.assert_array_equal(_read(s), expected)
    s.commit("two jobs")
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), expected)


def test_a_second_job_over_the_same_chunks_wins(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    _write(s, _data(5))  # its tasks overwrite the first job's (pre-built) chunks
    np.testing.assert_array_equal(_read(s), _data(5))
    s.commit("rewrite")
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), _data(5))


def test_forks_and_pickled_copies_see_the_layers_and_their_writes_win(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    fork = pickle.loads(pickle.dumps(s.fork()))
    np.testing.assert_array_equal(_read(fork), _data())
    zarr.open_array(fork.store, path="a")[0:2, 0:2] = 9
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(_read(copy), _data())
    zarr.open_array(copy.store, path="a")[62:64, 30:32] = 8
    s = merge_sessions(s, fork, copy)
    expected = _data()
    expected[0:2, 0:2] = 9
    expected[62:64, 30:32] = 8
    np.testing.assert_array_equal(_read(s), expected)
    s.commit("forks")
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), expected)


def test_a_job_rebases_over_a_commit_to_other_chunks_and_conflicts_on_the_same(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    job = repo.writable_session("main")
    _write(job, _data()[:, :16], region=(slice(None), slice(0, 16)))
    other = repo.writable_session("main")
    zarr.open_array(other.store, path="a")[:, 16:32] = 5  # same boxes, other chunks
    other.commit("other half")
    job.commit("job half")  # rebased: the layers of the touched node are compared key by key
    expected = np.full(SHAPE, 5, dtype="i4")
    expected[:, :16] = _data()[:, :16]
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), expected)

    job = repo.writable_session("main")
    _write(job, _data(1))
    other = repo.writable_session("main")
    zarr.open_array(other.store, path="a")[0:2, 0:2] = 3
    other.commit("one chunk")
    with pytest.raises(ConflictError) as info:
        job.commit("conflicts")
    assert "a/c/0/0" in str(info.value.conflicts)


def test_a_commit_after_a_job_sees_the_job_layers_as_conflicts(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    writer = repo.writable_session("main")
    zarr.open_array(writer.store, path="a")[4:6, 2:4] = 3
    job = repo.writable_session("main")
    _write(job, _data())
    job.commit("job lands first")  # its transaction log lists layers, not keys
    with pytest.raises(ConflictError) as info:
        writer.commit("late")
    assert "a/c/2/1" in str(info.value.conflicts)


def test_layers_built_for_another_layout_are_loaded_and_rewritten(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = _data()
    record = s.changes()
    # boxes of one chunk row, where the commit uses boxes of four
    boxes = [(0, f"{i}.0") for i in range(32)]
    run(build_layers(repo._assets, record, boxes, [BoxTarget("a", ("default", "/"), (1, 16))]))
    assert not record.chunks
    fresh = repo.writable_session("main")
    fresh.merge(record)
    sid = fresh.commit("other layout")
    node = run(repo._assets.get_snapshot(sid)).nodes["a"]
    assert node.split == (4, 16) and len(node.boxes) == 8
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), _data())


def test_records_that_change_one_pre_built_box_merge_only_through_the_session(
    tmp_path: Path,
) -> None:
    repo = _repo(tmp_path)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    layered = s.changes()
    plain = repo.writable_session("main")
    zarr.open_array(plain.store, path="a")[0:2, 0:2] = 4
    other = plain.changes()
    assert ChangeSet.from_bytes(layered.to_bytes()).layers == layered.layers
    with pytest.raises(InvalidInputError) as info:
        ChangeSet.merge_all([layered, other])
    assert info.value.kind == ErrorKind.LAYER_COLLISION
    with pytest.raises(ConflictError):  # loaded, then compared key by key: a real conflict
        s.merge(other)
    target = repo.writable_session("main")
    target.merge(layered)
    np.testing.assert_array_equal(_read(target), _data())


def test_small_boxes_stay_with_the_commit(tmp_path: Path) -> None:
    repo = _repo(tmp_path, manifest_box_refs=65536)
    _create(repo)
    s = repo.writable_session("main")
    _write(s, _data())
    assert not s.changes().layers  # 512 references per box: below the threshold
    with dask.config.set(scheduler="threads"):
        s.commit("small")
    np.testing.assert_array_equal(_read(repo.readonly_session(branch="main")), _data())
