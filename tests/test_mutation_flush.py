"""Grouping a commit's chunk changes by node (``_flush.group_by_node``), exactly.

``group_by_node`` has a bulk path (prefix tests over all keys, for arrays in
Zarr's default key encoding) and a per-directory path; both must give exactly
the grouping of ``node_of``. These compare it with that rule on fixed key
sets that go through each path and each switch between them (found missing
by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask._flush import group_by_node
from icechunk_dask.format import ChunkRef, new_id
from icechunk_dask.format._locate import node_of

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
