"""Helpers for the Dask write tests (fixtures live in ``tests/dask_fixtures.py``)."""

from __future__ import annotations

import xarray as xr

from icechunk_dask import Repository


def history(repo: Repository) -> list[str]:
    """Snapshot ids of ``main``, newest first."""
    return [s.id for s in repo.ancestry(branch="main")]


def open_main(repo: Repository, group: str | None = None) -> xr.Dataset:
    """The dataset committed on ``main``."""
    return xr.open_zarr(repo.readonly_session(branch="main").store, group=group, consolidated=False)
