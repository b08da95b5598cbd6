"""A cluster of separate hosts that share nothing with the client but the S3 endpoint.

The test starts ``dask scheduler`` and three ``dask worker`` processes itself, each
with its own working directory, HOME, TMPDIR and environment; the workers get S3
credentials from their environment only (the pickled storage carries none). Then
four separate processes race commits on the same repository.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from distributed import Client

from icechunk_dask import Repository, to_zarr
from icechunk_dask.storage import s3_storage
from tests.servers._process import launcher
from tests.servers._seaweed import SeaweedServer
from tests.servers.dask_cluster import host_env, separate_hosts

pytest_plugins = ["tests.servers.seaweed"]

pytestmark = [pytest.mark.seaweedfs, pytest.mark.slow]

RACERS = 4
COMMITS = 8

#: A committer on another "host": the location comes in argv, credentials from its environment.
_COMMITTER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, zarr
    from icechunk_dask import Repository
    from icechunk_dask.storage import s3_storage

    location, proc, commits = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    repo = Repository.open(s3_storage(**location))
    acked = []
    for i in range(commits):
        session = repo.writable_session("main")
        arr = zarr.open_array(session.store, path="counter", mode="r+")
        arr[proc * commits + i] = proc * commits + i
        acked.append(session.commit(f"racer {proc} commit {i}"))
    print(json.dumps(acked))
    """
)


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(42)
    time = pd.date_range("2026-01-01", periods=24, freq="h")
    lat, lon = np.linspace(-60, 60, 32), np.linspace(0, 350, 48)
    shape = (time.size, lat.size, lon.size)
    return xr.Dataset(
        {
            "t2m": (
                ("time", "lat", "lon"),
                rng.normal(280, 10, shape).astype("f4"),
                {"units": "K"},
            ),
            "tp": (("time", "lat", "lon"), rng.gamma(1.0, 2.0, shape), {"units": "mm"}),
            "land": (("lat", "lon"), (rng.random(shape[1:]) > 0.7).astype("i2")),
        },
        coords={"time": time, "lat": lat, "lon": lon},
        attrs={"title": "written by three separate workers"},
    ).chunk({"time": 6, "lat": 16, "lon": 24})


def test_separate_hosts_write_one_commit_then_race(
    seaweed_server: SeaweedServer,
    seaweed_bucket: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The client, like every worker, takes its credentials from its own environment.
    secret = seaweed_server.secret_access_key
    credentials = {
        "AWS_ACCESS_KEY_ID": seaweed_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    location = {
        k: seaweed_bucket[k] for k in ("bucket", "endpoint_url", "region", "allow_http")
    } | {"prefix": "hosts"}
    storage = s3_storage(**location)
    repo = Repository.create(storage)
    assert secret.encode() not in pickle.dumps(storage)
    ds = _dataset()

    with separate_hosts(tmp_path / "hosts", 3, worker_env=credentials) as cluster:
        with Client(cluster.address, timeout="60s") as client:
            client.wait_for_workers(3, timeout=120)
            session = repo.writable_session("main")
            with session.allow_pickling():  # what travels to the workers: no secret
                assert secret.encode() not in cloudpickle.dumps(session)
            to_zarr(ds, session, mode="w")
            worked = client.run(lambda dask_worker: dask_worker.state.executed_count)
        session.commit("written by three hosts")
    assert all(n > 0 for n in worked.values()), worked  # every worker wrote something

    fresh = Repository.open(s3_storage(**location))
    assert [i.message for i in fresh.ancestry(branch="main")] == [
        "written by three hosts",
        "Repository initialized",
    ]
    ondisk = xr.open_zarr(fresh.readonly_session("main").store, consolidated=False)
    xr.testing.assert_identical(ondisk.compute(), ds.compute())

    # four processes on four "hosts" race commits on the same repository
    session = fresh.writable_session("main")
    zarr.create_array(
        session.store,
        name="counter",
        shape=(RACERS * COMMITS,),
        chunks=(1,),
        dtype="i8",
        fill_value=-1,
    )
    base = session.commit("counter")
    racers = []
    for p in range(RACERS):
        home = tmp_path / f"racer-{p}"
        home.mkdir()
        argv = [sys.executable, "-c", _COMMITTER, json.dumps(location), str(p), str(COMMITS)]
        racers.append(
            subprocess.Popen(
                [*launcher(), *argv],
                cwd=home,
                env=host_env(home, credentials),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        )
    acked: list[str] = []
    try:
        for proc in racers:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            acked += json.loads(out.decode().strip().splitlines()[-1])
    finally:
        for proc in racers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    history = list(Repository.open(s3_storage(**location)).ancestry(branch="main"))
    ids = [i.id for i in history]
    assert len(ids) == len(set(ids))
    new = ids[: ids.index(base)]
    assert sorted(new) == sorted(acked) and len(acked) == RACERS * COMMITS
    counter = zarr.open_array(
        fresh.readonly_session(branch="main").store, path="counter", mode="r"
    )[:]
    np.testing.assert_array_equal(counter, np.arange(RACERS * COMMITS))
