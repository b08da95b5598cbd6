"""Config, transaction logs, branch entries, tags and scratch (``format/_objects.py``), exactly.

Each object's stored header is pinned field by field; decoding is checked for
format-1 objects (no self-naming fields, missing settings get the defaults),
objects read from another key, and fields that are missing or of the wrong type,
with the message (found missing by mutation testing, issue 13).
"""

from __future__ import annotations

import pytest

from icechunk_dask import CorruptObjectError
from icechunk_dask.format import (
    BranchRef,
    ObjectKind,
    RepoConfig,
    TagRef,
    TransactionLog,
    branch_ref_key,
    decode_object,
    decode_scratch,
    encode_object,
    encode_scratch,
    tag_key,
)

MISPLACED = (
    ", not the one its key names: an object was copied over another; the repository is damaged"
)


def _refused(decode: object, data: bytes, key: str, message: str) -> None:
    with pytest.raises(CorruptObjectError) as info:
        decode(data, key)  # type: ignore[operator]
    assert str(info.value) == message
    assert info.value.key == key


def test_keys() -> None:
    assert branch_ref_key("main", 7) == "refs/branch.main/00000000000000000007.json"
    assert (
        branch_ref_key("a.b", 12345678901234567890) == "refs/branch.a.b/12345678901234567890.json"
    )
    assert tag_key("v1") == "refs/tag.v1.json"
    assert tag_key("v1", deleted=True) == "refs/tag.v1.deleted.json"
    assert tag_key("v1", deleted=False) == "refs/tag.v1.json"


# -- config -------------------------------------------------------------------------------------


def test_config_stored_form_and_round_trip() -> None:
    cfg = RepoConfig(
        "R", 2, "t", inline_threshold=10, manifest_box_refs=100,
        manifest_splits={"a.*": {"time": 4, 1: 2}, "b": {}}, manifest_max_layers=5,
    )  # fmt: skip
    data = cfg.encode()
    header, body = decode_object(data, "config.json", ObjectKind.CONFIG)
    assert header == {
        "repo_id": "R",
        "format_version": 2,
        "created_at": "t",
        "inline_threshold": 10,
        "manifest_box_refs": 100,
        "manifest_splits": [["a.*", [["time", 4], [1, 2]]], ["b", []]],
        "manifest_max_layers": 5,
    }
    assert body == b""
    assert data[6] == 0  # flags: not compressed
    assert RepoConfig.decode(data, "config.json") == cfg
    assert list(RepoConfig.decode(data, "config.json").manifest_splits) == ["a.*", "b"]


def test_a_format1_config_gets_the_defaults() -> None:
    header = {"repo_id": "R", "format_version": "1", "created_at": "t", "inline_threshold": "8"}
    cfg = RepoConfig.decode(encode_object(ObjectKind.CONFIG, header), "config.json")
    assert cfg == RepoConfig("R", 1, "t", 8, 65536, {}, 32)
    assert RepoConfig("R", 1, "t") == RepoConfig("R", 1, "t", 64, 65536, {}, 32)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"repo_id": None}, "KeyError('repo_id')"),
        ({"format_version": None}, "KeyError('format_version')"),
        ({"created_at": None}, "KeyError('created_at')"),
        ({"inline_threshold": None}, "KeyError('inline_threshold')"),
        ({"format_version": "x"}, "ValueError"),
        ({"inline_threshold": []}, "TypeError"),
        ({"manifest_box_refs": "many"}, "ValueError"),
        ({"manifest_max_layers": "x"}, "ValueError"),
        ({"manifest_splits": [["a", [["t", "x"]]]]}, "ValueError"),
        ({"manifest_splits": 5}, "TypeError"),
    ],
)
def test_a_config_that_does_not_decode_is_refused(change: dict[str, object], error: str) -> None:
    header: dict[str, object] = {
        "repo_id": "R",
        "format_version": 2,
        "created_at": "t",
        "inline_threshold": 8,
    }
    header.update(change)
    header = {k: v for k, v in header.items() if v is not None}
    data = encode_object(ObjectKind.CONFIG, header)
    with pytest.raises(
        CorruptObjectError, match=r"object 'config\.json' cannot be decoded: "
    ) as info:
        RepoConfig.decode(data, "config.json")
    assert error in str(info.value) and info.value.key == "config.json"


# -- transaction logs ---------------------------------------------------------------------------


def test_transaction_log_stored_form_and_round_trip() -> None:
    log = TransactionLog(
        "S", "P", {"b/zarr.json", "a/zarr.json"}, {"a/c/0"}, {"z", "g"}, {"n": {"0": ("L1", "L2")}}
    )
    data = log.encode()
    header, body = decode_object(data, "transactions/S", ObjectKind.TRANSACTION)
    assert header == {
        "snapshot": "S",
        "parent": "P",
        "meta": ["a/zarr.json", "b/zarr.json"],
        "cleared": ["g", "z"],
        "nchunks": 1,
        "layers": {"n": {"0": ["L1", "L2"]}},
    }
    assert body == b"a/c/0"
    back = TransactionLog.decode(data, "transactions/S")
    assert back == TransactionLog(
        "S", "P", frozenset(log.meta_keys), frozenset({"a/c/0"}), frozenset({"z", "g"}), log.layers
    )
    two = TransactionLog("S", None, set(), {"k1", "k2"}).encode()
    header, body = decode_object(two, "transactions/S", ObjectKind.TRANSACTION)
    assert "layers" not in header and header["cleared"] == [] and header["parent"] is None
    assert sorted(body.split(b"\0")) == [b"k1", b"k2"]
    got = TransactionLog.decode(two, "transactions/S")
    assert got.chunk_keys == {"k1", "k2"} and got.parent_id is None
    assert got.cleared == frozenset() and got.layers == {}


def test_a_transaction_log_stores_the_joined_keys_it_is_given() -> None:
    """The commit hands over its keys already joined, in parts: the same stored keys."""
    log = TransactionLog("S", "P", set(), {"a/c/0", "a/c/1", "b/c/0"})
    data = log.encode([b"b/c/0", b"a/c/1\0a/c/0"])
    _, body = decode_object(data, "transactions/S", ObjectKind.TRANSACTION)
    assert body == b"b/c/0\0a/c/1\0a/c/0"
    assert TransactionLog.decode(data, "transactions/S") == log
    for wrong in ([b"a/c/0\0a/c/1"], [b"a/c/0", b"a/c/1", b"b/c/0", b"x"], []):
        with pytest.raises(ValueError, match="3 chunk keys"):
            log.encode(wrong)
    empty = TransactionLog("S", "P", set(), set())
    assert empty.encode([]) == empty.encode()
    with pytest.raises(ValueError, match="0 chunk keys"):
        empty.encode([b"k"])


def test_a_transaction_log_without_chunks() -> None:
    log = TransactionLog("S", "P", {"zarr.json"}, set())
    got = TransactionLog.decode(log.encode(), "transactions/S")
    assert got.chunk_keys == frozenset() and got.meta_keys == {"zarr.json"}
    # one chunk key that is the empty string is still one key
    one = TransactionLog.decode(TransactionLog("S", None, set(), {""}).encode(), "transactions/S")
    assert one.chunk_keys == {""}


def test_a_format1_transaction_log_has_no_cleared_prefixes_or_layers() -> None:
    header = {"snapshot": "S", "parent": None, "meta": ["m"], "nchunks": 2}
    data = encode_object(ObjectKind.TRANSACTION, header, b"a\0b")
    got = TransactionLog.decode(data, "transactions/S")
    assert got == TransactionLog("S", None, frozenset({"m"}), frozenset({"a", "b"}))


def test_a_transaction_log_that_does_not_match_is_refused() -> None:
    key = "transactions/S"
    bad = encode_object(
        ObjectKind.TRANSACTION, {"snapshot": "S", "parent": None, "meta": [], "nchunks": 3}, b"a\0b"
    )
    _refused(
        TransactionLog.decode,
        bad,
        key,
        f"object {key!r} cannot be decoded: ValueError('chunk count mismatch')",
    )
    dup = encode_object(
        ObjectKind.TRANSACTION, {"snapshot": "S", "parent": None, "meta": [], "nchunks": 2}, b"a\0a"
    )
    _refused(
        TransactionLog.decode,
        dup,
        key,
        f"object {key!r} cannot be decoded: ValueError('chunk count mismatch')",
    )
    for missing in ("snapshot", "parent", "meta", "nchunks"):
        header: dict[str, object] = {"snapshot": "S", "parent": None, "meta": [], "nchunks": 0}
        del header[missing]
        _refused(
            TransactionLog.decode, encode_object(ObjectKind.TRANSACTION, header), key,
            f"object {key!r} cannot be decoded: KeyError({missing!r})",
        )  # fmt: skip
    wrong = encode_object(
        ObjectKind.TRANSACTION, {"snapshot": "S", "parent": None, "meta": 5, "nchunks": 0}
    )
    with pytest.raises(CorruptObjectError, match="cannot be decoded: TypeError"):
        TransactionLog.decode(wrong, key)
    _refused(
        TransactionLog.decode, TransactionLog("T", None, set(), set()).encode(), key,
        f"object {key!r} is the transaction log of 'T'" + MISPLACED,
    )  # fmt: skip


# -- branch entries and tags --------------------------------------------------------------------


def test_branch_entry_stored_form_and_round_trip() -> None:
    ref = BranchRef("S", "P", "tok", "t")
    key = branch_ref_key("main", 3)
    data = ref.encode("main", 3)
    header, body = decode_object(data, key, ObjectKind.BRANCH_REF)
    assert header == {
        "branch": "main",
        "seq": 3,
        "snapshot": "S",
        "parent": "P",
        "token": "tok",
        "time": "t",
        "deleted": False,
    }
    assert body == b"" and data[6] == 0
    assert BranchRef.decode(data, key) == ref
    gone = BranchRef(None, "S", "tok2", "t2", deleted=True)
    assert BranchRef.decode(gone.encode("main", 4), branch_ref_key("main", 4)) == gone


def test_branch_entries_read_from_another_key_are_refused() -> None:
    data = BranchRef("S", None, "tok", "t").encode("main", 3)
    for key in (branch_ref_key("main", 4), branch_ref_key("dev", 3), "refs/branch.main/3.json"):
        _refused(
            BranchRef.decode, data, key, f"object {key!r} is entry 3 of branch 'main'" + MISPLACED
        )


def test_format1_branch_entries_do_not_name_themselves() -> None:
    header = {"snapshot": "S", "parent": None, "token": "x", "time": "t", "deleted": 0}
    data = encode_object(ObjectKind.BRANCH_REF, header)
    assert BranchRef.decode(data, "refs/branch.any/5.json") == BranchRef("S", None, "x", "t", False)
    for missing in ("snapshot", "parent", "token", "time", "deleted"):
        partial = {k: v for k, v in header.items() if k != missing}
        _refused(
            BranchRef.decode, encode_object(ObjectKind.BRANCH_REF, partial), "refs/k",
            f"object 'refs/k' cannot be decoded: KeyError({missing!r})",
        )  # fmt: skip


def test_tag_stored_form_and_round_trip() -> None:
    tag = TagRef("S", "tok", "t")
    data = tag.encode("v1")
    header, body = decode_object(data, tag_key("v1"), ObjectKind.TAG_REF)
    assert header == {"tag": "v1", "deleted": False, "snapshot": "S", "token": "tok", "time": "t"}
    assert body == b"" and data[6] == 0
    assert TagRef.decode(data, tag_key("v1")) == tag
    tomb = tag.encode("v1", deleted=True)
    assert decode_object(tomb, "k", ObjectKind.TAG_REF)[0]["deleted"] is True
    assert TagRef.decode(tomb, tag_key("v1", deleted=True)) == tag


def test_tags_read_from_another_key_are_refused() -> None:
    data = TagRef("S", "tok", "t").encode("v1")
    for key in (tag_key("v2"), tag_key("v1", deleted=True)):
        _refused(TagRef.decode, data, key, f"object {key!r} is tag 'v1'" + MISPLACED)
    tomb = TagRef("S", "tok", "t").encode("v1", deleted=True)
    _refused(
        TagRef.decode, tomb, tag_key("v1"), "object 'refs/tag.v1.json' is tag 'v1'" + MISPLACED
    )


def test_format1_tags_do_not_name_themselves() -> None:
    header = {"snapshot": "S", "token": "x", "time": "t"}
    assert TagRef.decode(encode_object(ObjectKind.TAG_REF, header), "refs/tag.any.json") == TagRef(
        "S", "x", "t"
    )
    for missing in ("snapshot", "token", "time"):
        partial = {k: v for k, v in header.items() if k != missing}
        _refused(
            TagRef.decode, encode_object(ObjectKind.TAG_REF, partial), "refs/k",
            f"object 'refs/k' cannot be decoded: KeyError({missing!r})",
        )  # fmt: skip


# -- scratch ------------------------------------------------------------------------------------


def test_scratch_round_trip_and_refusals() -> None:
    refs = {"a/c/0": ("o", 0, 1, 2), "a/c/1": None, "b": (b"in", 0, 2, 3)}
    data = encode_scratch("BASE", refs)  # type: ignore[arg-type]
    header, _ = decode_object(data, "scratch/x", ObjectKind.SCRATCH)
    assert header == {"base": "BASE"}
    assert decode_scratch(data, "scratch/x") == refs
    assert decode_scratch(encode_scratch("B", {}), "scratch/x") == {}
    short = encode_object(ObjectKind.SCRATCH, {"base": "B"}, b"short")
    _refused(
        decode_scratch, short, "scratch/x",
        "object 'scratch/x' cannot be decoded: ValueError('chunk reference columns have the wrong size')",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        (RepoConfig.decode, RepoConfig("R", 2, "t").encode()),
        (TransactionLog.decode, TransactionLog("K", None, set(), {"a"}).encode()),
        (BranchRef.decode, BranchRef("S", None, "x", "t").encode("b", 1)),
        (TagRef.decode, TagRef("S", "x", "t").encode("v")),
        (decode_scratch, encode_scratch("B", {"a": ("o", 0, 1, 2)})),
    ],
)
def test_damaged_objects_are_reported_with_their_key(decode: object, data: bytes) -> None:
    for bad in (data[:10], data[:-1] + bytes([data[-1] ^ 1])):
        with pytest.raises(CorruptObjectError, match=r"^object 'x/K' ") as info:
            decode(bad, "x/K")  # type: ignore[operator]
        assert info.value.key == "x/K"
