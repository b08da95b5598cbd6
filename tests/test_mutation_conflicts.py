"""The conflict solvers (``_conflicts``) on hand-made conflicts, exactly.

The rebase tests go through commits; these pin each decision of
``ConflictDetector`` and ``BasicConflictSolver`` per conflict type and
option, what a ``USE_THEIRS`` rebase drops, and the failure messages (found
missing by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask import (
    BasicConflictSolver,
    Conflict,
    ConflictDetector,
    ConflictType,
    InvalidInputError,
    RebaseFailedError,
    VersionSelection,
)
from icechunk_dask._changeset import ChangeSet
from icechunk_dask.format import ChunkRef, new_id

_OID = new_id()


def _ref(i: int) -> ChunkRef:
    return (_OID, i, 1, i)


def _changes() -> ChangeSet:
    cs = ChangeSet("repo", "base")
    cs.chunks.update({"a/c/0": _ref(1), "a/c/1": _ref(2), "b/c/0": _ref(3)})
    cs.prev_chunks.update({"a/c/0": _ref(0), "b/c/0": _ref(0)})
    return cs


def _chunk(*keys: str) -> Conflict:
    return Conflict(ConflictType.CHUNK_DOUBLE_UPDATE, "/a", keys=keys)


def _of(t: ConflictType, path: str = "/a") -> Conflict:
    return Conflict(t, path, description=f"{t} at {path}")


def test_the_detector_passes_disjoint_changes_and_fails_on_any_conflict() -> None:
    cs = _changes()
    assert ConflictDetector().solve([], cs, "main") is cs
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve([_chunk("a/c/0")], cs, "main")
    assert info.value.conflicts == [_chunk("a/c/0")]
    message = str(info.value)
    assert "cannot commit to 'main'" in message
    assert "'/a': ChunkDoubleUpdate ('a/c/0')" in message
    assert "rebase_with=BasicConflictSolver" in message


def test_a_failure_lists_ten_conflicts_and_counts_the_rest() -> None:
    many = [_of(ConflictType.ZARR_METADATA_DOUBLE_UPDATE, f"/k{i}") for i in range(12)]
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve(many, _changes(), "dev")
    message = str(info.value)
    assert "'/k9'" in message and "'/k10'" not in message
    assert "(and 2 more)" in message
    assert len(info.value.conflicts) == 12
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve(many[:10], _changes(), "dev")
    assert "more)" not in str(info.value) and "'/k9'" in str(info.value)


def test_a_reset_branch_says_so() -> None:
    reset = Conflict(ConflictType.BRANCH_RESET, "/")
    with pytest.raises(RebaseFailedError) as info:
        BasicConflictSolver().solve([_chunk("a/c/0"), reset], _changes(), "main")
    assert "branch 'main' was reset" in str(info.value)
    assert info.value.conflicts == [reset]


def test_ours_keeps_this_sessions_chunks() -> None:
    cs = _changes()
    solver = BasicConflictSolver()
    assert solver.on_chunk_conflict is VersionSelection.USE_OURS
    assert solver.solve([_chunk("a/c/0", "a/c/1")], cs, "main") is cs
    assert (
        BasicConflictSolver(on_chunk_conflict=VersionSelection.UseOurs).solve(
            [_chunk("a/c/0")], cs, "main"
        )
        is cs
    )


def test_theirs_drops_this_sessions_writes_to_the_collided_chunks_only() -> None:
    cs = _changes()
    solver = BasicConflictSolver(on_chunk_conflict=VersionSelection.USE_THEIRS)
    out = solver.solve([_chunk("a/c/0"), _chunk("a/c/1", "x/c/9")], cs, "main")
    assert out is not cs
    assert out.chunks == {"b/c/0": _ref(3)}
    assert out.prev_chunks == {"b/c/0": _ref(0)}
    assert cs.chunks == _changes().chunks and cs.prev_chunks == _changes().prev_chunks
    assert solver.solve([], cs, "main") is cs


def test_fail_fails_on_chunk_collisions() -> None:
    solver = BasicConflictSolver(on_chunk_conflict=VersionSelection.FAIL)
    with pytest.raises(RebaseFailedError) as info:
        solver.solve([_chunk("a/c/0")], _changes(), "main")
    assert info.value.conflicts == [_chunk("a/c/0")]


@pytest.mark.parametrize(
    "kind",
    [
        ConflictType.ZARR_METADATA_DOUBLE_UPDATE,
        ConflictType.CHUNKS_UPDATED_IN_UPDATED_ARRAY,
        ConflictType.CHUNKS_UPDATED_IN_DELETED_ARRAY,
    ],
)
def test_other_conflicts_always_fail(kind: ConflictType) -> None:
    for choice in (VersionSelection.USE_OURS, VersionSelection.USE_THEIRS):
        with pytest.raises(RebaseFailedError) as info:
            BasicConflictSolver(on_chunk_conflict=choice).solve(
                [_chunk("a/c/0"), _of(kind)], _changes(), "main"
            )
        assert info.value.conflicts == [_of(kind)]


@pytest.mark.parametrize(
    ("kind", "option"),
    [
        (ConflictType.DELETE_OF_UPDATED_ARRAY, "fail_on_delete_of_updated_array"),
        (ConflictType.DELETE_OF_UPDATED_GROUP, "fail_on_delete_of_updated_group"),
    ],
)
def test_deletions_win_unless_told_to_fail(kind: ConflictType, option: str) -> None:
    cs = _changes()
    assert BasicConflictSolver().solve([_of(kind)], cs, "main") is cs
    other = (
        "fail_on_delete_of_updated_group"
        if option == "fail_on_delete_of_updated_array"
        else "fail_on_delete_of_updated_array"
    )
    assert BasicConflictSolver(**{other: True}).solve([_of(kind)], cs, "main") is cs
    with pytest.raises(RebaseFailedError) as info:
        BasicConflictSolver(**{option: True}).solve([_of(kind)], cs, "main")
    assert info.value.conflicts == [_of(kind)]


def test_the_choice_must_be_a_version_selection() -> None:
    with pytest.raises(InvalidInputError, match="must be a VersionSelection, got 'use_ours'"):
        BasicConflictSolver(on_chunk_conflict="use_ours")  # type: ignore[arg-type]


def test_the_failure_messages_in_full() -> None:
    eleven = [_of(ConflictType.ZARR_METADATA_DOUBLE_UPDATE, f"/k{i}") for i in range(11)]
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve(eleven, _changes(), "dev")
    shown = "; ".join(f"'/k{i}': ZarrMetadataDoubleUpdate at /k{i}" for i in range(10))
    assert str(info.value) == (
        f"cannot commit to 'dev': commits that landed since this session started changed "
        f"the same data: {shown} (and 1 more). Nothing was committed; start a new session on "
        "the branch tip and redo the conflicting writes (or commit with "
        "rebase_with=BasicConflictSolver(...) to settle chunk collisions)"
    )
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve(eleven[:2], _changes(), "dev")
    assert "'/k1': ZarrMetadataDoubleUpdate at /k1. Nothing was committed" in str(info.value)
    with pytest.raises(RebaseFailedError) as info:
        ConflictDetector().solve([Conflict(ConflictType.BRANCH_RESET, "/")], _changes(), "dev")
    assert str(info.value) == (
        "branch 'dev' was reset to a history that does not contain this session's base "
        "snapshot; nothing was committed. Start a new session and redo the writes"
    )
