"""Format 2 manifests: boxes of chunk coordinates, layers, compaction, node-level deletion.

Small thresholds (``RepositoryConfig``) make every path run with a handful of
chunks: boxes of one or a few chunks, a merge budget reached after one
commit, compaction after two layers.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, RepositoryConfig, in_memory_storage, local_filesystem_storage
from icechunk_dask._sync import run
from icechunk_dask.format import NodeManifests, choose_split, parse_chunk_suffix
from tests.helpers import CountingReads

FILL = -1


def _repo(tmp_path: Path | None = None, **config: object) -> Repository:
    storage = (
        in_memory_storage()
        if tmp_path is None
        else local_filesystem_storage(tmp_path, durable=False)
    )
    return Repository.create(storage, RepositoryConfig(**config))  # type: ignore[arg-type]


def _node(repo: Repository, snapshot_id: str, path: str) -> NodeManifests:
    return run(repo._assets.get_snapshot(snapshot_id)).nodes[path]


def test_default_split_puts_slabs_of_the_first_dimension_in_a_box() -> None:
    assert choose_split((1000, 32, 32), 65536) == (64, 32, 32)
    assert choose_split((1, 32, 32), 65536) == (64, 32, 32)  # room to grow by appends
    assert choose_split((10, 1000, 1000), 65536) == (1, 65, 1000)
    assert choose_split((10, 100_000, 100_000), 65536) == (1, 1, 65536)
    assert choose_split((), 65536) == ()
    assert choose_split((5, 7), 4, {1: 2}) == (2**62, 2)


@pytest.mark.parametrize(
    ("suffix", "encoding", "ndim", "coords"),
    [
        ("c/1/22/3", ("default", "/"), 3, (1, 22, 3)),
        ("c.1.22", ("default", "."), 2, (1, 22)),
        ("c", ("default", "/"), 0, ()),
        ("1.2", ("v2", "."), 2, (1, 2)),
        ("0", ("v2", "."), 0, ()),
        ("c/1/x", ("default", "/"), 2, None),
        ("c/1", ("default", "/"), 2, None),
        ("d/1/2", ("default", "/"), 2, None),
        ("c/1/2\n", ("default", "/"), 2, None),  # a trailing newline is no digit
        ("1.2\n", ("v2", "."), 2, None),
    ],
)
def test_chunk_suffix_parsing(
    suffix: str, encoding: tuple[str, str], ndim: int, coords: tuple[int, ...] | None
) -> None:
    assert parse_chunk_suffix(suffix, encoding, ndim) == coords


def test_append_touches_only_the_boxes_it_writes() -> None:
    repo = _repo(manifest_box_refs=8)  # 4 chunks per row: 2 rows per box
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="t", shape=(1, 4), chunks=(1, 1), dtype="i4")
    arr[:] = 0
    s.commit("step 0")
    tips = []
    for step in range(1, 6):
        s = repo.writable_session("main")
        arr = zarr.open_array(s.store, path="t")
        arr.resize((step + 1, 4))
        arr[step] = step
        tips.append(s.commit(f"step {step}"))
    nodes = [_node(repo, t, "t") for t in tips]
    assert nodes[-1].split == (2, 4)
    assert sorted(nodes[-1].boxes) == ["0.0", "1.0", "2.0"]
    # a box that the append did not touch keeps its manifests, by id
    assert nodes[-1].boxes["0.0"] == nodes[-2].boxes["0.0"] == nodes[1].boxes["0.0"]
    back = zarr.open_array(repo.readonly_session("main").store, path="t")[:]
    np.testing.assert_array_equal(back, np.repeat(np.arange(6), 4).reshape(6, 4))


def test_layers_merge_within_the_budget_and_compact_past_the_maximum() -> None:
    repo = _repo(manifest_box_refs=1024, manifest_max_layers=3)
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="a", shape=(64,), chunks=(1,), dtype="i4", fill_value=FILL
    )
    arr[:32] = 1  # one layer of 32 references
    s.commit("base")
    model = np.full(64, FILL)
    model[:32] = 1
    counts = []
    for i in range(6):  # one-chunk commits: each too small to absorb the big layer
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[32 + i] = 10 + i
        model[32 + i] = 10 + i
        tip = s.commit(f"one chunk {i}")
        counts.append(len(_node(repo, tip, "a").boxes["0"]))
        back = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
        np.testing.assert_array_equal(back, model)
    # 1 chunk merges the newest 1-2 chunk layers, never the 32-chunk base
    assert max(counts) <= 3
    assert counts[0] == 2


def test_compaction_drops_tombstones_and_keeps_the_data() -> None:
    repo = _repo(manifest_box_refs=1024, manifest_max_layers=2)
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="a", shape=(20,), chunks=(1,), dtype="i4", fill_value=FILL
    )
    arr[:] = np.arange(20)
    s.commit("base")
    model = np.arange(20)
    for i in range(5):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[i] = FILL  # equal to the fill value: a deletion
        model[i] = FILL
        tip = s.commit(f"delete {i}")
        node = _node(repo, tip, "a")
        assert len(node.boxes["0"]) <= 2
    back = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
    np.testing.assert_array_equal(back, model)
    keys = run(repo.readonly_session("main")._workspace.list_prefix("a/c/"))
    assert keys == {f"a/c/{i}" for i in range(5, 20)}


@pytest.mark.parametrize(
    "config",
    [
        {"manifest_box_refs": 1, "manifest_max_layers": 1},
        {"manifest_box_refs": 3, "manifest_max_layers": 2},
        {"manifest_box_refs": 8, "manifest_max_layers": 4},
        {"manifest_splits": {"a": {"y": 2}}, "manifest_max_layers": 3},
    ],
)
def test_random_writes_deletes_and_resizes_read_back_as_a_model(config: dict[str, object]) -> None:
    """Writes, deletions and resizes across boxes and layers, against a NumPy model."""
    rng = random.Random(42)
    repo = _repo(**config)
    s = repo.writable_session("main")
    zarr.create_array(
        s.store,
        name="a",
        shape=(4, 6),
        chunks=(1, 2),
        dtype="i4",
        fill_value=FILL,
        dimension_names=("x", "y"),
    )
    s.commit("create")
    model = np.full((4, 6), FILL)
    for step in range(25):
        s = repo.writable_session("main")
        arr = zarr.open_array(s.store, path="a")
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.2:
                rows = model.shape[0] + rng.randint(1, 2)
                arr.resize((rows, 6))
                grown = np.full((rows, 6), FILL)
                grown[: model.shape[0]] = model
                model = grown
            elif op < 0.4 and model.shape[0] > 2:
                rows = model.shape[0] - 1
                arr.resize((rows, 6))
                model = model[:rows].copy()
            else:
                r = rng.randrange(model.shape[0])
                c0 = 2 * rng.randrange(3)
                value = FILL if rng.random() < 0.3 else step
                arr[r, c0 : c0 + 2] = value
                model[r, c0 : c0 + 2] = value
        s.commit(f"step {step}")
        if step % 6 == 5:  # a fresh handle reads from storage, not from caches
            repo = Repository.open(repo.storage)
        back = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
        np.testing.assert_array_equal(back, model, err_msg=f"after step {step}")


def test_mode_w_over_a_big_array_is_a_tiny_change(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="g/a", shape=(5000,), chunks=(1,), dtype="i2")
    arr[:] = 7
    s.commit("5,000 chunks")
    s = repo.writable_session("main")
    arr = zarr.create_array(
        s.store, name="g/a", shape=(10,), chunks=(5,), dtype="i2", overwrite=True
    )
    cs = s.changes()
    assert cs.cleared == {"g/a"} and not cs.chunks
    assert len(cs.to_bytes()) < 1024
    arr[:] = 3
    assert zarr.open_array(s.store, path="g/a")[:].tolist() == [3] * 10
    s.commit("overwrite")
    back = repo.readonly_session("main")
    assert zarr.open_array(back.store, path="g/a")[:].tolist() == [3] * 10
    assert run(back._workspace.list_prefix("g/a/c/")) == {"g/a/c/0", "g/a/c/1"}


def test_delete_dir_in_a_fork_that_inherited_writes_merges_back() -> None:
    repo = _repo()
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="g/a", shape=(4,), chunks=(1,), dtype="i4")[:] = 1
    s.commit("one")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="g/a")[0] = 5  # uncommitted, inherited by the fork
    fork = s.fork()
    zarr.create_array(fork.store, name="g/a", shape=(2,), chunks=(1,), dtype="i4", overwrite=True)
    assert zarr.open_array(fork.store, path="g/a")[:].tolist() == [0, 0]
    s.merge(fork)
    assert zarr.open_array(s.store, path="g/a")[:].tolist() == [0, 0]
    s.commit("replaced in a fork")
    assert zarr.open_array(repo.readonly_session("main").store, path="g/a")[:].tolist() == [0, 0]


@pytest.mark.parametrize("nchunks", [10, 2000])
def test_list_dir_of_a_group_reads_no_manifest(nchunks: int) -> None:
    repo = _repo()
    s = repo.writable_session("main")
    g = zarr.open_group(s.store, mode="w", zarr_format=3)
    g.create_array("a", shape=(nchunks,), chunks=(1,), dtype="i2")[:] = 1
    g.create_array("b", shape=(nchunks,), chunks=(1,), dtype="i2")[:] = 2
    tip = s.commit("two arrays")
    repo = Repository.open(repo.storage)  # empty caches
    counter = CountingReads(repo.storage)
    store = repo.readonly_session(snapshot_id=tip).store
    members = sorted(zarr.open_group(store, mode="r").array_keys())
    assert members == ["a", "b"]
    assert not [k for k in counter.reads if k.startswith("manifests/")]
    assert run(repo.readonly_session("main")._workspace.list_dir("a")) == {"zarr.json", "c"}
    assert not [k for k in counter.reads if k.startswith("manifests/")]


def test_list_dir_after_appends_and_deletions_reads_no_manifest_when_certain() -> None:
    """Stacked layers (appends) keep listings manifest-free; only tombstones make them read.

    A box whose newest layers can hide at most fewer keys than an older layer
    sets still holds a chunk: the listing knows it without a manifest. When
    tombstones could hide everything, the listing reads the manifests and is
    still right.
    """
    repo = _repo(manifest_box_refs=64)  # 8 chunks per step: 8 steps per box
    s = repo.writable_session("main")
    g = zarr.open_group(s.store, mode="w", zarr_format=3)
    arr = g.create_array("a", shape=(1, 8), chunks=(1, 1), dtype="i2", fill_value=0)
    arr[:] = 1
    s.commit("step 0")
    for step in range(1, 4):  # appends: one new layer per box each time
        s = repo.writable_session("main")
        arr = zarr.open_array(s.store, path="a")
        arr.resize((step + 1, 8))
        arr[step] = step + 1
        tip = s.commit(f"step {step}")
    node = _node(repo, tip, "a")
    assert not node.exact and node.surely_nonempty  # layers stacked, none deleting
    repo = Repository.open(repo.storage)  # empty caches
    counter = CountingReads(repo.storage)
    ws = repo.readonly_session(snapshot_id=tip)._workspace
    assert run(ws.list_dir("")) == {"zarr.json", "a"}
    assert run(ws.list_dir("a")) == {"zarr.json", "c"}
    assert not [k for k in counter.reads if k.startswith("manifests/")]


@pytest.mark.parametrize("keep", [True, False])
def test_list_dir_through_tombstones_reads_the_manifests(keep: bool) -> None:
    """Tombstones that may hide every older reference: the listing reads and is right."""
    repo = _repo(manifest_box_refs=64)  # one box of 8 x 8 chunks
    s = repo.writable_session("main")
    arr = zarr.create_array(s.store, name="a", shape=(8, 8), chunks=(1, 1), dtype="i2")
    arr[:] = 1  # a layer of 64 references
    s.commit("all")
    for rows in range(0, 8, 2):  # delete two rows (16 chunks) per commit
        s = repo.writable_session("main")
        arr = zarr.open_array(s.store, path="a")
        arr[rows : rows + 2] = 0  # the fill value: deleted
        if keep and rows == 6:
            arr[7, 7] = 9
        tip = s.commit(f"rows {rows}, {rows + 1}")
    node = run(repo._assets.get_snapshot(tip)).nodes["a"]
    stack = node.boxes["0.0"]
    assert [(x.n_set, x.n_del) for x in stack][1:] == [(0, 48), (64, 0)]  # tombstones kept
    assert node.surely_nonempty is keep
    listed = run(repo.readonly_session(snapshot_id=tip)._workspace.list_dir("a"))
    assert listed == ({"zarr.json", "c"} if keep else {"zarr.json"})
    back = zarr.open_array(repo.readonly_session(snapshot_id=tip).store, path="a", mode="r")
    assert back[:].sum() == (9 if keep else 0)


@pytest.mark.parametrize("name", ["c", "g/c", "c/c", "c0"])
def test_arrays_named_c_own_their_chunks(name: str) -> None:
    repo = _repo()
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w", zarr_format=3)
    arr = zarr.create_array(s.store, name=name, shape=(4,), chunks=(2,), dtype="i4")
    arr[:] = 1
    status = s.status()
    assert status.updated_chunks == {"/" + name: [(0,), (1,)]}
    s.commit("create")
    # another session changes the root attributes while this one writes the array
    s1 = repo.writable_session("main")
    s2 = repo.writable_session("main")
    zarr.open_group(s1.store).attrs["x"] = 1
    s1.commit("root attributes")
    zarr.open_array(s2.store, path=name)[:] = 2
    s2.commit("array data")  # rebases: no conflict with the root's attributes
    back = repo.readonly_session("main").store
    assert zarr.open_array(back, path=name)[:].tolist() == [2, 2, 2, 2]
    assert zarr.open_group(back, mode="r").attrs["x"] == 1
    del root


@pytest.mark.parametrize("lead", [0, 1, 2])
@pytest.mark.parametrize("encoding", [("default", "/"), ("default", "."), ("v2", "."), ("v2", "/")])
def test_bulk_box_grouping_matches_the_key_by_key_rule(
    lead: int, encoding: tuple[str, str]
) -> None:
    """The bulk parser groups exactly as parse_chunk_suffix + box_key, valid keys or not."""
    from icechunk_dask.format import FLAT, box_key, group_boxes

    rng = random.Random(lead)
    name, sep = encoding
    node = "/".join(["g", "c", "7"][:lead])
    head = f"{node}/" if node else ""
    split = (3, 2)

    def key(coords: tuple[int, int]) -> str:
        body = sep.join(map(str, coords))
        return head + (f"c{sep}{body}" if name == "default" else body)

    valid = [key((rng.randrange(12), rng.randrange(5))) for _ in range(200)]
    odd = [
        head + "c/x/1",
        head + "c",
        head + "1",
        head + "c/01/2",
        head + "c/\u0661/2",
        head + "zarr",
    ]
    for keys in (valid, valid + odd, odd):
        if lead and sep != "/":
            continue  # the flush strips such keys first
        names, order, bounds = group_boxes(keys, encoding, split, lead=lead)
        got = {
            names[i]: sorted(keys[j] for j in order[bounds[i] : bounds[i + 1]].tolist())
            for i in range(len(names))
        }
        want: dict[str, list[str]] = {}
        for k in keys:
            coords = parse_chunk_suffix(k[len(head) :], encoding, 2)
            want.setdefault(FLAT if coords is None else box_key(coords, split), []).append(k)
        assert got == {b: sorted(ks) for b, ks in want.items()}


@pytest.mark.parametrize("split", [(1, 1), (7, 3), (10**6, 1000), (2**62, 13)])
@pytest.mark.parametrize(
    ("lead", "encoding"),
    [(0, ("default", "/")), (2, ("default", "/")), (0, ("v2", ".")), (0, ("default", "."))],
)
def test_bulk_box_parser_reads_numbers_of_any_length(
    split: tuple[int, int], lead: int, encoding: tuple[str, str]
) -> None:
    """Coordinates of 1 to 17 digits (and a leading zero) land in the key-by-key rule's box."""
    from icechunk_dask.format import box_key, group_boxes
    from icechunk_dask.format._boxes import _bulk_boxes

    rng = random.Random(sum(split) + lead)
    name, sep = encoding
    head = "gé/ü/" if lead else ""
    keys = []
    for _ in range(500):
        digits = [rng.randrange(1, 18), rng.randrange(1, 5)]
        parts = [str(rng.randrange(10 ** (w - 1), 10**w)) for w in digits]
        if rng.random() < 0.1:
            parts[0] = "0" + parts[0]
        body = sep.join(parts)
        keys.append(head + (f"c{sep}{body}" if name == "default" else body))
    boxes = _bulk_boxes(keys, encoding, split, lead=lead)
    assert boxes is not None  # the bulk path itself, not the fallback
    for k, row in zip(keys, boxes.tolist(), strict=True):
        coords = parse_chunk_suffix(k[len(head) :], encoding, 2)
        assert coords is not None
        assert ".".join(map(str, row)) == box_key(coords, split)
    # and the grouping, whether it counts boxes (few possible) or sorts them (huge extents)
    names, order, bounds = group_boxes(keys, encoding, split, lead=lead)
    got = {
        names[i]: sorted(keys[j] for j in order[bounds[i] : bounds[i + 1]].tolist())
        for i in range(len(names))
    }
    want: dict[str, list[str]] = {}
    for k, row in zip(keys, boxes.tolist(), strict=True):
        want.setdefault(".".join(map(str, row)), []).append(k)
    assert got == {b: sorted(ks) for b, ks in want.items()}
    assert sorted(order.tolist()) == list(range(len(keys)))
