"""Mutation-campaign tests for icechunk_dask/_writegraph.py (issue 13, part 7).

The write graph of a Dask job, as the in-process mutation run found it untested: the graph
optimisation that inlines each write task's private source tasks, a graph computed without
optimisation, a resumed job with some tasks done, the layouts of targets whose base snapshot
expired or whose layout changes in the session.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask._task_spec import GraphNode, Task
from dask.local import get_sync

from icechunk_dask import (
    Repository,
    RepositoryConfig,
    local_filesystem_storage,
    store_sessions,
    to_zarr,
)
from icechunk_dask._sync import run
from icechunk_dask._writegraph import _WRITE, optimize_write_graph
from tests.dask_support import open_main


def _repo(tmp_path: Path) -> Repository:
    return Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))


def _target(repo: Repository, shape: tuple[int, ...] = (8, 8)) -> None:
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=shape, chunks=(4, 4), dtype="f8", fill_value=0)
    s.commit("create a")


def _manifests(repo: Repository) -> set[str]:
    return set(run(repo._assets.storage.list("manifests/")))


def _read(repo: Repository) -> np.ndarray:
    return np.asarray(zarr.open_array(repo.readonly_session("main").store, path="a")[:])


def _source() -> da.Array:
    """Two layers of source tasks per block: the generator's and the addition's."""
    return da.random.default_rng(7).random((8, 8), chunks=4) + 1.0


def _writes(graph: Mapping[Any, GraphNode]) -> list[Any]:
    return [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith(_WRITE)]


def _keys_match(graph: Mapping[Any, GraphNode]) -> None:
    for key, node in graph.items():
        assert node.key == key, key


def test_the_optimised_graph_inlines_each_write_tasks_private_sources(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    source = _source()
    job = store_sessions(
        source, zarr.open_array(s.store, path="a"), s, compute=False, split_every=2
    )
    raw = dict(job.__dask_graph__())  # type: ignore[union-attr]
    assert any(str(k[0]).startswith("icechunk-merge-") for k in raw if isinstance(k, tuple))
    _keys_match(raw)
    (optimised,) = dask.optimize(job)
    graph = dict(optimised.__dask_graph__())
    _keys_match(graph)
    writes = _writes(graph)
    assert len(writes) == len(_writes(raw)) >= 1
    # every source task now runs inside the one write task that needs it
    assert all(str(k if isinstance(k, str) else k[0]).startswith("icechunk-") for k in graph)
    inlined = 0
    for k in writes:
        task = graph[k]
        assert isinstance(task, Task)
        inner, external = task.args[4].get(), task.args[5]
        assert inner and external == ()
        inlined += len(inner)
    assert inlined == 2 * 4  # two source tasks for each of the four blocks
    dask.compute(optimised)
    s.commit("optimised")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_a_source_block_two_write_tasks_need_stays_outside_both(tmp_path: Path) -> None:
    """Blocks of 8 rows rechunked to the target's 4: each feeds two write tasks."""
    repo = _repo(tmp_path)
    _target(repo, (16, 8))
    s = repo.writable_session("main")
    source = (da.random.default_rng(3).random((16, 8), chunks=(8, 8)) + 1.0).rechunk((4, 8))
    job = store_sessions(source, zarr.open_array(s.store, path="a"), s, compute=False)
    (optimised,) = dask.optimize(job)
    graph = dict(optimised.__dask_graph__())
    writes = _writes(graph)
    assert len(writes) == 4
    shared = {d for k in writes for d in graph[k].args[5]}  # type: ignore[attr-defined]
    assert len(shared) == 2 and all(k in graph for k in shared)  # once, outside the writes
    for k in writes:
        inner, external = graph[k].args[4].get(), graph[k].args[5]  # type: ignore[attr-defined]
        assert len(external) == 1 and len(inner) == 2 and not set(inner) & shared
    dask.compute(optimised)
    s.commit("shared blocks")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_a_write_job_computes_without_graph_optimisation(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    source = _source()
    job = store_sessions(source, zarr.open_array(s.store, path="a"), s, compute=False)
    dask.compute(job, optimize_graph=False)
    s.commit("unoptimised")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_a_resumed_job_computes_only_the_tasks_without_a_record(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    ds = xr.Dataset({"v": (("t",), da.arange(800.0, chunks=100))})
    to_zarr(ds, repo.writable_session("main"), mode="w", resume="part")  # client "lost"
    tasks = tmp_path / "repo" / "jobs" / "part" / "tasks"
    records = sorted(p.name for p in tasks.iterdir())
    assert len(records) == 8
    for name in (records[1], records[5]):  # done: 0, 2-4, 6, 7
        (tasks / name).unlink()
    chunks = {p.name for p in (tmp_path / "repo" / "chunks").iterdir()}
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", resume="part")
    assert len({p.name for p in (tmp_path / "repo" / "chunks").iterdir()} - chunks) == 2
    session.commit("resumed")
    xr.testing.assert_identical(open_main(repo), ds)


def test_a_session_whose_base_snapshot_expired_writes_through_dask(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    other = repo.writable_session("main")
    zarr.create_group(other.store, path="g")
    other.commit("meanwhile")
    assert s.snapshot_id in repo.expire_snapshots(datetime.now(UTC))
    source = _source()
    store_sessions(source, zarr.open_array(s.store, path="a"), s)
    s.commit("onto an expired base")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_a_target_whose_layout_changes_in_the_session(tmp_path: Path) -> None:
    """Resized in the session: the commit rewrites its manifests whole (no box layout)."""
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    target = zarr.open_array(s.store, path="a")
    target.resize((16, 16))
    source = da.random.default_rng(5).random((16, 16), chunks=4)
    store_sessions(source, target, s)
    s.commit("resized and written")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_an_array_deleted_and_recreated_in_the_session_gets_worker_built_layers(
    tmp_path: Path,
) -> None:
    """Its old manifests go with ``delete_dir``: the tasks build the new layout's boxes."""
    cfg = RepositoryConfig(manifest_box_refs=64)
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False), cfg)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(64, 32), chunks=(2, 2), dtype="i4")[:] = 1
    s.commit("a")
    s = repo.writable_session("main")
    run(s.store.delete_dir("a"))
    target = zarr.create_array(  # another chunk grid: boxes of 8 x 8 chunks, not 4 x 16
        s.store, name="a", shape=(128, 32), chunks=(2, 4), dtype="i4", fill_value=0
    )
    data = np.arange(128 * 32, dtype="i4").reshape(128, 32)
    store_sessions(da.from_array(data, chunks=(16, 8)), target, s)
    record = s.changes()
    assert not record.chunks and record.nchunks == 512  # every reference in a layer
    manifests = _manifests(repo)
    s.commit("recreated")
    # the layers were built in the layout the commit gives the new array: used as they are
    assert _manifests(repo) == manifests
    np.testing.assert_array_equal(_read(repo), data)


def test_a_format1_node_written_through_dask_is_rewritten_by_the_commit(tmp_path: Path) -> None:
    """Hash-sharded (format 1): no box layout to build on the workers; the commit makes it."""
    shutil.copytree(Path(__file__).parent / "data" / "format1-repo", tmp_path / "repo")
    repo = Repository.open(local_filesystem_storage(tmp_path / "repo", durable=False))
    s = repo.writable_session("main")
    target = zarr.open_array(s.store, path="grid")
    data = np.arange(48, dtype="i4").reshape(6, 8) * 3
    store_sessions(da.from_array(data, chunks=2), target, s)
    assert not s.changes().layers  # nothing pre-built
    s.commit("through dask")
    grid = zarr.open_array(repo.readonly_session("main").store, path="grid")
    np.testing.assert_array_equal(grid[:], data)


def test_a_write_graph_handed_over_as_a_plain_dict_still_computes(tmp_path: Path) -> None:
    """Without its layers the graph cannot tell sources apart: nothing is inlined or lost."""
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    source = _source()
    job = store_sessions(source, zarr.open_array(s.store, path="a"), s, compute=False)
    raw = dict(job.__dask_graph__())  # type: ignore[union-attr]
    graph = optimize_write_graph(raw, job.__dask_keys__())  # type: ignore[union-attr]
    ours = {k for k in raw if str(k if isinstance(k, str) else k[0]).startswith("icechunk-")}
    assert ours <= set(graph)
    _keys_match(graph)
    for k in _writes(graph):
        assert graph[k].args[4] == {}  # type: ignore[attr-defined]
    s.merge(get_sync(graph, job.key))  # type: ignore[union-attr]
    s.commit("from a plain dict")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_a_source_task_two_blocks_of_one_write_task_need_is_inlined(tmp_path: Path) -> None:
    """An 8-row block rechunked to 4 rows, both into one 8-row chunk: all in one task."""
    repo = _repo(tmp_path)
    s = repo.writable_session("main")
    target = zarr.create_array(s.store, name="a", shape=(16, 8), chunks=(8, 8), dtype="f8")
    source = (da.random.default_rng(4).random((16, 8), chunks=(8, 8)) + 1.0).rechunk((4, 8))
    job = store_sessions(source, target, s, compute=False, align_chunks=True)
    (optimised,) = dask.optimize(job)
    graph = dict(optimised.__dask_graph__())
    assert all(str(k if isinstance(k, str) else k[0]).startswith("icechunk-") for k in graph)
    assert len(_writes(graph)) == 2
    for k in _writes(graph):
        assert graph[k].args[5] == ()  # type: ignore[attr-defined]
    dask.compute(optimised)
    s.commit("inlined")
    np.testing.assert_array_equal(_read(repo), source.compute())


def test_tasks_holding_whole_boxes_build_their_layers(tmp_path: Path) -> None:
    """Boxes of 4 x 16 chunks of 2 x 2; each task writes 8 whole rows: one box."""
    cfg = RepositoryConfig(manifest_box_refs=64)
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False), cfg)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(64, 32), chunks=(2, 2), dtype="i4", fill_value=0)
    s.commit("a")
    s = repo.writable_session("main")
    data = np.arange(64 * 32, dtype="i4").reshape(64, 32)
    store_sessions(da.from_array(data, chunks=(8, 32)), zarr.open_array(s.store, path="a"), s)
    record = s.changes()
    assert not record.chunks and record.nchunks == 512
    assert sorted(record.layers["a"].boxes) == [f"{i}.0" for i in range(8)]
    manifests = _manifests(repo)
    s.commit("boxes")
    assert _manifests(repo) == manifests
    np.testing.assert_array_equal(_read(repo), data)


def test_fill_value_chunks_written_through_dask_delete_the_old_ones(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = 5.0
    s.commit("fives")
    s = repo.writable_session("main")
    zeros = da.zeros((8, 8), chunks=4)
    store_sessions(zeros, zarr.open_array(s.store, path="a"), s)
    s.commit("zeros")
    np.testing.assert_array_equal(_read(repo), np.zeros((8, 8)))
    listed = run(_keys(repo.readonly_session("main").store, "a/c/"))
    assert listed == []  # the fill value is not stored


def test_the_targets_array_config_is_used_by_the_tasks(tmp_path: Path) -> None:
    """``write_empty_chunks=True``: a chunk of fill values written partly is stored."""
    repo = _repo(tmp_path)
    _target(repo)
    s = repo.writable_session("main")
    target = zarr.open_array(s.store, path="a").with_config({"write_empty_chunks": True})
    zeros = da.zeros((2, 8), chunks=(2, 4))
    store_sessions(zeros, target, s, regions=[(slice(0, 2), slice(0, 8))])
    s.commit("fill values, stored")
    listed = run(_keys(repo.readonly_session("main").store, "a/c/"))
    assert listed == ["a/c/0/0", "a/c/0/1"]


async def _keys(store: Any, prefix: str) -> list[str]:
    return sorted([k async for k in store.list_prefix(prefix)])


def test_a_written_block_another_source_task_also_needs_stays_outside(tmp_path: Path) -> None:
    """``x`` goes to ``a`` and ``x + 1`` to ``b``: each block of ``x`` has two consumers."""
    repo = _repo(tmp_path)
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="a", shape=(8, 8), chunks=(4, 4), dtype="f8")
    b = zarr.create_array(s.store, name="b", shape=(8, 8), chunks=(4, 4), dtype="f8")
    x = da.random.default_rng(9).random((8, 8), chunks=4)
    job = store_sessions([x, x + 1.0], [a, b], s, compute=False)
    (optimised,) = dask.optimize(job)
    dask.compute(optimised)
    s.commit("two arrays, one source")
    main = repo.readonly_session("main").store
    expected = x.compute()
    np.testing.assert_array_equal(zarr.open_array(main, path="a")[:], expected)
    np.testing.assert_array_equal(zarr.open_array(main, path="b")[:], expected + 1.0)


def test_a_resumed_job_builds_the_boxes_its_done_tasks_touched_at_its_end(tmp_path: Path) -> None:
    """Boxes of 8 rows, tasks of 4: every box has a done task and one computed again."""
    cfg = RepositoryConfig(manifest_box_refs=64)
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False), cfg)
    data = np.arange(64 * 32, dtype="i4").reshape(64, 32)
    ds = xr.Dataset({"v": (("y", "x"), da.from_array(data, chunks=(4, 32)))})
    encoding = {"v": {"chunks": (2, 2)}}
    to_zarr(ds, repo.writable_session("main"), mode="w", resume="boxes", encoding=encoding)
    tasks = tmp_path / "repo" / "jobs" / "boxes" / "tasks"
    records = sorted(p.name for p in tasks.iterdir())
    assert len(records) == 16
    for name in records[::2]:
        (tasks / name).unlink()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", resume="boxes", encoding=encoding)
    record = session.changes()
    assert not record.chunks and record.nchunks == 512  # every box built, at the end
    manifests = _manifests(repo)
    session.commit("resumed")
    assert _manifests(repo) == manifests
    np.testing.assert_array_equal(open_main(repo)["v"].values, data)
    assert not any(p.is_file() for p in (tmp_path / "repo" / "jobs").rglob("*"))
