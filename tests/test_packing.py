"""Small chunks packed per session: read-your-writes, forks, pickles, concurrency, failures."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask import _packing as packing_mod


@pytest.fixture
def repo(tmp_path):
    return Repository.create(local_filesystem_storage(tmp_path / "repo", durable=False))


def _array(store, name="a", n=64):
    return zarr.create_array(
        store,
        name=name,
        shape=(n, 256),
        chunks=(1, 256),
        dtype="f4",
        compressors=None,
        fill_value=0,
    )


def _chunk_files(repo):
    chunks = repo.storage.root / "chunks"
    return list(chunks.iterdir()) if chunks.exists() else []


def test_read_your_writes_before_the_pack_is_stored(repo):
    s = repo.writable_session("main")
    a = _array(s.store)
    data = np.arange(64 * 256, dtype="f4").reshape(64, 256)
    a[:] = data
    assert _chunk_files(repo) == []  # all 64 chunks still in the open pack
    np.testing.assert_array_equal(a[:], data)
    s.commit("packed")
    assert len(_chunk_files(repo)) == 1
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(r[:], data)


def test_fork_changes_and_pickle_store_the_pack_first(repo):
    s = repo.writable_session("main")
    a = _array(s.store)
    a[:32] = 1.0
    child = s.fork()  # must be able to read the parent's packed chunks
    assert len(_chunk_files(repo)) == 1
    np.testing.assert_array_equal(zarr.open_array(child.store, path="a")[:32], 1.0)
    f = s.fork()
    zarr.open_array(f.store, path="a")[32:] = 2.0
    back = pickle.loads(pickle.dumps(f))  # pickling stores the fork's pack
    np.testing.assert_array_equal(zarr.open_array(back.store, path="a")[32:], 2.0)
    rec = f.changes()
    s.merge(rec)
    s.commit("x")
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    assert (r[:32] == 1).all()
    assert (r[32:] == 2).all()


def test_full_packs_are_stored_while_writing(repo, monkeypatch):
    monkeypatch.setattr(packing_mod, "PACK_TARGET", 4 * 1024 * 3)  # three 1 KiB chunks... x4
    s = repo.writable_session("main")
    a = _array(s.store)
    data = np.random.default_rng(0).random((64, 256), dtype="f4")
    a[:] = data
    assert len(_chunk_files(repo)) >= 5
    np.testing.assert_array_equal(a[:], data)
    s.commit("x")
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(r[:], data)


def test_discard_drops_the_open_pack(repo):
    s = repo.writable_session("main")
    a = _array(s.store)
    s.commit("array")
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a")[:] = 3.0
    s.discard_changes()
    zarr.open_array(s.store, path="a")[:1] = 4.0
    s.commit("one row")
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    assert (r[:1] == 4).all()
    assert (r[1:] == 0).all()
    del a


def test_threads_writing_and_forking_concurrently(repo):
    s = repo.writable_session("main")
    _array(s.store, n=256)
    s.commit("array")
    s = repo.writable_session("main")

    def write(i):
        zarr.open_array(s.store, path="a")[i] = float(i)
        child = s.fork()  # forks while other threads keep appending to the pack
        got = zarr.open_array(child.store, path="a")[i]
        assert (got == i).all()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(256)))
    s.commit("rows")
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    np.testing.assert_array_equal(r[:, 0], np.arange(256, dtype="f4"))


def test_a_pack_that_fails_to_store_is_retried_and_never_escapes(tmp_path):
    from icechunk_dask import StorageError
    from icechunk_dask.storage import FaultyStorage, in_memory_storage

    inner = in_memory_storage()
    repo = Repository.create(inner)
    s = repo.writable_session("main")
    _array(s.store)
    s.commit("array")
    flaky = FaultyStorage(inner, fail_on={"put": 1})
    repo = Repository.open(flaky)
    s = repo.writable_session("main")
    f = s.fork()
    zarr.open_array(f.store, path="a")[:] = 5.0
    with pytest.raises(StorageError):
        f.changes()  # the pack could not be stored: no record escapes
    np.testing.assert_array_equal(zarr.open_array(f.store, path="a")[:], 5.0)  # still readable
    s.merge(f.changes())  # retried
    s.commit("x")
    r = zarr.open_array(repo.readonly_session(branch="main").store, path="a", mode="r")
    assert (r[:] == 5).all()
