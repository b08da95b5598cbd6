"""icechunk_dask: write large Zarr v3 datasets with Dask, in parallel, in one atomic commit.

The names most programs need are here: :class:`Repository` and the storage
constructors, :class:`Session`, :func:`merge_sessions`, the Dask writers
:func:`store_sessions` and :func:`to_zarr`, and the error classes.

Importing the package does not import xarray, distributed or ``dask.array``:
:func:`store_sessions` and :func:`to_zarr` load them on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import icechunk_dask._scheduler  # noqa: F401 - registers the allow_pickling hook
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._exceptions import (
    ConflictError,
    CorruptObjectError,
    ErrorKind,
    FormatVersionError,
    IcechunkDaskError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    PicklingNotAllowedError,
    ReadOnlyError,
    RebaseFailedError,
    SessionStateError,
    StorageError,
    UnmergedWritesError,
)
from icechunk_dask._repository import Repository, SnapshotInfo
from icechunk_dask._session import ForkSession, Session, SessionStatus
from icechunk_dask._store import SessionStore
from icechunk_dask.distributed import merge_sessions
from icechunk_dask.storage import in_memory_storage, local_filesystem_storage, s3_storage

if TYPE_CHECKING:
    from icechunk_dask.dask import store_sessions
    from icechunk_dask.xarray import to_zarr

__version__ = "0.1.0"

#: Names whose modules import heavy libraries (dask.array, xarray): loaded on first use.
_LAZY = {"store_sessions": "icechunk_dask.dask", "to_zarr": "icechunk_dask.xarray"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icechunk_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ChangeSet",
    "ConflictError",
    "CorruptObjectError",
    "ErrorKind",
    "ForkSession",
    "FormatVersionError",
    "IcechunkDaskError",
    "InvalidInputError",
    "NoChangesToCommitError",
    "NotFoundError",
    "PicklingNotAllowedError",
    "ReadOnlyError",
    "RebaseFailedError",
    "Repository",
    "RepositoryConfig",
    "Session",
    "SessionStateError",
    "SessionStatus",
    "SessionStore",
    "SnapshotInfo",
    "StorageError",
    "UnmergedWritesError",
    "__version__",
    "in_memory_storage",
    "local_filesystem_storage",
    "merge_sessions",
    "s3_storage",
    "store_sessions",
    "to_zarr",
]
