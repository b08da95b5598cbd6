"""icechunk_dask: write large Zarr v3 datasets with Dask, in parallel, in one atomic commit.

The names most programs need are here: :class:`Repository` and the storage
constructors, :class:`Session`, :func:`merge_sessions`, the Dask writers
:func:`store_sessions` and :func:`to_zarr`, and the error classes.

Importing the package imports none of zarr, dask, xarray or distributed: each
name is loaded on first use (``from icechunk_dask import Repository`` loads
zarr; :func:`store_sessions` and :func:`to_zarr` load ``dask.array`` and
xarray; ``icechunk_dask.to_zarr`` also registers the ``ds.icechunk_dask``
accessor).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from icechunk_dask._config import RepositoryConfig
from icechunk_dask._exceptions import (
    Conflict,
    ConflictError,
    ConflictType,
    CorruptObjectError,
    ErrorKind,
    ExpiredSnapshotError,
    FormatVersionError,
    IcechunkDaskError,
    IcechunkError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    PicklingNotAllowedError,
    ReadOnlyError,
    RebaseFailedError,
    RecoveryWarning,
    SessionStateError,
    StorageError,
    UnmergedWritesError,
)

if TYPE_CHECKING:
    from icechunk_dask._changeset import ChangeSet
    from icechunk_dask._conflicts import (
        BasicConflictSolver,
        ConflictDetector,
        ConflictSolver,
        VersionSelection,
    )
    from icechunk_dask._diff import Diff
    from icechunk_dask._gc import GCSummary
    from icechunk_dask._repository import Repository, SnapshotInfo
    from icechunk_dask._session import ForkSession, Session
    from icechunk_dask._store import SessionStore
    from icechunk_dask._usage import UsageReport
    from icechunk_dask._verify import VerifyReport
    from icechunk_dask.dask import store_sessions
    from icechunk_dask.distributed import merge_sessions
    from icechunk_dask.storage import (
        azure_storage,
        gcs_storage,
        in_memory_storage,
        local_filesystem_storage,
        s3_storage,
        storage_from_url,
    )
    from icechunk_dask.xarray import to_zarr

__version__ = "0.1.0"

#: Public names loaded on first use, so that ``import icechunk_dask`` (and the command line)
#: stays light: zarr, dask, xarray and distributed are imported only when needed.
_LAZY = {
    "BasicConflictSolver": "icechunk_dask._conflicts",
    "ChangeSet": "icechunk_dask._changeset",
    "ConflictDetector": "icechunk_dask._conflicts",
    "ConflictSolver": "icechunk_dask._conflicts",
    "Diff": "icechunk_dask._diff",
    "ForkSession": "icechunk_dask._session",
    "GCSummary": "icechunk_dask._gc",
    "Repository": "icechunk_dask._repository",
    "Session": "icechunk_dask._session",
    "SessionStore": "icechunk_dask._store",
    "SnapshotInfo": "icechunk_dask._repository",
    "UsageReport": "icechunk_dask._usage",
    "VerifyReport": "icechunk_dask._verify",
    "VersionSelection": "icechunk_dask._conflicts",
    "azure_storage": "icechunk_dask.storage",
    "gcs_storage": "icechunk_dask.storage",
    "in_memory_storage": "icechunk_dask.storage",
    "local_filesystem_storage": "icechunk_dask.storage",
    "merge_sessions": "icechunk_dask.distributed",
    "s3_storage": "icechunk_dask.storage",
    "storage_from_url": "icechunk_dask.storage",
    "store_sessions": "icechunk_dask.dask",
    "to_zarr": "icechunk_dask.xarray",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icechunk_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "BasicConflictSolver",
    "ChangeSet",
    "Conflict",
    "ConflictDetector",
    "ConflictError",
    "ConflictSolver",
    "ConflictType",
    "CorruptObjectError",
    "Diff",
    "ErrorKind",
    "ExpiredSnapshotError",
    "ForkSession",
    "FormatVersionError",
    "GCSummary",
    "IcechunkDaskError",
    "IcechunkError",
    "InvalidInputError",
    "NoChangesToCommitError",
    "NotFoundError",
    "PicklingNotAllowedError",
    "ReadOnlyError",
    "RebaseFailedError",
    "RecoveryWarning",
    "Repository",
    "RepositoryConfig",
    "Session",
    "SessionStateError",
    "SessionStore",
    "SnapshotInfo",
    "StorageError",
    "UnmergedWritesError",
    "UsageReport",
    "VerifyReport",
    "VersionSelection",
    "__version__",
    "azure_storage",
    "gcs_storage",
    "in_memory_storage",
    "local_filesystem_storage",
    "merge_sessions",
    "s3_storage",
    "storage_from_url",
    "store_sessions",
    "to_zarr",
]
