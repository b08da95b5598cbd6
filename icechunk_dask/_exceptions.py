"""The icechunk_dask error tree.

::

    IcechunkDaskError
    ├── ConflictError                  a commit or merge collided with other changes
    │   └── RebaseFailedError          rebasing onto the new branch tip found conflicts
    ├── NotFoundError (KeyError)       unknown branch, tag, snapshot or object
    │   └── ExpiredSnapshotError       a snapshot removed from history by expire_snapshots
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
Messages say what went wrong and what to do next. :class:`RecoveryWarning` is
not an error: it says that an operation repaired what an interrupted one left.
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
    "ExpiredSnapshotError",
    "FormatVersionError",
    "IcechunkDaskError",
    "IcechunkError",
    "InvalidInputError",
    "NoChangesToCommitError",
    "NotFoundError",
    "PicklingNotAllowedError",
    "ReadOnlyError",
    "RebaseFailedError",
    "RecoveryWarning",
    "SessionStateError",
    "StorageError",
    "UnmergedWritesError",
]


#: zarr's own text for writes to a read-only store; our messages start with it so that code
#: matching zarr's message keeps working.
READ_ONLY_MESSAGE = "store was opened in read-only mode and does not support writing"


class ErrorKind(StrEnum):
    """Stable machine-readable error codes. Append-only: codes are never renamed.

    Every :class:`IcechunkDaskError` has one (``error.kind``): match on it, not on
    the message. Each error class has a default kind; a few kinds refine a class
    (``branch-moved`` is a :class:`ConflictError`, ``unaligned-write`` an
    :class:`InvalidInputError`). The values are strings (``ErrorKind.NOT_FOUND ==
    "not-found"``), as the command line's ``--json`` errors print them.
    """

    GENERIC = "generic"
    """An :class:`IcechunkDaskError` of no finer kind (a branch too contended to update)."""
    COMMIT_CONFLICT = "commit-conflict"
    """The branch kept moving during a commit (rebase tries spent, or ``rebase_tries=0``)."""
    MERGE_CONFLICT = "merge-conflict"
    """Merged sessions or change records wrote one key differently."""
    REBASE_FAILED = "rebase-failed"
    """Commits that landed first conflict with this session's changes."""
    NOT_FOUND = "not-found"
    """No such branch, tag, snapshot, repository or object."""
    INVALID_INPUT = "invalid-input"
    """Arguments, names, metadata or layouts that cannot be accepted."""
    READ_ONLY = "read-only"
    """A write through a read-only or committed session, or a read-only store."""
    SESSION_STATE = "session-state"
    """An operation the session's state forbids (a committed session, a fork)."""
    NO_CHANGES_TO_COMMIT = "no-changes-to-commit"
    """``commit`` on a session without changes."""
    UNMERGED_WRITES = "unmerged-writes"
    """Copies, forks or lazy writes of the session wrote data that never came back."""
    PICKLING_NOT_ALLOWED = "pickling-not-allowed"
    """A writable session pickled outside ``allow_pickling()``."""
    CORRUPT_OBJECT = "corrupt-object"
    """A stored object fails its checksum, is truncated, missing or undecodable."""
    STORAGE = "storage"
    """The storage backend failed."""
    FORMAT_VERSION = "format-version"
    """A repository or object written by a newer format version."""
    FOREIGN_SESSION = "foreign-session"
    """Merging changes of another repository (an :class:`InvalidInputError`)."""
    STALE_SESSION = "stale-session"
    """Merging changes made on another base snapshot (an :class:`InvalidInputError`)."""
    UNALIGNED_WRITE = "unaligned-write"
    """Dask blocks of two tasks would share a Zarr chunk (an :class:`InvalidInputError`)."""
    BRANCH_MOVED = "branch-moved"
    """A guarded branch update found another snapshot than expected (a
    :class:`ConflictError`)."""
    TAG_MOVED = "tag-moved"
    """A guarded tag deletion found the tag naming another snapshot (a :class:`ConflictError`)."""
    LAYER_COLLISION = "layer-collision"
    """``ChangeSet.update`` of records that both change a box one of them holds as a
    pre-built manifest (an :class:`InvalidInputError`; ``Session.merge`` merges them)."""
    EXPIRED_SNAPSHOT = "expired-snapshot"


class IcechunkDaskError(Exception):
    """Base class of every error raised by icechunk_dask.

    Errors pickle (they travel from Dask workers to the client) with their
    message, kind and attributes.

    Parameters
    ----------
    message : str
        What went wrong and what to do next; also ``str(error)``.
    kind : ErrorKind or None, optional
        A stable code; ``None`` (the default) means the class's own
        ``default_kind``.

    Attributes
    ----------
    message : str
        The message.
    kind : ErrorKind
        The error's stable code.
    default_kind : ErrorKind
        The kind of errors of this class raised without one (a class attribute).
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
    """This side deleted (``delete_dir``) an array the other side changed."""
    DELETE_OF_UPDATED_GROUP = "DeleteOfUpdatedGroup"
    """This side deleted (``delete_dir``) a group the other side changed something in."""
    BRANCH_RESET = "BranchReset"
    """The branch was reset to a history without this session's base snapshot."""

    # Icechunk's spellings of the same members (aliases)
    ChunkDoubleUpdate = "ChunkDoubleUpdate"
    ZarrMetadataDoubleUpdate = "ZarrMetadataDoubleUpdate"
    ChunksUpdatedInUpdatedArray = "ChunksUpdatedInUpdatedArray"
    ChunksUpdatedInDeletedArray = "ChunksUpdatedInDeletedArray"
    DeleteOfUpdatedArray = "DeleteOfUpdatedArray"
    DeleteOfUpdatedGroup = "DeleteOfUpdatedGroup"


@dataclass(frozen=True, slots=True)
class Conflict:
    """One collision between changes (Icechunk's ``Conflict``).

    Found in ``ConflictError.conflicts`` and passed to a conflict solver's
    ``solve``. Each parameter is also a (read-only) attribute of the same name.

    Parameters
    ----------
    conflict_type : ConflictType
        What kind of collision.
    path : str
        The array, group or key concerned (absolute: ``"/g/a"``).
    conflicted_chunks : tuple of tuple of int or None, optional
        For chunk collisions, the coordinates of the chunks, when known
        (default ``None``).
    keys : tuple of str, optional
        The store keys concerned (default: none).
    description : str, optional
        What happened, for people (default ``""``).
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

    Raised with kind ``commit-conflict`` (the default: the branch kept moving
    while committing), ``merge-conflict`` (merged sessions or records wrote one
    key differently) or ``branch-moved`` (a guarded ``reset_branch``,
    ``delete_branch`` or ``delete_tag`` found another snapshot than expected).

    Parameters
    ----------
    message : str
        What went wrong and what to do next.
    conflicts : list of Conflict or None, optional
        What collided (default: nothing listed).
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.COMMIT_CONFLICT``).

    Attributes
    ----------
    conflicts : list of Conflict
        What collided and how (empty when the error is not about keys).
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
    """The branch moved and the new commits conflict with this session's changes.

    Raised by ``commit`` through its conflict solver; ``conflicts`` lists every
    collision (a ``BranchReset`` conflict if the branch was reset to a history
    without the session's base snapshot). Nothing was committed.

    Parameters
    ----------
    message : str
        What collided and what to do next.
    conflicts : list of Conflict or None, optional
        The collisions found.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.REBASE_FAILED``).
    """

    default_kind = ErrorKind.REBASE_FAILED


class NotFoundError(IcechunkDaskError, KeyError):
    """An unknown branch, tag, snapshot, repository or stored object.

    Also a ``KeyError``; ``str(error)`` is the message (not its ``repr``).

    Parameters
    ----------
    message : str
        What was not found and what exists instead.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.NOT_FOUND``).
    """

    default_kind = ErrorKind.NOT_FOUND

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class ExpiredSnapshotError(NotFoundError):
    """A snapshot that ``expire_snapshots`` removed from history (its data may be collected).

    Also a :class:`NotFoundError`. ``snapshot_id`` and ``expired_at`` are also
    attributes.

    Parameters
    ----------
    message : str
        Which snapshot, since when, and what to read instead.
    snapshot_id : str
        The expired snapshot.
    expired_at : str
        When it was expired (ISO 8601, UTC).
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.EXPIRED_SNAPSHOT``).
    """

    default_kind = ErrorKind.EXPIRED_SNAPSHOT

    def __init__(
        self, message: str, *, snapshot_id: str, expired_at: str, kind: ErrorKind | None = None
    ) -> None:
        super().__init__(message, kind=kind)
        self.snapshot_id = snapshot_id
        self.expired_at = expired_at


class InvalidInputError(IcechunkDaskError, ValueError):
    """Arguments, names, metadata or write layouts that cannot be accepted.

    Also a ``ValueError``. Raised with kind ``invalid-input`` (the default),
    ``foreign-session`` or ``stale-session`` (merging changes of another
    repository or base snapshot) or ``unaligned-write`` (Dask blocks of two
    tasks would share a Zarr chunk).

    Parameters
    ----------
    message : str
        What is wrong with the input and how to fix it.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.INVALID_INPUT``).
    """

    default_kind = ErrorKind.INVALID_INPUT


class ReadOnlyError(IcechunkDaskError, ValueError):
    """A write through a read-only session or store.

    Also a ``ValueError``. The message starts with zarr's own read-only text so
    that code matching zarr's message keeps working.

    Parameters
    ----------
    message : str
        Why writes are refused and how to get a writable session.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.READ_ONLY``).
    """

    default_kind = ErrorKind.READ_ONLY


class SessionStateError(IcechunkDaskError):
    """The session's state forbids the operation (committed, a fork, ...).

    Parameters
    ----------
    message : str
        What the state forbids and what to do instead.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.SESSION_STATE``).
    """

    default_kind = ErrorKind.SESSION_STATE


class NoChangesToCommitError(SessionStateError):
    """``commit`` was called on a session without changes.

    Parameters
    ----------
    message : str
        The explanation (write first, or commit with ``allow_empty=True``).
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.NO_CHANGES_TO_COMMIT``).
    """

    default_kind = ErrorKind.NO_CHANGES_TO_COMMIT


class UnmergedWritesError(SessionStateError):
    """Worker-side copies of the session wrote data that was never merged back.

    Raised by ``commit`` when pickled copies or forks of the session wrote
    something that was never merged, or when a lazy write
    (``compute=False``) built from the session never delivered its result.
    Nothing was committed.

    Parameters
    ----------
    message : str
        Which writes are missing and how to bring them back (or drop them).
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.UNMERGED_WRITES``).
    """

    default_kind = ErrorKind.UNMERGED_WRITES


class PicklingNotAllowedError(IcechunkDaskError, TypeError):
    """A writable session was pickled without opting in.

    Also a ``TypeError`` (what ``pickle`` raises for unpicklable objects).
    Pickle a writable session inside ``session.allow_pickling()``, or send a
    ``session.fork()``.

    Parameters
    ----------
    message : str
        The explanation and the fixes.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.PICKLING_NOT_ALLOWED``).
    """

    default_kind = ErrorKind.PICKLING_NOT_ALLOWED


class CorruptObjectError(IcechunkDaskError):
    """A stored object failed its checksum, is truncated or cannot be decoded.

    Also raised when an object the repository refers to is missing, and when
    the history has a cycle: the repository is damaged.

    Parameters
    ----------
    message : str
        What is wrong with the object.
    key : str
        The storage key of the object.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.CORRUPT_OBJECT``).

    Attributes
    ----------
    key : str
        The storage key of the object.
    """

    default_kind = ErrorKind.CORRUPT_OBJECT

    def __init__(self, message: str, *, key: str, kind: ErrorKind | None = None) -> None:
        super().__init__(message, kind=kind)
        self.key = key


class StorageError(IcechunkDaskError, OSError):
    """The storage backend failed (I/O error, permission, network).

    Also an ``OSError``. The message names the object or path, the backend's
    own error and what to do.

    Parameters
    ----------
    message : str
        What failed and what to do next.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.STORAGE``).
    """

    default_kind = ErrorKind.STORAGE


class FormatVersionError(IcechunkDaskError):
    """The repository was written in a format this version cannot read.

    Upgrade icechunk_dask to open it.

    Parameters
    ----------
    message : str
        The format versions involved.
    kind : ErrorKind or None, optional
        The error's code (default ``ErrorKind.FORMAT_VERSION``).
    """

    default_kind = ErrorKind.FORMAT_VERSION


#: Icechunk's name for the base of the error tree.
IcechunkError = IcechunkDaskError


class RecoveryWarning(UserWarning):
    """An operation finished or cleaned up what an interrupted one left behind.

    For example ``Repository.create`` or ``open_or_create`` finishing the
    creation of a repository whose creator died before writing ``config.json``.
    The message says what was found and what was done.
    """
