"""A big commit pauses the cyclic garbage collector, and gives it back as it found it."""

from __future__ import annotations

import gc
import threading

import pytest
import zarr

from icechunk_dask import ChangeSet, Repository, in_memory_storage
from icechunk_dask._gcpause import PAUSE_GC_FROM, gc_paused
from icechunk_dask.storage import FaultyStorage, Storage


class _CollectorSeen(FaultyStorage):
    """Records, at each manifest write, whether the cyclic garbage collector is enabled."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.enabled: list[bool] = []

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith("manifests/"):
            self.enabled.append(gc.isenabled())
        await super().put(key, data)


def _commit_refs(n: int) -> tuple[Repository, str, _CollectorSeen]:
    storage = _CollectorSeen(in_memory_storage())
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(n,), chunks=(1,), dtype="u1", fill_value=0)
    cs = ChangeSet(repo.repo_id, s.snapshot_id)
    cs.chunks = {f"a/c/{i}": (f"{i // 256:020d}", (i % 256) * 8, 8, i) for i in range(n)}
    s.merge(cs)
    storage.enabled.clear()
    return repo, s.commit("refs"), storage


@pytest.mark.parametrize("n", [PAUSE_GC_FROM - 1, PAUSE_GC_FROM])
def test_a_big_commit_pauses_the_collector_while_it_writes_its_manifests(n: int) -> None:
    assert gc.isenabled()
    repo, sid, storage = _commit_refs(n)
    assert repo.lookup_branch("main") == sid
    assert storage.enabled and set(storage.enabled) == {n < PAUSE_GC_FROM}
    assert gc.isenabled()  # given back


def test_pauses_nest_across_threads_and_keep_a_disabled_collector_disabled() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with gc_paused():
            inside.set()
            leave.wait(60)

    thread = threading.Thread(target=other)
    with gc_paused():
        thread.start()
        assert inside.wait(60)
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread still pauses it
    leave.set()
    thread.join(60)
    assert gc.isenabled()
    with gc_paused(False):
        assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # the application's choice stands
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="the pause ends"), gc_paused():
        raise ValueError("the pause ends with the block")
    assert gc.isenabled()
