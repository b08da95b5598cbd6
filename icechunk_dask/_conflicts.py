"""Conflict solvers for rebasing a commit onto commits that landed first (Icechunk's names).

When a commit finds its branch moved, the commits in between are compared
with the session's changes (``icechunk_dask._rebase.find_conflicts``);
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
    """A chunk collision fails the rebase (:class:`RebaseFailedError`)."""
    USE_OURS = "use_ours"
    """This session's chunk wins."""
    USE_THEIRS = "use_theirs"
    """The chunk of the commits that landed first wins; this session's write is dropped."""
    # Icechunk's spellings (aliases of the members above)
    Fail = "fail"  # noqa: PIE796
    UseOurs = "use_ours"  # noqa: PIE796
    UseTheirs = "use_theirs"  # noqa: PIE796


@runtime_checkable
class ConflictSolver(Protocol):
    """Decides what a rebase does with collisions.

    ``solve`` returns the change set to commit on top of the new tip (possibly
    with some changes dropped), or raises :class:`RebaseFailedError`. Any
    object with such a method is a solver (``isinstance(obj, ConflictSolver)``
    checks that the method exists); pass it as ``commit(rebase_with=...)``.
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
    """Rebase only disjoint changes; any collision is a :class:`RebaseFailedError`.

    The default solver of :meth:`~icechunk_dask.Session.commit`.
    """

    def solve(self, conflicts: list[Conflict], changes: ChangeSet, branch: str) -> ChangeSet:
        """Accept ``changes`` if nothing collides, else fail.

        Parameters
        ----------
        conflicts : list of Conflict
            What collided (empty when the changes are disjoint).
        changes : ChangeSet
            This session's changes.
        branch : str
            The branch being committed to (for the message).

        Returns
        -------
        ChangeSet
            ``changes`` itself.

        Raises
        ------
        RebaseFailedError
            If ``conflicts`` is not empty; it lists them all.
        """
        if conflicts:
            raise _fail(branch, conflicts)
        return changes


class BasicConflictSolver:
    """Settle chunk collisions by a fixed choice; fail on metadata collisions.

    Only chunk collisions (``ChunkDoubleUpdate``) and this session's deletions
    of what the other commits changed (``DeleteOfUpdatedArray``) can be
    settled; every other conflict (metadata changed on both sides, chunks
    written into an array whose metadata or existence changed) fails the
    rebase.

    Parameters
    ----------
    on_chunk_conflict : VersionSelection, optional
        ``USE_OURS`` (default): this session's chunks win; ``USE_THEIRS``: the
        other commits' chunks win (this session's writes to them are dropped);
        ``FAIL``: a collision fails the rebase.
    fail_on_delete_of_updated_array : bool, optional
        Fail when this session deleted (``delete_dir``) an array the other
        commits changed; by default the deletion wins.
    fail_on_delete_of_updated_group : bool, optional
        The same for a deleted group in which the other commits changed something.

    Raises
    ------
    InvalidInputError
        If ``on_chunk_conflict`` is not a :class:`VersionSelection`.
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
        self.fail_on_delete = {
            ConflictType.DELETE_OF_UPDATED_ARRAY: fail_on_delete_of_updated_array,
            ConflictType.DELETE_OF_UPDATED_GROUP: fail_on_delete_of_updated_group,
        }

    def solve(self, conflicts: list[Conflict], changes: ChangeSet, branch: str) -> ChangeSet:
        """Settle what this solver can settle, or fail.

        Parameters
        ----------
        conflicts : list of Conflict
            What collided.
        changes : ChangeSet
            This session's changes (not modified).
        branch : str
            The branch being committed to (for the message).

        Returns
        -------
        ChangeSet
            ``changes``, or with ``USE_THEIRS`` a copy without this session's
            writes to the collided chunks.

        Raises
        ------
        RebaseFailedError
            Listing the conflicts this solver does not settle, if any.
        """
        unsolved: list[Conflict] = []
        theirs: list[str] = []
        for c in conflicts:
            if c.conflict_type is ConflictType.CHUNK_DOUBLE_UPDATE:
                if self.on_chunk_conflict is VersionSelection.FAIL:
                    unsolved.append(c)
                elif self.on_chunk_conflict is VersionSelection.USE_THEIRS:
                    theirs.extend(c.keys)
            elif c.conflict_type in self.fail_on_delete:
                if self.fail_on_delete[c.conflict_type]:
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
