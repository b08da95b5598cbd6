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
    """One commit: its parent, message and the full contents of the store."""

    id: str
    parent_id: str | None
    message: str
    contents: Mapping[str, bytes]


@dataclass(slots=True)
class WorkingCopy:
    """What a session should show: its base commit plus uncommitted changes.

    Attributes
    ----------
    branch
        The branch a writable session commits to (``None`` for snapshot views).
    base
        The commit the session started from.
    contents
        Every key the session's store should list, with its bytes.
    changed
        Whether the session recorded any write or deletion.
    read_only
        Whether writes must be refused.
    """

    branch: str | None
    base: str
    contents: dict[str, bytes]
    changed: bool = False
    read_only: bool = False

    def set(self, key: str, value: bytes) -> None:
        """Record a write (refused by the real session when read-only)."""
        self.contents[key] = bytes(value)
        self.changed = True

    def delete(self, key: str) -> None:
        """Record a deletion; deleting a missing key changes nothing."""
        if key in self.contents:
            del self.contents[key]
            self.changed = True


@dataclass(slots=True)
class RepositoryModel:
    """Branches, tags and commits of a repository, as plain dictionaries.

    Parameters
    ----------
    root_id
        Id of the repository's first snapshot (what ``main`` points at).
    root_message
        Its commit message.
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
        """Snapshot ids from ``snapshot_id`` back to the root, newest first."""
        out: list[str] = []
        current: str | None = snapshot_id
        while current is not None:
            out.append(current)
            current = self.commits[current].parent_id
        return out

    def is_ancestor(self, ancestor: str, snapshot_id: str) -> bool:
        """Whether ``ancestor`` is ``snapshot_id`` or one of its ancestors."""
        return ancestor in self.ancestry(snapshot_id)

    # -- sessions -----------------------------------------------------------------

    def checkout(self, *, branch: str | None = None, snapshot_id: str | None = None) -> WorkingCopy:
        """The working copy of a new session on a branch tip (writable) or a snapshot.

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
        """Drop a working copy's changes (``Session.discard_changes``)."""
        work.contents = dict(self.commits[work.base].contents)
        work.changed = False

    def commit_error(self, work: WorkingCopy) -> ExpectedError:
        """The error ``Session.commit`` must raise for ``work``, or ``None``.

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
        """Apply a successful commit of ``work``; it then starts from the new commit."""
        assert work.branch is not None
        parent = self.branches[work.branch]
        self.commits[snapshot_id] = CommitModel(snapshot_id, parent, message, dict(work.contents))
        self.branches[work.branch] = snapshot_id
        work.base = snapshot_id
        work.changed = False

    # -- branches -----------------------------------------------------------------

    def create_branch(self, name: str, snapshot_id: str) -> ExpectedError:
        """Create a branch; an existing (not deleted) name is refused."""
        if name in self.branches:
            return InvalidInputError
        self.branches[name] = snapshot_id
        return None

    def reset_branch(self, name: str, snapshot_id: str) -> ExpectedError:
        """Point an existing branch at any known snapshot."""
        if name not in self.branches:
            return NotFoundError
        self.branches[name] = snapshot_id
        return None

    def delete_branch(self, name: str) -> ExpectedError:
        """Delete a branch; ``main`` cannot be deleted."""
        if name == "main":
            return InvalidInputError
        if name not in self.branches:
            return NotFoundError
        del self.branches[name]
        return None

    # -- tags ---------------------------------------------------------------------

    def create_tag(self, name: str, snapshot_id: str) -> ExpectedError:
        """Create a tag; names of existing and of deleted tags are refused."""
        if name in self.tags or name in self.deleted_tags:
            return InvalidInputError
        self.tags[name] = snapshot_id
        return None

    def delete_tag(self, name: str) -> ExpectedError:
        """Delete a tag for good."""
        if name not in self.tags:
            return NotFoundError
        del self.tags[name]
        self.deleted_tags.add(name)
        return None
