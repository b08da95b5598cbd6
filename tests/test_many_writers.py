"""Many uncoordinated writers: 16 processes each commit their own region 5 times at once.

Every acknowledged commit must be in the branch's history exactly once, and
the arrays must hold each writer's last write: no commit lost, none applied
twice, no livelock (the processes finish within the timeout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask._sync import run

ROOT = Path(__file__).resolve().parents[1]
WRITERS, COMMITS = 16, 5

WRITER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, zarr
    from icechunk_dask import Repository, local_filesystem_storage
    repo = Repository.open(local_filesystem_storage(sys.argv[1]))
    me, commits = int(sys.argv[2]), int(sys.argv[3])
    out = []
    for n in range(commits):
        session = repo.writable_session("main")
        for name in ("a", "b"):
            zarr.open_array(session.store, path=name)[me] = me * 100 + n + 1
        t = time.perf_counter()
        out.append([session.commit(f"writer {me} commit {n}"), time.perf_counter() - t])
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_sixteen_writers_five_commits_each_all_land(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    s = repo.writable_session("main")
    for name in ("a", "b"):
        zarr.create_array(s.store, name=name, shape=(WRITERS, 64), chunks=(1, 64), dtype="i4")
    s.commit("arrays")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "repo"), str(i), str(COMMITS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(WRITERS)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    acked = [sid for per_writer in results for sid, _ in per_writer]
    assert len(acked) == WRITERS * COMMITS
    history = [i.id for i in repo.ancestry(branch="main")]
    assert len(history) == len(set(history))  # nothing applied twice
    assert set(acked) <= set(history)  # nothing acknowledged was lost
    assert len(history) == WRITERS * COMMITS + 2  # the 80, "arrays" and the root
    assert run(repo.storage.list("queue/")) == []  # every queued commit left the queue
    back = repo.readonly_session("main").store
    expected = np.repeat((np.arange(WRITERS) * 100 + COMMITS)[:, None], 64, axis=1)
    for name in ("a", "b"):
        np.testing.assert_array_equal(zarr.open_array(back, path=name, mode="r")[:], expected)
