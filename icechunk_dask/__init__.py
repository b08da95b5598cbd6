"""icechunk_dask: write large Zarr v3 datasets with Dask, in parallel, in one atomic commit."""

from __future__ import annotations

from icechunk_dask._changeset import ChangeSet
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
from icechunk_dask._session import Session, SessionStatus
from icechunk_dask._store import SessionStore
from icechunk_dask.storage import in_memory_storage, local_filesystem_storage

__version__ = "0.1.0"

__all__ = [
    "ChangeSet",
    "ConflictError",
    "CorruptObjectError",
    "ErrorKind",
    "FormatVersionError",
    "IcechunkDaskError",
    "InvalidInputError",
    "NoChangesToCommitError",
    "NotFoundError",
    "PicklingNotAllowedError",
    "ReadOnlyError",
    "RebaseFailedError",
    "Repository",
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
]
