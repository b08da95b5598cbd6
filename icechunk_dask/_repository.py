"""Repository: open or create one, manage branches and tags, open sessions.

A thin layer over :class:`~icechunk_dask._assets.AssetManager`, which owns
the repository's objects; refs are moved by :mod:`icechunk_dask._refs`.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from icechunk_dask import _history
from icechunk_dask._assets import AssetManager, shared_assets
from icechunk_dask._bootstrap import create_repository, open_repository, repository_exists
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._diff import Diff, diff_snapshots
from icechunk_dask._exceptions import InvalidInputError, NotFoundError, RecoveryWarning
from icechunk_dask._history import SnapshotInfo
from icechunk_dask._maintenance import MaintenanceMethods
from icechunk_dask._refs_api import RefMethods
from icechunk_dask._scheduler import register_pickling_hook
from icechunk_dask._session import Session
from icechunk_dask._sync import run
from icechunk_dask.format import RepoConfig, validate_snapshot_id
from icechunk_dask.storage import Storage

__all__ = ["Repository"]

#: Where a repository lives: a storage, a local path, or a URL (``s3://bucket/prefix``).
Location = Storage | str | os.PathLike[str]

# sessions handed out by a Repository can be sent to a cluster inside allow_pickling()
register_pickling_hook()


class Repository(RefMethods, MaintenanceMethods):
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

        Snapshots expired by :meth:`~icechunk_dask.Repository.expire_snapshots` are skipped: the history
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


def _reopen(storage: Storage, config: RepoConfig) -> Repository:
    """Unpickle a repository, sharing one asset manager (and its caches) per process."""
    return Repository(shared_assets(storage, config))
