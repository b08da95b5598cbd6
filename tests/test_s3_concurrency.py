"""Concurrency on a real S3 server (SeaweedFS) through the public API.

- Committer processes race on one branch: every acknowledged commit is in the
  branch history exactly once, nothing else is, nothing is lost.
- A ``distributed.LocalCluster`` writes a dataset with ``to_zarr`` while one of
  its workers is killed: the job completes, one commit, identical read-back.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, LocalCluster

from icechunk_dask import Repository, to_zarr
from icechunk_dask.storage import s3_storage

pytest_plugins = ["tests.servers.seaweed"]

pytestmark = [pytest.mark.seaweedfs, pytest.mark.slow]

PROCESSES = 8
COMMITS = 25


def _committer(
    kwargs: dict[str, Any], proc: int, commits: int, start_at: float
) -> tuple[list[str], int]:
    """Append ``commits`` rows to array ``a``, one commit each.

    Returns the acknowledged snapshot ids and how many ref writes lost a race.
    """
    storage = s3_storage(**kwargs)
    lost = 0
    create = storage.put_if_absent

    async def counting_put_if_absent(key: str, data: bytes) -> bool:
        nonlocal lost
        won = await create(key, data)
        lost += not won
        return won

    storage.put_if_absent = counting_put_if_absent  # type: ignore[method-assign]
    repo = Repository.open(storage)
    time.sleep(max(0.0, start_at - time.time()))
    acked = []
    for i in range(commits):
        session = repo.writable_session("main")
        arr = zarr.open_array(session.store, path="a", mode="r+")
        row = proc * commits + i
        arr[row] = np.full(4, float(row))
        acked.append(session.commit(f"p{proc} c{i}"))
    return acked, lost


def test_racing_committer_processes_lose_nothing(seaweed_bucket: dict[str, Any]) -> None:
    kwargs = {**seaweed_bucket, "prefix": "race"}
    repo = Repository.create(s3_storage(**kwargs))
    session = repo.writable_session("main")
    rows = PROCESSES * COMMITS
    zarr.create_array(
        session.store, name="a", shape=(rows, 4), chunks=(1, 4), dtype="f8", fill_value=np.nan
    )
    created = session.commit("create")
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 5.0  # after every process has imported and opened the repo
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap_async(
            _committer, [(kwargs, p, COMMITS, start_at) for p in range(PROCESSES)], chunksize=1
        ).get(timeout=1200)
    acked = [sid for ids, _ in results for sid in ids]
    assert len(acked) == len(set(acked)) == rows
    assert sum(lost for _, lost in results) > 0, "no commit ever lost a race: not a race"

    history = list(Repository.open(s3_storage(**kwargs)).ancestry(branch="main"))
    ids = [info.id for info in history]
    assert Counter(ids).most_common(1)[0][1] == 1, "a snapshot appears twice in the history"
    assert ids[-2:] == [created, history[-1].id]  # "create", then the root
    assert set(ids[:-2]) == set(acked)  # every acknowledged commit, and nothing else
    assert sorted(info.message for info in history[:-2]) == sorted(
        f"p{p} c{i}" for p in range(PROCESSES) for i in range(COMMITS)
    )
    for ids_of_one, _ in results:  # each process's commits appear in its own order
        positions = [ids.index(sid) for sid in ids_of_one]
        assert positions == sorted(positions, reverse=True)
    out = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")[:]
    np.testing.assert_array_equal(out, np.repeat(np.arange(rows, dtype="f8")[:, None], 4, 1))


def _slow_block(block: np.ndarray, marker_dir: str) -> np.ndarray:
    """Announce that a block is being computed, then take a while (on a worker)."""
    Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(0.15)
    return block * 2


def test_cluster_to_zarr_survives_a_killed_worker(
    seaweed_bucket: dict[str, Any], tmp_path: Path
) -> None:
    storage = s3_storage(**{**seaweed_bucket, "prefix": "killed"})
    repo = Repository.create(storage)
    markers = tmp_path / "markers"
    markers.mkdir()
    base = da.arange(24 * 8 * 6, chunks=4 * 8 * 6, dtype="f8").reshape(24, 8, 6)
    data = base.rechunk((1, 8, 6)).map_blocks(_slow_block, str(markers), dtype="f8")
    ds = xr.Dataset(
        {"t": (("time", "y", "x"), data), "u": (("time", "y", "x"), data + 1)},
        coords={"time": np.arange(24)},
    )
    expected = ds.compute()
    for marker in markers.iterdir():  # left by computing the expected values here
        marker.unlink()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        session = repo.writable_session("main")
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(to_zarr, ds, session, mode="w")  # uses the client (default)
            deadline = time.monotonic() + 300
            while len(names := [m.name for m in markers.iterdir()]) < 4:
                assert time.monotonic() < deadline, "the job did not start"
                assert not job.done(), "the job finished before a worker could be killed"
                time.sleep(0.05)
            # some blocks are done, most are not: kill the worker that started the latest
            # one, in the middle of it (either worker may have spent the start on the
            # source's rechunking and not have run a block yet)
            latest = max(names, key=lambda name: int(name.split("-")[1]))
            victim = int(latest.split("-")[0])
            assert victim in pids, "a block ran outside the cluster"
            os.kill(victim, signal.SIGKILL)
            job.result(timeout=600)
        assert victim not in client.run(os.getpid).values()  # the worker really died
    ran_on = {int(m.name.split("-")[0]) for m in markers.iterdir()}
    assert len(ran_on) >= 2 and os.getpid() not in ran_on  # on the cluster, also its restart
    session.commit("written while a worker died")
    fresh = Repository.open(s3_storage(**{**seaweed_bucket, "prefix": "killed"}))
    assert [i.message for i in fresh.ancestry(branch="main")] == [
        "written while a worker died",
        "Repository initialized",
    ]
    ondisk = xr.open_zarr(fresh.readonly_session("main").store, consolidated=False)
    xr.testing.assert_identical(ondisk.compute(), expected)
