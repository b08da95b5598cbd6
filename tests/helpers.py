"""Small helpers shared by tests (no fixtures here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from icechunk_dask import Repository, Session, local_filesystem_storage


def new_repo(path: Path) -> Repository:
    """A fresh repository on local disk."""
    return Repository.create(local_filesystem_storage(path))


def make_array(
    session: Session,
    name: str = "a",
    shape: tuple[int, ...] = (8, 8),
    chunks: tuple[int, ...] = (4, 4),
) -> zarr.Array:
    """Create a float64 array with no compression (so bytes on disk are predictable)."""
    return zarr.create_array(
        session.store,
        name=name,
        shape=shape,
        chunks=chunks,
        dtype="f8",
        fill_value=np.nan,
        compressors=None,
        zarr_format=3,
        overwrite=True,
    )


def read_array(session: Session, name: str = "a") -> np.ndarray:
    """Read a whole array through a session."""
    return np.asarray(zarr.open_array(session.store, path=name, mode="r")[...])
