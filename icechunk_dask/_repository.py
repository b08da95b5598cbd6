"""Repository: open or create one, manage branches and tags, open sessions.

A thin layer over :class:`~icechunk_dask._assets.AssetManager`, which owns
the repository's objects; refs are moved by :mod:`icechunk_dask._refs`.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from icechunk_dask import _history
from icechunk_dask._assets import AssetManager, shared_assets
from icechunk_dask._bootstrap import create_repository, open_repository, repository_exists
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._diff import Diff, diff_snapshots
from icechunk_dask._exceptions import InvalidInputError, NotFoundError, RecoveryWarning
from icechunk_dask._expire import expire_snapshots
from icechunk_dask._gc import GCSummary, garbage_collect
from icechunk_dask._refs import create_tag, delete_tag, set_branch
from icechunk_dask._scheduler import register_pickling_hook
from icechunk_dask._session import Session
from icechunk_dask._sync import run
from icechunk_dask._usage import UsageReport, storage_usage
from icechunk_dask._verify import VerifyReport, verify_repository
from icechunk_dask.format import RepoConfig, Snapshot, validate_snapshot_id
from icechunk_dask.storage import Storage

__all__ = ["Repository", "SnapshotInfo"]

#: Where a repository lives: a storage, a local path, or a URL (``s3://bucket/prefix``).
Location = Storage | str | os.PathLike[str]

# sessions handed out by a Repository can be sent to a cluster inside allow_pickling()
register_pickling_hook()


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What :meth:`Repository.ancestry` yields for each snapshot.

    Also what :meth:`Repository.lookup_snapshot` returns. Each parameter is
    also a (read-only) attribute of the same name.

    Parameters
    ----------
    id : str
        The snapshot id.
    parent_id : str or None
        The previous snapshot (``None`` for the repository's first).
    written_at : datetime
        When it was committed (timezone-aware, UTC).
    message : str
        The commit message.
    metadata : dict of str to Any
        The commit's properties (``commit(message, metadata)``).
    """

    id: str
    parent_id: str | None
    written_at: datetime
    message: str
    metadata: dict[str, Any]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> SnapshotInfo:
        """Build from a decoded snapshot.

        Parameters
        ----------
        snap : icechunk_dask.format.Snapshot
            A snapshot as the repository's format layer decodes it.

        Returns
        -------
        SnapshotInfo
            Its id, parent, time, message and metadata.
        """
        return cls(
            snap.id,
            snap.parent_id,
            datetime.fromisoformat(snap.written_at),
            snap.message,
            dict(snap.metadata),
        )


class Repository:
    """A versioned, transactional Zarr v3 repository.

    Create one with :meth:`create`, :meth:`open` or :meth:`open_or_create`;
    write through :meth:`writable_session`, read through
    :meth:`readonly_session`. A repository pickles (by storage location).

    Every method that reads or writes the repository can also raise
    :class:`~icechunk_dask.StorageError` (the backend failed) and :class:`CorruptObjectError`
    (a stored object is damaged or missing).

    Parameters
    ----------
    assets : icechunk_dask._assets.AssetManager
        The repository's objects. Internal: use the class methods above
        rather than the constructor.

    Examples
    --------
    >>> repo = Repository.open_or_create("data/repo")  # doctest: +SKIP
    >>> session = repo.writable_session("main")  # doctest: +SKIP
    >>> zarr.create_array(session.store, name="t", shape=(4,), dtype="i4")  # doctest: +SKIP
    >>> session.commit("create t")  # doctest: +SKIP
    >>> [info.message for info in repo.ancestry(branch="main")]  # doctest: +SKIP
    ['create t', 'Repository initialized']
    """

    def __init__(self, assets: AssetManager) -> None:
        self._assets = assets

    def __repr__(self) -> str:
        return f"<Repository {self.storage.url} id={self.repo_id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.storage, self._assets.config))

    @property
    def storage(self) -> Storage:
        """Where the repository lives."""
        return self._assets.storage

    @property
    def config(self) -> RepositoryConfig:
        """The repository's settings (stored in ``config.json``, fixed at creation)."""
        stored = self._assets.config
        return RepositoryConfig(
            inline_chunk_threshold_bytes=stored.inline_threshold,
            manifest_box_refs=stored.manifest_box_refs,
            manifest_splits={p: dict(d) for p, d in stored.manifest_splits.items()},
            manifest_max_layers=stored.manifest_max_layers,
        )

    @property
    def repo_id(self) -> str:
        """The repository's unique id."""
        return self._assets.repo_id

    # -- creation -------------------------------------------------------------

    @classmethod
    def create(cls, storage: Location, config: RepositoryConfig | None = None) -> Repository:
        """Create a new repository with an empty ``main`` branch.

        Parameters
        ----------
        storage : Storage, str or os.PathLike
            Where the repository lives: a storage (``local_filesystem_storage(path)``,
            ``s3_storage(...)``), a path, or a URL (``"s3://bucket/prefix"``, see
            :func:`~icechunk_dask.storage.storage_from_url`).
        config : RepositoryConfig or None
            Settings fixed for the repository's life (default: ``RepositoryConfig()``).

        Returns
        -------
        Repository
            The new repository.

        Raises
        ------
        InvalidInputError
            If a repository already exists there, the location holds other data
            or is neither a storage, a path nor a URL, ``config`` is not a
            :class:`RepositoryConfig`, or another process is creating a
            repository there at the same time.
        StorageError
            If the storage cannot be written.

        Warns
        -----
        RecoveryWarning
            If it finished a creation that another process left half done (its
            branch ``main`` written, ``config.json`` never): at once when that
            creation is damaged, else once it is 30 s old (until then this waits).
        """
        return cls._create(storage, config, 3)

    @classmethod
    def _create(cls, storage: Location, config: RepositoryConfig | None, level: int) -> Repository:
        notes: list[str] = []
        repo = cls(run(create_repository(storage, config, recovered=notes)))
        for note in notes:
            warnings.warn(note, RecoveryWarning, stacklevel=level)
        return repo

    @classmethod
    def open(cls, storage: Location, config: RepositoryConfig | None = None) -> Repository:
        """Open an existing repository.

        Parameters
        ----------
        storage : Storage, str or os.PathLike
            Where the repository lives: a storage, a path or a URL.
        config : RepositoryConfig or None
            Accepted for Icechunk's signature: the settings are fixed when the
            repository is created, so a given ``config`` must equal them.

        Returns
        -------
        Repository
            The repository.

        Raises
        ------
        NotFoundError
            If there is no repository at that location (the message says what
            is there instead: nothing, a plain Zarr store, an Icechunk
            repository).
        InvalidInputError
            If ``storage`` is neither a storage, a path nor a URL.
        FormatVersionError
            If the repository was written by a newer icechunk_dask.
        InvalidInputError
            If ``config`` differs from the repository's settings.
        CorruptObjectError
            If its ``config.json`` is damaged.
        StorageError
            If the storage cannot be read.
        """
        repo = cls(run(open_repository(storage)))
        if config is not None and config != repo.config:
            raise InvalidInputError(
                f"the repository at {repo.storage.url} has the settings {repo.config}, fixed "
                f"when it was created; they cannot be changed when opening it (got {config})"
            )
        return repo

    @classmethod
    def open_or_create(
        cls, storage: Location, config: RepositoryConfig | None = None
    ) -> Repository:
        """Open the repository at ``storage``, creating it if there is none.

        Parameters
        ----------
        storage : Storage, str or os.PathLike
            Where the repository lives: a storage, a path or a URL.
        config : RepositoryConfig or None
            Settings for a new repository (an existing one keeps its own).

        Returns
        -------
        Repository
            The opened or new repository.

        Raises
        ------
        InvalidInputError
            If the location holds other data than a repository, or is neither a
            storage, a path nor a URL.
        FormatVersionError
            If the repository was written by a newer icechunk_dask.
        StorageError
            If the storage cannot be read or written.

        Warns
        -----
        RecoveryWarning
            If it finished a creation that another process left half done
            (see :meth:`create`).
        """
        if cls.exists(storage):
            return cls.open(storage)
        try:
            return cls._create(storage, config, 3)
        except InvalidInputError:
            if cls.exists(storage):  # lost a creation race: fine
                return cls.open(storage)
            raise

    @staticmethod
    def exists(storage: Location) -> bool:
        """Whether a repository exists at ``storage``.

        Parameters
        ----------
        storage : Storage, str or os.PathLike
            The location to look at: a storage, a path or a URL.

        Returns
        -------
        bool
            ``True`` if a repository is there.

        Raises
        ------
        InvalidInputError
            If ``storage`` is neither a storage, a path nor a URL.
        StorageError
            If the storage cannot be read.
        """
        return run(repository_exists(storage))

    # -- branches -------------------------------------------------------------

    def lookup_branch(self, branch: str) -> str:
        """Return the snapshot id at the tip of ``branch``.

        Parameters
        ----------
        branch : str
            The branch name.

        Returns
        -------
        str
            The snapshot id.

        Raises
        ------
        NotFoundError
            If the branch does not exist.
        InvalidInputError
            If ``branch`` is not a valid branch name.
        """
        return run(self._assets.lookup_branch(branch))[1]

    def list_branches(self) -> set[str]:
        """Return the names of all branches.

        Returns
        -------
        set of str
            Branch names.
        """
        return run(self._assets.list_branches())

    def create_branch(self, branch: str, snapshot_id: str) -> None:
        """Create a branch pointing at ``snapshot_id``.

        Parameters
        ----------
        branch : str
            The new branch's name.
        snapshot_id : str
            Where it starts.

        Raises
        ------
        InvalidInputError
            If the name is invalid or the branch already exists.
        NotFoundError
            If the snapshot does not exist (or ``snapshot_id`` is not a snapshot id).
        IcechunkDaskError
            If other writers kept moving the branch through 100 attempts.
        """
        validate_snapshot_id(snapshot_id)
        run(set_branch(self._assets, branch, snapshot_id, create=True))

    def reset_branch(
        self, branch: str, snapshot_id: str, *, from_snapshot_id: str | None = None
    ) -> None:
        """Point an existing branch at ``snapshot_id`` (any snapshot of the repository).

        Parameters
        ----------
        branch : str
            The branch.
        snapshot_id : str
            Where it should point.
        from_snapshot_id : str or None, optional
            The tip you saw: the branch is moved only if it is still there
            (checked atomically with the move), so a commit acknowledged
            meanwhile is never dropped. Without it (the default) the branch
            moves whatever its tip.

        Raises
        ------
        NotFoundError
            If the branch or the snapshot does not exist (or a snapshot id is
            malformed).
        InvalidInputError
            If ``branch`` is not a valid branch name.
        ConflictError
            If the tip is not ``from_snapshot_id`` (kind ``branch-moved``); nothing changed.
        IcechunkDaskError
            If other writers kept moving the branch through 100 attempts.
        """
        if snapshot_id is None:
            raise InvalidInputError(
                f"reset_branch needs a snapshot id to point {branch!r} at, got None; to remove "
                "the branch use repo.delete_branch(branch)"
            )
        validate_snapshot_id(snapshot_id)
        run(set_branch(self._assets, branch, snapshot_id, create=False, expected=from_snapshot_id))

    def delete_branch(self, branch: str, *, from_snapshot_id: str | None = None) -> None:
        """Delete a branch (its snapshots stay reachable by id and by tags).

        Parameters
        ----------
        branch : str
            The branch.
        from_snapshot_id : str or None, optional
            The tip you saw: the branch is deleted only if it is still there
            (checked atomically). Default: delete whatever its tip.

        Raises
        ------
        InvalidInputError
            For ``main``, which cannot be deleted, and for invalid names.
        NotFoundError
            If the branch does not exist (or ``from_snapshot_id`` is not a snapshot id).
        ConflictError
            If the tip is not ``from_snapshot_id`` (kind ``branch-moved``); nothing changed.
        IcechunkDaskError
            If other writers kept moving the branch through 100 attempts.
        """
        if branch == "main":
            raise InvalidInputError("the 'main' branch cannot be deleted")
        run(set_branch(self._assets, branch, None, create=False, expected=from_snapshot_id))

    # -- tags -----------------------------------------------------------------

    def create_tag(self, tag: str, snapshot_id: str) -> None:
        """Create an immutable tag pointing at ``snapshot_id``.

        Parameters
        ----------
        tag : str
            The tag's name.
        snapshot_id : str
            The snapshot it names.

        Raises
        ------
        InvalidInputError
            If the name is invalid or the tag exists (or existed: tags are never reused).
        NotFoundError
            If the snapshot does not exist (or ``snapshot_id`` is not a snapshot id).
        """
        run(create_tag(self._assets, tag, snapshot_id))

    def lookup_tag(self, tag: str) -> str:
        """Return the snapshot id a tag points at.

        Parameters
        ----------
        tag : str
            The tag.

        Returns
        -------
        str
            The snapshot id.

        Raises
        ------
        NotFoundError
            If the tag does not exist or was deleted.
        InvalidInputError
            If ``tag`` is not a valid tag name.
        """
        return run(self._assets.lookup_tag(tag))

    def list_tags(self) -> set[str]:
        """Return the names of all tags.

        Returns
        -------
        set of str
            Tag names.
        """
        return run(self._assets.list_tags())

    def delete_tag(self, tag: str, *, from_snapshot_id: str | None = None) -> None:
        """Delete a tag. Its name cannot be used again.

        Parameters
        ----------
        tag : str
            The tag.
        from_snapshot_id : str or None, optional
            The snapshot you believe the tag names: refuse to delete it
            otherwise. Default: delete it whatever it names.

        Raises
        ------
        NotFoundError
            If the tag does not exist (or was already deleted).
        InvalidInputError
            If ``tag`` is not a valid tag name.
        ConflictError
            If the tag names another snapshot than ``from_snapshot_id`` (kind
            ``branch-moved``); nothing changed.
        """
        run(delete_tag(self._assets, tag, expected=from_snapshot_id))

    # -- snapshots and diffs ----------------------------------------------------

    def lookup_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        """Return the commit information of a snapshot.

        Parameters
        ----------
        snapshot_id : str
            The snapshot.

        Returns
        -------
        SnapshotInfo
            Id, parent, time, message and metadata.

        Raises
        ------
        NotFoundError
            If there is no such snapshot (or ``snapshot_id`` is not a snapshot id).
        """
        snap = run(self._assets.get_snapshot(validate_snapshot_id(snapshot_id)))
        return SnapshotInfo.from_snapshot(snap)

    def diff(
        self,
        *,
        from_branch: str | None = None,
        from_tag: str | None = None,
        from_snapshot_id: str | None = None,
        to_branch: str | None = None,
        to_tag: str | None = None,
        to_snapshot_id: str | None = None,
    ) -> Diff:
        """Return what changed between two versions (any two: they need not be related).

        Parameters
        ----------
        from_branch, from_tag, from_snapshot_id : str or None, optional
            Exactly one: the version to compare from.
        to_branch, to_tag, to_snapshot_id : str or None, optional
            Exactly one: the version to compare to.

        Returns
        -------
        Diff
            Groups and arrays created, deleted or updated, and chunks written.

        Raises
        ------
        InvalidInputError
            If not exactly one of each triple is given.
        NotFoundError
            If a version does not exist.
        """
        assets = self._assets

        async def go() -> Diff:
            a = await assets.resolve(from_branch, from_tag, from_snapshot_id)
            b = await assets.resolve(to_branch, to_tag, to_snapshot_id)
            old, new = await asyncio.gather(assets.get_snapshot(a), assets.get_snapshot(b))
            return await diff_snapshots(assets, old, new)

        return run(go())

    # -- history --------------------------------------------------------------

    def ancestry(
        self,
        *,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | None = None,
    ) -> Iterator[SnapshotInfo]:
        """Yield the snapshots from the given one back to the repository's first.

        Snapshots expired by :meth:`expire_snapshots` are skipped: the history
        continues with their nearest ancestor that is not expired (at the
        latest the repository's first snapshot, which never expires).

        Parameters
        ----------
        branch, tag, snapshot_id : str or None, optional
            Exactly one: where to start.

        Yields
        ------
        SnapshotInfo
            Newest first (snapshots are read as the iteration proceeds).

        Raises
        ------
        InvalidInputError
            If not exactly one starting point is given.
        NotFoundError
            If the starting point does not exist.
        ExpiredSnapshotError
            If the starting point was expired.
        CorruptObjectError
            If the history is damaged (a cycle, a damaged snapshot).
        """
        start = run(self._assets.resolve(branch, tag, snapshot_id))
        for snap in _history.ancestry(self._assets, start):
            yield SnapshotInfo.from_snapshot(snap)

    # -- sessions -------------------------------------------------------------

    def writable_session(self, branch: str) -> Session:
        """Start a writable session on the tip of ``branch``.

        Parameters
        ----------
        branch : str
            The branch to commit to.

        Returns
        -------
        Session
            A writable session.

        Raises
        ------
        NotFoundError
            If the branch does not exist.
        InvalidInputError
            If ``branch`` is not a valid branch name.
        """
        snapshot_id = self.lookup_branch(branch)
        run(self._assets.get_snapshot(snapshot_id))  # fail early on a missing or damaged snapshot
        return Session(self._assets, snapshot_id, branch=branch, read_only=False)

    def readonly_session(
        self,
        branch: str | None = None,
        *,
        tag: str | None = None,
        snapshot_id: str | None = None,
        as_of: datetime | None = None,
    ) -> Session:
        """Start a read-only session at a branch tip, a tag or a snapshot.

        Give exactly one of ``branch``, ``tag`` and ``snapshot_id``.

        Parameters
        ----------
        branch : str or None, optional
            A branch (its tip, or with ``as_of`` its state at that time).
        tag : str or None, optional
            A tag.
        snapshot_id : str or None, optional
            A snapshot.
        as_of : datetime or None, optional
            With ``branch``: the newest snapshot of the branch's history
            committed at or before this time (timezone-aware; naive means UTC).

        Returns
        -------
        Session
            A read-only session.

        Raises
        ------
        NotFoundError
            If the branch, tag or snapshot does not exist, or the branch has no
            snapshot as old as ``as_of``.
        InvalidInputError
            If not exactly one of ``branch``, ``tag`` and ``snapshot_id`` is
            given, ``as_of`` is given without ``branch``, or a name is invalid.
        """
        if as_of is not None:
            if branch is None or tag is not None or snapshot_id is not None:
                raise InvalidInputError("as_of= needs branch= (and no tag= or snapshot_id=)")
            when = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
            found = next((i for i in self.ancestry(branch=branch) if i.written_at <= when), None)
            if found is None:
                raise NotFoundError(f"branch {branch!r} has no snapshot as old as {as_of}")
            return self.readonly_session(snapshot_id=found.id)
        snap = run(self._assets.resolve(branch, tag, snapshot_id))
        run(self._assets.get_snapshot(snap))  # fail early on a missing or damaged snapshot
        return Session(self._assets, snap, branch=branch, read_only=True)

    # -- maintenance ------------------------------------------------------------

    def expire_snapshots(
        self,
        older_than: datetime,
        *,
        delete_expired_branches: bool = False,
        delete_expired_tags: bool = False,
    ) -> set[str]:
        """Expire the snapshots committed before ``older_than`` (Icechunk's name and semantics).

        Walks the history of every branch and tag. A snapshot committed before
        ``older_than`` expires unless a branch or tag points at it or it is the
        repository's first snapshot. An expired snapshot is skipped by every
        history walk (:meth:`ancestry`: the history continues with its nearest
        ancestor that is not expired), reading it is an
        :class:`~icechunk_dask.ExpiredSnapshotError`, and :meth:`garbage_collect`
        can then delete what only it needed. Sessions already open on it keep
        working until then. Snapshots are never rewritten: expiry is recorded
        by a create-only marker per snapshot.

        Parameters
        ----------
        older_than : datetime
            Snapshots committed before this time expire (naive means UTC).
        delete_expired_branches : bool
            First delete the branches (except ``main``) whose tip is older than
            ``older_than`` (each only while it still points there); their
            snapshots then expire too.
        delete_expired_tags : bool
            The same for tags.

        Returns
        -------
        set of str
            The ids of the snapshots this call expired.

        Raises
        ------
        InvalidInputError
            If ``older_than`` is not a datetime.
        """
        return run(
            expire_snapshots(
                self._assets,
                older_than,
                delete_expired_branches=delete_expired_branches,
                delete_expired_tags=delete_expired_tags,
            )
        )

    def garbage_collect(
        self, delete_object_older_than: datetime, *, dry_run: bool = False
    ) -> GCSummary:
        """Delete the objects no branch or tag needs that were written before a cutoff.

        An object is deleted only if it is unreachable from every branch tip
        and tag (through their histories, expired snapshots excluded) **and**
        was stored before ``delete_object_older_than``. Writers running
        meanwhile are safe as long as the cutoff is before they started: a
        session's chunks and a commit's objects are all newer than that. A
        chunk object holding several chunks (a pack) is kept whole while any
        reachable reference points into it. Also deleted: old records of
        failed or abandoned write jobs, scratch objects, session markers and
        the temporary files of interrupted writes.

        Parameters
        ----------
        delete_object_older_than : datetime
            The cutoff (naive means UTC; a time in the future counts as now).
            Choose it before the start of the longest session still running.
        dry_run : bool
            Count what would be deleted, delete nothing.

        Returns
        -------
        GCSummary
            Objects and bytes deleted (or that would be), by kind.

        Raises
        ------
        CorruptObjectError
            If a reachable object is missing or damaged: nothing is deleted then.
        """
        return run(garbage_collect(self._assets, delete_object_older_than, dry_run=dry_run))

    def verify(self, *, all_snapshots: bool = False, chunks: bool = False) -> VerifyReport:
        """Check that every object the history needs exists, decodes and is in its place.

        Parameters
        ----------
        all_snapshots : bool
            Check every stored snapshot, not only those reachable from branches and tags.
        chunks : bool
            Also read every chunk and check it against its checksum.

        Returns
        -------
        VerifyReport
            What was checked and the problems found (``report.ok`` when none).
        """
        return run(verify_repository(self._assets, all_snapshots=all_snapshots, chunks=chunks))

    def storage_usage(self) -> UsageReport:
        """Objects and bytes stored, by kind, reachable from branches and tags or not.

        Returns
        -------
        UsageReport
            Per kind: reachable and unreachable objects and bytes.
        """
        return run(storage_usage(self._assets))


def _reopen(storage: Storage, config: RepoConfig) -> Repository:
    """Unpickle a repository, sharing one asset manager (and its caches) per process."""
    return Repository(shared_assets(storage, config))
