"""A pure-Python model of a repository: commits, branches, tags and a working copy.

The model knows nothing about storage, manifests or Zarr: a commit is a
parent and a ``{key: bytes}`` mapping, a branch is a name pointing at a commit.
:class:`~icechunk_dask.testing.stateful.VersionControlStateMachine` applies
every operation to the model and to a real :class:`~icechunk_dask.Repository`
and checks that they agree.

Each operation on :class:`RepositoryModel` returns the error class the real
repository must raise (and then changes nothing), or ``None`` after applying
the operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from icechunk_dask._exceptions import (
    IcechunkDaskError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    ReadOnlyError,
    RebaseFailedError,
)

__all__ = ["CommitModel", "RepositoryModel", "WorkingCopy"]

ExpectedError = type[IcechunkDaskError] | None


@dataclass(frozen=True, slots=True)
class CommitModel:
    """One commit: its parent, message and the full contents of the store.

    Each parameter is also a (read-only) attribute of the same name.

    Parameters
    ----------
    id : str
        The snapshot id the real repository gave the commit.
    parent_id : str or None
        The previous commit (``None`` for the root).
    message : str
        The commit message.
    contents : Mapping of str to bytes
        Every key of the store at this commit, with its bytes.
    """

    id: str
    parent_id: str | None
    message: str
    contents: Mapping[str, bytes]


@dataclass(slots=True)
class WorkingCopy:
    """What a session should show: its base commit plus uncommitted changes.

    Made by :meth:`RepositoryModel.checkout`. Each parameter is also an
    attribute of the same name, updated as the model changes.

    Parameters
    ----------
    branch : str or None
        The branch a writable session commits to (``None`` for snapshot views).
    base : str
        The commit the session started from.
    contents : dict of str to bytes
        Every key the session's store should list, with its bytes.
    changed : bool, optional
        Whether the session recorded any write or deletion (default ``False``).
    read_only : bool, optional
        Whether writes must be refused (default ``False``).
    """

    branch: str | None
    base: str
    contents: dict[str, bytes]
    changed: bool = False
    read_only: bool = False

    def set(self, key: str, value: bytes) -> None:
        """Record a write (the model does not refuse it: check ``read_only`` first).

        Parameters
        ----------
        key : str
            The key written.
        value : bytes
            Its new bytes.
        """
        self.contents[key] = bytes(value)
        self.changed = True

    def delete(self, key: str) -> None:
        """Record a deletion; deleting a missing key changes nothing.

        Parameters
        ----------
        key : str
            The key deleted.
        """
        if key in self.contents:
            del self.contents[key]
            self.changed = True


@dataclass(slots=True)
class RepositoryModel:
    """Branches, tags and commits of a repository, as plain dictionaries.

    Start it with the real repository's first snapshot; the model then holds
    that commit and a ``main`` branch pointing at it. Each parameter is also
    an attribute of the same name.

    Parameters
    ----------
    root_id : str
        Id of the repository's first snapshot (what ``main`` points at).
    root_message : str
        Its commit message.
    commits : dict of str to CommitModel, optional
        Commits by id (default: only the root, added at construction).
    branches : dict of str to str, optional
        Branch name -> commit id (default: ``main`` at the root).
    tags : dict of str to str, optional
        Tag name -> commit id (default: none).
    deleted_tags : set of str, optional
        Names of deleted tags, which cannot be used again (default: none).

    Examples
    --------
    >>> model = RepositoryModel("ROOT", "Repository initialized")
    >>> model.branches
    {'main': 'ROOT'}
    >>> model.create_branch("main", "ROOT").__name__
    'InvalidInputError'
    """

    root_id: str
    root_message: str
    commits: dict[str, CommitModel] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    deleted_tags: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.commits[self.root_id] = CommitModel(self.root_id, None, self.root_message, {})
        self.branches["main"] = self.root_id

    # -- history ------------------------------------------------------------------

    def ancestry(self, snapshot_id: str) -> list[str]:
        """Return the snapshot ids from ``snapshot_id`` back to the root, newest first.

        Parameters
        ----------
        snapshot_id : str
            A commit of the model.

        Returns
        -------
        list of str
            ``snapshot_id``, its parent, ..., the root.

        Raises
        ------
        KeyError
            If a commit is unknown to the model.
        """
        out: list[str] = []
        current: str | None = snapshot_id
        while current is not None:
            out.append(current)
            current = self.commits[current].parent_id
        return out

    def is_ancestor(self, ancestor: str, snapshot_id: str) -> bool:
        """Return whether ``ancestor`` is ``snapshot_id`` or one of its ancestors.

        Parameters
        ----------
        ancestor : str
            The possible ancestor.
        snapshot_id : str
            A commit of the model.

        Returns
        -------
        bool
            ``True`` if ``ancestor`` is in the history of ``snapshot_id``.
        """
        return ancestor in self.ancestry(snapshot_id)

    # -- sessions -----------------------------------------------------------------

    def checkout(self, *, branch: str | None = None, snapshot_id: str | None = None) -> WorkingCopy:
        """Return the working copy of a new session on a branch tip (writable) or a snapshot.

        Parameters
        ----------
        branch : str or None, optional
            A branch: a writable working copy at its tip.
        snapshot_id : str or None, optional
            Else a commit: a read-only working copy.

        Returns
        -------
        WorkingCopy
            What the new session should show.

        Raises
        ------
        KeyError
            If the branch or snapshot is unknown to the model (check first).
        """
        if branch is not None:
            base = self.branches[branch]
            return WorkingCopy(branch, base, dict(self.commits[base].contents))
        assert snapshot_id is not None
        contents = dict(self.commits[snapshot_id].contents)
        return WorkingCopy(None, snapshot_id, contents, read_only=True)

    def discard(self, work: WorkingCopy) -> None:
        """Drop a working copy's changes (``Session.discard_changes``).

        Parameters
        ----------
        work : WorkingCopy
            The working copy, reset to its base commit in place.
        """
        work.contents = dict(self.commits[work.base].contents)
        work.changed = False

    def commit_error(self, work: WorkingCopy) -> ExpectedError:
        """Return the error ``Session.commit`` must raise for ``work``, or ``None``.

        Parameters
        ----------
        work : WorkingCopy
            The session's working copy.

        Returns
        -------
        type of IcechunkDaskError or None
            ``ReadOnlyError``, ``NoChangesToCommitError``, ``NotFoundError``
            (branch deleted) or ``RebaseFailedError`` (branch reset to another
            history); ``None`` if the commit must succeed.

        Raises
        ------
        ValueError
            If the branch moved to a descendant of the session's base: whether
            the rebase succeeds depends on what the new commits changed, which
            this model does not track. Callers avoid that state.
        """
        if work.read_only:
            return ReadOnlyError
        if not work.changed:
            return NoChangesToCommitError
        assert work.branch is not None
        tip = self.branches.get(work.branch)
        if tip is None:
            return NotFoundError
        if tip == work.base:
            return None
        if not self.is_ancestor(work.base, tip):
            return RebaseFailedError
        raise ValueError("the model cannot predict a rebase onto newer commits")

    def commit(self, work: WorkingCopy, snapshot_id: str, message: str) -> None:
        """Apply a successful commit of ``work``; it then starts from the new commit.

        Parameters
        ----------
        work : WorkingCopy
            The committed working copy (updated in place).
        snapshot_id : str
            The id the real commit returned.
        message : str
            The commit message.
        """
        assert work.branch is not None
        parent = self.branches[work.branch]
        self.commits[snapshot_id] = CommitModel(snapshot_id, parent, message, dict(work.contents))
        self.branches[work.branch] = snapshot_id
        work.base = snapshot_id
        work.changed = False

    # -- branches -----------------------------------------------------------------

    def create_branch(self, name: str, snapshot_id: str) -> ExpectedError:
        """Create a branch; an existing (not deleted) name is refused.

        Parameters
        ----------
        name : str
            The branch.
        snapshot_id : str
            Where it starts.

        Returns
        -------
        type of IcechunkDaskError or None
            The error the real repository must raise (``InvalidInputError``;
            the model is then unchanged), or ``None`` after applying the
            operation.
        """
        if name in self.branches:
            return InvalidInputError
        self.branches[name] = snapshot_id
        return None

    def reset_branch(self, name: str, snapshot_id: str) -> ExpectedError:
        """Point an existing branch at any known snapshot.

        Parameters
        ----------
        name : str
            The branch.
        snapshot_id : str
            Where it should point.

        Returns
        -------
        type of IcechunkDaskError or None
            The error the real repository must raise (``NotFoundError`` for an
            unknown branch; the model is then unchanged), or ``None`` after
            applying the operation.
        """
        if name not in self.branches:
            return NotFoundError
        self.branches[name] = snapshot_id
        return None

    def delete_branch(self, name: str) -> ExpectedError:
        """Delete a branch; ``main`` cannot be deleted.

        Parameters
        ----------
        name : str
            The branch.

        Returns
        -------
        type of IcechunkDaskError or None
            The error the real repository must raise (``InvalidInputError`` for
            ``main``, ``NotFoundError`` for an unknown branch; the model is
            then unchanged), or ``None`` after applying the operation.
        """
        if name == "main":
            return InvalidInputError
        if name not in self.branches:
            return NotFoundError
        del self.branches[name]
        return None

    # -- tags ---------------------------------------------------------------------

    def create_tag(self, name: str, snapshot_id: str) -> ExpectedError:
        """Create a tag; names of existing and of deleted tags are refused.

        Parameters
        ----------
        name : str
            The tag.
        snapshot_id : str
            The commit it names.

        Returns
        -------
        type of IcechunkDaskError or None
            The error the real repository must raise (``InvalidInputError``;
            the model is then unchanged), or ``None`` after applying the
            operation.
        """
        if name in self.tags or name in self.deleted_tags:
            return InvalidInputError
        self.tags[name] = snapshot_id
        return None

    def delete_tag(self, name: str) -> ExpectedError:
        """Delete a tag for good.

        Parameters
        ----------
        name : str
            The tag.

        Returns
        -------
        type of IcechunkDaskError or None
            The error the real repository must raise (``NotFoundError`` for an
            unknown tag; the model is then unchanged), or ``None`` after
            applying the operation.
        """
        if name not in self.tags:
            return NotFoundError
        del self.tags[name]
        self.deleted_tags.add(name)
        return None
