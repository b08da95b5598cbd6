"""Repository: open or create one, manage branches and tags, open sessions.

A thin layer over :class:`~icechunk_dask._assets.AssetManager`, which owns
the repository's objects; refs are moved by :mod:`icechunk_dask._refs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from icechunk_dask._assets import AssetManager, shared_assets
from icechunk_dask._bootstrap import create_repository, open_repository, repository_exists
from icechunk_dask._config import RepositoryConfig
from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask._refs import create_tag, delete_tag, set_branch
from icechunk_dask._session import Session
from icechunk_dask._sync import run
from icechunk_dask.format import RepoConfig, Snapshot
from icechunk_dask.storage import Storage

__all__ = ["Repository", "SnapshotInfo"]


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
    def create(cls, storage: Storage, config: RepositoryConfig | None = None) -> Repository:
        """Create a new repository with an empty ``main`` branch.

        Parameters
        ----------
        storage : Storage
            Where the repository lives (for example ``local_filesystem_storage(path)``).
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
    def open(cls, storage: Storage) -> Repository:
        """Open an existing repository.

        Parameters
        ----------
        storage : Storage
            Where the repository lives.

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
        storage : Storage
            Where the repository lives.
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
    def exists(storage: Storage) -> bool:
        """Whether a repository exists at ``storage``.

        Parameters
        ----------
        storage : Storage
            The location to look at.

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
        run(set_branch(self._assets, branch, snapshot_id, create=True))

    def reset_branch(self, branch: str, snapshot_id: str) -> None:
        """Point an existing branch at ``snapshot_id`` (any snapshot of the repository).

        Parameters
        ----------
        branch : str
            The branch.
        snapshot_id : str
            Where it should point.

        Raises
        ------
        NotFoundError
            If the branch or the snapshot does not exist.
        """
        run(set_branch(self._assets, branch, snapshot_id, create=False))

    def delete_branch(self, branch: str) -> None:
        """Delete a branch (its snapshots stay reachable by id and by tags).

        Parameters
        ----------
        branch : str
            The branch.

        Raises
        ------
        InvalidInputError
            For ``main``, which cannot be deleted.
        NotFoundError
            If the branch does not exist.
        """
        if branch == "main":
            raise InvalidInputError("the 'main' branch cannot be deleted")
        run(set_branch(self._assets, branch, None, create=False))

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

    def delete_tag(self, tag: str) -> None:
        """Delete a tag. Its name cannot be used again.

        Parameters
        ----------
        tag : str
            The tag.

        Raises
        ------
        NotFoundError
            If the tag does not exist.
        """
        run(delete_tag(self._assets, tag))

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
        while current is not None:
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
    ) -> Session:
        """Start a read-only session at a branch tip, a tag or a snapshot.

        Parameters
        ----------
        branch : str or None
            A branch (its tip).
        tag : str or None
            A tag.
        snapshot_id : str or None
            A snapshot.

        Returns
        -------
        Session
            A read-only session.

        Raises
        ------
        NotFoundError
            If the branch, tag or snapshot does not exist.
        """
        snap = run(self._assets.resolve(branch, tag, snapshot_id))
        run(self._assets.get_snapshot(snap))  # fail early on a missing or damaged snapshot
        return Session(self._assets, snap, branch=branch, read_only=True)


def _reopen(storage: Storage, config: RepoConfig) -> Repository:
    """Unpickle a repository, sharing one asset manager (and its caches) per process."""
    return Repository(shared_assets(storage, config))
