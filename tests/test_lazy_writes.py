"""Every write path ends merged into its session, or refused at commit: never a silent loss.

Lazy writes (``compute=False``) store their result in the repository when
they are computed, whatever computes them; ``commit`` merges it, or refuses
naming the write. Forks made with ``session.fork()`` must be merged. Two
sessions in two threads with ``allow_pickling`` at once stay apart.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from distributed import Client, Event

from icechunk_dask import (
    NoChangesToCommitError,
    Repository,
    StorageError,
    UnmergedWritesError,
    local_filesystem_storage,
    store_sessions,
    to_zarr,
)
from icechunk_dask._scheduler import PicklingScheduler
from icechunk_dask.storage import FaultyStorage
from tests.dask_support import history, open_main
from tests.helpers import new_repo

pytest_plugins = ["tests.dask_fixtures"]


def _target(repo: Repository, name: str = "a") -> None:
    s = repo.writable_session("main")
    zarr.create_array(s.store, name=name, shape=(8, 8), chunks=(4, 4), dtype="f8")
    s.commit(f"create {name}")


def _read(repo: Repository, name: str = "a") -> np.ndarray:
    return np.asarray(zarr.open_array(repo.readonly_session("main").store, path=name)[:])


def _lazy(repo: Repository, session: object, value: float, name: str = "a") -> object:
    arr = zarr.open_array(session.store, path=name)  # type: ignore[attr-defined]
    return store_sessions(da.full((8, 8), value, chunks=4), arr, session, compute=False)  # type: ignore[arg-type]


def test_compute_then_commit_commits_the_data_and_the_other_changes(
    tmp_path: Path, scheduler: str
) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a").attrs["note"] = "other change"
    lazy = _lazy(repo, session, 3.0)
    dask.compute(lazy)
    jobs = tmp_path / "repo" / "jobs"
    assert any(p.is_file() for p in jobs.rglob("*"))  # the computed write's stored result
    session.commit("lazy write + attribute")
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 3.0))
    assert zarr.open_array(repo.readonly_session("main").store, path="a").attrs["note"]
    assert not any(p.is_file() for p in jobs.rglob("*"))  # the commit deleted it


class _JobsUndeletable(FaultyStorage):
    """Deleting a job's objects fails; every other call works."""

    async def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if any(k.startswith("jobs/") for k in keys):
            raise StorageError(f"injected: cannot delete {keys[0]}")
        await super().delete(keys)


def test_a_commit_whose_job_objects_cannot_be_deleted_still_succeeds(tmp_path: Path) -> None:
    """The commit has landed when it deletes the jobs' objects: their deletion cannot fail it."""
    repo = Repository.create(_JobsUndeletable(local_filesystem_storage(tmp_path / "repo")))
    _target(repo)
    session = repo.writable_session("main")
    dask.compute(_lazy(repo, session, 4.0))
    sid = session.commit("lazy write")
    assert repo.lookup_branch("main") == sid
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 4.0))
    # left for garbage_collect
    assert any(p.is_file() for p in (tmp_path / "repo" / "jobs").rglob("*"))


def test_two_lazy_writes_computed_together_land_in_one_commit(
    tmp_path: Path, scheduler: str
) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo, "a")
    _target(repo, "b")
    before = history(repo)
    session = repo.writable_session("main")
    a = _lazy(repo, session, 1.0, "a")
    ds = xr.Dataset({"v": (("t", "x"), da.arange(16.0, chunks=4).reshape(4, 4))})
    b = to_zarr(ds.chunk(t=2), session, group="g", mode="w", compute=False)
    dask.compute(a, b)
    session.commit("both")
    assert len(history(repo)) == len(before) + 1
    np.testing.assert_array_equal(_read(repo, "a"), np.ones((8, 8)))
    xr.testing.assert_identical(open_main(repo, group="g"), ds.chunk(t=2))


def test_computing_twice_is_harmless(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    lazy = _lazy(repo, session, 2.0)
    (first,) = dask.compute(lazy)
    dask.compute(lazy)
    session.merge(first)  # explicit merges keep working, also with the stored result
    session.commit("twice")
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 2.0))


def test_persist_stores_the_result(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    (persisted,) = dask.persist(_lazy(repo, session, 4.0))
    session.commit("persisted")
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 4.0))
    del persisted


def test_never_computed_is_refused_naming_the_write(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    before = history(repo)
    session = repo.writable_session("main")
    lazy = _lazy(repo, session, 5.0)
    with pytest.raises(UnmergedWritesError, match=r"store_sessions into \['a'\]"):
        session.commit("not computed")
    assert history(repo) == before
    dask.compute(lazy)
    session.commit("now computed")
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 5.0))


def test_discard_changes_drops_a_lazy_write(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    _lazy(repo, session, 5.0)
    session.discard_changes()
    with pytest.raises(NoChangesToCommitError):
        session.commit("nothing")


def test_distributed_future_result_then_commit(tmp_path: Path, dask_client: Client) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    dask_client.compute(_lazy(repo, session, 6.0)).result()
    session.commit("client.compute")
    np.testing.assert_array_equal(_read(repo), np.full((8, 8), 6.0))


def _held(block: np.ndarray, event_name: str) -> np.ndarray:
    Event(event_name).wait(timeout=60)  # released by the test once commit was refused
    return block


def test_a_future_never_waited_for_is_refused(tmp_path: Path, dask_client: Client) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    before = history(repo)
    session = repo.writable_session("main")
    arr = zarr.open_array(session.store, path="a")
    name = f"hold-{tmp_path.name}"
    source = da.full((8, 8), 7.0, chunks=4).map_blocks(_held, name, dtype="f8")
    lazy = store_sessions(source, arr, session, compute=False)
    future = dask_client.compute(lazy)
    try:
        with pytest.raises(UnmergedWritesError, match="never delivered"):
            session.commit("the result is not there yet")
    finally:
        future.cancel()
        Event(name, client=dask_client).set()
    assert history(repo) == before


def test_unmerged_fork_is_refused_until_merged_or_discarded(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a").attrs["x"] = 1
    fork = session.fork()
    zarr.open_array(fork.store, path="a")[:4, :4] = 9.0
    with pytest.raises(UnmergedWritesError, match=r"session.fork\(\)"):
        session.commit("fork not merged")
    fork.discard_changes()
    session.commit("fork's writes dropped deliberately")
    assert np.isnan(_read(repo)).all() or (_read(repo) == 0).all()
    session = repo.writable_session("main")
    fork = session.fork()
    zarr.open_array(fork.store, path="a")[:4, :4] = 9.0
    session.merge(fork)
    session.commit("fork merged")
    assert (_read(repo)[:4, :4] == 9.0).all()


def test_unused_forks_do_not_block_commit(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    _target(repo)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a").attrs["x"] = 1
    session.fork()
    session.commit("an unused fork is harmless")


def test_two_threads_two_sessions_allow_pickling_at_once(
    tmp_path: Path, dask_client: Client
) -> None:
    """Each thread's scheduler wrapper serves only its own session; leaving out of order is fine."""
    repo = new_repo(tmp_path / "repo")
    entered = threading.Barrier(2)
    first_out = threading.Event()
    errors: list[BaseException] = []
    sessions = [repo.writable_session("main") for _ in range(2)]

    def work(i: int) -> None:
        try:
            session = sessions[i]
            ds = xr.Dataset({f"v{i}": (("t",), da.full(8, float(i), chunks=2))})
            with session.allow_pickling():
                entered.wait(timeout=60)
                ds.to_zarr(session.store, group=f"g{i}", mode="w", consolidated=False)
                if i == 1:
                    first_out.wait(timeout=60)  # thread 1 leaves its block last
            if i == 0:
                first_out.set()
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    with dask.config.set(scheduler=dask_client):  # one setting for both threads
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert dask.config.get("scheduler", None) is dask_client  # nothing left installed
    assert not errors, errors
    assert not isinstance(dask.config.get("scheduler", None), PicklingScheduler)
    for i, session in enumerate(sessions):
        changed = {k.split("/", 1)[0] for k in session.changes().chunks}
        assert changed == {f"g{i}"}  # only its own writes
    sessions[0].commit("g0")
    sessions[1].commit("g1")  # disjoint: rebases
    for i in range(2):
        back = open_main(repo, group=f"g{i}")
        assert (back[f"v{i}"].values == float(i)).all()
