"""Plain ``ds.to_zarr(session.store)`` with dask variables: works or raises, never loses data."""

from __future__ import annotations

from pathlib import Path

import dask
import pytest
import xarray as xr
from distributed import Client

from icechunk_dask import (
    PicklingNotAllowedError,
    UnmergedWritesError,
)
from icechunk_dask._scheduler import PicklingScheduler
from tests.dask_support import history, open_main
from tests.datasets import rasm_like
from tests.helpers import new_repo

pytest_plugins = ["tests.dask_fixtures"]


def _dataset() -> xr.Dataset:
    ds = rasm_like(ntime=8)
    ds["Tmin"] = ds.Tair - 2
    return ds.chunk(time=2)


def test_threads_share_the_session_without_opt_in(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(session.store, mode="w", consolidated=False)
    session.commit("plain to_zarr, threads")
    xr.testing.assert_identical(open_main(repo), ds)


@pytest.mark.parametrize("scheduler", ["processes", "cluster"], indirect=True)
def test_without_opt_in_fails_loudly_before_workers_write(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    before = history(repo)
    session = repo.writable_session("main")
    with pytest.raises(TypeError) as info:
        _dataset().to_zarr(session.store, mode="w", consolidated=False)
    # our error is the one raised (not wrapped in a serialization error), with the fixes
    refusal = info.value
    if scheduler == "cluster":
        assert isinstance(refusal, PicklingNotAllowedError)
    else:  # the processes scheduler pickles with plain pickle: the refusal is the cause
        while not isinstance(refusal, PicklingNotAllowedError) and refusal is not None:
            refusal = refusal.__cause__ or refusal.__context__  # type: ignore[assignment]
    assert isinstance(refusal, PicklingNotAllowedError)
    assert "allow_pickling" in str(refusal) and "to_zarr" in str(refusal)
    # xarray wrote metadata and coordinates on the client; no dask variable reached a worker
    assert "/Tair" not in session.status().updated_chunks
    assert history(repo) == before


def test_opt_in_brings_worker_writes_back(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    before = history(repo)
    ds = _dataset()
    session = repo.writable_session("main")
    with session.allow_pickling():
        assert isinstance(dask.config.get("scheduler"), PicklingScheduler)
        ds.to_zarr(session.store, mode="w", consolidated=False)
    assert not isinstance(dask.config.get("scheduler"), PicklingScheduler)
    session.commit("plain to_zarr inside allow_pickling")
    assert len(history(repo)) == len(before) + 1
    xr.testing.assert_identical(open_main(repo), ds)


def test_opt_in_compute_false_then_compute(tmp_path: Path, dask_client: Client) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    with dask.config.set(scheduler=dask_client), session.allow_pickling():
        delayed = ds.to_zarr(session.store, mode="w", consolidated=False, compute=False)
        delayed.compute()
    session.commit("compute=False, then compute")
    xr.testing.assert_identical(open_main(repo), ds)


def test_commit_refuses_worker_writes_that_never_came_back(
    tmp_path: Path, dask_client: Client
) -> None:
    repo = new_repo(tmp_path / "repo")
    before = history(repo)
    session = repo.writable_session("main")
    with session.allow_pickling():
        delayed = _dataset().to_zarr(session.store, mode="w", consolidated=False, compute=False)
        # client.compute bypasses the scheduler that allow_pickling installs
        dask_client.compute(delayed).result()
    with pytest.raises(UnmergedWritesError) as info:
        session.commit("would lose the workers' writes")
    assert "merge_sessions" in str(info.value) and "allow_pickling" in str(info.value)
    assert history(repo) == before
