"""store_sessions: Dask writes into a session on threads, processes and a real LocalCluster."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client

from icechunk_dask import (
    ChangeSet,
    ErrorKind,
    InvalidInputError,
    ReadOnlyError,
    Repository,
)
from icechunk_dask.dask import store_sessions
from tests.dask_support import history
from tests.helpers import new_repo, read_array

pytest_plugins = ["tests.dask_fixtures"]


def _chunk_objects(path: Path) -> int:
    chunks = path / "repo" / "chunks"
    return sum(1 for _ in chunks.rglob("*")) if chunks.exists() else 0


def _init(repo: Repository, **arrays: dict[str, object]) -> None:
    session = repo.writable_session("main")
    for name, kwargs in arrays.items():
        zarr.create_array(session.store, name=name, **kwargs)  # type: ignore[arg-type]
    session.commit("create arrays")


def test_several_targets_compute_false_then_merge(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(
        repo,
        a={"shape": (40, 30), "chunks": (10, 10), "dtype": "f4"},
        b={"shape": (40,), "chunks": (5,), "dtype": "i8"},
        c={
            "shape": (60, 8),
            "chunks": (10, 4),
            "shards": (20, 8),
            "dtype": "f8",
            "fill_value": -1.0,
        },
    )
    before = history(repo)
    x = da.random.default_rng(0).random((40, 30), chunks=(10, 20), dtype="f4")
    y = da.arange(40, chunks=10)
    z = da.ones((20, 8), chunks=(20, 8)) * 7
    session = repo.writable_session("main")
    targets = [zarr.open_array(session.store, path=p) for p in "abc"]
    lazy = store_sessions(
        [x, y, z], targets, session, regions=[None, None, (slice(20, 40),)], compute=False
    )
    assert not session.has_uncommitted_changes
    (record,) = dask.compute(lazy)
    assert isinstance(record, ChangeSet)
    assert record.nchunks == 12 + 8 + 1
    session.merge(record)
    session.commit("write three arrays")

    assert history(repo)[1:] == before
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), x.compute()
    )
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "b"), np.arange(40)
    )
    expected = np.full((60, 8), -1.0)
    expected[20:40] = 7
    np.testing.assert_array_equal(read_array(repo.readonly_session(branch="main"), "c"), expected)


def test_small_chunks_are_batched_and_records_stay_small(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (128, 128), "chunks": (4, 4), "dtype": "f4"})
    x = da.random.default_rng(1).random((128, 128), chunks=(4, 4), dtype="f4")
    session = repo.writable_session("main")
    lazy = store_sessions([x], [zarr.open_array(session.store, path="a")], session, compute=False)
    graph = dict(lazy.__dask_graph__())
    writes = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("icechunk-write")]
    assert len(writes) <= 32  # 1024 chunks of 64 bytes: a few tasks, not one per chunk
    (record,) = dask.compute(lazy)
    assert record.nchunks == 1024
    assert len(pickle.dumps(record)) <= 32 * 1024  # what reaches the client: <= 32 B a chunk
    session.merge(record)
    session.commit("small chunks")
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), x.compute()
    )


def test_compute_true_merges_into_the_session(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (30,), "chunks": (10,), "dtype": "i4"})
    session = repo.writable_session("main")
    result = store_sessions(
        da.arange(30, chunks=10, dtype="i4"), zarr.open_array(session.store, path="a"), session
    )
    assert result is None
    assert {p: len(c) for p, c in session.status().updated_chunks.items()} == {"/a": 3}
    session.commit("compute=True")
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), np.arange(30)
    )


def test_misaligned_blocks_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (40, 30), "chunks": (10, 10), "dtype": "f8"})
    before, objects = history(repo), _chunk_objects(tmp_path)
    session = repo.writable_session("main")
    target = zarr.open_array(session.store, path="a")
    x = da.ones((40, 30), chunks=(10, 15))
    with pytest.raises(InvalidInputError) as info:
        store_sessions([x], [target], session)
    assert info.value.kind == ErrorKind.UNALIGNED_WRITE
    message = str(info.value)
    assert "axis 1" in message and "'a'" in message
    assert "meet at index 15" in message
    assert "align_chunks=True" in message and "rechunk" in message
    assert "nothing was written" in message
    assert not session.has_uncommitted_changes
    assert _chunk_objects(tmp_path) == objects
    assert history(repo) == before


def test_align_chunks_writes_shared_chunks_from_one_task(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (40, 30), "chunks": (10, 10), "dtype": "f8", "fill_value": 0.0})
    session = repo.writable_session("main")
    x = da.random.default_rng(2).random((33, 30), chunks=(7, 11))
    store_sessions(
        [x],
        [zarr.open_array(session.store, path="a")],
        session,
        regions=[(slice(5, 38),)],
        align_chunks=True,
    )
    session.commit("misaligned but grouped")
    expected = np.zeros((40, 30))
    expected[5:38] = x.compute()
    np.testing.assert_array_equal(read_array(repo.readonly_session(branch="main"), "a"), expected)


def test_region_edges_keep_the_rest_of_the_chunk(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (20,), "chunks": (10,), "dtype": "i4"})
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = np.arange(20)
    session.commit("fill")
    session = repo.writable_session("main")
    store_sessions(
        [da.full((8,), -1, chunks=4, dtype="i4")],
        [zarr.open_array(session.store, path="a")],
        session,
        regions=[(slice(6, 14),)],
    )
    session.commit("partial chunks at the region edges")
    expected = np.arange(20)
    expected[6:14] = -1
    np.testing.assert_array_equal(read_array(repo.readonly_session(branch="main"), "a"), expected)


def test_sharded_arrays_align_on_shards(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (40,), "chunks": (5,), "shards": (20,), "dtype": "f8"})
    session = repo.writable_session("main")
    target = zarr.open_array(session.store, path="a")
    with pytest.raises(InvalidInputError, match="inside the Zarr shard"):
        store_sessions([da.ones(40, chunks=10)], [target], session)
    store_sessions([da.ones(40, chunks=20)], [target], session)
    session.commit("shards")
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), np.ones(40)
    )


def test_overlapping_writes_to_one_array_are_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (40,), "chunks": (10,), "dtype": "f8"})
    session = repo.writable_session("main")
    target = zarr.open_array(session.store, path="a")
    sources = [da.ones(15, chunks=15), da.zeros(15, chunks=15)]
    with pytest.raises(InvalidInputError, match="share Zarr chunks"):
        store_sessions(
            sources, [target, target], session, regions=[(slice(0, 15),), (slice(15, 30),)]
        )
    assert not session.has_uncommitted_changes
    store_sessions(
        sources[:1] * 2, [target, target], session, regions=[(slice(0, 15),), (slice(20, 35),)]
    )
    assert {p: len(c) for p, c in session.status().updated_chunks.items()} == {"/a": 4}


def test_duplicated_execution_is_harmless(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (50,), "chunks": (10,), "dtype": "f8"})
    before = history(repo)
    session = repo.writable_session("main")
    x = da.random.default_rng(3).random(50, chunks=10)
    lazy = store_sessions([x], [zarr.open_array(session.store, path="a")], session, compute=False)
    first, second = dask.compute(lazy)[0], dask.compute(lazy)[0]
    session.merge(first, second)
    session.commit("twice")
    assert history(repo)[1:] == before
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), x.compute()
    )


def test_bad_arguments_are_explained(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (10,), "chunks": (5,), "dtype": "f8"})
    session = repo.writable_session("main")
    target = zarr.open_array(session.store, path="a")
    with pytest.raises(TypeError, match="must be a dask array"):
        store_sessions([np.ones(10)], [target], session)  # type: ignore[list-item]
    other = repo.writable_session("main")
    with pytest.raises(TypeError, match="not opened on this session's store"):
        store_sessions([da.ones(10, chunks=5)], [target], other)
    with pytest.raises(InvalidInputError, match="shape"):
        store_sessions([da.ones(8, chunks=4)], [target], session)
    with pytest.raises(InvalidInputError, match="one target per source"):
        store_sessions([da.ones(10, chunks=5)] * 2, [target], session)
    with pytest.raises(InvalidInputError, match="split_every"):
        store_sessions([da.ones(10, chunks=5)], [target], session, split_every=1)
    with pytest.raises(ReadOnlyError, match="writable session"):
        store_sessions([da.ones(10, chunks=5)], [target], repo.readonly_session(branch="main"))


def _die_once(block: np.ndarray, marker: str, block_id: tuple[int, ...] = (0,)) -> np.ndarray:
    """Kill the worker process the first time block 6 is computed, anywhere."""
    if block_id[0] == 6:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return block
        os.close(fd)
        os._exit(1)
    return block


def test_worker_killed_mid_job_completes_with_one_commit(
    tmp_path: Path, dask_client: Client
) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (120,), "chunks": (10,), "dtype": "f8"})
    before = history(repo)
    marker = tmp_path / "worker-died"
    x = da.random.default_rng(4).random(120, chunks=10)
    y = x.map_blocks(_die_once, marker=str(marker), dtype=x.dtype)
    session = repo.writable_session("main")
    with dask.config.set(scheduler=dask_client):
        store_sessions([y], [zarr.open_array(session.store, path="a")], session)
    session.commit("survived a lost worker")
    assert marker.exists()  # a worker really died mid-job
    assert history(repo)[1:] == before
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), x.compute(scheduler="threads")
    )


@pytest.mark.parametrize("scheduler", ["threads", "cluster"], indirect=True)
def test_progress_bar(tmp_path: Path, scheduler: str, capsys: pytest.CaptureFixture[str]) -> None:
    repo = new_repo(tmp_path / "repo")
    _init(repo, a={"shape": (40,), "chunks": (10,), "dtype": "f8"})
    session = repo.writable_session("main")
    store_sessions(
        [da.ones(40, chunks=10)], [zarr.open_array(session.store, path="a")], session, progress=True
    )
    assert "100% Completed" in capsys.readouterr().out
    session.commit("with progress")
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(branch="main"), "a"), np.ones(40)
    )
