"""bench_scale.py section 6: a ``to_zarr`` job of 100,000 dask blocks on LocalCluster(2x1).

The cluster (``LocalCluster(n_workers=2, threads_per_worker=1)``, scheduler
included) runs in a child process, so the benchmark process is only the
client: its RSS is the client's, and the scheduler's RSS is read on the
scheduler (``run_on_scheduler``) before and after every job.

The dataset: ``v(time, x)`` float32, 100,000 x 1,024, dask blocks of one row
(100,000 blocks), Zarr chunks of one row (4 KiB). The block function creates a
marker file with ``O_EXCL`` the first time any block runs and writes the wall
clock time into it, so "time before the first task starts" is measured from
the client's clock before the write call to the first block's start.

Jobs (interleaved; ours repeated to see the scheduler's RSS over jobs):

ours
    ``to_zarr(ds, session, mode="w", compute=False)`` (graph build, timed),
    ``dask.compute`` + ``session.merge`` of the record, ``session.commit``.
plain
    ``ds.to_zarr(LocalStore, mode="w", compute=False)`` then ``dask.compute``.
icechunk
    ``to_icechunk(ds, session, mode="w")`` + commit (it has no ``compute=False``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from _common import (
    REPO_ROOT,
    fmt_bytes,
    fmt_time,
    loadavg,
    proc_status,
    reset_peak_rss,
    table,
    tempdir,
    verdict,
)

TARGETS = {"first_task_us_per_block": 20.0, "client_rss_bytes": 200 * 2**20}
WIDTH = 1024

_CLUSTER = """
import json, sys
from distributed import LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=None, host="127.0.0.1")
print(json.dumps({"address": cluster.scheduler_address, "pid": __import__("os").getpid()}),
      flush=True)
sys.stdin.read()
cluster.close(timeout=30)
"""


@contextlib.contextmanager
def cluster_process() -> Iterator[Any]:
    """A LocalCluster(2x1) in a child process; yields a connected ``Client``."""
    from distributed import Client

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(REPO_ROOT / "bench"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        with Client(info["address"], timeout=120) as client:
            client.wait_for_workers(2, timeout=120)
            yield client
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _rss() -> int:
    return proc_status("VmRSS")


def _row(marker: str, block_info: Any = None) -> np.ndarray:
    with contextlib.suppress(FileExistsError):
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, repr(time.time()).encode())
        os.close(fd)
    shape = block_info[None]["chunk-shape"]
    row = block_info[None]["array-location"][0][0]
    return np.full(shape, row % 1000, dtype=np.float32)


def make_dataset(n: int, marker: Path) -> xr.Dataset:
    arr = da.map_blocks(
        _row,
        str(marker),
        dtype=np.float32,
        chunks=((1,) * n, (WIDTH,)),
        meta=np.empty((0, 0), dtype=np.float32),
    )
    return xr.Dataset({"v": (("time", "x"), arr)})


ENCODING = {"v": {"chunks": (1, WIDTH)}}


def _job(impl: str, n: int, d: Path, client: Any) -> dict[str, Any]:
    marker = d / "first-task"
    ds = make_dataset(n, marker)
    sched0 = client.run_on_scheduler(_rss)
    peak_reset = reset_peak_rss()
    rss0 = proc_status("VmRSS")
    out: dict[str, Any] = {"impl": impl, "blocks": n}
    t0 = time.time()
    if impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage, to_zarr

        session = Repository.create(local_filesystem_storage(d / "repo")).writable_session("main")
        lazy = to_zarr(ds, session, mode="w", encoding=ENCODING, compute=False)
        out["graph_build_s"] = time.time() - t0
        t1 = time.time()
        (record,) = dask.compute(lazy)
        out["compute_s"] = time.time() - t1
        if record is not None:  # the lazy write merges into the session when computed
            session.merge(record)
        t2 = time.time()
        session.commit("job")
        out["commit_s"] = time.time() - t2
    elif impl == "plain":
        lazy = ds.to_zarr(
            zarr.storage.LocalStore(d / "plain"),
            mode="w",
            encoding=ENCODING,
            zarr_format=3,
            consolidated=False,
            compute=False,
        )
        out["graph_build_s"] = time.time() - t0
        dask.compute(lazy)
    else:
        import icechunk
        from icechunk.xarray import to_icechunk

        repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(d / "ic")))
        session = repo.writable_session("main")
        to_icechunk(ds, session, mode="w", encoding=ENCODING)
        session.commit("job")
    out["total_s"] = time.time() - t0
    out["first_task_s"] = float(marker.read_text()) - t0
    out["first_task_us_per_block"] = out["first_task_s"] / n * 1e6
    out["client_rss_growth"] = proc_status("VmHWM") - rss0 if peak_reset else None
    out["client_rss_after"] = proc_status("VmRSS")
    out["scheduler_rss_before"] = sched0
    out["scheduler_rss_after"] = client.run_on_scheduler(_rss)
    out["load"] = loadavg()
    return out


def section_jobs(args: argparse.Namespace) -> dict[str, Any]:
    n = 5_000 if args.quick else args.job_blocks
    order = [i for i in args.job_order.split(",") if args.icechunk or i != "icechunk"]
    res: dict[str, Any] = {"blocks": n, "load_before": loadavg(), "jobs": []}
    with cluster_process() as client:
        for impl in order:
            with tempdir(f"bench-job-{impl}-") as d:
                r = _job(impl, n, d, client)
            res["jobs"].append(r)
            print(
                f"  job {impl}: first task after {fmt_time(r['first_task_s'])} "
                f"({r['first_task_us_per_block']:.1f} us/block), total {fmt_time(r['total_s'])}, "
                f"client RSS +{fmt_bytes(r['client_rss_growth'])}, scheduler RSS "
                f"{fmt_bytes(r['scheduler_rss_before'])} -> {fmt_bytes(r['scheduler_rss_after'])}",
                flush=True,
            )
    res["load_after"] = loadavg()
    return res


def report_jobs(res: dict[str, Any]) -> str:
    rows = []
    for i, r in enumerate(res["jobs"]):
        ours = r["impl"] == "ours"
        rows.append(
            [
                str(i + 1),
                r["impl"],
                fmt_time(r["first_task_s"]),
                f"{r['first_task_us_per_block']:.1f}"
                + (
                    f" {verdict(r['first_task_us_per_block'], TARGETS['first_task_us_per_block'])}"
                    if ours
                    else ""
                ),
                fmt_time(r["graph_build_s"]) if "graph_build_s" in r else "-",
                fmt_time(r["total_s"]),
                fmt_bytes(r["client_rss_growth"])
                + (
                    f" {verdict(r['client_rss_growth'], TARGETS['client_rss_bytes'])}"
                    if ours
                    else ""
                ),
                f"{fmt_bytes(r['scheduler_rss_before'])} -> {fmt_bytes(r['scheduler_rss_after'])}",
                f"{r['load'][0]:.1f}",
            ]
        )
    head = (
        f"### `to_zarr` job of {res['blocks']:,} dask blocks (4 KiB chunks) on "
        "LocalCluster(2x1), jobs in the order run\n\n"
    )
    return head + table(
        [
            "job",
            "impl",
            "until first task",
            "µs/block",
            "graph build (compute=False)",
            "total (incl. commit)",
            "client RSS growth",
            "scheduler RSS",
            "load",
        ],
        rows,
    )
