"""Grouping a commit's chunk changes by node (``_bynode.group_by_node``), exactly.

``group_by_node`` has a bulk path (prefix tests over all keys, for arrays in
Zarr's default key encoding) and a per-directory path; both must give exactly
the grouping of ``node_of``. These compare it with that rule on fixed key
sets that go through each path and each switch between them (found missing
by mutation testing, issue 13).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import CorruptObjectError, Repository, RepositoryConfig, in_memory_storage
from icechunk_dask._bynode import group_by_node
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._flush import (
    _keeps_layout,
    _Layout,
    _layout_of,
    _nodes_to_rewrite,
    _per_box,
    _runs,
    _under,
    _write_node,
    planned_layout,
    write_snapshot,
)
from icechunk_dask._layers import LayerWriter
from icechunk_dask._manifests import load_box, load_node
from icechunk_dask._sync import run
from icechunk_dask.format import (
    ChunkRef,
    Layer,
    NodeManifests,
    RepoConfig,
    Snapshot,
    array_layout,
    box_key,
    group_boxes,
    new_id,
)
from icechunk_dask.format._locate import node_of
from icechunk_dask.format._refs_codec import join_keys

_OID = new_id()


def _ref(i: int) -> ChunkRef:
    return (_OID, i, 1, i)


def _expected(keys: list[str], arrays: frozenset[str]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for i, key in enumerate(keys):
        node, suffix = node_of(key, arrays)
        out.setdefault(node, []).append((suffix, i))
    return out


def _check(keys: list[str], arrays: frozenset[str]) -> dict[str, tuple[list[str], list, str]]:
    chunks = {k: (_ref(i) if i % 5 else None) for i, k in enumerate(keys)}
    got = group_by_node(chunks, arrays)
    assert set(got) == set(_expected(keys, arrays))
    for node, (node_keys, refs, strip) in got.items():
        assert len(node_keys) == len(refs)
        head = f"{node}/" if node else ""
        assert strip in ("", head)
        if node == "":
            assert strip == ""  # a root array's keys are their own suffixes
        if strip:
            assert all(k.startswith(strip) for k in node_keys)
        suffixes = [k[len(strip) :] for k in node_keys]
        want = _expected(keys, arrays)[node]
        assert len(suffixes) == len(want)  # each key once (their order does not matter)
        assert dict(zip(suffixes, refs, strict=True)) == {s: chunks[keys[i]] for s, i in want}
    # asked for the joins: the same grouping, and each join is its node's keys as they are
    joined: dict[str, bytes] = {}
    assert group_by_node(chunks, arrays, joined) == got
    for node, blob in joined.items():
        assert got[node][2] == (f"{node}/" if node else "")  # only nodes grouped in bulk
        assert blob == "\0".join(got[node][0]).encode()
    return got


def test_one_array_in_the_default_encoding_is_split_off_in_bulk() -> None:
    keys = [f"a/c/{i}/0" for i in range(6)]
    got = _check(keys, frozenset({"a"}))
    assert got["a"][2] == "a/" and got["a"][0] == keys


def test_several_arrays_interleaved_and_a_group_level_key() -> None:
    keys = ["a/c/0", "b/c/1", "a/c/1", "g/x/c/2", "b/c/0", "g/x/c/0", "loose", "a/c/2"]
    got = _check(keys, frozenset({"a", "b", "g/x"}))
    assert {n: s for n, (_, _, s) in got.items() if s} == {"a": "a/", "b": "b/", "g/x": "g/x/"}


def test_nested_arrays_go_key_by_key() -> None:
    keys = ["a/c/0", "a/b/c/0", "a/c/1", "a/b/c/1", "a/b/x", "a/bc/c/0"]
    got = _check(keys, frozenset({"a", "a/b"}))
    assert got["a"][2] == "" and got["a/b"][2] == ""  # nested: never in bulk


def test_a_root_array_and_arrays_under_it() -> None:
    _check(["c/0/0", "c/1/0", "c/0/1"], frozenset({""}))
    _check(["c/0", "x/c/0", "c/1", "x/c/1"], frozenset({"", "x"}))


def test_other_key_encodings_and_non_arrays_go_key_by_key() -> None:
    keys = ["v2/0.0", "v2/0.1", "v2/1.0", "dotted/c.0.1", "dotted/c.1.1", "plain/k/1", "plain/k/2"]
    got = _check(keys, frozenset({"v2", "dotted"}))
    assert all(s == "" for _, _, s in got.values())


def test_a_bulk_node_met_again_key_by_key_becomes_suffixes() -> None:
    # "a" is split off in bulk, then "v2" stops the bulk path; "a/zarr.json"-like
    # leftovers of "a" that are not chunk keys come later
    keys = ["a/c/0", "a/c/1", "v2/0.0", "a/extra", "a/c/2", "v2/0.1"]
    got = _check(keys, frozenset({"a", "v2"}))
    assert got["a"][2] == ""
    assert sorted(got["a"][0]) == ["c/0", "c/1", "c/2", "extra"]


@pytest.mark.parametrize("n", [15, 16, 17, 20])
def test_more_arrays_than_the_bulk_path_takes(n: int) -> None:
    arrays = frozenset(f"n{i}" for i in range(n))
    keys = [f"n{i}/c/{j}" for j in range(3) for i in range(n)]
    got = _check(keys, arrays)
    assert sum(1 for _, _, s in got.values() if s) == min(n, 16)


def test_a_key_named_c_and_directories_seen_twice() -> None:
    # a key whose last part is "c" is never memoized (it may be an array's chunk "c")
    keys = ["g/k/c", "g/k/d", "g/k/c/0", "h/c", "h/c/0", "g/k/e"]
    _check(keys, frozenset({"h"}))
    _check(keys, frozenset())
    assert group_by_node({}, frozenset({"a"})) == {}


@pytest.mark.parametrize(
    "keys", [["a/c/0", "a/c/c", "a/c/1"], ["a/c/c", "a/c/0", "a/c/1"]], ids=["0-first", "c-first"]
)
def test_one_directory_two_nodes_when_a_key_is_named_c(keys: list[str]) -> None:
    # with no array named: "a/c/0" belongs to "a", "a/c/c" to "a/c" (a 0-d array's chunk),
    # so the directory "a/c" must not be memoized from, or looked up for, the key named "c"
    got = _check(keys, frozenset())
    assert sorted(got["a"][0]) == ["c/0", "c/1"] and got["a/c"][0] == ["c"]


def test_an_array_inside_another_arrays_c_directory_is_never_taken_in_bulk() -> None:
    # "a/c/x" is an array under "a": a bulk split of "a/c/" would take its keys
    _check(["a/c/0", "a/c/x/c/0", "a/c/1", "a/c/x/c/1"], frozenset({"a", "a/c/x"}))
    # "g" is no array (the c rule names it): a bulk split of "g/c/" would take "g/c/x"'s keys
    _check(["g/c/0", "g/c/x/c/0", "g/c/1"], frozenset({"g/c/x"}))


def test_bulk_nodes_are_found_with_the_views_arrays() -> None:
    got = _check(["g/c/c/0", "g/c/c/1"], frozenset({"g/c"}))  # an array named c
    assert got["g/c"][2] == "g/c/"
    # a root array first, then arrays under it: each split off in bulk
    got = _check(["c/0", "x/c/0", "y/c/0", "c/1", "x/c/1"], frozenset({"", "x", "y"}))
    assert (got[""][2], got["x"][2], got["y"][2]) == ("", "x/", "y/")


def test_one_whole_array_is_taken_at_once_with_its_join() -> None:
    """Every key in one array: the join tests the prefix; a sample that misses a stray key
    does not fool it (the stray key sits between the sampled ones)."""
    keys = [f"a/c/{i}" for i in range(1000)]
    got = _check(keys, frozenset({"a"}))
    assert got["a"][0] == keys and got["a"][2] == "a/"
    for stray in ("a/x", "b/c/0", "a/c", "a\0/c/1"):
        odd = [*keys[:501], stray, *keys[501:]]  # not among the 64 sampled keys
        got = _check(odd, frozenset({"a", "b"}))
        assert len(got["a"][0]) == 1000 + stray.startswith("a/")


@pytest.mark.parametrize("bad", ["a/c/1\0", "a/c/\0/1", "a/c/\ud800"])
def test_a_key_with_a_nul_or_that_utf8_cannot_encode_gets_no_join(bad: str) -> None:
    for keys in ([f"a/c/{i}" for i in range(100)], [f"{n}/c/{i}" for i in range(9) for n in "ab"]):
        keys = [*keys[:50], bad, *keys[50:]]
        joined: dict[str, bytes] = {}
        got = group_by_node(dict.fromkeys(keys), frozenset({"a", "b"}), joined)
        assert bad in got["a"][0] and "a" not in joined
        assert joined.get("b", b"") == "\0".join(got.get("b", ([], [], ""))[0]).encode()


def test_a_bulk_node_that_gets_keys_one_by_one_loses_its_join() -> None:
    keys = ["a/c/0", "a/c/1", "v2/0.0", "a/extra", "b/c/0"]
    joined: dict[str, bytes] = {}
    got = group_by_node(dict.fromkeys(keys), frozenset({"a", "b", "v2"}), joined)
    assert got["a"][2] == "" and joined == {}
    # a root array keeps its keys as they are, bulk or not: its join goes all the same
    keys = ["c/0", "c/1", "v2/0.0", "x/y", "c/2"]
    got = _check(keys, frozenset({"", "v2"}))
    joined = {}
    assert group_by_node(dict.fromkeys(keys), frozenset({"", "v2"}), joined) == {
        n: (k, [None] * len(k), s) for n, (k, _, s) in got.items()
    }
    assert joined == {}


# -- the commit's layout decisions (``_under``, ``_keeps_layout``, ``_layout_of``, ...) --------

ENC = ("default", "/")


def _doc(shape: list[int], chunks: list[int], **extra: object) -> bytes:
    doc: dict[str, object] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": "int32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        **extra,
    }
    return json.dumps(doc).encode()


def _cfg(**changes: object) -> RepoConfig:
    return dataclasses.replace(Repository.create(in_memory_storage())._assets.config, **changes)


@pytest.mark.parametrize(
    ("path", "prefix", "under"),
    [
        ("a", "", True),
        ("", "", True),
        ("a", "a", True),
        ("a/b", "a", True),
        ("a/b/c", "a", True),
        ("ab", "a", False),
        ("a", "a/b", False),
        ("", "a", False),
        ("b/a", "a", False),
    ],
)
def test_under(path: str, prefix: str, under: bool) -> None:
    assert _under(path, prefix) is under


@pytest.mark.parametrize(
    ("nm", "layout", "keeps"),
    [
        (NodeManifests(legacy=("m",)), None, False),  # format 1: always rewritten
        (NodeManifests(ENC, (2,), legacy=("m",)), (ENC, (2,)), False),
        (NodeManifests(), None, True),  # a directory of keys stays one
        (NodeManifests(), (ENC, (2,)), False),  # an array replaced a directory of keys
        (NodeManifests(ENC, (2,)), None, False),  # ... or the reverse
        (NodeManifests(ENC, (2, 4)), (ENC, (2, 4)), True),
        (NodeManifests(ENC, (2, 4)), (ENC, (8, 1)), True),  # a layout is kept for life
        (NodeManifests(ENC, (2, 4)), (("default", "."), (2, 4)), False),
        (NodeManifests(ENC, (2, 4)), (("v2", "/"), (2, 4)), False),
        (NodeManifests(ENC, (2, 4)), (ENC, (2,)), False),  # another number of dimensions
        (NodeManifests(ENC, (2,)), (ENC, (2, 4)), False),
    ],
)
def test_keeps_layout(nm: NodeManifests, layout: _Layout, keeps: bool) -> None:
    assert _keeps_layout(nm, layout) is keeps


def test_layout_of_reads_the_arrays_metadata_and_the_split_overrides() -> None:
    cfg = _cfg(manifest_box_refs=4)
    doc = _doc([8, 8], [1, 1], dimension_names=["t", "x"])
    meta = {"a/zarr.json": doc, "zarr.json": doc, "ab/zarr.json": doc, "bad/zarr.json": b"{"}
    arrays = frozenset({"a", "", "ab", "bad", "gone"})
    want = array_layout(json.loads(doc), 4)
    assert want is not None
    assert _layout_of("a", meta, arrays, cfg) == want
    assert _layout_of("", meta, arrays, cfg) == want  # the root array's document
    assert _layout_of("g", meta, arrays, cfg) is None  # no array
    assert _layout_of("gone", meta, arrays, cfg) is None  # no document
    assert _layout_of("bad", meta, arrays, cfg) is None  # not JSON
    assert _layout_of("a", meta, frozenset({"ab"}), cfg) is None
    # the first pattern that matches the whole path wins
    split = {"a": {"t": 3}, "a.*": {"t": 5}, ".*": {"x": 2}}
    cfg = _cfg(manifest_box_refs=4, manifest_splits=split)
    assert _layout_of("a", meta, arrays, cfg) == array_layout(json.loads(doc), 4, {"t": 3})
    assert _layout_of("ab", meta, arrays, cfg) == array_layout(json.loads(doc), 4, {"t": 5})
    assert _layout_of("", meta, arrays, cfg) == array_layout(json.loads(doc), 4, {"x": 2})
    assert len({_layout_of(n, meta, arrays, cfg) for n in ("a", "ab", "")}) == 3


def test_planned_layout() -> None:
    cfg = _cfg(manifest_box_refs=4)
    doc = _doc([8], [1])
    new = array_layout(json.loads(doc), 4)
    kept = NodeManifests(ENC, (3,), {"0": (Layer("m", 1),)})
    snap = Snapshot(
        "s",
        None,
        "t",
        "m",
        {},
        {"a/zarr.json": doc, "d/zarr.json": doc},
        {"a": kept, "d": NodeManifests(), "f": NodeManifests(legacy=("m",))},
    )
    meta = {"a/zarr.json": doc, "d/zarr.json": doc, "f/zarr.json": doc, "n/zarr.json": doc}
    assert planned_layout(snap, meta, set(), cfg, "a") == (ENC, (3,))  # kept for life
    assert planned_layout(snap, meta, set(), cfg, "n") == new  # a new node
    assert planned_layout(snap, meta, {"a"}, cfg, "a") == new  # re-created after delete_dir
    assert planned_layout(snap, meta, {""}, cfg, "a") == new
    assert planned_layout(snap, meta, {"ab"}, cfg, "a") == (ENC, (3,))
    assert planned_layout(snap, meta, set(), cfg, "d") is None  # a directory became an array
    assert planned_layout(snap, meta, set(), cfg, "f") is None  # f was no array (and format 1)
    assert planned_layout(snap, {}, set(), cfg, "a") is None  # no longer an array
    assert planned_layout(snap, {}, set(), cfg, "x") is None


def test_per_box_groups_a_nodes_changes_by_box() -> None:
    refs: list[ChunkRef | None] = [_ref(i) for i in range(5)]
    keys = ["c/0", "c/3", "c/1", "zz", "c/2"]
    assert _per_box(keys, refs, "", None, (2,)) == {"": (keys, refs, None)}
    assert _per_box(keys, refs, "", ENC, None) == {"": (keys, refs, None)}
    got = _per_box(keys, refs, "", ENC, (2,))
    assert got == {
        "0": (["c/0", "c/1"], [refs[0], refs[2]], None),
        "1": (["c/3", "c/2"], [refs[1], refs[4]], None),
        "": (["zz"], [refs[3]], None),
    }
    one = _per_box(["c/0", "c/1"], refs[:2], "", ENC, (4,))
    assert one == {"0": (["c/0", "c/1"], refs[:2], None)}
    # whole keys with the node's prefix: kept with "/" separators, stripped first for "."
    whole = _per_box(["g/a/c/0", "g/a/c/5"], refs[:2], "g/a/", ENC, (4,))
    assert whole == {"0": (["g/a/c/0"], [refs[0]], None), "1": (["g/a/c/5"], [refs[1]], None)}
    dotted = _per_box(["g/a/c.0", "g/a/c.5"], refs[:2], "g/a/", ("default", "."), (4,))
    assert dotted == {"0": (["c.0"], [refs[0]], None), "1": (["c.5"], [refs[1]], None)}
    single = _per_box(["g/a/c.0", "g/a/c.1"], refs[:2], "g/a/", ("default", "."), (4,))
    assert single == {"0": (["c.0", "c.1"], refs[:2], None)}
    # a "." encoding: the join cannot be parsed (it splits at "/"), the keys are, no blobs
    joined = b"g/a/c.0\0g/a/c.5"
    assert (
        _per_box(["g/a/c.0", "g/a/c.5"], refs[:2], "g/a/", ("default", "."), (4,), joined) == dotted
    )


def _box_by_box(keys: list[str], refs: list[ChunkRef | None], split: tuple[int, ...]) -> dict:
    """What ``_per_box`` must give, one key at a time (chunk keys ``c/i/j``, else ``FLAT``)."""
    want: dict[str, tuple[list[str], list[ChunkRef | None]]] = {}
    for key, ref in zip(keys, refs, strict=True):
        parts = key.split("/")
        box = box_key([int(p) for p in parts[1:]], split) if parts[0] == "c" else ""
        want.setdefault(box, ([], []))
        want[box][0].append(key)
        want[box][1].append(ref)
    return want


@pytest.mark.parametrize("order", ["rows", "columns", "reversed", "shuffled"])
def test_per_box_gives_each_box_its_keys_in_order_however_they_come(order: str) -> None:
    keys = [f"c/{i}/{j}" for i in range(16) for j in range(24)]  # rows cross 3 boxes of 8
    if order == "columns":
        keys = [f"c/{i}/{j}" for j in range(24) for i in range(16)]
    elif order == "reversed":
        keys.reverse()
    elif order == "shuffled":
        keys = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    keys.insert(37, "zz")  # not a chunk key: the flat box, in the middle of a run
    refs: list[ChunkRef | None] = [_ref(i) for i in range(len(keys))]
    names, index, bounds = group_boxes(keys, ENC, (8, 8))
    # neighbours in the list stay neighbours in their box (copied as slices), unless shuffled
    assert (_runs(index, bounds) is not None) == (order != "shuffled")
    got = _per_box(keys, refs, "", ENC, (8, 8))
    want = _box_by_box(keys, refs, (8, 8))
    assert got == {b: (k, r, None) for b, (k, r) in want.items()}
    assert list(got) == names
    # given the keys joined: the same boxes; each box's keys joined as its manifest stores
    # them, sliced from the join where the box is made of runs (without "zz": bulk only)
    keys.remove("zz")
    refs = refs[: len(keys)]
    head = "g/a/"
    whole = [head + k for k in keys]
    got = _per_box(whole, refs, head, ENC, (8, 8), "\0".join(whole).encode())
    want = _box_by_box(keys, refs, (8, 8))
    assert list(got) == group_boxes(keys, ENC, (8, 8))[0]
    for box, (k, r, blob) in got.items():
        assert k == [head + x for x in want[box][0]] and r == want[box][1]
        if order == "shuffled":
            assert blob is None
        else:  # made when the manifest is encoded
            assert callable(blob) and blob() == join_keys(k, head)
    # one box: its keys are the join as it is, less the prefix
    k, r, blob = _per_box(
        whole[:2], refs[:2], head, ENC, (100, 100), "\0".join(whole[:2]).encode()
    )["0.0"]
    assert (k, r) == (whole[:2], refs[:2]) and callable(blob)
    assert blob() == join_keys(whole[:2], head)


def test_runs_stop_at_box_bounds_and_gaps() -> None:
    index = np.array([0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16])
    assert _runs(index, [0, 3, 14]) == ([0, 3, 9], [3, 6, 17], [0, 1, 3])
    assert _runs(index, [0, 14]) == ([0, 9], [6, 17], [0, 2])
    # runs shorter than _MIN_RUN keys on average: key by key
    assert _runs(np.array([3, 2, 1, 0, 4, 5, 6, 7]), [0, 8]) is None


def test_nodes_to_rewrite() -> None:
    layout = (ENC, (2,))
    nodes = {
        "keep": NodeManifests(ENC, (2,)),
        "old": NodeManifests(legacy=("m",)),
        "dir": NodeManifests(),
        "gone": NodeManifests(ENC, (2,)),
        "g": NodeManifests(),
        "x": NodeManifests(),
        "cut": NodeManifests(ENC, (2,)),
        "cutsib": NodeManifests(ENC, (2,)),
        "other": NodeManifests(legacy=("m",)),
    }
    layouts = {"keep": layout, "old": layout, "dir": layout, "cut": layout, "other": None}
    arrays = frozenset({"keep", "old", "dir", "g/new", "cut", "cutsib"})
    before = frozenset({"keep", "old", "gone", "cut", "cutsib"})
    touched = {"keep", "old", "dir"}
    redo = _nodes_to_rewrite(nodes, touched, layouts, arrays, before, {"cut/sub", "cutsib"})
    # old: format 1 and changed; dir: became an array; gone: no longer an array;
    # g: an array was created under it; cut: a delete_dir inside it
    assert redo == {"old", "dir", "gone", "g", "cut"}
    # an array added above existing nodes takes their keys
    redo = _nodes_to_rewrite(
        {"top/a": NodeManifests(), "topx": NodeManifests()},
        set(),
        {},
        frozenset({"top"}),
        frozenset(),
        set(),
    )
    assert redo == {"top/a"}
    assert (
        _nodes_to_rewrite({"": NodeManifests()}, set(), {}, frozenset(), frozenset(), {""}) == set()
    )


def test_write_node_keeps_its_layout_stacks_prebuilt_layers_and_drops_empty_nodes() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig(manifest_max_layers=8))
    writer = LayerWriter(repo._assets)

    def write(*args: Any, **kw: Any) -> NodeManifests | None:
        return run(_write_node(writer, *args, **kw))

    layout = (ENC, (2,))
    new = write("a", None, layout, ["c/0", "c/3"], [_ref(0), _ref(3)], "")
    assert new is not None and (new.encoding, new.split) == layout
    assert sorted(new.boxes) == ["0", "1"]
    # an existing node keeps its layout whatever the metadata says now
    again = write("a", new, (ENC, (8,)), ["a/c/1"], [_ref(1)], "a/")
    assert again is not None and (again.encoding, again.split) == layout
    assert again.boxes["1"] == new.boxes["1"]
    both = {"c/0": _ref(0), "c/1": _ref(1)}  # stored as suffixes
    assert run(load_box(repo._assets, "a", "0", again.boxes["0"])) == both
    flat = write("d", None, None, ["x", "y"], [_ref(1), _ref(2)], "")
    assert flat is not None and (flat.encoding, flat.split, list(flat.boxes)) == (None, None, [""])
    # deleting every key of a box drops the box, of every box the node
    fewer = write("a", again, layout, ["c/3"], [None], "")
    assert fewer is not None and sorted(fewer.boxes) == ["0"]
    assert write("a", fewer, layout, ["c/0", "c/1"], [None, None], "") is None
    # pre-built layers go on top of their boxes, under the box's own changes
    base = write(
        "b", None, layout, ["c/0", "c/2", "c/3", "c/4"], [_ref(i) for i in (0, 2, 3, 4)], ""
    )
    assert base is not None
    pre_layer = run(writer.write("b", "1", ["c/2", "c/3"], [_ref(7), _ref(8)]))
    only = run(writer.write("b", "2", ["c/5"], [_ref(5)]))
    pre = NodeManifests(ENC, (2,), {"1": (pre_layer,), "2": (only,)})
    stacked = write("b", base, layout, ["c/3"], [_ref(9)], "", pre)
    assert stacked is not None
    # stacked alone (no changes in the box): no layer written, the old ones kept below
    assert stacked.boxes["2"] == (only, *base.boxes["2"])
    assert stacked.boxes["0"] == base.boxes["0"]
    box1 = run(load_box(repo._assets, "b", "1", stacked.boxes["1"]))
    assert box1 == {"c/2": _ref(7), "c/3": _ref(9)}
    # whole keys with "." separators are stripped for the boxes' layers
    dotted = write(
        "g/a", None, (("default", "."), (2,)), ["g/a/c.0", "g/a/c.3"], [_ref(0), _ref(3)], "g/a/"
    )
    assert dotted is not None
    first = run(repo._assets.get_manifest(dotted.boxes["0"][0].id, "g/a", "0"))
    assert first == {"c.0": _ref(0)}


# -- whole commits (``write_snapshot``) ---------------------------------------------------------


def _base(repo: Repository) -> str:
    s = repo.writable_session("main")
    root = zarr.open_group(s.store, mode="w")
    g = root.create_group("g")
    for parent, name in ((root, "a"), (root, "ab"), (g, "a"), (g, "b")):
        arr = parent.create_array(name, shape=(4,), chunks=(1,), dtype="i4", fill_value=0)
        arr[:] = np.arange(1, 5)
    return s.commit("base")


def test_a_commit_drops_exactly_the_nodes_under_a_deleted_directory() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig(manifest_box_refs=2))
    base = _base(repo)
    s = repo.writable_session("main")
    run(s.store.delete_dir("a"))
    run(s.store.delete_dir("g/a"))
    zarr.open_array(s.store, path="g/b")[0] = 9
    sid = s.commit("cut")
    snap = run(repo._assets.get_snapshot(sid))
    assert set(snap.nodes) == {"ab", "g/b"}
    assert snap.parent_id == base and snap.message == "cut"
    assert "a/zarr.json" not in snap.meta and "ab/zarr.json" in snap.meta
    view = repo.readonly_session("main").store
    assert zarr.open_array(view, path="ab")[:].tolist() == [1, 2, 3, 4]
    assert zarr.open_array(view, path="g/b")[:].tolist() == [9, 2, 3, 4]
    log = run(repo._assets.get_transaction_log(sid))
    assert (log.snapshot_id, log.parent_id) == (sid, base)
    assert set(log.cleared) == {"a", "g/a"}
    assert set(log.meta_keys) == {"a/zarr.json", "g/a/zarr.json"}
    assert set(log.chunk_keys) == {"g/b/c/0"}
    assert dict(log.layers) == {}
    # the root cleared: every node goes
    s = repo.writable_session("main")
    run(s.store.delete_dir(""))
    assert run(repo._assets.get_snapshot(s.commit("all"))).nodes == {}


def test_an_array_recreated_after_delete_dir_gets_its_new_layout() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig(manifest_box_refs=2))
    _base(repo)
    s = repo.writable_session("main")
    run(s.store.delete_dir("a"))
    arr = zarr.create_array(s.store, name="a", shape=(2, 8), chunks=(1, 1), dtype="i4")
    arr[:] = 5
    sid = s.commit("again")
    nm = run(repo._assets.get_snapshot(sid)).nodes["a"]
    assert nm.split is not None and len(nm.split) == 2
    assert zarr.open_array(repo.readonly_session("main").store, path="a")[:].sum() == 80
    # a delete_dir inside a node rewrites it without the deleted keys
    s = repo.writable_session("main")
    run(s.store.delete_dir("a/c/1"))
    sid = s.commit("half")
    back = zarr.open_array(repo.readonly_session("main").store, path="a")[:]
    assert back.tolist() == [[5] * 8, [0] * 8]
    rewritten = run(repo._assets.get_snapshot(sid)).nodes["a"]
    assert (rewritten.encoding, rewritten.split) == (nm.encoding, nm.split)  # still in boxes
    keys = run(load_node(repo._assets, "a", rewritten))
    assert sorted(keys) == [f"c/0/{j}" for j in range(8)]


def test_write_node_compacts_a_box_with_too_many_stacked_layers_as_its_node_and_box() -> None:
    storage = in_memory_storage()
    repo = Repository.create(storage, RepositoryConfig(manifest_max_layers=1))
    writer = LayerWriter(repo._assets)
    layout = (ENC, (2,))
    base = run(_write_node(writer, "b", None, layout, ["c/4"], [_ref(4)], ""))
    assert base is not None
    pre = NodeManifests(ENC, (2,), {"2": (run(writer.write("b", "2", ["c/5"], [_ref(5)])),)})
    got = run(_write_node(writer, "b", base, layout, [], [], "", pre))
    assert got is not None and len(got.boxes["2"]) == 1  # 2 layers > 1: compacted
    fresh = Repository.open(storage)._assets  # nothing cached: the header is checked
    assert run(load_box(fresh, "b", "2", got.boxes["2"])) == {"c/4": _ref(4), "c/5": _ref(5)}


def test_metadata_created_and_deleted_in_one_session_commits_as_nothing() -> None:
    repo = Repository.create(in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="x", shape=(2,), chunks=(1,), dtype="i4")
    run(s.store.delete("x/zarr.json"))  # never committed: a deletion of nothing
    assert s.changes().meta["x/zarr.json"] is None
    snap = run(repo._assets.get_snapshot(s.commit("nothing of x")))
    assert "x/zarr.json" not in snap.meta and "zarr.json" in snap.meta


# -- write_snapshot on hand-made change sets (pre-built layers, rewrites, damage) --------------


class _Commit:
    """A repository with a base commit, and ``write_snapshot`` called on hand-made changes."""

    def __init__(self, **config: Any) -> None:
        self.storage = in_memory_storage()
        self.repo = Repository.create(self.storage, RepositoryConfig(**config))
        self.assets = self.repo._assets
        self.writer = LayerWriter(self.assets)

    def base(self, build: Any) -> Snapshot:
        s = self.repo.writable_session("main")
        build(s.store)
        return run(self.assets.get_snapshot(s.commit("base")))

    def changes(self, parent: Snapshot) -> ChangeSet:
        return ChangeSet(self.assets.config.repo_id, parent.id)

    def write(self, parent: Snapshot, changes: ChangeSet, assets: Any = None) -> Snapshot:
        return run(write_snapshot(assets or self.assets, parent, changes, "m", {}, "t"))


def _square(store: Any) -> None:
    zarr.create_array(store, name="a", shape=(4, 4), chunks=(1, 1), dtype="i4")[:] = 1
    zarr.create_array(store, name="b", shape=(4, 4), chunks=(1, 1), dtype="i4")[:] = 2


def test_prebuilt_layers_of_a_node_that_keeps_its_layout_are_stacked_as_they_are() -> None:
    c = _Commit(manifest_box_refs=8)
    parent = c.base(_square)
    assert parent.nodes["a"].split == (2, 4)
    # the arrays grow: their metadata now gives another split, the nodes keep theirs
    grown = json.loads(parent.meta["a/zarr.json"])
    grown["shape"] = [4, 8]
    changes = c.changes(parent)
    changes.meta["a/zarr.json"] = changes.meta["b/zarr.json"] = json.dumps(grown).encode()
    layer = run(c.writer.write("a", "0.0", ["c/0/0"], [_ref(1)]))
    changes.layers["a"] = NodeManifests(ENC, (2, 4), {"0.0": (layer,)})
    # b's layers were built for another layout: loaded and written as changes
    other = run(c.writer.write("b", "0.0", ["c/0/0"], [_ref(2)]))
    changes.layers["b"] = NodeManifests(ENC, (1, 8), {"0.0": (other,)})
    snap = c.write(parent, changes)
    assert snap.nodes["a"].boxes["0.0"][0] == layer  # stacked, by id
    assert snap.nodes["a"].split == (2, 4) and snap.nodes["b"].split == (2, 4)
    assert other not in snap.nodes["b"].boxes["0.0"]
    log = run(c.assets.get_transaction_log(snap.id))
    assert dict(log.layers) == {"a": {"0.0": (layer.id,)}}
    assert set(log.chunk_keys) == {"b/c/0/0"}  # only the loaded layers' keys
    fresh = Repository.open(c.storage)._assets
    assert run(load_box(fresh, "a", "0.0", snap.nodes["a"].boxes["0.0"]))["c/0/0"] == _ref(1)
    assert run(load_box(fresh, "b", "0.0", snap.nodes["b"].boxes["0.0"]))["c/0/0"] == _ref(2)


def test_a_root_array_is_rewritten_with_its_keys_as_they_are() -> None:
    repo = Repository.create(in_memory_storage(), RepositoryConfig(manifest_box_refs=2))
    s = repo.writable_session("main")
    zarr.create_array(s.store, shape=(2, 2), chunks=(1, 1), dtype="i4")[:] = [[1, 2], [3, 4]]
    s.commit("root array")
    s = repo.writable_session("main")
    run(s.store.delete_dir("c/1"))  # inside the root node: it is rewritten
    s.commit("half")
    back = zarr.open_array(repo.readonly_session("main").store)[:]
    assert back.tolist() == [[1, 2], [0, 0]]


def test_a_rewritten_node_reads_its_manifests_as_that_node() -> None:
    c = _Commit(manifest_box_refs=8)
    parent = c.base(_square)
    # a snapshot whose node "a" names a manifest of node "b" (an object copied over)
    wrong = dict(parent.nodes)
    wrong["a"] = parent.nodes["b"]
    damaged = dataclasses.replace(parent, nodes=wrong)
    changes = c.changes(damaged)
    changes.cleared.add("a/c/1")  # a delete_dir inside "a": the node is rewritten
    fresh = Repository.open(c.storage)._assets  # nothing cached: every header checked
    with pytest.raises(CorruptObjectError, match="not the one expected there"):
        c.write(damaged, changes, fresh)


def test_a_node_whose_every_chunk_is_deleted_leaves_the_snapshot() -> None:
    repo = Repository.create(in_memory_storage())
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(2,), chunks=(1,), dtype="i4")[:] = 7
    zarr.create_array(s.store, name="b", shape=(2,), chunks=(1,), dtype="i4")[:] = 8
    s.commit("base")
    s = repo.writable_session("main")
    run(s.store.delete("a/c/0"))
    run(s.store.delete("a/c/1"))
    snap = run(repo._assets.get_snapshot(s.commit("empty a")))
    assert set(snap.nodes) == {"b"}
    view = repo.readonly_session("main").store
    assert zarr.open_array(view, path="a")[:].tolist() == [0, 0]
    assert zarr.open_array(view, path="b")[:].tolist() == [8, 8]
