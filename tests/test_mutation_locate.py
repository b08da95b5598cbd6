"""Which node a key belongs to (``format/_locate.py``, ``format/_keys.py``), exactly.

Fixed keys for each rule: the deepest array that prefixes a key, a root array,
keys under no array (the older ``split_key`` rule, a ``c`` component, a 0-d
array's chunk ``c``), metadata keys, and which documents make an array (found
missing by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask.format._keys import is_meta_key, split_key
from icechunk_dask.format._keys import node_of as dir_node
from icechunk_dask.format._locate import array_paths, node_of

V3_ARRAY = b'{"zarr_format": 3, "node_type": "array", "shape": [1]}'
V3_GROUP = b'{"zarr_format": 3, "node_type": "group", "attributes": {"kind": "array"}}'


def test_array_paths() -> None:
    meta: dict[str, bytes | None] = {
        "bad/zarr.json": b'{"node_type": "array"',  # not JSON: skipped, the rest still read
        "list/zarr.json": b'["array"]',  # JSON but not an object
        "zarr.json": V3_ARRAY,  # the root
        "g/zarr.json": V3_GROUP,  # mentions "array" but is a group
        "g/a/zarr.json": V3_ARRAY,
        "v2/.zarray": b"{}",
        "v2g/.zgroup": b"{}",
        "gone/zarr.json": None,
        "gone2/.zarray": None,
        "noq/zarr.json": b'{"node_type": "group"}',
        "g/a/c/0": V3_ARRAY,  # not a metadata document
    }
    assert array_paths(meta) == frozenset({"", "g/a", "v2"})
    assert array_paths({}) == frozenset()
    assert array_paths({".zarray": b"{}"}) == frozenset({""})
    # a deleted document first: skipped, the rest still read
    assert array_paths({"x/zarr.json": None, "a/zarr.json": V3_ARRAY}) == frozenset({"a"})


@pytest.mark.parametrize(
    ("key", "arrays", "want"),
    [
        ("a/c/0", {"a"}, ("a", "c/0")),
        ("a/b/c/0", {"a", "a/b"}, ("a/b", "c/0")),  # the deepest array
        ("a/b/c/0", {"a"}, ("a", "b/c/0")),
        ("a/x", {"a"}, ("a", "x")),
        ("ab/c/0", {"a"}, ("ab", "c/0")),  # "a" is no prefix of the node "ab"
        ("c/0/0", {""}, ("", "c/0/0")),  # a root array
        ("x/c/0", {"", "x"}, ("x", "c/0")),
        ("x/y/c/0", {""}, ("", "x/y/c/0")),
        ("k", {"a"}, ("", "k")),  # under no array: split_key's rule
        ("g/c/c/0", {"a"}, ("g", "c/c/0")),
        ("g/c/c/0", {"g/c"}, ("g/c", "c/0")),  # an array named c owns its chunks
        ("g/c/c/0", set(), ("g", "c/c/0")),
        ("d/e/k", {"a"}, ("d/e", "k")),
    ],
)
def test_node_of(key: str, arrays: set[str], want: tuple[str, str]) -> None:
    assert node_of(key, frozenset(arrays)) == want


@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("a/c/0/1", ("a", "c/0/1")),
        ("a/c", ("a", "c")),  # a 0-d array's only chunk
        ("c", ("", "c")),
        ("c/0", ("", "c/0")),
        ("k", ("", "k")),
        ("a/b/k", ("a/b", "k")),
        ("g/c/c/0", ("g", "c/c/0")),  # the first c component
        ("g/x/c", ("g/x", "c")),
        ("g/c/c", ("g/c", "c")),  # a 0-d array's chunk, even in a directory named c
        ("c/c", ("c", "c")),
        ("g/c/x", ("g", "c/x")),
    ],
)
def test_split_key(key: str, want: tuple[str, str]) -> None:
    assert split_key(key) == want


def test_the_node_of_a_directory() -> None:
    assert dir_node("") == ""
    assert dir_node("a") == "a"
    assert dir_node("a/b") == "a/b"
    assert dir_node("a/c") == "a"
    assert dir_node("a/c/0") == "a"
    assert dir_node("c/0") == ""
    assert dir_node("a/cc/c/1") == "a/cc"
    assert dir_node("a/b/c/c/c") == "a/b"


@pytest.mark.parametrize(
    ("key", "meta"),
    [
        ("zarr.json", True),
        ("a/zarr.json", True),
        ("a/b/.zarray", True),
        (".zgroup", True),
        ("g/.zattrs", True),
        (".zmetadata", True),
        ("a/zarr.jsonx", False),
        ("zarr.json/c/0", False),
        ("a/c/0", False),
        ("", False),
    ],
)
def test_is_meta_key(key: str, meta: bool) -> None:
    assert is_meta_key(key) is meta
