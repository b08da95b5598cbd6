"""Conflict solvers for rebasing a commit onto commits that landed first (Icechunk's names).

When a commit finds its branch moved, the commits in between are compared
with the session's changes (:func:`~icechunk_dask._commit.find_conflicts`);
the solver given as ``commit(rebase_with=...)`` then decides:

* :class:`ConflictDetector` (the default) rebases only when nothing
  collides, and otherwise raises :class:`RebaseFailedError` listing every
  :class:`Conflict`.
* :class:`BasicConflictSolver` also settles chunk collisions by
  ``on_chunk_conflict``: keep this session's chunks (``USE_OURS``), keep the
  other commits' chunks (``USE_THEIRS``, dropping ours), or fail; and lets
  this session's deletions win over changes to what it deleted unless told
  to fail. Metadata collisions always fail.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol, runtime_checkable

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._exceptions import Conflict, ConflictType, InvalidInputError, RebaseFailedError

__all__ = ["BasicConflictSolver", "ConflictDetector", "ConflictSolver", "VersionSelection"]


class VersionSelection(Enum):
    """Which side wins a chunk collision in :class:`BasicConflictSolver`."""

    FAIL = "fail"
    USE_OURS = "use_ours"
    USE_THEIRS = "use_theirs"


@runtime_checkable
class ConflictSolver(Protocol):
    """Decides what a rebase does with collisions.

    ``solve`` returns the change set to commit on top of the new tip (possibly
    with some changes dropped), or raises :class:`RebaseFailedError`.
    """

    def solve(self, conflicts: list[Conflict], changes: ChangeSet, branch: str) -> ChangeSet:
        """Settle ``conflicts`` for ``changes``, or raise.

        Parameters
        ----------
        conflicts : list of Conflict
            What collided (empty when the changes are disjoint).
        changes : ChangeSet
            This session's changes (not to be modified in place).
        branch : str
            The branch being committed to (for messages).

        Returns
        -------
        ChangeSet
            The changes to commit.

        Raises
        ------
        RebaseFailedError
            If the conflicts cannot be settled.
        """
        ...


def _fail(branch: str, conflicts: list[Conflict]) -> RebaseFailedError:
    shown = "; ".join(str(c) for c in conflicts[:10])
    more = f" (and {len(conflicts) - 10} more)" if len(conflicts) > 10 else ""
    if any(c.conflict_type is ConflictType.BRANCH_RESET for c in conflicts):
        return RebaseFailedError(
            f"branch {branch!r} was reset to a history that does not contain this session's "
            "base snapshot; nothing was committed. Start a new session and redo the writes",
            conflicts=conflicts,
        )
    return RebaseFailedError(
        f"cannot commit to {branch!r}: commits that landed since this session started changed "
        f"the same data: {shown}{more}. Nothing was committed; start a new session on the "
        "branch tip and redo the conflicting writes (or commit with "
        "rebase_with=BasicConflictSolver(...) to settle chunk collisions)",
        conflicts=conflicts,
    )


class ConflictDetector:
    """Rebase only disjoint changes; any collision is a :class:`RebaseFailedError`."""

    def solve(self, conflicts: list[Conflict], changes: ChangeSet, branch: str) -> ChangeSet:
        """See :class:`ConflictSolver`."""
        if conflicts:
            raise _fail(branch, conflicts)
        return changes


class BasicConflictSolver:
    """Settle chunk collisions by a fixed choice; fail on metadata collisions.

    Parameters
    ----------
    on_chunk_conflict : VersionSelection
        ``USE_OURS`` (default): this session's chunks win; ``USE_THEIRS``: the
        other commits' chunks win (this session's writes to them are dropped);
        ``FAIL``: a collision fails the rebase.
    fail_on_delete_of_updated_array : bool
        Fail when this session deleted (``delete_dir``) an array the other
        commits changed; by default the deletion wins.
    fail_on_delete_of_updated_group : bool
        The same for groups.
    """

    def __init__(
        self,
        *,
        on_chunk_conflict: VersionSelection = VersionSelection.USE_OURS,
        fail_on_delete_of_updated_array: bool = False,
        fail_on_delete_of_updated_group: bool = False,
    ) -> None:
        if not isinstance(on_chunk_conflict, VersionSelection):
            raise InvalidInputError(
                f"on_chunk_conflict must be a VersionSelection, got {on_chunk_conflict!r}"
            )
        self.on_chunk_conflict = on_chunk_conflict
        self.fail_on_delete = fail_on_delete_of_updated_array or fail_on_delete_of_updated_group

    def solve(self, conflicts: list[Conflict], changes: ChangeSet, branch: str) -> ChangeSet:
        """See :class:`ConflictSolver`."""
        unsolved: list[Conflict] = []
        theirs: list[str] = []
        for c in conflicts:
            if c.conflict_type is ConflictType.CHUNK_DOUBLE_UPDATE:
                if self.on_chunk_conflict is VersionSelection.FAIL:
                    unsolved.append(c)
                elif self.on_chunk_conflict is VersionSelection.USE_THEIRS:
                    theirs.extend(c.keys)
            elif c.conflict_type is ConflictType.DELETE_OF_UPDATED_ARRAY:
                if self.fail_on_delete:
                    unsolved.append(c)
            else:
                unsolved.append(c)
        if unsolved:
            raise _fail(branch, unsolved)
        if not theirs:
            return changes
        patched = changes.copy()
        for key in theirs:
            patched.chunks.pop(key, None)
            patched.prev_chunks.pop(key, None)
        return patched
