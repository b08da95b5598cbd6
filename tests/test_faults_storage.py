"""Fault campaign, storage: every call of a write-and-commit workload fails once, in turn.

A clean run of the workload (open, start a session, write two arrays, commit)
through :class:`~icechunk_dask.storage.FaultyStorage` counts the calls of each
kind. Then, for every kind and every call number, the workload runs again with
exactly that call failing, either before it reaches the storage or after
(``fail_after_apply``: the write happened, its acknowledgement was lost). Each
time:

* the failure reaches the user as a :class:`StorageError` (or is harmless:
  best-effort hint and clean-up writes may fail silently; a lost acknowledgement
  may be recognised as success);
* the repository, opened afresh, shows the previous or the new snapshot in full;
* a retry succeeds (the same session's ``commit`` if the commit failed, else
  the writes in a new session), and the new commit is in the history exactly once.

Delays are covered by racing committer threads over a slow storage.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    ConflictError,
    Repository,
    Session,
    StorageError,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask.storage import FaultyStorage, Storage
from icechunk_dask.testing import read_store

OLD = np.arange(40)
NEW = np.where((OLD >= 5) & (OLD < 25), -1, OLD)
READS = ("get", "get_range", "list", "exists")
WRITES = ("put", "put_if_absent", "delete", "durability_barrier")


def _storage(backend: str, path: Path) -> Storage:
    return in_memory_storage() if backend == "memory" else local_filesystem_storage(path)


def _setup(backend: str, path: Path) -> Storage:
    storage = _storage(backend, path)
    session = Repository.create(storage).writable_session("main")
    array = zarr.create_array(
        session.store, name="a", shape=(40,), chunks=(10,), dtype="int64", compressors=None
    )
    array[:] = OLD
    session.commit("one")
    return storage


def _write(session: Session) -> None:
    # the coordinator writes one array; a pickled fork (which must read the coordinator's
    # uncommitted chunks through a scratch object) writes the other; then they merge
    zarr.open_array(session.store, path="a")[5:25] = -1
    zarr.create_array(
        session.store, name="b", shape=(16,), chunks=(8,), dtype="int64", overwrite=True
    )
    fork = pickle.loads(pickle.dumps(session.fork()))
    assert (zarr.open_array(fork.store, path="a")[5:25] == -1).all()
    zarr.open_array(fork.store, path="b")[:] = 7
    session.merge(fork)


def _state(storage: Storage) -> str:
    """'old' or 'new'; fails unless the branch and every snapshot in its history read fully."""
    repo = Repository.open(storage)
    for info in repo.ancestry(branch="main"):
        read_store(repo.readonly_session(snapshot_id=info.id).store)  # every key, verified
    session = repo.readonly_session("main")
    a = zarr.open_array(session.store, path="a", mode="r")[:]
    if np.array_equal(a, NEW):
        assert (zarr.open_array(session.store, path="b", mode="r")[:] == 7).all()
        return "new"
    np.testing.assert_array_equal(a, OLD)
    assert "b/zarr.json" not in read_store(session.store)
    return "old"


def _messages(storage: Storage) -> list[str]:
    return [info.message for info in Repository.open(storage).ancestry(branch="main")]


def _clean_counts(backend: str, path: Path) -> dict[str, int]:
    faulty = FaultyStorage(_setup(backend, path))
    session = Repository.open(faulty).writable_session("main")
    _write(session)
    session.commit("two")
    return faulty.calls


def _cases(backend: str, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int, bool]]:
    counts = _clean_counts(backend, tmp_path_factory.mktemp("count"))
    return [
        (op, n, after)
        for op, total in sorted(counts.items())
        for n in range(1, total + 1)
        for after in ((False, True) if op in WRITES else (False,))
    ]


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_every_failing_call_is_typed_consistent_and_retryable(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cases = _cases(backend, tmp_path_factory)
    assert len(cases) >= 30  # the workload really exercises the storage
    outcomes: dict[str, int] = {}
    for op, n, after in cases:
        inner = _setup(backend, tmp_path_factory.mktemp("repo"))
        faulty = FaultyStorage(inner, fail_on={op: n}, fail_after_apply={op} if after else ())
        phase, session, error = "open", None, None
        try:
            session = Repository.open(faulty).writable_session("main")
            phase = "write"
            _write(session)
            phase = "commit"
            session.commit("two")
            phase = "done"
        except Exception as e:  # noqa: BLE001 - any error is checked just below
            error = e
        case = f"{op} #{n}{' (applied)' if after else ''}, failed in {phase}"
        # (a fork pickled during the writes carries its own copy of the call counters, so
        # the fault may fire there: then it shows up as the error, not in faulty.injected)
        fired = bool(faulty.injected) or error is not None
        faulty.fail_on = {}  # one fault per case: the retry runs on healthy storage
        if error is not None:
            assert isinstance(error, StorageError), f"{case}: {type(error).__name__}: {error}"
            assert "injected failure" in str(error), case
        state = _state(inner)
        assert state == "new" if error is None else state in ("old", "new"), case

        # retry: the same session's commit if the commit failed, else the writes again
        if error is not None:
            if phase == "commit":
                assert session is not None
                try:
                    session.commit("two")
                except ConflictError:
                    # allowed only if the failed commit had landed after all
                    assert state == "new", case
            else:
                retry = Repository.open(faulty).writable_session("main")
                _write(retry)
                retry.commit("two")
        assert _state(inner) == "new", case
        assert _messages(inner).count("two") == 1, f"{case}: {_messages(inner)}"
        key = "not fired" if not fired else "ok" if error is None else f"StorageError ({state})"
        outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes.get("not fired", 0) <= len(cases) // 10, outcomes
    assert outcomes.get("StorageError (old)", 0) > len(cases) // 2, outcomes


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_lost_acknowledgement_of_a_metadata_only_commit_is_not_committed_twice(
    backend: str, tmp_path: Path
) -> None:
    # The branch-log entry is written but its acknowledgement is lost. Either the commit
    # notices that its entry landed, or it reports a StorageError and retrying the same
    # session must not publish the same changes a second time.
    inner = _setup(backend, tmp_path)
    faulty = FaultyStorage(inner, fail_on={"put_if_absent": 1}, fail_after_apply={"put_if_absent"})
    session = Repository.open(faulty).writable_session("main")
    zarr.open_array(session.store, path="a").attrs["units"] = "m"
    try:
        session.commit("attrs")
    except StorageError:
        with contextlib.suppress(ConflictError):
            session.commit("attrs")
    assert faulty.injected
    assert _messages(inner).count("attrs") == 1, _messages(inner)


class _AckAndReadBackLost(FaultyStorage):
    """The first branch-entry write lands unacknowledged, and reading it back fails once."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner, fail_on={"put_if_absent": 1}, fail_after_apply={"put_if_absent"})
        self.readback_failed = False

    async def get(self, key: str) -> bytes:
        if self.injected and not self.readback_failed and key.startswith("refs/branch.main/0"):
            self.readback_failed = True
            raise StorageError(f"injected failure: get {key}")
        return await super().get(key)


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_a_commit_whose_outcome_was_unknown_finds_out_when_retried(
    backend: str, tmp_path: Path
) -> None:
    inner = _setup(backend, tmp_path)
    faulty = _AckAndReadBackLost(inner)
    session = Repository.open(faulty).writable_session("main")
    zarr.open_array(session.store, path="a")[0:10] = 7
    with pytest.raises(StorageError, match="may or may not have landed"):
        session.commit("landed unacknowledged")
    assert faulty.readback_failed
    landed = session.commit("landed unacknowledged")  # no conflict with itself
    assert landed == Repository.open(inner).lookup_branch("main")
    assert _messages(inner).count("landed unacknowledged") == 1
    assert session.read_only


@pytest.mark.parametrize("backend", ["memory", "local"])
def test_slow_storage_with_racing_committers_loses_nothing(backend: str, tmp_path: Path) -> None:
    inner = _setup(backend, tmp_path)
    delays = {"get": 0.002, "put": 0.002, "put_if_absent": 0.01, "durability_barrier": 0.005}
    repo = Repository.open(FaultyStorage(inner, delay=delays))
    acked: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def commit_block(block: int) -> None:
        try:
            session = repo.writable_session("main")
            zarr.open_array(session.store, path="a")[block * 10 : (block + 1) * 10] = 100 + block
            snapshot_id = session.commit(f"block {block}")
            with lock:
                acked.append(snapshot_id)
        except BaseException as e:  # noqa: BLE001 - asserted empty below
            errors.append(e)

    threads = [threading.Thread(target=commit_block, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    history = [info.id for info in Repository.open(inner).ancestry(branch="main")]
    assert sorted(history[:4]) == sorted(acked)
    values: Any = zarr.open_array(
        Repository.open(inner).readonly_session("main").store, path="a", mode="r"
    )[:]
    np.testing.assert_array_equal(values, np.repeat(100 + np.arange(4), 10))
