"""The seed document's two examples, as written (icechunk -> icechunk_dask, local data)."""

from __future__ import annotations

import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait

import xarray as xr

from icechunk_dask import Repository, Session, local_filesystem_storage
from icechunk_dask.distributed import merge_sessions
from tests.datasets import rasm_like


def open_dataset() -> xr.Dataset:
    return rasm_like()


def write_timestamp_threads(*, itime: int, session: Session) -> None:
    # pass a list to isel to preserve the time dimension
    ds = open_dataset().isel(time=[itime])
    # region="auto" tells Xarray to infer which "region" of the output arrays to write to.
    ds.to_zarr(session.store, region="auto", consolidated=False)


def write_timestamp(*, itime: int, session: Session) -> Session:
    ds = open_dataset().isel(time=[itime])
    ds.to_zarr(session.store, region="auto", consolidated=False)
    return session


def _initialise() -> tuple[xr.Dataset, Repository]:
    ds = open_dataset().isel(time=slice(24))
    repo = Repository.create(local_filesystem_storage(tempfile.mkdtemp()))
    session = repo.writable_session("main")
    chunks = {1 if dim == "time" else ds.sizes[dim] for dim in ds.Tair.dims}
    ds.to_zarr(session.store, compute=False, encoding={"Tair": {"chunks": chunks}}, mode="w")
    session.commit("initialize store")
    return ds, repo


def test_seed_thread_pool() -> None:
    ds, repo = _initialise()
    session = repo.writable_session("main")
    with ThreadPoolExecutor() as executor:
        futures = [
            executor.submit(write_timestamp_threads, itime=i, session=session)
            for i in range(ds.sizes["time"])
        ]
        wait(futures)
        for f in futures:
            f.result()
    session.commit("finished writes")

    ondisk = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False)
    xr.testing.assert_identical(ds, ondisk)


def test_seed_process_pool() -> None:
    ds, repo = _initialise()
    session = repo.writable_session("main")
    # (the seed nests the two `with` blocks; one statement here, same behaviour)
    # opt-in to successful pickling of a writable session
    with ProcessPoolExecutor() as executor, session.allow_pickling():
        # submit the writes
        futures = [
            executor.submit(write_timestamp, itime=i, session=session)
            for i in range(ds.sizes["time"])
        ]
        # grab the Session objects from each individual write task
        sessions = [f.result() for f in futures]

    # manually merge the remote sessions in to the local session
    session = merge_sessions(session, *sessions)
    session.commit("finished writes")

    ondisk = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False)
    xr.testing.assert_identical(ds, ondisk)
    assert len(list(repo.ancestry(branch="main"))) == 3
