"""icechunk_dask.to_zarr: xarray semantics, dask variables written by tasks, one commit."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from icechunk_dask import ChangeSet
from icechunk_dask.xarray import to_zarr
from tests.dask_support import history, open_main
from tests.datasets import rasm_like
from tests.helpers import new_repo

pytest_plugins = ["tests.dask_fixtures"]


def _dataset(ntime: int = 12) -> xr.Dataset:
    """Several variables (float, int, with NaNs), 1-D and 2-D coordinates, attributes."""
    ds = rasm_like(ntime=ntime)
    ds["Tmax"] = (ds.Tair + 3).assign_attrs(units="C", cell_methods="time: maximum")
    ds["count"] = (("time",), np.arange(ntime, dtype="i4"))
    ds["mask"] = (("y", "x"), np.isnan(ds.Tair.isel(time=0).values).astype("u1"))
    return ds.chunk(time=4, y=10, x=27)


def test_dataset_roundtrip_one_commit(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    before = history(repo)
    ds = _dataset()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", encoding={"Tair": {"chunks": (2, 10, 27)}})
    session.commit("write dataset")
    assert len(history(repo)) == len(before) + 1
    ondisk = open_main(repo)
    xr.testing.assert_identical(ondisk, ds)
    assert ondisk.Tair.encoding["chunks"] == (2, 10, 27)


def test_compute_false_leaves_the_session_until_merged(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    lazy = to_zarr(ds, session, group="g/h", mode="w-", compute=False)
    assert not session.has_uncommitted_changes
    (record,) = dask.compute(lazy)
    assert isinstance(record, ChangeSet)
    session.merge(record)
    session.commit("via compute=False")
    xr.testing.assert_identical(open_main(repo, group="g/h"), ds)


def test_region_auto_independent_time_slices(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    template = repo.writable_session("main")
    ds.to_zarr(template.store, compute=False, mode="w", consolidated=False)  # metadata only
    template.commit("template")
    before = history(repo)

    session = repo.writable_session("main")
    pieces = [ds.isel(time=slice(t, t + 4)) for t in range(0, 12, 4)]
    lazies = [to_zarr(p, session, region="auto", compute=False) for p in pieces]
    records = dask.compute(*lazies)
    session.merge(*records)
    session.commit("three regions, one commit")

    assert history(repo)[1:] == before
    xr.testing.assert_identical(open_main(repo), ds)


def test_append_twice_in_one_session_and_across_sessions(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    full = _dataset(ntime=16)
    parts = [full.isel(time=slice(a, b)) for a, b in [(0, 4), (4, 8), (8, 12), (12, 16)]]
    session = repo.writable_session("main")
    to_zarr(parts[0], session, mode="w")
    to_zarr(parts[1], session, append_dim="time")
    to_zarr(parts[2], session, append_dim="time")
    session.commit("create and append twice")
    session = repo.writable_session("main")
    to_zarr(parts[3], session, append_dim="time")
    session.commit("append in a new session")
    assert len(history(repo)) == 3
    xr.testing.assert_identical(open_main(repo), full)


def test_misaligned_dask_chunks_refused_nothing_written(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", encoding={"Tair": {"chunks": (4, 10, 27)}})
    session.commit("first")
    before = history(repo)
    session = repo.writable_session("main")
    bad = (ds * 2).chunk(time=3)
    with pytest.raises(ValueError, match="align_chunks=True"):
        to_zarr(bad, session, mode="a")
    assert not session.has_uncommitted_changes
    assert history(repo) == before
    xr.testing.assert_identical(open_main(repo), ds)
    # the same write, with blocks that share a chunk written by one task
    to_zarr(bad, session, mode="a", align_chunks=True)
    session.commit("aligned by grouping")
    xr.testing.assert_identical(open_main(repo), bad.chunk(time=4))


def test_unsafe_chunks_never_written_by_two_tasks(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset().chunk(time=5)
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", safe_chunks=False, encoding={"Tair": {"chunks": (4, 20, 27)}})
    session.commit("safe_chunks=False")
    xr.testing.assert_identical(open_main(repo), ds)


def test_dataarray_and_accessor(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    to_zarr(ds.Tair, session, group="da", mode="w")
    ds.Tmax.icechunk_dask.to_zarr(session, group="acc", mode="w")
    session.commit("dataarrays")
    xr.testing.assert_identical(
        xr.open_dataarray(
            repo.readonly_session(branch="main").store,
            group="da",
            engine="zarr",
            consolidated=False,
        ),
        ds.Tair,
    )
    xr.testing.assert_identical(open_main(repo, group="acc").Tmax, ds.Tmax)


def test_eager_only_dataset_and_errors(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset().compute()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w")
    with pytest.raises(FileExistsError, match="mode 'w-'"):
        to_zarr(ds, session, mode="w-")
    with pytest.raises(ValueError, match="append_dim"):
        to_zarr(ds, session, mode="w", append_dim="time")
    session.commit("eager")
    xr.testing.assert_identical(open_main(repo), ds)
    with pytest.raises(TypeError, match="Session"):
        to_zarr(ds, zarr.storage.MemoryStore())  # type: ignore[arg-type]


def test_times_and_strings_roundtrip(tmp_path: Path, scheduler: str) -> None:
    repo = new_repo(tmp_path / "repo")
    time = pd.date_range("2000-01-01", periods=6, freq="D")
    ds = xr.Dataset(
        {"v": (("time", "station"), np.arange(18.0).reshape(6, 3))},
        coords={"time": time, "station": np.array(["a", "bb", "ccc"], dtype=object)},
    ).chunk(time=2)
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w")
    session.commit("coords")
    xr.testing.assert_identical(open_main(repo).load(), ds.load())


def test_mode_w_replaces_the_group(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    ds = _dataset()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w")
    session.commit("first")
    session = repo.writable_session("main")
    replacement = (ds[["Tair"]] * 2).assign_attrs(title="replaced")
    to_zarr(replacement, session, mode="w")
    session.commit("overwrite")
    ondisk = open_main(repo)
    xr.testing.assert_identical(ondisk, replacement)
    assert "Tmax" not in ondisk and "count" not in ondisk


@pytest.mark.s3
def test_cluster_write_into_an_s3_repository(
    s3_bucket: dict[str, object], dask_client: object
) -> None:
    # beyond one machine: workers write chunks straight to S3 (a real server process on
    # 127.0.0.1), only change records travel, one commit; a fresh handle reads it back
    from icechunk_dask import Repository
    from icechunk_dask.storage import s3_storage

    repo = Repository.create(s3_storage(prefix="cluster", **s3_bucket))  # type: ignore[arg-type]
    ds = _dataset()
    session = repo.writable_session("main")
    with dask.config.set(scheduler=dask_client):
        to_zarr(ds, session, mode="w", encoding={"Tair": {"chunks": (2, 10, 27)}})
    session.commit("from the cluster")
    fresh = Repository.open(s3_storage(prefix="cluster", **s3_bucket))  # type: ignore[arg-type]
    assert [i.message for i in fresh.ancestry(branch="main")] == [
        "from the cluster",
        "Repository initialized",
    ]
    ondisk = xr.open_zarr(fresh.readonly_session("main").store, consolidated=False)
    xr.testing.assert_identical(ondisk, ds)
