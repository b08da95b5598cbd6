"""The columnar encoding of chunk references (``format/_refs_codec.py``), exactly.

Pins the stored bytes of both encoders (the columnar fast path and the general one
with inline chunks and deletions), every decoding path (all references to objects,
mixed kinds, inline chunks at several places) and every refusal, with its message
(found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from icechunk_dask.format._refs_codec import (
    ChunkRef,
    chunk_checksum,
    decode_refs,
    encode_ref_columns,
    encode_refs,
    join_keys,
    object_ids,
    ref_columns,
    same_chunk,
)

COUNTS = struct.Struct("<QQQQ")
WRONG_SIZE = "^chunk reference columns have the wrong size$"
DISAGREE = "^chunk reference columns disagree in length$"


def _u64(*values: int) -> bytes:
    return np.array(values, dtype=np.uint64).tobytes()


# -- same_chunk and the checksum ----------------------------------------------------------------


def test_chunk_checksum_is_xxh3_64() -> None:
    assert chunk_checksum(b"") == 0x2D06800538D394C2
    assert chunk_checksum(memoryview(b"abc")) == chunk_checksum(b"abc")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (None, None, True),
        (None, ("o", 0, 1, 2), False),
        (("o", 0, 1, 2), None, False),
        (("o", 0, 1, 2), ("p", 9, 1, 2), True),  # same length and checksum: same content
        (("o", 0, 1, 2), ("o", 0, 3, 2), False),  # another length
        (("o", 0, 1, 2), ("o", 0, 1, 3), False),  # another checksum
        ((b"x", 0, 1, 2), (b"x", 5, 1, 2), True),
        ((b"x", 0, 1, 2), (b"y", 0, 1, 2), False),  # inline bytes compared
        ((b"x", 0, 1, 2), ("o", 0, 1, 2), True),  # inline vs object: length and checksum
        (("o", 0, 1, 2), (b"x", 0, 1, 2), True),
    ],
)
def test_same_chunk(a: ChunkRef | None, b: ChunkRef | None, same: bool) -> None:
    assert same_chunk(a, b) is same


# -- ref_columns and join_keys ------------------------------------------------------------------


def test_ref_columns_transposes_object_references() -> None:
    cols = ref_columns([("a", 1, 2, 3), ("b", 4, 5, 2**64 - 1)])
    assert cols is not None
    ids, offs, lens, sums = cols
    assert ids == b"a\0b"  # the stored form
    for arr, want in ((offs, [1, 4]), (lens, [2, 5]), (sums, [3, 2**64 - 1])):
        assert arr.dtype == np.uint64
        assert arr.tolist() == want


@pytest.mark.parametrize(
    "refs",
    [
        [],
        [("a", 1, 2, 3), None],
        [None],
        [("a", 1, 2, 3), (b"inline", 0, 6, 1)],
        [(b"inline", 0, 6, 1)],
        [(b"inline", 0, 6, 1), ("a", 1, 2, 3)],
        [None, ("a", 1, 2, 3)],
    ],
)
def test_ref_columns_refuses_deletions_inline_chunks_and_nothing(
    refs: list[ChunkRef | None],
) -> None:
    assert ref_columns(refs) is None


def test_join_keys() -> None:
    assert join_keys(["a/c/0", "a/c/1"]) == b"a/c/0\0a/c/1"
    assert join_keys(["a/c/0", "a/c/1"], "a/") == b"c/0\0c/1"
    assert join_keys(["c/0"], "") == b"c/0"
    assert join_keys([], "a/") == b""
    # only the prefix is removed, not the same text further in a key
    assert join_keys(["a/a/0", "a/x/a/"], "a/") == b"a/0\0x/a/"


# -- the stored bytes ---------------------------------------------------------------------------


def test_the_columnar_form_is_pinned() -> None:
    data = encode_refs(["k0", "k1"], [("id0", 1, 2, 3), ("id1", 4, 5, 6)])
    assert data == b"".join(
        (
            COUNTS.pack(2, 5, 7, 0),
            b"k0\0k1",
            b"id0\0id1",
            b"\0\0",  # kinds: both in chunk objects
            _u64(1, 4),
            _u64(2, 5),
            _u64(3, 6),
        )
    )
    cols = ref_columns([("id0", 1, 2, 3), ("id1", 4, 5, 6)])
    assert cols is not None
    assert encode_ref_columns(["k0", "k1"], *cols) == data  # the default: nothing stripped
    assert encode_ref_columns(["p/k0", "p/k1"], *cols, strip="p/") == data
    # the stored keys given joined: the same bytes; joins of another count are refused
    assert encode_ref_columns(["p/k0", "p/k1"], *cols, strip="p/", key_blob=b"k0\0k1") == data
    for wrong in (b"k0", b"k0\0k1\0k2"):
        with pytest.raises(ValueError, match="not 2"):
            encode_ref_columns(["k0", "k1"], *cols, key_blob=wrong)


def test_the_general_form_is_pinned() -> None:
    keys = ["a", "bb", "c", "d"]
    refs: list[ChunkRef | None] = [("obj", 7, 3, 11), None, (b"xyz", 0, 3, 12), (b"", 0, 0, 13)]
    data = encode_refs(keys, refs)
    assert data == b"".join(
        (
            COUNTS.pack(4, 8, 6, 3),
            b"a\0bb\0c\0d",
            b"obj\0\0\0",  # no id for a deletion or an inline chunk
            bytes([0, 2, 1, 1]),  # kinds: object, deleted, inline, inline
            _u64(7, 0, 0, 0),
            _u64(3, 0, 3, 0),
            _u64(11, 0, 12, 13),
            b"xyz",
        )
    )
    assert decode_refs(data) == (keys, refs)


def test_nothing_encodes_to_empty_columns() -> None:
    assert encode_refs([], []) == COUNTS.pack(0, 0, 0, 0)
    assert decode_refs(COUNTS.pack(0, 0, 0, 0)) == ([], [])
    assert object_ids(COUNTS.pack(0, 0, 0, 0)) == []


# -- decoding -----------------------------------------------------------------------------------


def test_object_references_round_trip_with_large_values() -> None:
    keys = ["c/0/0", "c/0/1", "c/1/0"]
    refs: list[ChunkRef | None] = [("o1", 0, 10, 2**64 - 1), ("o1", 10, 5, 0), ("o2", 2**40, 1, 7)]
    got_keys, got_refs = decode_refs(encode_refs(keys, refs))
    assert got_keys == keys and got_refs == refs
    assert all(type(r[1]) is int and type(r[0]) is str for r in got_refs if r is not None)


def test_mixed_kinds_round_trip_inline_chunks_anywhere() -> None:
    keys = [f"k{i}" for i in range(7)]
    refs: list[ChunkRef | None] = [
        (b"first", 0, 5, 1),
        ("o", 3, 4, 2),
        None,
        (b"second!", 0, 7, 3),
        (b"", 0, 0, 4),
        ("p", 0, 9, 5),
        (b"last", 0, 4, 6),
    ]
    got_keys, got_refs = decode_refs(encode_refs(keys, refs))
    assert got_keys == keys
    assert got_refs == refs
    kinds = [type(r[0]) for r in got_refs if r is not None]
    assert kinds == [bytes, str, bytes, bytes, str, bytes]


def test_only_deletions_round_trip() -> None:
    assert decode_refs(encode_refs(["a", "b"], [None, None])) == (["a", "b"], [None, None])
    assert object_ids(encode_refs(["a", "b"], [None, None])) == []


def test_a_trailing_byte_or_a_missing_byte_is_refused() -> None:
    data = encode_refs(["a", "b"], [("o", 0, 1, 2), (b"in", 0, 2, 3)])
    for bad in (data + b"\0", data[:-1]):
        with pytest.raises(ValueError, match=WRONG_SIZE):
            decode_refs(bad)
        with pytest.raises(ValueError, match=WRONG_SIZE):
            object_ids(bad)
    plain = encode_refs(["a"], [("o", 0, 1, 2)])
    with pytest.raises(ValueError, match=WRONG_SIZE):
        object_ids(plain + b"\0")
    with pytest.raises(ValueError, match=WRONG_SIZE):
        object_ids(plain[:-1])


@pytest.mark.parametrize("size", [0, 1, 31])
def test_columns_shorter_than_their_counts_are_refused_as_a_value_error(size: int) -> None:
    """A body too short for the counts is a ValueError (the callers' CorruptObjectError),
    not a ``struct.error`` that escapes them (found by the mutation campaign)."""
    with pytest.raises(ValueError, match=WRONG_SIZE):
        decode_refs(bytes(size))
    with pytest.raises(ValueError, match=WRONG_SIZE):
        object_ids(bytes(size))


def _columns(n: int, keys: bytes, ids: bytes, kinds: bytes, inline: bytes = b"") -> bytes:
    return b"".join(
        (COUNTS.pack(n, len(keys), len(ids), len(inline)), keys, ids, kinds)
        + (bytes(8 * n),) * 3
        + (inline,)
    )


@pytest.mark.parametrize(
    ("keys", "ids"),
    [
        (b"a\0b\0c", b"o\0p"),  # three keys for two references
        (b"a\0b", b"o\0p\0q"),  # three ids
        (b"a", b"o\0p"),
        (b"a\0b", b"o"),
    ],
)
def test_columns_that_disagree_in_length_are_refused(keys: bytes, ids: bytes) -> None:
    data = _columns(2, keys, ids, b"\0\0")
    with pytest.raises(ValueError, match=DISAGREE):
        decode_refs(data)
    if ids.count(b"\0") != 1:
        with pytest.raises(ValueError, match=DISAGREE):
            object_ids(data)
    else:
        assert object_ids(data) == ["o", "p"]  # the keys are not read


def test_object_ids_reads_only_object_references() -> None:
    refs: list[ChunkRef | None] = [
        ("o1", 0, 1, 1),
        None,
        (b"in", 0, 2, 2),
        ("o2", 0, 1, 3),
        ("o1", 1, 1, 4),  # a pack: once per reference
    ]
    data = encode_refs([f"k{i}" for i in range(5)], refs)
    assert object_ids(data) == ["o1", "o2", "o1"]
    plain = encode_refs(["a", "b", "c"], [("x", 0, 1, 1), ("y", 0, 1, 2), ("x", 1, 1, 3)])
    assert object_ids(plain) == ["x", "y", "x"]


def test_object_ids_checks_the_size_with_inline_bytes_and_long_keys() -> None:
    refs: list[ChunkRef | None] = [(b"inline bytes", 0, 12, 1), ("obj", 0, 1, 2)]
    data = encode_refs(["a long key " * 5, "another long key"], refs)
    assert object_ids(data) == ["obj"]


def test_the_general_form_keeps_64_bit_values() -> None:
    """Offsets, lengths and checksums are unsigned 64-bit in every path (a checksum of
    2**64 - 1 next to a small one must not make a float column)."""
    big = 2**64 - 1
    refs: list[ChunkRef | None] = [("o", big, 2**63 + 1, big), None, (b"x", 0, 1, 2**63 + 5)]
    data = encode_refs(["a", "b", "c"], refs)
    assert data[32 + 5 + 3 + 3 :][: 3 * 8] == _u64(big, 0, 0)
    assert data[32 + 5 + 3 + 3 + 24 :][:24] == _u64(2**63 + 1, 0, 1)
    assert data[32 + 5 + 3 + 3 + 48 :][:24] == _u64(big, 0, 2**63 + 5)
    assert decode_refs(data) == (["a", "b", "c"], refs)
