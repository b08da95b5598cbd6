"""Mutation-campaign tests for icechunk_dask/format/_boxes.py (issue 13).

Fixed inputs, no Hypothesis: the key-by-key rule (``parse_chunk_suffix`` + ``box_key``)
at its edges, the bulk parser against it (each reason it steps aside, batches, long
numbers, the shortcut for boxes spanning every number of a length), the three ways
``group_boxes`` groups (counting, sorting integers, sorting rows) with their exact
output, and the layout chosen for an array document.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from icechunk_dask.format import (
    FLAT,
    _boxes,
    array_layout,
    box_key,
    choose_split,
    group_boxes,
    group_joined,
    parse_chunk_suffix,
)
from icechunk_dask.format._boxes import UNBOUNDED, _bulk_boxes

DEFAULT = ("default", "/")
V2 = ("v2", ".")


# -- the key-by-key rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "encoding", "ndim", "coords"),
    [
        ("c/0/7", DEFAULT, 2, (0, 7)),
        ("c/007/1", DEFAULT, 2, (7, 1)),  # leading zeros are the same number
        ("c/1/2", ("default", "."), 2, None),  # wrong separator
        ("c.1.2", ("default", "."), 2, (1, 2)),
        ("c/1/2", DEFAULT, 3, None),  # too few coordinates
        ("c/1/2/3", DEFAULT, 2, None),  # too many
        ("c//2", DEFAULT, 2, None),  # an empty coordinate
        ("c/+1/2", DEFAULT, 2, None),  # int() would take these three
        ("c/1_0/2", DEFAULT, 2, None),
        ("c/\u0661/2", DEFAULT, 2, None),  # an Arabic-Indic digit
        ("c/ 1/2", DEFAULT, 2, None),
        ("c/-1/2", DEFAULT, 2, None),
        ("x/1/2", DEFAULT, 2, None),
        ("c/1/2", ("other", "/"), 2, None),  # an encoding we do not know
        ("c", DEFAULT, 0, ()),
        ("c/0", DEFAULT, 0, None),
        ("0", DEFAULT, 0, None),
        ("0", V2, 0, ()),
        ("c", V2, 0, None),
        ("1", V2, 0, None),
        ("3.4", V2, 2, (3, 4)),
        ("3.4.5", V2, 2, None),
        ("3/4", V2, 2, None),
        ("3/4", ("v2", "/"), 2, (3, 4)),
        ("c/3/4", ("v2", "/"), 2, None),
    ],
)
def test_the_key_by_key_rule_at_its_edges(
    suffix: str, encoding: tuple[str, str], ndim: int, coords: tuple[int, ...] | None
) -> None:
    assert parse_chunk_suffix(suffix, encoding, ndim) == coords


def test_box_keys_divide_each_coordinate_by_its_extent() -> None:
    assert box_key((0, 0), (2, 3)) == "0.0"
    assert box_key((5, 7), (2, 3)) == "2.2"
    assert box_key((12,), (UNBOUNDED,)) == "0"
    assert box_key((), ()) == ""
    with pytest.raises(ValueError, match="shorter"):
        box_key((1, 2), (1,))


# -- the bulk parser -----------------------------------------------------------------------


def _rule(keys: list[str], encoding: tuple[str, str], split: tuple[int, ...], lead: int) -> list:
    """Box index rows by the key-by-key rule (None for a key that is not a chunk key)."""
    out = []
    for k in keys:
        suffix = k.split("/", lead)[lead] if lead else k
        c = parse_chunk_suffix(suffix, encoding, len(split))
        out.append(None if c is None else [x // e for x, e in zip(c, split, strict=True)])
    return out


@pytest.mark.parametrize(
    ("keys", "encoding", "split", "lead"),
    [
        (["c/0/1", "c/5/9", "c/10/2"], DEFAULT, (3, 4), 0),
        (["c.0.1", "c.5.9"], ("default", "."), (2, 2), 0),
        (["0.1", "5.9", "12.0"], V2, (5, 5), 0),
        (["0/1", "5/9"], ("v2", "/"), (5, 5), 0),
        (["g/c/0/1", "g/c/7/3"], DEFAULT, (2, 2), 1),
        (["a/b/c/0/1", "a/b/c/7/3"], DEFAULT, (2, 2), 2),
        (["g/0/1", "g/7/3"], ("v2", "/"), (2, 2), 1),
        (["c/123/4", "c/99/4"], DEFAULT, (1000, 1), 0),  # one box along the first axis
        (["c/00012/4", "c/7/4"], DEFAULT, (10, 3), 0),  # a leading zero
        ([f"c/{10**17 + 3}/1", "c/5/1"], DEFAULT, (7, 1), 0),  # 18 digits
        ([f"c/{10**17}/1"], DEFAULT, (UNBOUNDED, 1), 0),
    ],
)
def test_the_bulk_parser_gives_the_rules_boxes(
    keys: list[str], encoding: tuple[str, str], split: tuple[int, ...], lead: int
) -> None:
    boxes = _bulk_boxes(keys, encoding, split, lead)
    assert boxes is not None
    assert boxes.dtype == np.int64 and boxes.shape == (len(keys), len(split))
    assert boxes.tolist() == _rule(keys, encoding, split, lead)


@pytest.mark.parametrize(
    ("keys", "encoding", "split", "lead"),
    [
        ([], DEFAULT, (2,), 0),  # nothing to parse
        (["c"], DEFAULT, (), 0),  # a 0-d array
        (["c/1"], ("other", "/"), (2,), 0),
        (["c//1"], ("default", "//"), (2,), 0),  # a separator of two characters
        (["c\u00b71"], ("default", "\u00b7"), (2,), 0),  # not ASCII
        (["g/c.1"], ("default", "."), (2,), 1),  # with a node path, "/" only
        (["c/1/2"], DEFAULT, (2,), 0),  # too many tokens
        (["c/1", "c"], DEFAULT, (2,), 0),  # too few
        (["x/1"], DEFAULT, (2,), 0),  # not "c"
        (["cc/1"], DEFAULT, (2,), 0),
        (["/1"], DEFAULT, (2,), 0),
        (["c/"], DEFAULT, (2,), 0),  # an empty coordinate (at the end)
        (["c//", "c/1"], DEFAULT, (2,), 0),
        (["c/1x"], DEFAULT, (2,), 0),
        (["c/1x"], DEFAULT, (UNBOUNDED,), 0),  # checked although box 0 needs no parse
        (["c/5/x"], DEFAULT, (3, 1000), 0),
        (["c/5/\u0661"], DEFAULT, (3, 1000), 0),
        (["c/1", "c/-2"], DEFAULT, (2,), 0),
        (["c/1:"], DEFAULT, (2,), 0),  # ":" is the byte after "9"
        (["1/"], ("v2", "."), (2,), 0),  # "/" is the byte before "0"
        (["c/\u0661"], DEFAULT, (2,), 0),
        (["1.x"], V2, (2, 2), 0),
        ([f"c/{10**18}"], DEFAULT, (7,), 0),  # 19 digits: beyond int64, the general path
    ],
)
def test_the_bulk_parser_steps_aside(
    keys: list[str], encoding: tuple[str, str], split: tuple[int, ...], lead: int
) -> None:
    assert _bulk_boxes(keys, encoding, split, lead) is None
    # and the grouping still follows the rule, key by key
    if keys and split:
        names, order, bounds = group_boxes(keys, encoding, split, lead=lead)
        got = {n: order[bounds[i] : bounds[i + 1]].tolist() for i, n in enumerate(names)}
        want: dict[str, list[int]] = {}
        for i, row in enumerate(_rule(keys, encoding, split, lead)):
            want.setdefault(FLAT if row is None else ".".join(map(str, row)), []).append(i)
        assert got == want


def test_a_box_spanning_every_number_of_a_length_is_box_zero_without_parsing() -> None:
    """With an extent of 10**digits or more, every coordinate of that many digits is in box 0."""
    keys = ["c/999/0", "c/5/1", "c/0/2"]
    assert _bulk_boxes(keys, DEFAULT, (1000, 1)).tolist() == [[0, 0], [0, 1], [0, 2]]
    assert _bulk_boxes(keys, DEFAULT, (999, 1)).tolist() == [[1, 0], [0, 1], [0, 2]]
    long = [f"c/{10**18 - 1}"]  # 18 digits, all nines: box 0 of an unbounded extent
    assert _bulk_boxes(long, DEFAULT, (UNBOUNDED,)).tolist() == [[0]]
    assert _bulk_boxes(long, DEFAULT, (10,)).tolist() == [[10**17 - 1]]


def test_the_bulk_parser_works_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_boxes, "_BATCH", 3)
    keys = [f"c/{i}/{i % 3}" for i in range(10)]
    boxes = _bulk_boxes(keys, DEFAULT, (4, 2))
    assert boxes is not None
    assert boxes.tolist() == [[i // 4, (i % 3) // 2] for i in range(10)]
    for bad in (0, 4, 9):  # a key that is no chunk key in the first, a middle, the last batch
        assert _bulk_boxes([*keys[:bad], "c/x/0", *keys[bad + 1 :]], DEFAULT, (4, 2)) is None


# -- grouping ------------------------------------------------------------------------------


def _groups(keys: list[str], split: tuple[int, ...]) -> tuple[list[str], list[list[int]]]:
    names, order, bounds = group_boxes(keys, DEFAULT, split)
    assert bounds[0] == 0 and bounds[-1] == len(keys) == len(order)
    return names, [order[bounds[i] : bounds[i + 1]].tolist() for i in range(len(names))]


def test_grouping_by_counting_boxes() -> None:
    """Few possible boxes: counted. Boxes in index order, each key's index in the order given."""
    keys = ["c/5/0", "c/0/0", "c/4/3", "c/1/1", "c/9/9", "c/0/2"]
    names, parts = _groups(keys, (2, 2))
    assert names == ["0.0", "0.1", "2.0", "2.1", "4.4"]
    assert parts == [[1, 3], [5], [0], [2], [4]]


def test_grouping_keeps_the_order_given_within_a_box() -> None:
    """Many keys per box: each box lists its keys' indices ascending (a stable sort)."""
    keys = [f"c/{i % 3}/{i}" for i in range(300)]
    names, parts = _groups(keys, (1, 1000))
    assert names == ["0.0", "1.0", "2.0"]
    assert parts == [list(range(b, 300, 3)) for b in range(3)]
    names, parts = _groups([*keys, "zarr.json"], (1, 1000))  # key by key
    assert names == ["0.0", "1.0", "2.0", FLAT]
    assert parts == [list(range(b, 300, 3)) for b in range(3)] + [[300]]


def test_grouping_by_sorting_box_numbers() -> None:
    """More possible boxes than keys + 65,536: box numbers are sorted instead of counted."""
    keys = ["c/0/300000", "c/70000/1", "c/3/300000", "c/70000/0", "c/0/0"]
    names, parts = _groups(keys, (1, 1))
    assert names == ["0.0", "0.300000", "3.300000", "70000.0", "70000.1"]
    assert parts == [[4], [0], [2], [3], [1]]


def test_grouping_by_sorting_rows_when_boxes_overflow_one_integer() -> None:
    big = 2**40
    keys = [f"c/{big}/{big}", "c/1/1", f"c/{big}/0", "c/1/1", "c/0/5"]
    names, parts = _groups(keys, (1, 1))
    assert names == ["0.5", "1.1", f"{big}.0", f"{big}.{big}"]
    assert parts == [[4], [1, 3], [2], [0]]


def test_grouping_more_than_65536_boxes() -> None:
    """Box indices that do not fit 16 bits are sorted as they are."""
    n = 70_000
    keys = [f"c/{n - 1 - i}" for i in range(n)]  # every key its own box, in reverse
    names, parts = _groups(keys, (1,))
    assert names == [str(i) for i in range(n)]
    assert parts == [[n - 1 - i] for i in range(n)]


def test_grouping_keys_that_are_no_chunk_keys_goes_key_by_key() -> None:
    keys = ["c/3", "zarr.json", "c/0", "c/x", "c/1"]
    names, parts = _groups(keys, (2,))
    assert names == ["1", FLAT, "0"]  # in the order first met
    assert parts == [[0], [1, 3], [2, 4]]
    names, parts = _groups(["g/c/3", "g/c/0"], (2,))
    assert (names, parts) == ([FLAT], [[0, 1]])  # without ``lead`` the node path is no chunk key
    names, order, bounds = group_boxes(["g/c/3", "g/c/0"], DEFAULT, (2,), lead=1)
    assert (names, order.tolist(), bounds) == (["0", "1"], [1, 0], [0, 1, 2])


# -- keys given joined by NUL ---------------------------------------------------------------


def _joined(keys: list[str], encoding: tuple[str, str], split: tuple[int, ...], lead: int = 0):
    return group_joined("\0".join(keys).encode(), len(keys), encoding, split, lead)


@pytest.mark.parametrize("lead", [0, 1, 2])
@pytest.mark.parametrize("encoding", [DEFAULT, ("v2", "/")])
def test_joined_keys_group_as_the_keys_do(encoding: tuple[str, str], lead: int) -> None:
    rng = np.random.default_rng(lead)
    head = "/".join(["g\u00e9", "a"][:lead])  # a multi-byte character before the chunk key
    c = "c/" if encoding == DEFAULT else ""
    keys = [
        f"{head}/{c}{i}/{j}/{k}".lstrip("/")
        for i, j, k in rng.integers(0, [40, 1000, 3], size=(3000, 3))
    ]
    keys = list(dict.fromkeys(keys))
    got = _joined(keys, encoding, (3, 100, 1), lead)
    assert got is not None
    names, order, bounds, offsets = got
    want = group_boxes(keys, encoding, (3, 100, 1), lead=lead)
    assert (names, order.tolist(), bounds) == (want[0], want[1].tolist(), want[2])
    blob = "\0".join(keys).encode()
    spans = pairwise(offsets.tolist())  # key i: from its start to the NUL before the next
    assert [blob[a : b - 1].decode() for a, b in spans] == keys


@pytest.mark.parametrize(
    ("keys", "n", "lead"),
    [
        (["c/1/2", "c/x/2"], 2, 0),  # no chunk key
        (["c/1/2", "zarr.json"], 2, 0),
        (["c/1/2", ""], 2, 0),  # an empty key
        (["", "c/1/2"], 2, 0),
        (["c/1/2", "c/3/4"], 3, 0),  # fewer keys than said
        (["c/1/2", "c/3/4"], 1, 0),  # more keys than said
        (["c/1", "2/c/3/4"], 2, 0),  # a NUL where a separator belongs, tokens line up
        (["c/1/2/c/3"], 2, 0),  # a separator where a NUL belongs
        (["a/c/1/2"], 1, 0),  # the node path needs ``lead``
        (["c/1/2"], 1, 1),
    ],
)
def test_joined_keys_that_are_no_chunk_keys_give_none(keys: list[str], n: int, lead: int) -> None:
    blob = "\0".join(keys).encode()
    assert group_joined(blob, n, DEFAULT, (2, 2), lead) is None


def test_joined_keys_need_the_slash_separator_and_a_known_encoding() -> None:
    assert _joined(["c.1.2"], ("default", "."), (2, 2)) is None
    assert _joined(["1.2"], V2, (2, 2)) is None
    assert _joined(["c/1/2"], ("other", "/"), (2, 2)) is None
    assert group_joined(b"", 0, DEFAULT, (2,)) is None
    assert _joined(["c"], DEFAULT, ()) is None  # a zero-dimensional array: key by key


def test_joined_keys_are_parsed_in_batches_of_whole_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_boxes, "_BATCH_BYTES", 8)  # about one key per batch
    keys = [f"c/{i}/{i % 3}" for i in range(30)]
    got = _joined(keys, DEFAULT, (4, 2))
    assert got is not None
    want = group_boxes(keys, DEFAULT, (4, 2))
    assert (got[0], got[1].tolist(), got[2]) == (want[0], want[1].tolist(), want[2])
    for bad in (0, 15, 29):  # a key that is no chunk key in the first, a middle, the last batch
        for odd in ("c/x/0", "", "c/1/2/3", "c/1"):
            assert _joined([*keys[:bad], odd, *keys[bad + 1 :]], DEFAULT, (4, 2)) is None


# -- the layout of an array ----------------------------------------------------------------


def test_choose_split_fills_the_target_along_the_first_dimension_it_can() -> None:
    assert choose_split((3, 4), 100) == (25, 4)
    assert choose_split((3, 4), 4) == (1, 4)  # one slab of the rest is the target
    assert choose_split((3, 4), 3) == (1, 3)  # ... bigger than it: split the next one too
    assert choose_split((3, 4, 5), 7) == (1, 1, 5)
    assert choose_split((3, 4, 5), 1) == (1, 1, 1)
    assert choose_split((0, 0), 10) == (10, 1)  # an empty grid counts as one chunk each
    assert choose_split((5,), 3) == (3,)
    assert choose_split((5, 2), 3, {}) == (UNBOUNDED, UNBOUNDED)
    assert choose_split((5, 2), 3, {1: 0, 0: 4}) == (4, 1)


def _doc(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [10, 6],
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2, 4]}},
    }
    doc.update(kw)
    return doc


def test_array_layout_of_documents() -> None:
    assert array_layout(_doc(), 100) == (DEFAULT, (50, 2))  # grid 5 x 2
    assert array_layout(_doc(), 1) == (DEFAULT, (1, 1))
    v2 = {"name": "v2", "configuration": {"separator": "/"}}
    assert array_layout(_doc(chunk_key_encoding=v2), 100) == (("v2", "/"), (50, 2))
    assert array_layout(_doc(chunk_key_encoding={"name": "v2"}), 100) == (V2, (50, 2))
    dot = {"name": "default", "configuration": {"separator": "."}}
    assert array_layout(_doc(chunk_key_encoding=dot), 100) == (("default", "."), (50, 2))
    empty = _doc(shape=[0, 6])
    assert array_layout(empty, 100) == (DEFAULT, (50, 2))
    zero = _doc(chunk_grid={"name": "regular", "configuration": {"chunk_shape": [0, 4]}})
    assert array_layout(zero, 100) == (DEFAULT, (50, 2))
    rect = {"name": "rectilinear", "configuration": {"chunk_shapes": [3, [1, 2, 3]]}}
    assert array_layout(_doc(chunk_grid=rect), 100) == (DEFAULT, (33, 3))  # grid 4 x 3
    rect_int = {"name": "rectilinear", "configuration": {"chunk_shapes": [[5, 5], 2]}}
    shape = [10, 7]  # grid 2 x 4: a slab of the first dimension is the target
    assert array_layout(_doc(shape=shape, chunk_grid=rect_int), 4) == (DEFAULT, (1, 4))
    rect0 = {"name": "rectilinear", "configuration": {"chunk_shapes": [0, [6]]}}
    assert array_layout(_doc(chunk_grid=rect0), 100) == (DEFAULT, (100, 1))  # grid 0 x 1
    named = _doc(dimension_names=["time", "x"])
    assert array_layout(named, 100, {"x": 1}) == (DEFAULT, (UNBOUNDED, 1))
    assert array_layout(named, 100, {0: 3, "y": 2, 5: 1, -1: 1}) == (DEFAULT, (3, UNBOUNDED))
    assert array_layout(_doc(), 100, {"x": 1}) == (DEFAULT, (UNBOUNDED, UNBOUNDED))
    assert array_layout(_doc(dimension_names=None), 100, {"x": 1}) == (
        DEFAULT,
        (UNBOUNDED, UNBOUNDED),
    )


@pytest.mark.parametrize(
    "doc",
    [
        _doc(zarr_format=2),
        _doc(node_type="group"),
        _doc(shape=None),
        _doc(shape=[10, -1]),
        _doc(shape=[10, 6.0]),
        _doc(shape=(10, 6)),
        _doc(chunk_grid=None),
        _doc(chunk_grid={"name": "regular"}),
        _doc(chunk_grid={"name": "regular", "configuration": {"chunk_shape": [2]}}),
        _doc(chunk_grid={"name": "regular", "configuration": {"chunk_shape": (2, 4)}}),
        _doc(chunk_grid={"name": "other", "configuration": {"chunk_shape": [2, 4]}}),
        _doc(chunk_grid={"name": "rectilinear", "configuration": {"chunk_shapes": [2]}}),
        _doc(chunk_grid={"name": "rectilinear", "configuration": {"chunk_shapes": [2, "a"]}}),
        _doc(chunk_grid={"name": "rectilinear"}),
        _doc(chunk_key_encoding=["default"]),
        _doc(chunk_key_encoding={"name": "other"}),
        _doc(chunk_key_encoding={"name": "default", "configuration": {"separator": "-"}}),
    ],
)
def test_array_layout_refuses_what_it_does_not_understand(doc: dict[str, object]) -> None:
    assert array_layout(doc, 100) is None
