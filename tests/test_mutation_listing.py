"""Mutation-campaign tests for icechunk_dask/_listing.py (issue 13, part 4b).

Every listing of a session's view checked against the keys it must hold: for each
scenario (committed nodes, uncommitted writes and deletions, ``delete_dir``, forks and
pickled copies that inherit them, a root array, other chunk key encodings), ``list_prefix``
of every prefix of every key and ``list_dir`` of every directory are compared with what
the known key set gives.
"""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from icechunk_dask import (
    CorruptObjectError,
    Repository,
    RepositoryConfig,
    Session,
    in_memory_storage,
)
from icechunk_dask._buildboxes import BoxTarget, build_layers
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._sync import run
from icechunk_dask.storage import FaultyStorage, Storage


def _repo() -> Repository:
    return Repository.create(in_memory_storage(), RepositoryConfig())


def _array(
    s: Session,
    name: str,
    shape: tuple[int, ...] = (4,),
    chunks: tuple[int, ...] = (2,),
    **kw: object,
) -> zarr.Array:
    return zarr.create_array(
        s.store, name=name, shape=shape, chunks=chunks, dtype="i4", fill_value=0, **kw
    )


def _group(s: Session, name: str) -> None:
    zarr.create_group(s.store, path=name)


async def _collect(it: object) -> set[str]:
    return {k async for k in it}  # type: ignore[attr-defined]


def list_prefix(s: Session, prefix: str) -> set[str]:
    return run(_collect(s.store.list_prefix(prefix)))


def list_dir(s: Session, prefix: str) -> set[str]:
    return run(_collect(s.store.list_dir(prefix)))


def check_view(s: Session, expected: set[str]) -> None:
    """Every listing of ``s`` against the key set ``expected``."""
    assert list_prefix(s, "") == expected
    prefixes = {k[:i] for k in expected for i in range(len(k) + 1)}
    prefixes |= {"x", "c/", "zz/", "a/c/9"}
    for p in sorted(prefixes):
        assert list_prefix(s, p) == {k for k in expected if k.startswith(p)}, p
    dirs = {""} | {k[:i] for k in expected for i in range(len(k)) if k[i] == "/"}
    dirs |= {"x", "nothere/deeper"}
    for d in sorted(dirs):
        head = f"{d}/" if d else ""
        want = {k[len(head) :].split("/", 1)[0] for k in expected if k.startswith(head)}
        assert list_dir(s, d) == want, d


def _put(s: Session, key: str, data: bytes) -> None:
    run(s.store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _committed_tree(repo: Repository) -> set[str]:
    """Groups and arrays at several depths, some with chunks; return the keys."""
    s = repo.writable_session("main")
    _group(s, "")
    _group(s, "g")
    _group(s, "g/h")
    _array(s, "g/a", (4, 4), (2, 2))[:] = 1  # four chunks
    _array(s, "g/h/r", (4,), (2,))[:2] = 2  # one chunk of two
    _array(s, "b")  # no chunk written
    _array(s, "g/c")  # an array named like a chunk directory
    zarr.open_array(s.store, path="g/c")[2:] = 3
    _array(s, "v2", (4,), (2,), chunk_key_encoding={"name": "v2", "separator": "."})[:] = 4
    s.commit("tree")
    return {
        "zarr.json",
        "g/zarr.json",
        "g/h/zarr.json",
        "g/a/zarr.json",
        "g/a/c/0/0",
        "g/a/c/0/1",
        "g/a/c/1/0",
        "g/a/c/1/1",
        "g/h/r/zarr.json",
        "g/h/r/c/0",
        "b/zarr.json",
        "g/c/zarr.json",
        "g/c/c/1",
        "v2/zarr.json",
        "v2/0",
        "v2/1",
    }


def test_listings_of_a_committed_tree() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    check_view(repo.readonly_session("main"), keys)
    check_view(repo.writable_session("main"), keys)


def test_listings_with_uncommitted_writes_and_deletions() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="b")[:2] = 5  # first chunk of an empty array
    run(s.store.delete("g/h/r/c/0"))  # the only chunk of r
    run(s.store.delete("g/a/c/1/1"))
    run(s.store.delete("v2/0"))
    _array(s, "n/m")  # a new array under a new implicit path
    _put(s, "g/a/c/1/1", b"\0" * 16)  # deleted, then written again
    keys |= {"b/c/0", "n/zarr.json", "n/m/zarr.json"}
    keys -= {"g/h/r/c/0", "v2/0"}
    check_view(s, keys)
    run(s.store.delete("g/a/c/1/1"))
    keys.discard("g/a/c/1/1")
    check_view(s, keys)
    fork = s.fork()
    check_view(fork, keys)
    run(fork.store.delete("g/a/c/0/0"))
    zarr.open_array(fork.store, path="g/h/r")[2:] = 6
    fork_keys = (keys - {"g/a/c/0/0"}) | {"g/h/r/c/1"}
    check_view(fork, fork_keys)
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    check_view(copy, keys)
    again = pickle.loads(pickle.dumps(fork))
    check_view(again, fork_keys)
    s.merge(fork)
    check_view(s, fork_keys)
    s.commit("changes")
    check_view(repo.readonly_session("main"), fork_keys)


def test_listings_after_delete_dir() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    run(s.store.delete_dir("g/h"))
    keys = {k for k in keys if not k.startswith("g/h/")}
    check_view(s, keys)
    fork = s.fork()
    check_view(fork, keys)
    run(fork.store.delete_dir("g/a/c"))  # the chunks only
    fork_keys = {k for k in keys if not k.startswith("g/a/c/")}
    check_view(fork, fork_keys)
    zarr.open_array(fork.store, path="g/a")[:2, :2] = 9
    fork_keys.add("g/a/c/0/0")
    check_view(fork, fork_keys)
    with fork.allow_pickling():
        copy = pickle.loads(pickle.dumps(fork))
    check_view(copy, fork_keys)
    s.merge(fork)
    check_view(s, fork_keys)
    _group(s, "g/h")  # re-created after its deletion
    fork_keys.add("g/h/zarr.json")
    check_view(s, fork_keys)
    s.commit("deleted")
    check_view(repo.readonly_session("main"), fork_keys)
    s = repo.writable_session("main")
    run(s.store.delete_dir(""))
    check_view(s, set())
    _group(s, "")
    check_view(s, {"zarr.json"})


def test_listings_of_a_root_array() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_array(s.store, shape=(6,), chunks=(2,), dtype="i4", fill_value=0)
    zarr.open_array(s.store)[:4] = 1
    keys = {"zarr.json", "c/0", "c/1"}
    check_view(s, keys)
    s.commit("root array")
    check_view(repo.readonly_session("main"), keys)
    s = repo.writable_session("main")
    run(s.store.delete("c/0"))
    check_view(s, keys - {"c/0"})
    run(s.store.delete("c/1"))
    check_view(s, {"zarr.json"})
    zarr.open_array(s.store)[4:] = 2
    check_view(s, {"zarr.json", "c/2"})
    np.testing.assert_array_equal(zarr.open_array(s.store)[:], [0, 0, 0, 0, 2, 2])


async def _names(session: Session, prefix: str) -> set[str]:
    return {k async for k in session.store.list_dir(prefix)}


def test_list_dir_inside_a_chunk_grid_names_only_what_is_there() -> None:
    """A directory of a chunk grid lists its own entries, not those of its siblings.

    Found while writing these tests: ``list_dir("a/c/1")`` cut the directory's length off
    every chunk key of the array (``"a/c/0/1"`` gave the name ``"1"``).
    """
    repo = Repository.create(in_memory_storage(), RepositoryConfig())
    s = repo.writable_session("main")
    array = zarr.create_array(
        s.store, name="a", shape=(24, 4), chunks=(2, 2), dtype="i4", fill_value=0
    )
    array[0:2, 0:2] = 1  # a/c/0/0
    array[2:4, 2:4] = 2  # a/c/1/1
    array[20:22, 0:2] = 3  # a/c/10/0
    s.commit("three chunks")
    for view in (repo.readonly_session("main"), repo.writable_session("main")):
        assert run(_names(view, "a/c")) == {"0", "1", "10"}
        assert run(_names(view, "a/c/0")) == {"0"}
        assert run(_names(view, "a/c/1")) == {"1"}
        assert run(_names(view, "a/c/10")) == {"0"}
        assert run(_names(view, "a/c/2")) == set()
        assert run(view._workspace.list_dir("a/c/1")) == {"1"}
    s = repo.writable_session("main")
    run(s.store.delete("a/c/1/1"))
    assert run(_names(s, "a/c/1")) == set()
    assert run(_names(s, "a/c/0")) == {"0"}


def _layered(repo: Repository, write: dict[str, tuple[slice, ...] | str]) -> ChangeSet:
    """A record whose chunk writes and deletions are pre-built layers.

    ``write`` maps an array to the region written (with 5), or to the key of a chunk to
    delete. Each array's layer is built in the box layout of the snapshot's node.
    """
    writer = repo.writable_session("main")
    for name, region in write.items():
        if isinstance(region, str):
            run(writer.store.delete(region))
        else:
            zarr.open_array(writer.store, path=name)[region] = 5
    record = writer.changes()
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    targets = []
    boxes = []
    for i, name in enumerate(write):
        nm = snap.nodes[name]
        assert nm.encoding is not None and nm.split is not None
        targets.append(BoxTarget(name, nm.encoding, nm.split))
        boxes.append((i, ".".join("0" * len(nm.split))))
    run(build_layers(repo._assets, record, boxes, targets))
    assert not record.chunks and set(record.layers) == set(write)
    return record


def test_listings_with_pre_built_layers() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    s.merge(_layered(repo, {"g/h/r": (slice(2, 4),), "g/a": "g/a/c/0/0", "g/c": (slice(0, 2),)}))
    keys = (keys | {"g/h/r/c/1", "g/c/c/0"}) - {"g/a/c/0/0"}
    check_view(s, keys)
    fork = s.fork()
    check_view(fork, keys)
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    check_view(copy, keys)
    # layers deleting the only chunk of an array, under a fork's own layers
    fork.merge(_layered(repo, {"g/h/r": "g/h/r/c/0", "v2": "v2/0"}))
    fork_keys = keys - {"g/h/r/c/0", "v2/0"}
    check_view(fork, fork_keys)
    s.merge(fork)
    check_view(s, fork_keys)
    s.commit("layers")
    check_view(repo.readonly_session("main"), fork_keys)


def test_listings_with_pre_built_layers_that_only_delete() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    s.merge(_layered(repo, {"g/h/r": "g/h/r/c/0", "g/c": "g/c/c/1"}))
    assert s.changes().layers  # kept as layers (tombstones only)
    keys -= {"g/h/r/c/0", "g/c/c/1"}
    check_view(s, keys)
    check_view(s.fork(), keys)
    zarr.open_array(s.store, path="g/h/r")[:2] = 5  # a write after the layers wins
    check_view(s, keys | {"g/h/r/c/0"})


def test_listings_of_a_session_whose_base_snapshot_expired() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="b")[:2] = 5
    for value in (6, 7):
        other = repo.writable_session("main")
        zarr.open_array(other.store, path="g/h/r")[2:] = value
        other.commit(f"{value}")
    assert s.snapshot_id in repo.expire_snapshots(datetime.now(UTC))
    check_view(s, keys | {"b/c/0"})


class _CountingStorage(FaultyStorage):
    """No faults: records the manifests read."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.manifests_read: list[str] = []

    async def get(self, key: str) -> bytes:
        if key.startswith("manifests/"):
            self.manifests_read.append(key)
        return await super().get(key)


def test_list_dir_reads_a_nodes_manifests_only_when_it_must() -> None:
    storage = _CountingStorage(in_memory_storage())
    keys = _committed_tree(Repository.create(storage, RepositoryConfig()))

    def reads(prefix: str) -> int:
        s = Repository.open(storage).readonly_session("main")  # nothing cached
        storage.manifests_read.clear()
        head = f"{prefix}/" if prefix else ""
        want = {k[len(head) :].split("/", 1)[0] for k in keys if k.startswith(head)}
        assert list_dir(s, prefix) == want
        return len(storage.manifests_read)

    # groups, and arrays whose one layer holds references: the node tree answers
    for prefix in ("", "g", "g/h", "g/a", "g/h/r", "g/c", "b", "nothing"):
        assert reads(prefix) == 0, prefix
    # inside a chunk grid, or another key encoding: the node's manifest is read
    assert reads("g/a/c") == 1
    assert reads("g/a/c/1") == 1
    assert reads("v2") == 1


def test_list_dir_reads_no_layer_of_a_child_whose_newest_layer_holds_references() -> None:
    """Pre-built layers with live references make their node a child unread (no deletion)."""
    storage = _CountingStorage(in_memory_storage())
    repo = Repository.create(storage, RepositoryConfig())
    keys = _committed_tree(repo) | {"g/h/r/c/1"}
    record = _layered(repo, {"g/a": (slice(0, 2), slice(0, 2)), "g/h/r": (slice(2, 4),)})
    s = Repository.open(storage).writable_session("main")
    s.merge(record)
    for session in (s, s.fork()):
        for prefix in ("", "g", "g/h"):
            storage.manifests_read.clear()
            head = f"{prefix}/" if prefix else ""
            want = {k[len(head) :].split("/", 1)[0] for k in keys if k.startswith(head)}
            assert list_dir(session, prefix) == want
            assert storage.manifests_read == [], prefix


def test_listings_of_a_root_array_with_pre_built_layers() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_array(s.store, shape=(6,), chunks=(2,), dtype="i4", fill_value=0)
    zarr.open_array(s.store)[:2] = 1
    s.commit("root array")
    s = repo.writable_session("main")
    s.merge(_layered(repo, {"": (slice(2, 4),)}))
    keys = {"zarr.json", "c/0", "c/1"}
    check_view(s, keys)
    check_view(s.fork(), keys)
    s.merge(_layered(repo, {"": "c/0"}))
    check_view(s, {"zarr.json", "c/1"})


def test_list_prefix_reads_only_the_layers_of_nodes_it_reaches() -> None:
    storage = _CountingStorage(in_memory_storage())
    repo = Repository.create(storage, RepositoryConfig())
    keys = _committed_tree(repo)
    record = _layered(repo, {"g/a": (slice(0, 2), slice(0, 2))})
    s = Repository.open(storage).writable_session("main")
    s.merge(record)  # no collision: nothing is read
    storage.manifests_read.clear()
    assert list_prefix(s, "g/h/") == {k for k in keys if k.startswith("g/h/")}
    assert len(storage.manifests_read) == 1  # g/h/r's manifest, not g/a's layer
    fork = s.fork()  # inherits the layer
    storage.manifests_read.clear()
    assert list_prefix(fork, "g/h/") == {k for k in keys if k.startswith("g/h/")}
    assert storage.manifests_read == []  # g/h/r's manifest is cached; g/a's layer not read
    storage.manifests_read.clear()
    assert list_prefix(s, "b") == {"b/zarr.json"}
    assert storage.manifests_read == []


def test_list_prefix_reads_no_manifest_of_a_node_delete_dir_removed() -> None:
    storage = _CountingStorage(in_memory_storage())
    keys = _committed_tree(Repository.create(storage, RepositoryConfig()))
    for cleared, prefix, expected_reads in (("g/h", "g/", 2), ("", "", 0), ("g", "", 1)):
        s = Repository.open(storage).writable_session("main")
        run(s.store.delete_dir(cleared))
        storage.manifests_read.clear()
        head = f"{cleared}/" if cleared else ""
        want = {k for k in keys if k.startswith(prefix) and not k.startswith(head)}
        assert list_prefix(s, prefix) == want
        # g/a and g/c, not g/h/r; nothing; v2
        assert len(storage.manifests_read) == expected_reads, cleared


def test_a_manifest_of_another_node_is_refused_when_listing() -> None:
    """Damage: the snapshot names, for ``g/c``, the manifest of ``g/h/r`` (same box ``0``)."""
    repo = _repo()
    keys = _committed_tree(repo)
    tip = repo.lookup_branch("main")
    snap = run(repo._assets.get_snapshot(tip))
    assert set(snap.nodes["g/c"].boxes) == set(snap.nodes["g/h/r"].boxes) == {"0"}
    damaged = dataclasses.replace(snap, nodes={**snap.nodes, "g/c": snap.nodes["g/h/r"]})
    run(repo.storage.put(f"snapshots/{tip}", damaged.encode()))
    s = Repository.open(repo.storage).readonly_session("main")
    with pytest.raises(CorruptObjectError, match=r"is manifest .* of node 'g/h/r'"):
        list_prefix(s, "g/c/")
    with pytest.raises(CorruptObjectError, match=r"is manifest .* of node 'g/h/r'"):
        list_dir(s, "g/c/c")
    assert list_prefix(s, "g/a/") == {k for k in keys if k.startswith("g/a/")}


def test_an_array_whose_every_key_is_deleted_is_no_child() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    for key in ("g/h/r/zarr.json", "g/h/r/c/0"):  # one by one, not with delete_dir
        run(s.store.delete(key))
    keys -= {"g/h/r/zarr.json", "g/h/r/c/0"}
    assert list_dir(s, "g/h") == {"zarr.json"}
    check_view(s, keys)


def test_an_array_whose_metadata_is_deleted_still_lists_its_chunks() -> None:
    repo = _repo()
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    run(s.store.delete("g/c/zarr.json"))  # its chunk g/c/c/1 stays
    keys.discard("g/c/zarr.json")
    assert list_dir(s, "g") == {"zarr.json", "a", "h", "c"}
    check_view(s, keys)


def test_an_array_listing_its_own_directory_names_keys_outside_its_chunk_grid() -> None:
    """Keys under an array that are not chunk keys live in its flat box: listed by name."""
    storage = _CountingStorage(in_memory_storage())
    repo = Repository.create(storage, RepositoryConfig())
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    _put(s, "g/a/extra", b"x")  # not a chunk key of g/a
    _put(s, "b/notes", b"y")  # the only key of b besides its metadata
    s.commit("keys outside the chunk grids")
    keys |= {"g/a/extra", "b/notes"}
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    assert "" in snap.nodes["g/a"].boxes and "" in snap.nodes["b"].boxes
    s = Repository.open(storage).readonly_session("main")
    assert list_dir(s, "g/a") == {"zarr.json", "c", "extra"}
    assert list_dir(s, "b") == {"zarr.json", "notes"}
    check_view(s, keys)


def test_an_array_with_stacked_layers_lists_its_directory_without_reading_them() -> None:
    """A node that is not exact but surely non-empty: the node tree still answers."""
    storage = _CountingStorage(in_memory_storage())
    repo = Repository.create(storage, RepositoryConfig())
    keys = _committed_tree(repo)
    s = repo.writable_session("main")
    a = zarr.create_array(s.store, name="big", shape=(64,), chunks=(1,), dtype="i4", fill_value=0)
    a[:] = 1
    s.commit("64 chunks")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="big")[0] = 2  # one chunk over 64: a layer on top
    run(s.store.delete("big/c/63"))  # and a tombstone in it
    s.commit("one chunk rewritten, one deleted")
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    nm = snap.nodes["big"]
    assert not nm.exact and nm.surely_nonempty
    s = Repository.open(storage).readonly_session("main")
    storage.manifests_read.clear()
    assert list_dir(s, "big") == {"zarr.json", "c"}
    assert storage.manifests_read == []
    keys |= {"big/zarr.json"} | {f"big/c/{i}" for i in range(63)}
    check_view(s, keys)


def test_a_node_without_metadata_inside_an_array_is_folded_into_it_at_commit() -> None:
    """Any key can be stored: ``n`` an array, then a group holding array ``n/sub``, whose
    metadata is then deleted, then ``n`` an array again.

    The commit folds the node ``n/sub`` (no metadata left) into the array ``n``: a node
    inside an array's directory always has its ``zarr.json`` in the snapshot, so listing
    the array's own directory can stop at the array (its node-tree fast path) and still
    name ``sub`` (docs/reliability.md, ``_listing.py``'s ``continue`` -> ``break``).
    """
    repo = _repo()
    s = repo.writable_session("main")
    _array(s, "n")[:2] = 5
    s.commit("array n")
    s = repo.writable_session("main")
    doc = run(s.store.get("n/zarr.json", default_buffer_prototype()))
    assert doc is not None
    run(s.store.delete("n/zarr.json"))
    _group(s, "n")
    _array(s, "n/sub")[:2] = 6
    s.commit("n a group holding the array n/sub")
    s = repo.writable_session("main")
    run(s.store.delete("n/sub/zarr.json"))
    s.commit("n/sub without metadata")

    def nodes() -> list[str]:
        return list(run(repo._assets.get_snapshot(repo.lookup_branch("main"))).nodes)

    assert nodes() == ["n", "n/sub"]
    keys = {"zarr.json", "n/zarr.json", "n/c/0", "n/sub/c/0"}
    s = repo.writable_session("main")
    _put(s, "n/zarr.json", doc.to_bytes())
    check_view(s, keys)
    s.commit("n an array again")
    assert nodes() == ["n"]
    s = repo.readonly_session("main")
    assert list_dir(s, "n") == {"zarr.json", "c", "sub"}
    check_view(s, keys)
    assert zarr.open_array(s.store, path="n")[:].tolist() == [5, 5, 0, 0]
