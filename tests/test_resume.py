"""Jobs that survive their client, and jobs whose workers die.

* A ``to_zarr(..., resume=name)`` job whose client process is killed (SIGKILL)
  mid-job is run again by a new process with the same call: it recomputes
  only the tasks without a stored record and commits once, with the same
  data as an uninterrupted job.
* Plain ``ds.to_zarr(session.store)`` inside ``allow_pickling`` on a
  LocalCluster whose worker is killed mid-job: the retried tasks' writes
  come back, the dead worker's markers are reconciled, commit succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from icechunk_dask import InvalidInputError, Repository, local_filesystem_storage, to_zarr
from tests.dask_support import history, open_main

pytest_plugins = ["tests.dask_fixtures"]

ROOT = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent(
    """
    import os, sys, time
    import dask.array as da, numpy as np, xarray as xr
    from distributed import Client, LocalCluster
    from icechunk_dask import Repository, local_filesystem_storage, to_zarr

    def mark(block, block_info=None):
        loc = block_info[0]["chunk-location"][0]
        with open(os.environ["LOG"], "a") as f:
            f.write(f"{loc}\\n")
        time.sleep(float(os.environ["DELAY"]))
        return block

    if __name__ == "__main__":
        repo = Repository.open(local_filesystem_storage(sys.argv[1]))
        data = da.arange(64 * 64, dtype="f8", chunks=64).reshape(64, 64)
        data = data.rechunk((1, 64)).map_blocks(mark, dtype="f8")
        ds = xr.Dataset({"v": (("t", "x"), data)})
        with Client(LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                 dashboard_address=":0")):
            session = repo.writable_session("main")
            to_zarr(ds, session, mode="w", resume="ingest", split_every=4)
            session.commit("ingest")
        print("committed")
    """
)


def _expected() -> xr.Dataset:
    data = np.arange(64 * 64, dtype="f8").reshape(64, 64)
    return xr.Dataset({"v": (("t", "x"), data)})


def _run_job(repo_path: Path, log: Path, delay: float) -> subprocess.Popen[bytes]:
    script = repo_path.parent / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "LOG": str(log), "DELAY": str(delay), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(repo_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _records(repo_path: Path) -> int:
    tasks = repo_path / "jobs" / "ingest" / "tasks"
    return (
        len([p for p in tasks.iterdir() if not p.name.startswith(".tmp")]) if tasks.exists() else 0
    )


@pytest.mark.slow
def test_a_job_whose_client_was_killed_resumes_where_it_stopped(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    Repository.create(local_filesystem_storage(repo_path))
    # 64 one-step blocks of 512 bytes: the planner batches two per task (at least 32 tasks)
    first = _run_job(repo_path, tmp_path / "first.log", delay=0.2)
    try:
        deadline = time.monotonic() + 120
        while _records(repo_path) < 16:  # half of the 32 tasks have stored their record
            assert first.poll() is None, first.stdout.read() if first.stdout else b""
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        if first.stdout is not None:
            first.stdout.close()
    repo = Repository.open(local_filesystem_storage(repo_path))
    assert [s.message for s in repo.ancestry(branch="main")] == ["Repository initialized"]
    done_before = _records(repo_path)
    second = _run_job(repo_path, tmp_path / "second.log", delay=0.0)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out.decode()
    rerun = (tmp_path / "second.log").read_text().split()
    assert len(rerun) <= 0.55 * 64, (len(rerun), done_before)
    assert len(rerun) == 64 - 2 * done_before  # exactly the blocks of tasks without a record
    assert [s.message for s in repo.ancestry(branch="main")] == ["ingest", "Repository initialized"]
    xr.testing.assert_identical(open_main(repo), _expected())
    leftover = [p for p in (repo_path / "jobs").rglob("*") if p.is_file()]
    assert not leftover  # the job's records are gone with its commit


def test_resume_refuses_a_job_name_used_for_other_writes(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    ds = xr.Dataset({"v": (("t",), da.arange(8.0, chunks=2))})
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", resume="nightly", compute=False)  # records the plan
    other = xr.Dataset({"v": (("t",), da.arange(16.0, chunks=4))})
    with pytest.raises(InvalidInputError, match="already exists"):
        to_zarr(other, repo.writable_session("main"), mode="w", resume="nightly")


def test_resume_with_every_task_done_writes_nothing_again(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    ds = xr.Dataset({"v": (("t",), da.arange(800.0, chunks=200))})
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", resume="again")  # computed, not committed: client "lost"
    chunks = sorted(p.name for p in (tmp_path / "repo" / "chunks").iterdir())
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", resume="again")
    assert sorted(p.name for p in (tmp_path / "repo" / "chunks").iterdir()) == chunks
    session.commit("resumed")
    xr.testing.assert_identical(open_main(repo), ds)


def _pid(_: object = None) -> int:
    return os.getpid()


def _slow_identity(block: np.ndarray) -> np.ndarray:
    time.sleep(0.5)
    return block


@pytest.mark.slow
def test_worker_killed_mid_job_with_plain_to_zarr_commits(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    before = history(repo)
    data = da.arange(16 * 8, dtype="f8", chunks=8).reshape(16, 8).rechunk((1, 8))
    ds = xr.Dataset({"v": (("t", "x"), data.map_blocks(_slow_identity, dtype="f8"))})
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        with Client(cluster) as client:
            pids = list(client.run(_pid).values())
            session = repo.writable_session("main")
            with session.allow_pickling():
                delayed = ds.to_zarr(session.store, mode="w", consolidated=False, compute=False)
                markers = tmp_path / "repo" / "sessions" / session.session_id
                job = _start(delayed)
                deadline = time.monotonic() + 60
                while not (markers.exists() and any(markers.iterdir())):
                    assert time.monotonic() < deadline, "no worker wrote anything"
                    time.sleep(0.05)
                os.kill(pids[0], signal.SIGKILL)  # a worker dies with writes in flight
                job.join(timeout=120)
                assert not job.is_alive() and job.error is None, job.error
            session.commit("despite a dead worker")
    finally:
        cluster.close()
    assert len(history(repo)) == len(before) + 1
    expected = xr.Dataset({"v": (("t", "x"), np.arange(16 * 8, dtype="f8").reshape(16, 8))})
    xr.testing.assert_identical(open_main(repo), expected)
    assert json.dumps(sorted(p.name for p in markers.iterdir()) if markers.exists() else []) == "[]"


class _Job:
    def __init__(self, delayed: object) -> None:
        import threading

        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(delayed,))
        self._ctx = __import__("contextvars").copy_context()

    def _run(self, delayed: object) -> None:
        try:
            self._ctx.run(delayed.compute)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def start(self) -> _Job:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


def _start(delayed: object) -> _Job:
    """Compute in a thread that sees the caller's allow_pickling context."""
    return _Job(delayed).start()
