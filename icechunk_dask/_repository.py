"""Repository: open or create one, manage branches and tags, open sessions.

A thin layer over :class:`~icechunk_dask._assets.AssetManager`, which owns
the repository's objects; refs are moved by :mod:`icechunk_dask._refs`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from icechunk_dask._assets import AssetManager, shared_assets
from icechunk_dask._bootstrap import create_repository, open_repository, repository_exists
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._diff import Diff, diff_snapshots
from icechunk_dask._exceptions import CorruptObjectError, InvalidInputError, NotFoundError
from icechunk_dask._refs import create_tag, delete_tag, set_branch
from icechunk_dask._scheduler import register_pickling_hook
from icechunk_dask._session import Session
from icechunk_dask._sync import run
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

    Attributes
    ----------
    id : str
        The snapshot id.
    parent_id : str or None
        The previous snapshot (``None`` for the repository's first).
    written_at : datetime
        When it was committed (UTC).
    message : str
        The commit message.
    metadata : dict
        The commit's properties.
    """

    id: str
    parent_id: str | None
    written_at: datetime
    message: str
    metadata: dict[str, Any]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> SnapshotInfo:
        """Build from a decoded snapshot."""
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
    """

    def __init__(self, assets: AssetManager) -> None:
        self._assets = assets

    def __repr__(self) -> str:
        return f"<Repository {self.storage.url} id={self.config.repo_id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.storage, self.config))

    @property
    def storage(self) -> Storage:
        """Where the repository lives."""
        return self._assets.storage

    @property
    def config(self) -> RepoConfig:
        """The repository's settings (from ``config.json``)."""
        return self._assets.config

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
            If a repository already exists there, or the location holds other data.
        """
        return cls(run(create_repository(storage, config)))

    @classmethod
    def open(cls, storage: Location) -> Repository:
        """Open an existing repository.

        Parameters
        ----------
        storage : Storage, str or os.PathLike
            Where the repository lives: a storage, a path or a URL.

        Returns
        -------
        Repository
            The repository.

        Raises
        ------
        NotFoundError
            If there is no repository at that location.
        FormatVersionError
            If the repository was written by a newer icechunk_dask.
        """
        return cls(run(open_repository(storage)))

    @classmethod
    def open_or_create(cls, storage: Storage, config: RepositoryConfig | None = None) -> Repository:
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
        """
        if cls.exists(storage):
            return cls.open(storage)
        try:
            return cls.create(storage, config)
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
            If the snapshot does not exist.
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
        from_snapshot_id : str or None
            The tip you saw: the branch is moved only if it is still there
            (checked atomically with the move), so a commit acknowledged
            meanwhile is never dropped. Without it the branch moves whatever
            its tip.

        Raises
        ------
        NotFoundError
            If the branch or the snapshot does not exist.
        ConflictError
            If the tip is not ``from_snapshot_id`` (kind ``branch-moved``); nothing changed.
        """
        validate_snapshot_id(snapshot_id)  # None here would delete the branch
        run(set_branch(self._assets, branch, snapshot_id, create=False, expected=from_snapshot_id))

    def delete_branch(self, branch: str, *, from_snapshot_id: str | None = None) -> None:
        """Delete a branch (its snapshots stay reachable by id and by tags).

        Parameters
        ----------
        branch : str
            The branch.
        from_snapshot_id : str or None
            The tip you saw: the branch is deleted only if it is still there.

        Raises
        ------
        InvalidInputError
            For ``main``, which cannot be deleted.
        NotFoundError
            If the branch does not exist.
        ConflictError
            If the tip is not ``from_snapshot_id`` (kind ``branch-moved``); nothing changed.
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
            If the snapshot does not exist.
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
            If the tag does not exist.
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
        from_snapshot_id : str or None
            The snapshot you believe the tag names: refuse to delete it otherwise.

        Raises
        ------
        NotFoundError
            If the tag does not exist.
        ConflictError
            If the tag names another snapshot than ``from_snapshot_id``.
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
            If there is no such snapshot.
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
        """What changed between two versions (any two: they need not be related).

        Parameters
        ----------
        from_branch, from_tag, from_snapshot_id : str or None
            Exactly one: the version to compare from.
        to_branch, to_tag, to_snapshot_id : str or None
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

        Parameters
        ----------
        branch, tag, snapshot_id : str or None
            Exactly one: where to start.

        Yields
        ------
        SnapshotInfo
            Newest first.

        Raises
        ------
        NotFoundError
            If the starting point does not exist.
        """
        current: str | None = run(self._assets.resolve(branch, tag, snapshot_id))
        seen: set[str] = set()
        while current is not None:
            if current in seen:
                raise CorruptObjectError(
                    f"the history has a cycle at snapshot {current}: the repository is damaged "
                    "(run icechunk-dask verify)",
                    key=f"snapshots/{current}",
                )
            seen.add(current)
            snap = run(self._assets.get_snapshot(current))
            yield SnapshotInfo.from_snapshot(snap)
            current = snap.parent_id

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

        Parameters
        ----------
        branch : str or None
            A branch (its tip, or with ``as_of`` its state at that time).
        tag : str or None
            A tag.
        snapshot_id : str or None
            A snapshot.
        as_of : datetime or None
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
            If ``as_of`` is given without ``branch``.
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
