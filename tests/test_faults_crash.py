"""Fault campaign, crashes: a writer killed with SIGKILL at every step of a commit.

The writer is a real process (``spawn``). Its storage is the local-filesystem
backend with one addition: when it sees the N-th call of one kind whose key
starts with a given prefix, it sends itself SIGKILL, before or after doing the
call. That is a real kill of a real process at an exact step of
``Session.commit``: chunk writes, manifests, transaction log, snapshot, the
durability barrier, the create-only branch-log entry and the branch hint.

After each crash the repository must open, the branch must show exactly the
previous snapshot (killed before the branch-log entry was written) or the new
one (killed after), every array must read completely, and a later commit must
succeed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask.storage import LocalFileSystemStorage

SPAWN = mp.get_context("spawn")
SHAPE, CHUNKS = (64, 4096), (16, 4096)  # 4 chunks of 512 KiB: one object each (not packed)
TIMEOUT = 120


class KillingStorage(LocalFileSystemStorage):
    """Local storage that SIGKILLs its own process at the N-th matching call."""

    def __init__(self, path: str, op: str, prefix: str, nth: int, when: str) -> None:
        super().__init__(path)
        self.op, self.prefix, self.nth, self.when = op, prefix, nth, when
        self.seen = 0

    def _maybe_die(self, op: str, key: str, when: str) -> None:
        # calls run concurrently: count the calls that start ("before") or that have
        # completed ("after"), whichever this crash point is about
        if op != self.op or not key.startswith(self.prefix) or when != self.when:
            return
        self.seen += 1
        if self.seen == self.nth:
            os.kill(os.getpid(), signal.SIGKILL)

    async def put(self, key: str, data: bytes) -> None:
        self._maybe_die("put", key, "before")
        await super().put(key, data)
        self._maybe_die("put", key, "after")

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        self._maybe_die("put_if_absent", key, "before")
        won = await super().put_if_absent(key, data)
        self._maybe_die("put_if_absent", key, "after")
        return won

    async def durability_barrier(self) -> None:
        self._maybe_die("durability_barrier", "", "before")
        await super().durability_barrier()
        self._maybe_die("durability_barrier", "", "after")


def _values(version: int) -> np.ndarray:
    return np.full(SHAPE, float(version)) + np.arange(SHAPE[1])


def _write_version(repo: Repository, version: int) -> str:
    session = repo.writable_session("main")
    array = zarr.open_array(session.store, path="a")
    array[:] = _values(version)
    array.attrs["version"] = version
    zarr.open_group(session.store, path="g").attrs["version"] = version
    return session.commit(f"version {version}")


def _doomed_writer(root: str, op: str, prefix: str, nth: int, when: str, out: Any) -> None:
    try:
        repo = Repository.open(KillingStorage(root, op, prefix, nth, when))
        _write_version(repo, 2)
        out.put("the crash point was never reached")
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(traceback.format_exc())


#: (operation, key prefix, N-th matching call, before/after the call, branch shows new data)
CRASH_POINTS = [
    ("put", "chunks/", 1, "before", False),
    ("put", "chunks/", 3, "after", False),
    ("put", "manifests/", 1, "before", False),
    ("put", "manifests/", 1, "after", False),
    ("put", "transactions/", 1, "before", False),
    ("put", "transactions/", 1, "after", False),
    ("put", "snapshots/", 1, "before", False),
    ("put", "snapshots/", 1, "after", False),
    ("durability_barrier", "", 1, "before", False),
    ("durability_barrier", "", 1, "after", False),
    ("put_if_absent", "refs/branch.main/", 1, "before", False),
    ("put_if_absent", "refs/branch.main/", 1, "after", True),
    ("put", "refs/branch.main/hint.json", 1, "before", True),
    ("put", "refs/branch.main/hint.json", 1, "after", True),
]


def _check_version(repo: Repository, version: int) -> None:
    session = repo.readonly_session("main")
    array = zarr.open_array(session.store, path="a", mode="r")
    np.testing.assert_array_equal(array[:], _values(version))
    assert array.attrs["version"] == version
    assert zarr.open_group(session.store, path="g", mode="r").attrs["version"] == version
    (tip, *_) = repo.ancestry(branch="main")
    assert tip.message == f"version {version}"


@pytest.mark.parametrize(
    ("op", "prefix", "nth", "when", "landed"),
    CRASH_POINTS,
    ids=[
        f"{when}-{op}-{prefix.rstrip('/') or 'all'}-{n}" for op, prefix, n, when, _ in CRASH_POINTS
    ],
)
def test_killed_writer_leaves_a_consistent_repository(
    tmp_path: Path, op: str, prefix: str, nth: int, when: str, landed: bool
) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path))
    session = repo.writable_session("main")
    zarr.create_array(
        session.store, name="a", shape=SHAPE, chunks=CHUNKS, dtype="f8", compressors=None
    )
    zarr.create_group(session.store, path="g")
    session.commit("arrays")
    _write_version(repo, 1)

    out = SPAWN.Queue()
    writer = SPAWN.Process(target=_doomed_writer, args=(str(tmp_path), op, prefix, nth, when, out))
    writer.start()
    writer.join(TIMEOUT)
    assert writer.exitcode == -signal.SIGKILL, out.get(timeout=5)

    reopened = Repository.open(local_filesystem_storage(tmp_path))
    _check_version(reopened, 2 if landed else 1)
    history = [info.message for info in reopened.ancestry(branch="main")]
    assert history[: 3 if landed else 2] == (
        ["version 2", "version 1", "arrays"] if landed else ["version 1", "arrays"]
    )
    # a later commit, from a fresh handle, succeeds on top of whatever landed
    _write_version(reopened, 3)
    _check_version(Repository.open(local_filesystem_storage(tmp_path)), 3)
    assert len(list(reopened.ancestry(branch="main"))) == len(history) + 1
