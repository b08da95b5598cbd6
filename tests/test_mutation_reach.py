"""Mutation-campaign tests for icechunk_dask/_reach.py (issue 13, part 4b).

Fixed inputs: the pure helpers of garbage collection's reachability (kinds, hashes, the
layers a newer layer hides), and hand-made repositories for the walks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    CorruptObjectError,
    InvalidInputError,
    Repository,
    local_filesystem_storage,
)
from icechunk_dask._reach import (
    _CONCURRENCY,
    KINDS,
    KindCount,
    Reachable,
    _gather_bounded,
    _hash,
    _visible_objects,
    as_utc,
    chunk_hashes,
    history_snapshots,
    kind_of,
    live_refs,
    lower_layers,
    manifest_chunks,
    needed_layers,
    reachable,
    visible_keys,
)
from icechunk_dask._sync import run
from icechunk_dask.format import NodeManifests
from icechunk_dask.format._manifest import decode_manifest, encode_manifest
from icechunk_dask.storage import FaultyStorage, Storage
from tests.lifecycle_helpers import age, files

# -- as_utc, kind_of, KindCount --------------------------------------------------------


def test_as_utc_takes_a_naive_datetime_as_utc_and_converts_an_aware_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a local time zone other than UTC: a naive datetime is still taken as UTC
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        _check_as_utc()
    finally:
        monkeypatch.undo()
        time.tzset()


def _check_as_utc() -> None:
    naive = datetime(2026, 12, 1, 10, 30)
    assert as_utc(naive) == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert as_utc(naive).tzinfo is UTC
    plus2 = datetime(2026, 12, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    converted = as_utc(plus2)
    assert converted.tzinfo is UTC
    assert (converted.hour, converted.minute) == (10, 30)


def test_as_utc_refuses_what_is_no_datetime_with_the_parameters_name() -> None:
    with pytest.raises(InvalidInputError) as e:
        as_utc("yesterday")
    assert str(e.value) == (
        "older_than must be a datetime, e.g. datetime.now(UTC) - timedelta(days=7), got 'yesterday'"
    )
    with pytest.raises(InvalidInputError) as e:
        as_utc(7, "delete_object_older_than")
    assert str(e.value).startswith("delete_object_older_than must be a datetime, e.g. ")
    assert str(e.value).endswith("got 7")


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("snapshots/AB12", "snapshots"),
        ("transactions/AB12", "transaction_logs"),
        ("manifests/AB12", "manifests"),
        ("jobs/AB12", "jobs"),
        ("scratch/AB12", "scratch"),
        ("sessions/AB12/x", "markers"),
        ("chunks/AB12", "chunks"),
        ("refs/branch.main/00000001.json", "refs"),
        ("expired/AB12", "expiry_markers"),
        ("config.json", "config"),
        ("config.json/x", "other"),
        ("chunks", "other"),
        ("c/hunks/x", "other"),
        ("xchunks/AB12", "other"),
        ("", "other"),
    ],
)
def test_kind_of(key: str, kind: str) -> None:
    assert kind_of(key) == kind
    assert kind in KINDS


def test_kind_count_adds_objects_and_bytes() -> None:
    count = KindCount()
    assert count.to_dict() == {"objects": 0, "bytes": 0}
    count.add(10)
    count.add(0)
    count.add(5)
    assert (count.objects, count.bytes) == (3, 15)
    assert count.to_dict() == {"objects": 3, "bytes": 15}


# -- hashes and the Reachable table ----------------------------------------------------


def test_chunk_hashes_are_distinct_sorted_64_bit_hashes() -> None:
    ids = ["b", "a", "c", "a", "b"]
    hashes = chunk_hashes(ids)
    assert hashes.dtype == np.uint64
    assert len(hashes) == 3
    assert list(hashes) == sorted(hashes)
    assert set(hashes.tolist()) == set(_hash(["a", "b", "c"], 3).tolist())
    assert len(chunk_hashes([])) == 0


def test_reachable_counts_and_finds_chunks_added_in_parts() -> None:
    ids = [f"chunk{i:03d}" for i in range(40)]
    reach = Reachable()
    assert reach.chunk_objects == 0
    assert reach.has_chunks(ids[:3]).tolist() == [False, False, False]
    assert reach.has_chunks(ids[:3]).dtype == bool  # a mask, also with an empty table
    assert reach.has_chunks([]).tolist() == []
    reach.add_chunks(ids[:10])
    reach.add_chunks(ids[5:20])
    assert reach.chunk_objects == 20
    reach.add_chunks(ids[15:25])  # merged with the table made by the count above
    reach.add_chunks(ids[0:1])
    assert reach.chunk_objects == 25
    found = reach.has_chunks(ids)
    assert found.dtype == bool
    assert found.tolist() == [True] * 25 + [False] * 15
    assert reach.has_chunks([]).tolist() == []
    # every single id, in particular those hashing below the smallest and above the largest
    # hash of the table
    table = np.sort(_hash(ids[:25], 25))
    assert all(reach.has_chunks([i]).tolist() == [i in ids[:25]] for i in ids)
    above = [i for i in ids[25:] if _hash([i], 1)[0] > table[-1]]
    below = [i for i in ids[25:] if _hash([i], 1)[0] < table[0]]
    assert reach.has_chunks(above + below).tolist() == [False] * len(above + below)


def test_reachable_with_one_chunk_finds_only_it() -> None:
    reach = Reachable()
    reach.add_chunks(["only"])
    assert reach.has_chunks(["only", "other", "only"]).tolist() == [True, False, True]
    assert reach.chunk_objects == 1


def test_reachable_keeps_snapshots_logs_and_manifests_by_id() -> None:
    reach = Reachable(snapshots={"S1"}, manifests={"M1"})
    assert reach.keeps("snapshots", "snapshots/S1")
    assert reach.keeps("transaction_logs", "transactions/S1")
    assert not reach.keeps("snapshots", "snapshots/S2")
    assert not reach.keeps("transaction_logs", "transactions/S2")
    assert reach.keeps("manifests", "manifests/M1")
    assert not reach.keeps("manifests", "manifests/S1")
    assert not reach.keeps("snapshots", "snapshots/M1")
    for kind in ("jobs", "scratch", "markers", "refs", "other", "chunks"):
        assert not reach.keeps(kind, f"{kind}/S1")
        assert not reach.keeps(kind, f"{kind}/M1")


# -- layers a newer layer hides --------------------------------------------------------


def test_lower_layers_are_those_below_a_top_that_no_stack_shows_whole() -> None:
    stacks = [("A", "B", "C"), ("D", "B"), ("E",)]
    assert lower_layers(stacks, set()) == {"B", "C"}
    assert lower_layers(stacks, {"B"}) == {"C"}
    assert lower_layers(stacks, {"A", "D", "E"}) == {"B", "C"}
    assert lower_layers([("A",)], set()) == set()
    assert lower_layers([], set()) == set()


def test_needed_layers_cut_each_stack_below_its_deepest_lower_layer() -> None:
    stacks = [("A", "B", "C", "D"), ("E", "F"), ("G", "C", "H"), ("C",)]
    assert needed_layers(stacks, {"B"}) == [("A", "B")]
    assert needed_layers(stacks, {"B", "C"}) == [("A", "B", "C"), ("G", "C"), ("C",)]
    assert needed_layers(stacks, {"D", "B"}) == [("A", "B", "C", "D")]
    assert needed_layers(stacks, {"A"}) == [("A",)]
    assert needed_layers(stacks, set()) == []
    assert needed_layers(stacks, {"X"}) == []


def _ref(obj: str | bytes) -> tuple[str | bytes, int, int, int]:
    return (obj, 0, 4, 0)


def test_visible_keys_are_those_no_newer_layer_of_the_stack_has() -> None:
    entries: dict[str, dict[str, Any]] = {
        "top": {"c/0": _ref("o5"), "c/1": None},  # overwrites c/0, deletes c/1
        "mid": {"c/1": _ref("o4"), "c/2": _ref("o3")},
        "low": {"c/0": _ref("o1"), "c/1": _ref("o2"), "c/2": _ref("o6"), "c/3": _ref("o7")},
    }
    stack = ("top", "mid", "low")
    assert visible_keys([stack], entries, {"mid", "low"}) == {
        "mid": {"c/2"},
        "low": {"c/3"},
    }
    assert visible_keys([stack], entries, {"low"}) == {"low": {"c/3"}}
    # another stack (another snapshot) where "low" is right below "mid" only
    other = ("mid", "low")
    assert visible_keys([stack, other], entries, {"mid", "low"}) == {
        "mid": {"c/1", "c/2"},
        "low": {"c/0", "c/3"},
    }
    # a layer of ``lower`` that no stack names: present, with no key
    assert visible_keys([], entries, {"low"}) == {"low": set()}
    # a layer on top of the stack hides what it has from every layer below
    assert visible_keys([("low", "mid")], entries, {"mid"}) == {"mid": set()}
    assert visible_keys([("mid",)], entries, {"mid"}) == {"mid": {"c/1", "c/2"}}


def test_visible_objects_skip_tombstones_and_inline_chunks() -> None:
    entries: dict[str, dict[str, Any]] = {
        "top": {"c/0": _ref("o5")},
        "low": {
            "c/0": _ref("o1"),
            "c/1": None,
            "c/2": _ref(b"inline bytes"),
            "c/3": _ref("o7"),
            "c/4": _ref("o7"),
        },
    }
    got = _visible_objects([("top", "low")], entries, {"low"})
    assert sorted(got) == ["o7", "o7"]


# -- bounded gathering -----------------------------------------------------------------


def test_gather_bounded_keeps_at_most_at_once_pending_and_awaits_them_all() -> None:
    running = 0
    most = 0
    done: list[int] = []

    async def job(i: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        for _ in range(3 + i % 3):
            await asyncio.sleep(0)
        running -= 1
        done.append(i)

    asyncio.run(_gather_bounded((job(i) for i in range(10)), 3))
    assert most == 3
    assert sorted(done) == list(range(10))
    most = 0
    asyncio.run(_gather_bounded((job(i) for i in range(2)), 3))
    assert most == 2 and running == 0
    most = 0
    asyncio.run(_gather_bounded((job(i) for i in range(5)), 1))
    assert most == 1


def test_gather_bounded_raises_the_first_error_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def slow(i: int) -> None:
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    async def main(jobs: list[Any], at_once: int) -> None:
        await _gather_bounded((make() for make in jobs), at_once)

    # the failure while the limit is reached
    with pytest.raises(KeyError, match="boom"):
        asyncio.run(main([lambda: slow(0), lambda: slow(1), fail, lambda: slow(3)], 3))
    assert sorted(cancelled) == [0, 1]
    cancelled.clear()

    # the failure among the last pending jobs (below the limit)
    async def quick() -> None:
        await asyncio.sleep(0)

    async def fail_late() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        raise ValueError("late")

    with pytest.raises(ValueError, match=r"^late$"):
        asyncio.run(main([quick, fail_late], 5))

    # ... raised as soon as it happens: a slower last job is cancelled, not awaited
    async def slower() -> None:
        try:
            for _ in range(50):
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled.append(7)
            raise

    with pytest.raises(ValueError, match=r"^late$"):
        asyncio.run(main([slower, fail_late], 5))
    assert cancelled == [7]


# -- history walks -----------------------------------------------------------------------


def _chain(tmp_path: Path, n: int = 4) -> tuple[Repository, list[str]]:
    """``n`` commits on main after the initial snapshot; their ids, oldest first."""
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    ids = [repo.lookup_branch("main")]
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    ids.append(s.commit("create"))
    for i in range(2, n + 1):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[:] = i
        ids.append(s.commit(f"{i}"))
    return repo, ids


def _walk(repo: Repository, starts: list[str], visited: set[str]) -> list[str]:
    fresh = Repository.open(repo.storage)._assets  # no cached snapshot

    async def walk() -> list[str]:
        return [snap.id async for snap in history_snapshots(fresh, starts, visited)]

    return run(walk())


def test_history_walks_yield_each_snapshot_once_and_stop_at_visited_ones(
    tmp_path: Path,
) -> None:
    repo, ids = _chain(tmp_path)
    visited: set[str] = set()
    assert _walk(repo, [ids[-1]], visited) == ids[::-1]
    assert visited == set(ids)
    assert _walk(repo, [ids[-1], ids[2]], visited) == []  # all seen
    visited = {ids[2]}
    assert _walk(repo, [ids[-1]], visited) == [ids[4], ids[3]]
    visited = set()
    assert _walk(repo, [ids[3], ids[-1], ids[3]], visited) == [
        ids[3],
        ids[2],
        ids[1],
        ids[0],
        ids[4],
    ]
    # a start an earlier walk saw is skipped, and the starts after it are walked
    repo.create_branch("dev", ids[1])
    s = repo.writable_session("dev")
    zarr.open_array(s.store, path="a")[:] = 9
    dev = s.commit("on dev")
    assert _walk(repo, [ids[-1], ids[2], dev], set()) == [*ids[::-1], dev]


def test_history_walks_skip_expired_snapshots_but_not_a_start(tmp_path: Path) -> None:
    repo, ids = _chain(tmp_path, 5)
    repo.create_tag("keep", ids[2])
    expired = repo.expire_snapshots(datetime.now(UTC))
    assert expired == {ids[1], ids[3], ids[4]}  # the tag's snapshot and the root stay
    visited: set[str] = set()
    assert _walk(repo, [ids[-1]], visited) == [ids[5], ids[2], ids[0]]
    assert visited == set(ids) - {ids[3]}  # 4 and 1 seen on the way; 4's marker leads to 2
    # an expired start is read anyway; its history continues below it
    assert _walk(repo, [ids[4]], set()) == [ids[4], ids[2], ids[0]]
    assert _walk(repo, [ids[3], ids[1]], set()) == [ids[3], ids[2], ids[0], ids[1]]
    # an expired start an earlier walk passed is read once, however often it is named
    assert _walk(repo, [ids[5], ids[4], ids[4]], set()) == [ids[5], ids[2], ids[0], ids[4]]
    reach = run(reachable(Repository.open(repo.storage)._assets))
    assert reach.snapshots == {ids[5], ids[2], ids[0]}
    assert reach.refs == {"branch main": ids[5], "tag keep": ids[2]}


def test_a_history_through_a_missing_snapshot_is_damage(tmp_path: Path) -> None:
    repo, ids = _chain(tmp_path)
    (tmp_path / "snapshots" / ids[2]).unlink()
    with pytest.raises(CorruptObjectError) as e:
        _walk(repo, [ids[-1]], set())
    assert str(e.value) == (
        f"snapshot {ids[2]} is in the history of {ids[-1]} but does not exist: the "
        "repository is damaged (run icechunk-dask verify)"
    )
    assert e.value.key == f"snapshots/{ids[2]}"


def test_a_history_with_a_cycle_is_damage(tmp_path: Path) -> None:
    repo, ids = _chain(tmp_path)
    assets = repo._assets
    snap = run(assets.get_snapshot(ids[2]))
    looped = dataclasses.replace(snap, parent_id=ids[3])  # 3 -> 2 -> 3
    (tmp_path / "snapshots" / ids[2]).write_bytes(looped.encode())
    with pytest.raises(CorruptObjectError) as e:
        _walk(repo, [ids[-1]], set())
    assert str(e.value) == (
        f"the history of snapshot {ids[-1]} has a cycle at {ids[3]}: the repository is "
        "damaged (run icechunk-dask verify)"
    )
    assert e.value.key == f"snapshots/{ids[3]}"
    # a walk that meets an earlier walk's history is no cycle
    assert _walk(repo, [ids[1]], set()) == [ids[1], ids[0]]


def test_live_refs_name_every_branch_and_tag(tmp_path: Path) -> None:
    repo, ids = _chain(tmp_path)
    repo.create_branch("dev", ids[2])
    repo.create_branch("zzz", ids[1])
    repo.create_tag("t1", ids[3])
    repo.create_tag("a0", ids[0])
    repo.create_branch("gone", ids[1])
    repo.delete_branch("gone")
    repo.create_tag("old", ids[1])
    repo.delete_tag("old")
    refs = run(live_refs(repo._assets))
    assert refs == {
        "branch dev": ids[2],
        "branch main": ids[-1],
        "branch zzz": ids[1],
        "tag a0": ids[0],
        "tag t1": ids[3],
    }
    assert list(refs) == sorted(refs)


def test_live_refs_skip_refs_deleted_after_they_were_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch or tag deleted between the listing and its lookup is left out, not the rest."""
    repo, ids = _chain(tmp_path)
    repo.create_branch("aaa", ids[1])
    repo.create_branch("zzz", ids[2])
    repo.create_tag("a0", ids[0])
    repo.create_tag("t9", ids[3])
    assets = Repository.open(repo.storage)._assets
    branches, tags = run(assets.list_branches()), run(assets.list_tags())
    repo.delete_branch("aaa")  # meanwhile
    repo.delete_tag("a0")

    async def listed_branches() -> set[str]:
        return branches

    async def listed_tags() -> set[str]:
        return tags

    monkeypatch.setattr(assets, "list_branches", listed_branches)
    monkeypatch.setattr(assets, "list_tags", listed_tags)
    assert run(live_refs(assets)) == {
        "branch main": ids[-1],
        "branch zzz": ids[2],
        "tag t9": ids[3],
    }


def test_reachable_from_given_refs_only(tmp_path: Path) -> None:
    repo, ids = _chain(tmp_path)
    repo.create_branch("dev", ids[1])
    assets = Repository.open(repo.storage)._assets
    reach = run(reachable(assets, {"tag x": ids[2]}))
    assert reach.refs == {"tag x": ids[2]}
    assert reach.snapshots == set(ids[:3])
    every = run(reachable(assets))
    assert every.snapshots == set(ids)
    assert set(every.refs) == {"branch main", "branch dev"}
    assert reach.manifests < every.manifests
    assert run(reachable(assets, {})).snapshots == set()


class _InFlight(FaultyStorage):
    """No faults: the most manifest reads in flight at once."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.now = self.most = 0

    async def get(self, key: str) -> bytes:
        if not key.startswith("manifests/"):
            return await super().get(key)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0)  # the others start meanwhile, if they may
            return await super().get(key)
        finally:
            self.now -= 1


def test_reachable_reads_manifests_several_at_once(tmp_path: Path) -> None:
    storage = _InFlight(local_filesystem_storage(tmp_path, durable=False))
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    for name in "abcdefgh":
        zarr.create_array(s.store, name=name, shape=(4,), chunks=(2,), dtype="i4")[:] = 1
    s.commit("eight arrays")
    reach = run(reachable(Repository.open(storage)._assets))
    assert len(reach.manifests) == 8
    assert storage.most == _CONCURRENCY  # bounded, and more than one


def test_a_missing_manifest_is_damage(tmp_path: Path) -> None:
    repo, _ = _chain(tmp_path, 2)
    (manifest,) = [k for k in files(tmp_path) if k.startswith("manifests/")][:1]
    (tmp_path / manifest).unlink()
    with pytest.raises(CorruptObjectError) as e:
        run(manifest_chunks(Repository.open(repo.storage)._assets, manifest[len("manifests/") :]))
    assert str(e.value) == (
        f"manifest {manifest!r} is referenced but missing: the repository is damaged (run "
        "icechunk-dask verify)"
    )
    assert e.value.key == manifest


# -- a bug this file found ----------------------------------------------------------


def test_a_ref_naming_a_snapshot_another_walk_saw_expired_keeps_it(tmp_path: Path) -> None:
    """The snapshot a ref names is reachable even when an earlier walk passed it expired.

    A ref can name an expired snapshot (it moved there while ``expire_snapshots`` ran, after
    its last look at the refs). Found while writing these tests: the walk from ``main``
    (sorted first) marked the expired parent of its tip as visited, so the walk from
    ``zzz``, which names that parent, was skipped, and garbage collection deleted the
    snapshot, its transaction log and its manifest; with a ref named ``aaa`` it was kept.
    """
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    ids = [repo.lookup_branch("main"), s.commit("create")]
    for value in (1, 2):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[:] = value
        ids.append(s.commit(f"{value}"))
    assert repo.expire_snapshots(datetime.now(UTC)) == {ids[1], ids[2]}
    # the race's outcome, by hand: the ref lands on the snapshot just expired
    marker = tmp_path / "expired" / ids[2]
    saved = marker.read_bytes()
    marker.unlink()
    Repository.open(repo.storage).create_branch("zzz", ids[2])
    marker.write_bytes(saved)
    repo = Repository.open(repo.storage)
    reach = run(reachable(repo._assets))
    assert reach.refs == {"branch main": ids[3], "branch zzz": ids[2]}
    assert reach.snapshots == {ids[0], ids[2], ids[3]}  # ids[1]: expired, no ref
    age(tmp_path)
    repo.garbage_collect(datetime.now(UTC))
    assert (tmp_path / "snapshots" / ids[2]).exists()
    assert (tmp_path / "transactions" / ids[2]).exists()
    snap = run(repo._assets.get_snapshot(ids[2], expired_ok=True))
    for manifest in snap.nodes["a"].manifest_ids():
        assert (tmp_path / "manifests" / manifest).exists()


# -- stacked layers through reachable() ---------------------------------------------------


def _object_ids(root: Path) -> set[str]:
    return {k[len("chunks/") :] for k in files(root) if k.startswith("chunks/")}


def _two_layer_stack(tmp_path: Path) -> tuple[Repository, str, str, set[str], set[str]]:
    """Four chunk objects in one box; one overwritten, then another deleted.

    The two later commits' small layers merge into one (the merge budget): a stack of two.
    Returns the repository, the first and the last snapshot, the chunk objects of the first
    commit and those written later.
    """
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    s = repo.writable_session("main")
    shape, chunks = (4 * 264, 128), (264, 128)  # 264 KiB chunks: one object each
    zarr.create_array(
        s.store, name="s", shape=shape, chunks=chunks, dtype="f8", fill_value=0, compressors=None
    )
    zarr.open_array(s.store, path="s")[:] = 1.0
    first = s.commit("four chunks")
    old = _object_ids(tmp_path)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="s")[:264] = 2.0  # c/0/0 overwritten
    s.commit("one chunk")
    s = repo.writable_session("main")
    run(s.store.delete("s/c/1/0"))  # a tombstone on top
    tip = s.commit("one deleted")
    return repo, first, tip, old, _object_ids(tmp_path) - old


def test_reachable_keeps_only_the_chunks_a_stack_shows(tmp_path: Path) -> None:
    repo, first, tip, old, new = _two_layer_stack(tmp_path)
    assert first in repo.expire_snapshots(datetime.now(UTC))  # the tip's stack alone counts
    assets = Repository.open(repo.storage)._assets
    snap = run(assets.get_snapshot(tip))
    (stack,) = snap.nodes["s"].boxes.values()
    assert len(stack) == 2
    all_ids = sorted(old | new)

    def kept(refs: dict[str, str]) -> set[str]:
        reach = run(reachable(assets, refs))
        assert reach.manifests >= {layer.id for layer in stack} or "branch main" not in refs
        return {i for i, hit in zip(all_ids, reach.has_chunks(all_ids), strict=True) if hit}

    # the tip alone shows the new chunk, and the two old ones no newer layer replaced
    shown = kept({"branch main": tip})
    assert new <= shown and len(shown & old) == 2
    # with the first snapshot (a start is read even if expired), every old chunk is shown
    assert kept({"branch main": tip, "tag first": first}) == old | new
    # the first snapshot alone: its four chunks, and nothing of the later layers
    assert kept({"tag first": first}) == old


def test_format1_shards_are_read_whole(tmp_path: Path) -> None:
    """A node with format-1 hash shards (hand-made: a box's manifest named as a shard)."""
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    s = repo.writable_session("main")
    zarr.create_array(
        s.store, name="s", shape=(528, 128), chunks=(264, 128), dtype="f8", compressors=None
    )
    zarr.open_array(s.store, path="s")[:] = 1.0
    tip = s.commit("two chunks")
    ids = _object_ids(tmp_path)
    assert len(ids) == 2
    snap = run(repo._assets.get_snapshot(tip))
    ((layer,),) = snap.nodes["s"].boxes.values()
    legacy = NodeManifests(legacy=(None, layer.id), legacy_count=2)
    shards = dataclasses.replace(snap, nodes={**snap.nodes, "s": legacy})
    (tmp_path / "snapshots" / tip).write_bytes(shards.encode())
    reach = run(reachable(Repository.open(repo.storage)._assets))
    assert layer.id in reach.manifests
    assert reach.has_chunks(sorted(ids)).tolist() == [True, True]


@pytest.mark.parametrize("other", ["node", "box"])
def test_a_lower_layer_of_another_node_or_box_is_damage(tmp_path: Path, other: str) -> None:
    """The lower layer's object is a valid manifest with its own id, of another node or box."""
    repo, first, tip, _, _ = _two_layer_stack(tmp_path)
    assert first in repo.expire_snapshots(datetime.now(UTC))  # no stack shows it whole
    snap = run(repo._assets.get_snapshot(tip))
    ((box, stack),) = snap.nodes["s"].boxes.items()
    lower = stack[1].id
    key = f"manifests/{lower}"
    entries = decode_manifest((tmp_path / key).read_bytes(), key, node="s", box=box)
    node, box_ = ("t", box) if other == "node" else ("s", box + "0")
    (tmp_path / key).write_bytes(encode_manifest(lower, node, box_, entries))
    with pytest.raises(CorruptObjectError) as e:
        run(reachable(Repository.open(repo.storage)._assets))
    assert e.value.key == key
    assert f"of node {node!r} box {box_!r}, not the one expected there" in str(e.value)
