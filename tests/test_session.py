"""Session behaviour: writes, status, pickling, forks, merges and commits."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import cpu
from zarr.core.sync import sync

from icechunk_dask import (
    ChangeSet,
    ConflictError,
    InvalidInputError,
    NoChangesToCommitError,
    PicklingNotAllowedError,
    ReadOnlyError,
    RebaseFailedError,
    Repository,
    Session,
    SessionStateError,
    UnmergedWritesError,
    in_memory_storage,
    local_filesystem_storage,
)
from tests.helpers import make_array, new_repo, read_array


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repo(tmp_path / "repo")


def init_array(repo: Repository, **kw: object) -> str:
    s = repo.writable_session("main")
    make_array(s, **kw)  # type: ignore[arg-type]
    return s.commit("init")


def test_write_commit_read_back(repo: Repository) -> None:
    s = repo.writable_session("main")
    a = make_array(s)
    data = np.arange(64.0).reshape(8, 8)
    a[:] = data
    assert s.has_uncommitted_changes
    sid = s.commit("write", metadata={"author": "test"})
    assert s.read_only and s.snapshot_id == sid and not s.has_uncommitted_changes
    np.testing.assert_array_equal(read_array(repo.readonly_session(branch="main")), data)
    info = next(repo.ancestry(branch="main"))
    assert (info.id, info.message, info.metadata) == (sid, "write", {"author": "test"})


def test_status_reports_nodes_and_chunks(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    a = zarr.open_array(s.store, path="a")
    a[:4, :4] = 1.0
    a[4:, :] = 2.0
    zarr.create_group(s.store, path="g", zarr_format=3)
    st = s.status()
    assert st.updated_chunks == {"/a": [(0, 0), (1, 0), (1, 1)]}
    assert st.new_groups == {"/g"}
    assert not st.new_arrays
    s.discard_changes()
    assert s.status().is_empty() and not s.has_uncommitted_changes


def test_thread_safe_writes(repo: Repository) -> None:
    init_array(repo, shape=(64, 64), chunks=(8, 8))
    s = repo.writable_session("main")
    a = zarr.open_array(s.store, path="a")

    def work(i: int) -> None:
        a[i * 8 : (i + 1) * 8, :] = i

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s.commit("threads")
    out = read_array(repo.readonly_session(branch="main"))
    np.testing.assert_array_equal(out, np.repeat(np.arange(8.0), 8)[:, None] * np.ones((1, 64)))


def test_commit_without_changes_raises(repo: Repository) -> None:
    with pytest.raises(NoChangesToCommitError, match="no changes"):
        repo.writable_session("main").commit("nothing")


def test_committed_and_readonly_sessions_refuse_writes(repo: Repository) -> None:
    s = repo.writable_session("main")
    make_array(s)
    s.commit("one")
    with pytest.raises(SessionStateError, match="already committed"):
        s.commit("twice")
    buf = cpu.Buffer.from_bytes(b"x" * 8)
    with pytest.raises(ReadOnlyError, match="committed"):
        sync(s.store.set("a/c/0/0", buf))
    ro = repo.readonly_session(branch="main")
    with pytest.raises(ReadOnlyError, match="store was opened in read-only mode"):
        sync(ro.store.set("a/c/0/0", buf))
    with pytest.raises(ValueError, match="read-only"):  # zarr itself refuses first
        zarr.open_array(ro.store, path="a", mode="r+")


def test_pickling_requires_opt_in(repo: Repository) -> None:
    s = repo.writable_session("main")
    with pytest.raises(PicklingNotAllowedError) as info:
        pickle.dumps(s)
    msg = str(info.value)
    for word in ("allow_pickling", "fork", "to_zarr", "store_sessions", "merge_sessions"):
        assert word in msg
    with pytest.raises(PicklingNotAllowedError):
        pickle.dumps(s.store)
    with s.allow_pickling(), s.allow_pickling():
        pickle.dumps(s)
    with s.allow_pickling():
        pickle.dumps(s)
    with pytest.raises(PicklingNotAllowedError):  # the context has ended
        pickle.dumps(s)


def test_fork_is_free_and_small(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    before = set(os.listdir(repo.storage.root))  # type: ignore[attr-defined]
    f = s.fork()
    blob = pickle.dumps(f)
    assert set(os.listdir(repo.storage.root)) == before  # type: ignore[attr-defined]
    assert len(blob) <= 2048
    g = pickle.loads(blob)
    zarr.open_array(g.store, path="a")[:4, :4] = 5.0
    rec = pickle.dumps(g.changes())
    assert len(rec) <= 2048 + 32 * 1


def test_fork_sees_uncommitted_parent_state(repo: Repository) -> None:
    s = repo.writable_session("main")
    a = make_array(s)
    a[:4, :4] = 3.0  # uncommitted chunk write
    f = s.fork()
    copy = pickle.loads(pickle.dumps(f))  # carries the parent's chunk refs via scratch
    for child in (f, copy):
        got = read_array(child)
        assert (got[:4, :4] == 3.0).all() and np.isnan(got[4:, 4:]).all()
    zarr.open_array(copy.store, path="a")[4:, 4:] = 7.0
    s.merge(pickle.loads(pickle.dumps(copy)))
    s.commit("merged")
    out = read_array(repo.readonly_session(branch="main"))
    assert (out[:4, :4] == 3.0).all() and (out[4:, 4:] == 7.0).all()


def test_a_pickled_fork_of_a_fork_keeps_the_deletions_it_inherited(repo: Repository) -> None:
    s = repo.writable_session("main")
    make_array(s)[:] = 5.0
    s.commit("data")
    s = repo.writable_session("main")
    sync(s.store.delete_dir("a"))  # uncommitted: the fork must not see the committed chunks
    make_array(s)  # the array again, empty
    fork = s.fork()
    for child in (fork, pickle.loads(pickle.dumps(fork)), pickle.loads(pickle.dumps(fork.fork()))):
        assert np.isnan(read_array(child)).all()


def test_fork_overwriting_parent_write_fast_forwards(repo: Repository) -> None:
    s = repo.writable_session("main")
    a = make_array(s)
    a[:4, :4] = 1.0
    f = s.fork()
    zarr.open_array(f.store, path="a")[:4, :4] = 2.0
    s.merge(f)
    s.commit("ff")
    assert (read_array(repo.readonly_session(branch="main"))[:4, :4] == 2.0).all()


def test_fork_cannot_commit_and_readonly_cannot_fork(repo: Repository) -> None:
    s = repo.writable_session("main")
    make_array(s)
    f = s.fork()
    with pytest.raises(SessionStateError, match="merge it"):
        f.commit("no")
    with pytest.raises(SessionStateError):
        repo.readonly_session(branch="main").fork()


def test_merge_refuses_conflicting_chunks_and_keeps_session(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    zarr.open_array(f1.store, path="a")[:4, :4] = 1.0
    zarr.open_array(f2.store, path="a")[:4, :4] = 2.0
    s.merge(f1)
    before = s.changes()
    with pytest.raises(ConflictError, match="a/c/0/0") as info:
        s.merge(f2)
    assert info.value.conflicts[0].keys[0] == "a/c/0/0"
    after = s.changes()
    assert after.chunks == before.chunks


def test_merge_accepts_identical_duplicates(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    for f in (f1, f2):  # a retried task: same data, different chunk objects
        zarr.open_array(f.store, path="a")[:4, :4] = 1.0
    s.merge(f1, f2, f1.changes())
    assert s.changes().nchunks == 1
    s.commit("dupes")


def test_merge_refuses_conflicting_metadata(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    f1, f2 = s.fork(), s.fork()
    zarr.open_array(f1.store, path="a").attrs["x"] = 1
    zarr.open_array(f2.store, path="a").attrs["x"] = 2
    s.merge(f1)
    with pytest.raises(ConflictError, match=r"a/zarr\.json"):
        s.merge(f2)


def test_merge_refuses_foreign_and_stale_sessions(repo: Repository, tmp_path: Path) -> None:
    init_array(repo)
    other = new_repo(tmp_path / "other")
    s = repo.writable_session("main")
    foreign = other.writable_session("main").fork()
    with pytest.raises(InvalidInputError, match="another repository"):
        s.merge(foreign)
    stale = s.fork()
    s2 = repo.writable_session("main")
    zarr.open_array(s2.store, path="a")[0, 0] = 1.0
    s2.commit("moves main")
    fresh = repo.writable_session("main")
    with pytest.raises(InvalidInputError, match="different version"):
        fresh.merge(stale)
    with pytest.raises(TypeError, match="ChangeSet"):
        fresh.merge("nope")  # type: ignore[arg-type]


def test_change_record_roundtrip_and_size(repo: Repository) -> None:
    init_array(repo, shape=(400, 400), chunks=(4, 4))
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = np.random.default_rng(0).random((400, 400))
    rec = s.changes()
    assert rec.nchunks == 10_000
    blob = pickle.dumps(rec)
    assert len(blob) / rec.nchunks <= 32
    back = pickle.loads(blob)
    assert isinstance(back, ChangeSet) and back.chunks == rec.chunks


def test_concurrent_disjoint_commits_rebase(repo: Repository) -> None:
    s0 = repo.writable_session("main")
    make_array(s0, "a")
    make_array(s0, "b")
    s0.commit("init")
    s1, s2 = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(s1.store, path="a")[:] = 1.0
    zarr.open_array(s2.store, path="b")[:] = 2.0
    id1 = s1.commit("one")
    id2 = s2.commit("two")  # main moved: rebased onto "one"
    history = [i.id for i in repo.ancestry(branch="main")]
    assert history[:2] == [id2, id1]
    ro = repo.readonly_session(branch="main")
    assert (read_array(ro, "a") == 1.0).all() and (read_array(ro, "b") == 2.0).all()


def test_concurrent_overlapping_commits_conflict(repo: Repository) -> None:
    init_array(repo)
    s1, s2 = repo.writable_session("main"), repo.writable_session("main")
    zarr.open_array(s1.store, path="a")[:4, :4] = 1.0
    zarr.open_array(s2.store, path="a")[:4, :4] = 2.0
    s1.commit("one")
    with pytest.raises(RebaseFailedError) as info:
        s2.commit("two")
    assert ("a/c/0/0" in str(info.value)) and info.value.conflicts
    assert (read_array(repo.readonly_session(branch="main"))[:4, :4] == 1.0).all()
    assert isinstance(info.value, ConflictError)


def test_unmerged_pickled_copies_block_commit(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    zarr.open_array(copy.store, path="a")[:4, :4] = 1.0  # a "worker" writes, never returns
    zarr.open_array(s.store, path="a")[4:, 4:] = 2.0
    with pytest.raises(UnmergedWritesError, match="merge_sessions"):
        s.commit("would lose data")
    s.merge(copy)
    s.commit("all writes")
    out = read_array(repo.readonly_session(branch="main"))
    assert (out[:4, :4] == 1.0).all() and (out[4:, 4:] == 2.0).all()


def test_old_snapshot_unchanged_by_later_commits(repo: Repository) -> None:
    first = init_array(repo)
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = 9.0
    s.commit("second")
    assert np.isnan(read_array(repo.readonly_session(snapshot_id=first))).all()


def test_in_memory_session_refuses_other_processes() -> None:
    repo = Repository.create(in_memory_storage())
    s = repo.writable_session("main")
    with s.allow_pickling():
        blob = pickle.dumps(s)
    code = (
        "import pickle,sys\n"
        "try:\n    pickle.loads(sys.stdin.buffer.read())\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, check=True, cwd=os.getcwd()
    ).stdout.decode()
    assert "InvalidInputError" in out and "local_filesystem_storage" in out


def test_data_outlives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    code = (
        "import numpy as np, zarr\n"
        "from icechunk_dask import Repository, local_filesystem_storage\n"
        f"repo = Repository.create(local_filesystem_storage({str(path)!r}))\n"
        "s = repo.writable_session('main')\n"
        "a = zarr.create_array(s.store, name='x', shape=(100,), chunks=(10,), dtype='i4')\n"
        "a[:] = np.arange(100)\n"
        "print(s.commit('from another process'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    sid = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
        .stdout.decode()
        .strip()
    )
    repo = Repository.open(local_filesystem_storage(path))
    assert repo.lookup_branch("main") == sid
    x = zarr.open_array(repo.readonly_session(branch="main").store, path="x")
    np.testing.assert_array_equal(x[:], np.arange(100))


def test_session_properties(repo: Repository) -> None:
    s = repo.writable_session("main")
    assert s.branch == "main" and not s.read_only and not s.is_fork
    assert s.snapshot_id == repo.lookup_branch("main")
    f = s.fork()
    assert f.is_fork and f.session_id == s.session_id
    assert isinstance(s, Session) and "writable" in repr(s)


def test_unmerged_copies_reported_even_without_own_changes(repo: Repository) -> None:
    init_array(repo)
    s = repo.writable_session("main")
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))
    zarr.open_array(copy.store, path="a")[:4, :4] = 1.0
    with pytest.raises(UnmergedWritesError, match="never merged back"):
        s.commit("coordinator wrote nothing itself")


def test_unpickled_repositories_share_caches(repo: Repository) -> None:
    a = pickle.loads(pickle.dumps(repo))
    b = pickle.loads(pickle.dumps(repo))
    assert a._assets is b._assets  # one asset manager (and its caches) per process
