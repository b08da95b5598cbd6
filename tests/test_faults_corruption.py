"""Fault campaign, corruption: flipped bytes, truncation and loss of stored objects.

A repository on local disk holds two commits of one uncompressed array, a tag
and the transaction log a rebase reads. For each object the read path needs
(a chunk, a manifest, a snapshot, the branch-log entry at the tip, a tag, the
transaction log, the repository config) the test flips a bit in *every* byte (of a chunk
object: every byte a reference at the tip points at),
one at a time, truncates it at several lengths, appends a byte (envelopes only)
and deletes it. After each damage a fresh ``Repository`` reads through the
normal API; it must raise a :class:`CorruptObjectError` whose ``key`` names the
object (a flipped format-version byte may instead read as
:class:`FormatVersionError`, whose message names the key) and never return data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, ShardingCodec
from zarr.core.sync import sync

from icechunk_dask import (
    CorruptObjectError,
    FormatVersionError,
    NotFoundError,
    Repository,
    local_filesystem_storage,
)
from icechunk_dask.format import branch_ref_key, tag_key

ONE = np.arange(40)
TWO = np.concatenate([-np.arange(20), np.arange(20, 40)])
_VERSION_BYTE = 4  # offset of the format version in every envelope
_names = itertools.count()


class Scenario:
    """Two commits on ``main``, tag ``t`` at the tip; knows the keys of the tip's objects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        repo = Repository.create(local_filesystem_storage(root))
        session = repo.writable_session("main")
        array = zarr.create_array(
            session.store, name="a", shape=(40,), chunks=(20,), dtype="int64", compressors=None
        )
        array[:] = ONE
        self.parent = session.commit("one")
        session = repo.writable_session("main")
        array = zarr.open_array(session.store, path="a")
        array[:20] = TWO[:20]
        array.attrs["step"] = 2
        self.tip = session.commit("two")
        repo.create_tag("t", self.tip)
        snap = sync(repo._assets.get_snapshot(self.tip))
        (self.manifest,) = snap.nodes["a"].manifest_ids()
        refs = sync(repo._assets.get_manifest(self.manifest))
        self.chunks = sorted({ref[0] for ref in refs.values()})  # type: ignore[type-var]
        # Small chunks are packed: an object may also hold bytes no snapshot at the tip
        # references (the first commit's version of chunk 0). Damage there is harmless.
        self.live: dict[str, set[int]] = {}
        for loc, offset, length, _ in refs.values():
            self.live.setdefault(f"chunks/{loc}", set()).update(range(offset, offset + length))
        self.tip_seq = int(max(p.stem for p in (root / "refs" / "branch.main").glob("0*.json")))

    def fresh(self) -> Repository:
        return Repository.open(local_filesystem_storage(self.root))

    # -- the read paths, each returning what a user would get -----------------------------

    def read_tip(self) -> Any:
        session = self.fresh().readonly_session("main")
        array = zarr.open_array(session.store, path="a", mode="r")
        return array[:], dict(array.attrs)

    def read_tag(self) -> Any:
        return self.fresh().lookup_tag("t")

    def rebase_over_tip(self) -> Any:
        # a session based on the tip's parent commits after the tip landed: the rebase
        # reads the tip's transaction log
        repo = self.fresh()
        branch = f"rebase-{next(_names)}"
        repo.create_branch(branch, self.parent)
        session = repo.writable_session(branch)
        zarr.create_group(session.store, path=branch)  # disjoint from the tip's changes
        repo.reset_branch(branch, self.tip)
        return session.commit("over the tip")


def _damages(
    data: bytes, envelope: bool, live: set[int] | None = None
) -> Iterator[tuple[str, bytes]]:
    for i in range(len(data)):
        if live is not None and i not in live:
            continue
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        yield f"bit {i % 8} of byte {i}", bytes(flipped)
    for n in sorted({0, 1, len(data) // 2, len(data) - 1}):
        yield f"truncated to {n} bytes", data[:n]
    if envelope:
        yield "one byte appended", data + b"\0"
        version_zero = bytearray(data)
        version_zero[_VERSION_BYTE] = 0  # no such version: damage, not an older format
        yield "format version 0", bytes(version_zero)


def _targets(s: Scenario) -> list[tuple[str, str, Callable[[], Any]]]:
    return [
        *((f"chunk {i}", f"chunks/{c}", s.read_tip) for i, c in enumerate(s.chunks)),
        ("manifest", f"manifests/{s.manifest}", s.read_tip),
        ("snapshot", f"snapshots/{s.tip}", s.read_tip),
        ("branch ref", branch_ref_key("main", s.tip_seq), s.read_tip),
        ("tag ref", tag_key("t"), s.read_tag),
        ("transaction log", f"transactions/{s.tip}", s.rebase_over_tip),
        ("config", "config.json", s.read_tip),
    ]


def _outcome(read: Callable[[], Any], key: str, byte: int | None) -> str | None:
    """``None`` if the damage was reported properly, else what went wrong."""
    try:
        result = read()
    except CorruptObjectError as e:
        if e.key != key or key not in str(e):
            return f"CorruptObjectError names {e.key!r}: {e}"
        return None
    except FormatVersionError as e:
        if byte == _VERSION_BYTE and key in str(e):
            return None
        return f"FormatVersionError: {e}"
    except Exception as e:  # noqa: BLE001 - any other error is a finding
        return f"{type(e).__name__}: {e}"
    return f"not detected, returned {result!r:.60}"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return Scenario(tmp_path_factory.mktemp("corruption"))


def test_scenario_reads_cleanly(scenario: Scenario) -> None:
    values, attrs = scenario.read_tip()
    np.testing.assert_array_equal(values, TWO)
    assert attrs == {"step": 2}
    assert scenario.read_tag() == scenario.tip
    assert scenario.rebase_over_tip()  # disjoint chunks: the rebase succeeds
    assert len(scenario.chunks) == 2


@pytest.mark.parametrize(
    "target",
    [
        "chunk 0",
        "chunk 1",
        "manifest",
        "snapshot",
        "branch ref",
        "tag ref",
        "transaction log",
        "config",
    ],
)
def test_every_damage_is_detected_and_names_the_key(scenario: Scenario, target: str) -> None:
    (_, key, read) = next(t for t in _targets(scenario) if t[0] == target)
    path = scenario.root / key
    original = path.read_bytes()
    envelope = not key.startswith("chunks/")
    problems: list[str] = []
    tried = 0
    try:
        for label, damaged in _damages(original, envelope, scenario.live.get(key)):
            path.write_bytes(damaged)
            byte = int(label.rsplit(" ", 1)[1]) if label.startswith("bit") else None
            problem = _outcome(read, key, byte)
            tried += 1
            if problem is not None:
                problems.append(f"{label}: {problem}")
        if target != "branch ref":
            # (a branch log without its newest entry is the branch one commit earlier: the
            # log's shape cannot tell a lost entry from one never written)
            path.unlink()
            problem = _outcome(read, key, None)
            if problem is not None and "NotFoundError" not in problem:
                problems.append(f"deleted: {problem}")
    finally:
        path.write_bytes(original)
    assert tried >= len(scenario.live.get(key, original))
    assert not problems, f"{len(problems)} of {tried} damages of {key} mishandled:\n" + "\n".join(
        problems[:20]
    )


def test_a_damaged_hint_never_hides_the_tip(scenario: Scenario) -> None:
    # refs/branch.main/hint.json is a best-effort lower bound of the tip: any damage must
    # fall back to probing and listing, never show an older snapshot
    hint = scenario.root / "refs" / "branch.main" / "hint.json"
    original = hint.read_bytes()
    try:
        for damaged in (b"", b"garbage", b"-1", b"0", b"99999", b"\xff\xfe", original[:-1]):
            hint.write_bytes(damaged)
            assert scenario.fresh().lookup_branch("main") == scenario.tip, damaged
        hint.unlink()
        assert scenario.fresh().lookup_branch("main") == scenario.tip
    finally:
        hint.write_bytes(original)


def test_partial_reads_of_a_damaged_shard_are_never_returned_as_data(tmp_path: Path) -> None:
    # A sharded array with its index first: zarr reads one inner chunk with a byte range,
    # which does not cover the whole stored object. The damage must still be reported.
    repo = Repository.create(local_filesystem_storage(tmp_path))
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store,
        name="s",
        shape=(40,),
        chunks=(40,),
        dtype="int64",
        serializer=ShardingCodec(chunk_shape=(10,), codecs=[BytesCodec()], index_location="start"),
        compressors=None,
    )
    array[:] = np.arange(40)
    session.commit("sharded")
    (shard,) = (tmp_path / "chunks").iterdir()
    data = bytearray(shard.read_bytes())
    index_size = 4 * 16 + 4  # 4 inner chunks x (offset, length) + crc32c
    data[index_size + 2] ^= 0xFF  # inside inner chunk 0
    shard.write_bytes(bytes(data))
    reader = Repository.open(local_filesystem_storage(tmp_path)).readonly_session("main")
    with pytest.raises(CorruptObjectError) as info:
        zarr.open_array(reader.store, path="s", mode="r")[0:5]
    assert info.value.key == f"chunks/{shard.name}"


def test_missing_chunk_is_reported_as_damage(scenario: Scenario) -> None:
    path = scenario.root / "chunks" / scenario.chunks[0]
    original = path.read_bytes()
    path.unlink()
    try:
        with pytest.raises((CorruptObjectError, NotFoundError)) as info:
            scenario.read_tip()
        assert scenario.chunks[0] in str(info.value)
    finally:
        path.write_bytes(original)
