"""Branches and tags of a :class:`~icechunk_dask.Repository` (its ref methods).

A mixin of :class:`~icechunk_dask.Repository`: the methods that look up,
create, move and delete branches and tags, through :mod:`icechunk_dask._refs`.
"""

from __future__ import annotations

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask._refs import create_tag, delete_tag, set_branch
from icechunk_dask._sync import run
from icechunk_dask.format import validate_snapshot_id

__all__ = ["RefMethods"]


class RefMethods:
    """Branch and tag methods of :class:`~icechunk_dask.Repository`."""

    _assets: AssetManager

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
