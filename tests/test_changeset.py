"""ChangeSet (pure data): merges, fast-forwards through forks of forks, messages, wire form.

Added for the survivors of the mutation pilot on ``_changeset.py`` (docs/reliability.md,
"Mutation testing"): the session tests merge forks that write chunks, rarely metadata,
never three levels deep, and never send metadata through the wire form.
"""

from __future__ import annotations

import pickle

import pytest

from icechunk_dask import ConflictError, CorruptObjectError, InvalidInputError
from icechunk_dask._changeset import ChangeSet
from icechunk_dask.format import ChunkRef, ObjectKind, encode_object, encode_refs

REPO, BASE = "R" * 20, "B" * 20
DOC1, DOC2, DOC3 = b'{"v":1}', b'{"v":2}', b'{"v":3}'
REF1: ChunkRef = ("X1", 0, 100, 11)
REF2: ChunkRef = ("X2", 0, 100, 22)  # same length as REF1, other bytes
REF3: ChunkRef = ("X3", 40, 100, 33)


def _cs(**fields: object) -> ChangeSet:
    cs = ChangeSet(REPO, BASE)
    for name, value in fields.items():
        setattr(cs, name, value)
    return cs


def _state(cs: ChangeSet) -> tuple[object, ...]:
    return (
        cs.repo_id,
        cs.base,
        cs.meta,
        cs.chunks,
        cs.prev_meta,
        cs.prev_chunks,
        cs.writers,
    )


# -- merging ------------------------------------------------------------------------------


def test_merge_adds_keeps_and_fast_forwards_every_key() -> None:
    # several keys of each case, in an order where an early key must not stop the loop
    mine = _cs(
        meta={"same/zarr.json": DOC1, "ff/zarr.json": DOC1, "own/zarr.json": DOC3},
        chunks={"a/c/0": REF1, "a/c/1": REF1, "a/c/9": None},
        writers={"w1"},
    )
    theirs = _cs(
        meta={"same/zarr.json": DOC1, "ff/zarr.json": DOC2, "new/zarr.json": DOC2, "del": None},
        prev_meta={"ff/zarr.json": DOC1},
        chunks={"a/c/0": REF1, "a/c/1": REF2, "a/c/2": REF3, "a/c/3": None, "a/c/9": None},
        prev_chunks={"a/c/1": REF1},
        writers={"w2"},
    )
    mine.update(theirs)
    assert mine.meta == {
        "same/zarr.json": DOC1,
        "ff/zarr.json": DOC2,  # changed on top of this side's value: fast-forward
        "own/zarr.json": DOC3,
        "new/zarr.json": DOC2,
        "del": None,
    }
    assert mine.chunks == {
        "a/c/0": REF1,
        "a/c/1": REF2,
        "a/c/2": REF3,
        "a/c/3": None,
        "a/c/9": None,
    }
    assert mine.writers == {"w1", "w2"}
    assert mine.prev_meta == {} and mine.prev_chunks == {}  # the keys were this side's own
    assert len(mine) == 10 and mine.nchunks == 5 and bool(mine)
    assert len(ChangeSet(REPO, BASE)) == 0 and not ChangeSet(REPO, BASE)


def test_fork_of_a_fork_merges_back_as_a_fast_forward() -> None:
    # the parent wrote k (uncommitted); the fork inherited it; the fork's own fork changed
    # it on top of the parent's value. Merging the grandchild into the fork must carry that
    # previous value along, so that merging the fork into the parent is no conflict.
    parent = _cs(meta={"k/zarr.json": DOC1}, chunks={"a/c/0": REF1})
    fork = ChangeSet(REPO, BASE)
    grandchild = _cs(
        meta={"k/zarr.json": DOC2},
        prev_meta={"k/zarr.json": DOC1},
        chunks={"a/c/0": REF2},
        prev_chunks={"a/c/0": REF1},
    )
    fork.update(grandchild)
    assert fork.prev_meta == {"k/zarr.json": DOC1}
    assert fork.prev_chunks == {"a/c/0": REF1}
    parent.update(fork)
    assert parent.meta == {"k/zarr.json": DOC2}
    assert parent.chunks == {"a/c/0": REF2}


@pytest.mark.parametrize("side", ["meta", "chunks"])
def test_different_values_conflict_and_change_nothing(side: str) -> None:
    key, mine_value, their_value, why = (
        ("g/zarr.json", DOC1, DOC2, "metadata written differently by two sessions")
        if side == "meta"
        else ("a/c/0", REF1, REF2, "chunk written with different bytes by two sessions")
    )
    mine = _cs(**{side: {key: mine_value}}, writers={"w1"})
    theirs = _cs(**{side: {key: their_value, "x/c/1" if side == "chunks" else "x": None}})
    before = _state(mine.copy())
    with pytest.raises(ConflictError) as e:
        mine.update(theirs)
    assert e.value.kind == "merge-conflict"
    assert [(c.keys, c.description) for c in e.value.conflicts] == [((key,), why)]
    assert str(e.value) == (
        f"cannot merge: 1 key(s) were changed differently by the merged sessions: "
        f"{key!r} ({why}). Each chunk must be written by exactly one task; give every task "
        "a disjoint region aligned to whole chunks"
    )
    assert _state(mine) == before  # all or nothing


@pytest.mark.parametrize(("n", "more"), [(10, ""), (11, " and 1 more"), (13, " and 3 more")])
def test_a_long_list_of_conflicts_is_cut_at_ten(n: int, more: str) -> None:
    keys = [f"a/c/{i}" for i in range(n)]
    mine = _cs(chunks=dict.fromkeys(keys, REF1))
    with pytest.raises(ConflictError) as e:
        mine.update(_cs(chunks=dict.fromkeys(keys, REF2)))
    why = "chunk written with different bytes by two sessions"
    shown = ", ".join(f"{k!r} ({why})" for k in keys[:10])
    assert f"sessions: {shown}{more}. Each chunk" in str(e.value)
    assert len(e.value.conflicts) == n


def test_merge_all() -> None:
    a = _cs(chunks={"a/c/0": REF1}, writers={"w1"})
    b = _cs(chunks={"a/c/1": REF2}, meta={"g/zarr.json": DOC1})
    c = _cs(chunks={"a/c/2": None}, writers={"w3"})
    before = [_state(x.copy()) for x in (a, b, c)]
    out = ChangeSet.merge_all(iter([a, b, c]))
    assert out.chunks == {"a/c/0": REF1, "a/c/1": REF2, "a/c/2": None}
    assert out.meta == {"g/zarr.json": DOC1}
    assert out.writers == {"w1", "w3"}
    assert [_state(x) for x in (a, b, c)] == before  # inputs untouched
    with pytest.raises(InvalidInputError, match=r"^merge_all needs at least one change record$"):
        ChangeSet.merge_all([])


def test_records_of_another_repository_or_base_are_refused() -> None:
    mine = ChangeSet(REPO, BASE)
    with pytest.raises(InvalidInputError) as e:
        mine.update(ChangeSet("Q" * 20, BASE))
    assert e.value.kind == "foreign-session"
    assert str(e.value) == (
        f"cannot merge changes from another repository (repository {'Q' * 20}, this "
        f"session's is {REPO}); only sessions forked from (or pickled copies of) this session "
        "can be merged"
    )
    with pytest.raises(InvalidInputError) as e:
        mine.update(ChangeSet(REPO, "C" * 20))
    assert e.value.kind == "stale-session"
    assert str(e.value) == (
        f"cannot merge changes made on snapshot {'C' * 20} into a session based on snapshot "
        f"{BASE}: they were made on a different version of the data. Fork the session you "
        "want to merge into (session.fork()) and redo the writes from that fork"
    )


# -- the wire form ------------------------------------------------------------------------


def test_wire_form_round_trips_every_field() -> None:
    cs = _cs(
        meta={"": DOC1, "g/zarr.json": b"", "a/zarr.json": DOC2 * 300, "gone/zarr.json": None},
        prev_meta={"a/zarr.json": DOC1, "é/zarr.json": None},
        chunks={"a/c/0": REF1, "a/c/1": None, "a/c/2": (b"inline", 0, 6, 7), "b/c": REF3},
        prev_chunks={"a/c/0": REF2, "a/c/5": None},
        writers={"w2", "w1"},
    )
    for copy in (ChangeSet.from_bytes(cs.to_bytes()), pickle.loads(pickle.dumps(cs))):
        assert _state(copy) == _state(cs)
    empty = ChangeSet(REPO, BASE)
    assert _state(pickle.loads(pickle.dumps(empty))) == _state(empty)


def test_a_damaged_record_names_itself() -> None:
    data = bytearray(_cs(chunks={"a/c/0": REF1}).to_bytes())
    data[-1] ^= 1
    with pytest.raises(CorruptObjectError) as e:
        ChangeSet.from_bytes(bytes(data))
    assert e.value.key == "<change record>"


def test_a_well_formed_record_with_trailing_bytes_is_refused() -> None:
    # the checksum is right, the metadata section is not what to_bytes writes
    docs = (0).to_bytes(4, "little") + b"extra"
    empty_refs = encode_refs([], [])
    body = b"".join(
        (
            len(docs).to_bytes(8, "little") + docs,
            (4).to_bytes(8, "little") + (0).to_bytes(4, "little"),
            (0).to_bytes(8, "little"),
            len(empty_refs).to_bytes(8, "little") + empty_refs,
            empty_refs,
        )
    )
    header = {"changes": {"repo": REPO, "base": BASE, "writers": []}}
    data = encode_object(ObjectKind.SCRATCH, header, body)
    with pytest.raises(InvalidInputError) as e:
        ChangeSet.from_bytes(data)
    assert str(e.value) == "malformed change record: trailing bytes after the metadata documents"
