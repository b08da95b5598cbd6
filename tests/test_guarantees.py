"""Fixed-input tests of guarantees users cannot check themselves (issue 13).

Each test names the guarantee and was checked by breaking it by hand once
(the mutants are listed in docs/reliability.md, "Guarantee tests"):

* a key deleted in a session reads back as absent everywhere: the session, its
  forks and pickled copies, after commit, after reopening, in later commits;
* two different versions of one chunk conflict even when they have the same
  length (merging forks, and committing on the same base);
* a durable commit flushes its objects (``syncfs``) before the branch-log
  entry exists, and a non-durable one calls no sync at all.

Only public APIs and the storage object are used, so the tests hold whatever
the core looks like inside.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icechunk_dask import (
    ConflictError,
    ConflictType,
    RebaseFailedError,
    Repository,
    Session,
    UnmergedWritesError,
    local_filesystem_storage,
)
from icechunk_dask.distributed import merge_sessions
from icechunk_dask.storage import _local_files

FILL = -1
#: chunk length (int64 elements) -> how the chunk is stored: inline in the manifest
#: (32 bytes), packed with other small chunks (512 bytes), or as its own object (320 KB)
LAYOUTS = {"inline": 4, "packed": 64, "object": 40_000}


def _repo(path: Path, chunk: int, *, durable: bool = False) -> Repository:
    """A repository whose ``main`` holds array ``a``: 8 chunks of ``chunk`` values, 0..n-1."""
    repo = Repository.create(local_filesystem_storage(path, durable=durable))
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store,
        name="a",
        shape=(8 * chunk,),
        chunks=(chunk,),
        dtype="int64",
        fill_value=FILL,
        compressors=None,
    )
    array[:] = np.arange(8 * chunk)
    session.commit("eight chunks")
    return repo


def _expected(chunk: int, deleted: set[int]) -> np.ndarray:
    values = np.arange(8 * chunk)
    for i in deleted:
        values[i * chunk : (i + 1) * chunk] = FILL
    return values


def _check_absent(session: Session, chunk: int, deleted: set[int], where: str) -> None:
    """Every view of ``session`` agrees that the chunks ``deleted`` are gone, the rest not."""
    store = session.store
    proto = default_buffer_prototype()

    async def listed() -> set[str]:
        return {k async for k in store.list_prefix("a/")}

    keys = sync(listed())
    for i in range(8):
        key = f"a/c/{i}"
        gone = i in deleted
        assert (sync(store.get(key, proto)) is None) == gone, (where, key, "get")
        assert sync(store.exists(key)) is not gone, (where, key, "exists")
        assert (key not in keys) == gone, (where, key, "list_prefix")
    array = zarr.open_array(store, path="a", mode="r")
    np.testing.assert_array_equal(array[:], _expected(chunk, deleted), err_msg=where)


# -- a deleted key is absent -------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("how", ["store.delete", "zarr fill value"])
def test_a_deleted_chunk_reads_back_absent(tmp_path: Path, layout: str, how: str) -> None:
    chunk = LAYOUTS[layout]
    repo = _repo(tmp_path / "repo", chunk)
    session = repo.writable_session("main")
    if how == "store.delete":
        sync(session.store.delete("a/c/1"))
    else:  # zarr deletes a chunk that holds only the fill value (write_empty_chunks=False)
        zarr.open_array(session.store, path="a")[chunk : 2 * chunk] = FILL
    _check_absent(session, chunk, {1}, "session")

    fork = session.fork()  # inherits the deletion
    _check_absent(fork, chunk, {1}, "fork")
    _check_absent(pickle.loads(pickle.dumps(fork)), chunk, {1}, "pickled fork")
    _check_absent(fork.fork(), chunk, {1}, "fork of the fork")
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))
    _check_absent(copy, chunk, {1}, "pickled copy")

    snapshot = session.commit("delete chunk 1")
    reopened = Repository.open(local_filesystem_storage(tmp_path / "repo"))
    _check_absent(reopened.readonly_session("main"), chunk, {1}, "reopened, main")
    _check_absent(reopened.readonly_session(snapshot_id=snapshot), chunk, {1}, "by id")
    _check_absent(reopened.writable_session("main"), chunk, {1}, "new writable session")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tombstones_of_committed_chunks(tmp_path: Path, layout: str) -> None:
    chunk = LAYOUTS[layout]
    repo = _repo(tmp_path / "repo", chunk)
    before = repo.lookup_branch("main")
    session = repo.writable_session("main")
    for i in (0, 3, 7):
        sync(session.store.delete(f"a/c/{i}"))
    session.commit("delete three")
    _check_absent(repo.readonly_session("main"), chunk, {0, 3, 7}, "after the commit")

    # a later commit that changes another chunk keeps the tombstones
    session = repo.writable_session("main")
    _check_absent(session, chunk, {0, 3, 7}, "next session")
    zarr.open_array(session.store, path="a")[5 * chunk] = 99
    session.commit("change chunk 5")
    reopened = Repository.open(local_filesystem_storage(tmp_path / "repo"))
    later = reopened.readonly_session("main")
    expected = _expected(chunk, {0, 3, 7})
    expected[5 * chunk] = 99
    np.testing.assert_array_equal(zarr.open_array(later.store, path="a", mode="r")[:], expected)
    keys = sync(_keys(later))
    assert {f"a/c/{i}" for i in range(8)} & keys == {f"a/c/{i}" for i in (1, 2, 4, 5, 6)}
    # history is untouched: the snapshot before the deletions still has every chunk
    _check_absent(reopened.readonly_session(snapshot_id=before), chunk, set(), "history")


async def _keys(session: Session) -> set[str]:
    return {k async for k in session.store.list_prefix("")}


# -- different chunks of equal length conflict -------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forks_writing_different_bytes_of_equal_length_conflict(
    tmp_path: Path, layout: str
) -> None:
    chunk = LAYOUTS[layout]
    repo = _repo(tmp_path / "repo", chunk)
    region, other = slice(chunk, 2 * chunk), slice(2 * chunk, 3 * chunk)
    session = repo.writable_session("main")
    same_a, same_b, first, second = (session.fork() for _ in range(4))
    writes = ((same_a, other, 5), (same_b, other, 5), (first, region, 100), (second, region, 200))
    for fork, where, value in writes:
        zarr.open_array(fork.store, path="a")[where] = value  # same length, same layout

    session.merge(same_a, same_b)  # identical bytes in chunk 2: no conflict
    session.merge(first)
    with pytest.raises(ConflictError) as e:
        session.merge(second)
    assert any("a/c/1" in c.keys for c in e.value.conflicts), e.value.conflicts
    with pytest.raises(ConflictError):  # in one call, in either order
        merge_sessions(repo.writable_session("main"), second, first)
    # the failed merge changed nothing: first's bytes are what commits, once the conflicting
    # fork's writes are dropped deliberately (an unmerged fork that wrote blocks commit)
    with pytest.raises(UnmergedWritesError):
        session.commit("second was never merged")
    second.discard_changes()
    session.commit("first wins")
    expected = np.arange(8 * chunk)
    expected[region] = 100
    expected[other] = 5
    read = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(read[:], expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_commits_of_different_bytes_of_equal_length_conflict(tmp_path: Path, layout: str) -> None:
    chunk = LAYOUTS[layout]
    repo = _repo(tmp_path / "repo", chunk)
    region = slice(chunk, 2 * chunk)
    one, two, other = (repo.writable_session("main") for _ in range(3))
    zarr.open_array(one.store, path="a")[region] = 100
    zarr.open_array(two.store, path="a")[region] = 200  # same length, other bytes
    zarr.open_array(other.store, path="a")[4 * chunk : 5 * chunk] = 300  # another chunk
    one.commit("one")
    with pytest.raises(RebaseFailedError) as e:
        two.commit("two")
    tip = repo.lookup_branch("main")
    assert [(c.conflict_type, c.path, c.keys, c.conflicted_chunks) for c in e.value.conflicts] == [
        (ConflictType.CHUNK_DOUBLE_UPDATE, "/a", ("a/c/1",), ((1,),))
    ]
    assert tip in e.value.conflicts[0].description
    other.commit("other: disjoint, rebased")
    expected = np.arange(8 * chunk)
    expected[region] = 100
    expected[4 * chunk : 5 * chunk] = 300
    read = zarr.open_array(repo.readonly_session("main").store, path="a", mode="r")
    np.testing.assert_array_equal(read[:], expected)


# -- the durability barrier --------------------------------------------------------------------

DATA = ("chunks/", "manifests/", "snapshots/", "transactions/")


class SyncRecorder:
    """Records, in order, the sync calls of local storage and where objects are placed.

    Events: ``("syncfs", root)``, ``("fsync", None)``, ``("fsync_dir", folder)``,
    ``("sync_file_range", None)``, ``("os.sync", None)``, ``("place", key)`` when an
    object appears under its key (``os.replace`` for ``put``, ``os.link`` for
    ``put_if_absent``). The wrappers call the real functions.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.events: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        wrap = self._wrap
        monkeypatch.setattr(_local_files, "_syncfs", wrap("syncfs", _local_files._syncfs, str))
        monkeypatch.setattr(
            _local_files, "_fsync_dir", wrap("fsync_dir", _local_files._fsync_dir, str)
        )
        monkeypatch.setattr(_local_files.os, "fsync", wrap("fsync", os.fsync, None))
        monkeypatch.setattr(_local_files.os, "sync", wrap("os.sync", os.sync, None))
        if _local_files._SYNC_FILE_RANGE is not None:
            real = _local_files._SYNC_FILE_RANGE
            monkeypatch.setattr(
                _local_files, "_SYNC_FILE_RANGE", wrap("sync_file_range", real, None)
            )
        monkeypatch.setattr(_local_files.os, "replace", wrap("place", os.replace, self._key, 1))
        monkeypatch.setattr(_local_files.os, "link", wrap("place", os.link, self._key, 1))

    def _key(self, path: Any) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def _wrap(
        self, name: str, real: Callable[..., Any], show: Callable[[Any], str] | None, arg: int = 0
    ) -> Callable[..., Any]:
        def recorded(*args: Any) -> Any:
            result = real(*args)  # recorded once done: the object exists, the sync returned
            with self._lock:
                self.events.append((name, show(args[arg]) if show else None))
            return result

        return recorded

    def names(self) -> set[str]:
        return {name for name, _ in self.events}

    def check_ref_entries(self, branch: str) -> int:
        """Assert that each branch-log entry was created after a flush of every object."""
        entries = [
            i
            for i, (name, key) in enumerate(self.events)
            if name == "place" and key is not None and key.startswith(f"refs/branch.{branch}/")
            if not key.endswith("hint.json")
        ]
        for i in entries:
            before = self.events[:i]
            flushes = [j for j, (name, _) in enumerate(before) if name == "syncfs"]
            assert flushes, f"{self.events[i]} created with no syncfs before it: {before}"
            objects = [j for j, (name, key) in enumerate(before) if name == "place" and key]
            objects = [j for j in objects if str(before[j][1]).startswith(DATA)]
            late = [before[j] for j in objects if j > flushes[-1]]
            assert not late, f"placed after the last syncfs before {self.events[i]}: {late}"
            # the entry itself is a create-only write: its file and its folder are fsynced
            assert before[-1][0] == "fsync", self.events[i - 2 : i + 3]
            after = [e for e in self.events[i + 1 : i + 4] if e[0] != "fsync"]
            folder = str(self.root / key_of(self.events[i]).rpartition("/")[0])
            assert after[:1] == [("fsync_dir", folder)], self.events[i - 2 : i + 3]
        return len(entries)


def key_of(event: tuple[str, str | None]) -> str:
    assert event[1] is not None
    return event[1]


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SyncRecorder:
    return SyncRecorder(tmp_path / "repo", monkeypatch)


def _commit_work(repo: Repository) -> None:
    """Two commits touching inline, packed and stored chunks and a fork merged back."""
    session = repo.writable_session("main")
    small = zarr.create_array(
        session.store, name="s", shape=(256,), chunks=(64,), dtype="int64", compressors=None
    )
    zarr.create_array(session.store, name="b", shape=(80_000,), chunks=(40_000,), dtype="int64")
    small[:] = np.arange(256)
    fork = session.fork()
    zarr.open_array(fork.store, path="b")[:] = np.arange(80_000)
    session.merge(fork)
    session.commit("one")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="s")[:4] = -5
    sync(session.store.delete("b/c/1"))
    session.commit("two")


def test_durable_commits_flush_before_the_branch_entry(
    tmp_path: Path, recorder: SyncRecorder
) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    assert recorder.check_ref_entries("main") == 1  # creation: entry 0
    _commit_work(repo)
    assert recorder.check_ref_entries("main") == 3
    # and a branch of its own
    repo.create_branch("dev", repo.lookup_branch("main"))
    session = repo.writable_session("dev")
    zarr.open_array(session.store, path="s")[:4] = 7
    session.commit("on dev")
    assert recorder.check_ref_entries("dev") == 2


def test_non_durable_storage_never_syncs(tmp_path: Path, recorder: SyncRecorder) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))
    _commit_work(repo)
    assert "place" in recorder.names()  # the recorder sees the storage work
    assert recorder.names() == {"place"}, recorder.events
