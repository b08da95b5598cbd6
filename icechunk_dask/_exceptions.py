"""The icechunk_dask error tree.

::

    IcechunkDaskError
    ├── ConflictError                  a commit or merge collided with other changes
    │   └── RebaseFailedError          rebasing onto the new branch tip found conflicts
    ├── NotFoundError (KeyError)       unknown branch, tag, snapshot or object
    ├── InvalidInputError (ValueError) bad arguments, names, metadata or layouts
    ├── ReadOnlyError (ValueError)     a write through a read-only session or store
    ├── SessionStateError              an operation that the session's state forbids
    │   ├── NoChangesToCommitError     ``commit`` with nothing to commit
    │   └── UnmergedWritesError        worker-side copies wrote data that never came back
    ├── PicklingNotAllowedError (TypeError)  pickling a writable session without opt-in
    ├── CorruptObjectError             a stored object failed its checksum or is truncated
    ├── StorageError (OSError)         the storage backend failed
    └── FormatVersionError             a repository written by a newer icechunk_dask

Every error carries a stable, machine-readable ``kind`` (:class:`ErrorKind`).
Messages say what went wrong and what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "READ_ONLY_MESSAGE",
    "Conflict",
    "ConflictError",
    "ConflictType",
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
    "SessionStateError",
    "StorageError",
    "UnmergedWritesError",
]


#: zarr's own text for writes to a read-only store; our messages start with it so that code
#: matching zarr's message keeps working.
READ_ONLY_MESSAGE = "store was opened in read-only mode and does not support writing"


class ErrorKind(StrEnum):
    """Stable machine-readable error codes. Append-only: codes are never renamed."""

    GENERIC = "generic"
    COMMIT_CONFLICT = "commit-conflict"
    MERGE_CONFLICT = "merge-conflict"
    REBASE_FAILED = "rebase-failed"
    NOT_FOUND = "not-found"
    INVALID_INPUT = "invalid-input"
    READ_ONLY = "read-only"
    SESSION_STATE = "session-state"
    NO_CHANGES_TO_COMMIT = "no-changes-to-commit"
    UNMERGED_WRITES = "unmerged-writes"
    PICKLING_NOT_ALLOWED = "pickling-not-allowed"
    CORRUPT_OBJECT = "corrupt-object"
    STORAGE = "storage"
    FORMAT_VERSION = "format-version"
    FOREIGN_SESSION = "foreign-session"
    STALE_SESSION = "stale-session"
    UNALIGNED_WRITE = "unaligned-write"
    BRANCH_MOVED = "branch-moved"


class IcechunkDaskError(Exception):
    """Base class of every error raised by icechunk_dask.

    Parameters
    ----------
    message
        What went wrong and what to do next.
    kind
        A stable code; defaults to the class's own ``default_kind``.
    """

    default_kind: ErrorKind = ErrorKind.GENERIC

    def __init__(self, message: str, *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind if kind is not None else self.default_kind

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # errors travel between Dask workers and the client: keep them picklable
        return (_rebuild_error, (type(self), self.message, self.kind, self.__dict__))


def _rebuild_error(
    cls: type[IcechunkDaskError], message: str, kind: ErrorKind, state: dict[str, object]
) -> IcechunkDaskError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    err.message = message
    err.kind = kind
    return err


class ConflictType(StrEnum):
    """What kind of collision a :class:`Conflict` is (Icechunk's names, as strings)."""

    CHUNK_DOUBLE_UPDATE = "ChunkDoubleUpdate"
    """Both sides wrote (or deleted) the same chunk."""
    ZARR_METADATA_DOUBLE_UPDATE = "ZarrMetadataDoubleUpdate"
    """Both sides changed the same metadata document differently."""
    CHUNKS_UPDATED_IN_UPDATED_ARRAY = "ChunksUpdatedInUpdatedArray"
    """One side wrote chunks of an array whose metadata the other side changed."""
    CHUNKS_UPDATED_IN_DELETED_ARRAY = "ChunksUpdatedInDeletedArray"
    """One side changed what the other side deleted (``delete_dir``, ``mode="w"``)."""
    DELETE_OF_UPDATED_ARRAY = "DeleteOfUpdatedArray"
    """This side deleted (``delete_dir``) what the other side changed."""
    BRANCH_RESET = "BranchReset"
    """The branch was reset to a history without this session's base snapshot."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """One collision between changes (Icechunk's ``Conflict``).

    Attributes
    ----------
    conflict_type : ConflictType
        What kind of collision.
    path : str
        The array, group or key concerned (absolute: ``"/g/a"``).
    conflicted_chunks : tuple of tuple of int or None
        For chunk collisions, the coordinates of the chunks, when known.
    keys : tuple of str
        The store keys concerned.
    description : str
        What happened, for people.
    """

    conflict_type: ConflictType
    path: str
    conflicted_chunks: tuple[tuple[int, ...], ...] | None = None
    keys: tuple[str, ...] = ()
    description: str = ""

    def __str__(self) -> str:
        keys = ""
        if self.keys:
            shown = ", ".join(repr(k) for k in self.keys[:3])
            keys = f" ({shown}{', ...' if len(self.keys) > 3 else ''})"
        return f"{self.path!r}: {self.description or self.conflict_type}{keys}"


class ConflictError(IcechunkDaskError):
    """Changes collided with changes made elsewhere.

    Attributes
    ----------
    conflicts : list of Conflict
        What collided and how.
    """

    default_kind = ErrorKind.COMMIT_CONFLICT

    def __init__(
        self,
        message: str,
        *,
        conflicts: list[Conflict] | None = None,
        kind: ErrorKind | None = None,
    ) -> None:
        super().__init__(message, kind=kind)
        self.conflicts: list[Conflict] = list(conflicts or [])


class RebaseFailedError(ConflictError):
    """The branch moved and the new commits conflict with this session's changes."""

    default_kind = ErrorKind.REBASE_FAILED


class NotFoundError(IcechunkDaskError, KeyError):
    """An unknown branch, tag, snapshot or stored object."""

    default_kind = ErrorKind.NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class InvalidInputError(IcechunkDaskError, ValueError):
    """Arguments, names, metadata or write layouts that cannot be accepted."""

    default_kind = ErrorKind.INVALID_INPUT


class ReadOnlyError(IcechunkDaskError, ValueError):
    """A write through a read-only session or store.

    The message starts with zarr's own read-only text so that code matching
    zarr's message keeps working.
    """

    default_kind = ErrorKind.READ_ONLY


class SessionStateError(IcechunkDaskError):
    """The session's state forbids the operation (committed, a fork, ...)."""

    default_kind = ErrorKind.SESSION_STATE


class NoChangesToCommitError(SessionStateError):
    """``commit`` was called on a session without changes."""

    default_kind = ErrorKind.NO_CHANGES_TO_COMMIT


class UnmergedWritesError(SessionStateError):
    """Worker-side copies of the session wrote data that was never merged back."""

    default_kind = ErrorKind.UNMERGED_WRITES


class PicklingNotAllowedError(IcechunkDaskError, TypeError):
    """A writable session was pickled without opting in."""

    default_kind = ErrorKind.PICKLING_NOT_ALLOWED


class CorruptObjectError(IcechunkDaskError):
    """A stored object failed its checksum, is truncated or cannot be decoded.

    Attributes
    ----------
    key
        The storage key of the object.
    """

    default_kind = ErrorKind.CORRUPT_OBJECT

    def __init__(self, message: str, *, key: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message, kind=kind)
        self.key = key


class StorageError(IcechunkDaskError, OSError):
    """The storage backend failed (I/O error, permission, network)."""

    default_kind = ErrorKind.STORAGE


class FormatVersionError(IcechunkDaskError):
    """The repository was written in a format this version cannot read."""

    default_kind = ErrorKind.FORMAT_VERSION
