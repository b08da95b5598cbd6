"""bench_scale.py section 6: a ``to_zarr`` job of 100,000 dask blocks on LocalCluster(2x1).

The cluster (``LocalCluster(n_workers=2, threads_per_worker=1)``, scheduler
included) runs in a child process, so the benchmark process is only the
client: its RSS is the client's, and the scheduler's RSS is read on the
scheduler (``run_on_scheduler``) before and after every job.

The dataset: ``v(time, x)`` float32, 100,000 x 1,024, dask blocks of one row
(100,000 blocks), Zarr chunks of one row (4 KiB). The block function creates a
marker file with ``O_EXCL`` the first time any block runs and writes the wall
clock time into it, so "time before the first task starts" is measured from
the client's clock before the write call to the first block's start (end to
end: the client's graph build and submission, then the scheduler
materialising and optimising the graph). The client's own share is timed
directly: the graph build plus ``Client.compute``, which returns once the
graph is sent. Scheduler RSS is read after every job; "flat" means that from
the second job's end to the last one's (four jobs or more) the scheduler grew by
at most ``TARGETS["scheduler_growth_bytes"]`` per job on average (the first
jobs raise the allocator's high-water mark; single jobs move it by +-20 MiB).

The source is ``map_blocks`` of a function taking ``block_info`` (dask then
materialises a dict per block on the scheduler: the heavier case) or, with
``--job-source constant``, of one that takes no arguments.

Jobs (interleaved; ours repeated to see the scheduler's RSS over jobs):

ours
    ``to_zarr(ds, session, mode="w", compute=False)`` (graph build, timed),
    ``Client.compute`` (timed) + ``session.merge`` of the record, ``session.commit``.
plain
    ``ds.to_zarr(LocalStore, mode="w", compute=False)`` then ``Client.compute``.
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

TARGETS = {
    "client_us_per_block": 20.0,
    "client_rss_bytes": 200 * 2**20,
    "scheduler_growth_bytes": 10 * 2**20,
}
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


def _mark_first(marker: str) -> None:
    """The first block to run writes the wall clock into ``marker`` (``O_EXCL``)."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, repr(time.time()).encode())
        os.close(fd)


def _row(marker: str, block_info: Any = None) -> np.ndarray:
    _mark_first(marker)
    shape = block_info[None]["chunk-shape"]
    row = block_info[None]["array-location"][0][0]
    return np.full(shape, row % 1000, dtype=np.float32)


def _constant_row(marker: str) -> np.ndarray:
    _mark_first(marker)
    return np.full((1, WIDTH), 7, dtype=np.float32)


def make_dataset(n: int, marker: Path, source: str = "block-info") -> xr.Dataset:
    """``v(time, x)``; each block is the row number (``block_info``) or a constant."""
    arr = da.map_blocks(
        _row if source == "block-info" else _constant_row,
        str(marker),
        dtype=np.float32,
        chunks=((1,) * n, (WIDTH,)),
        meta=np.empty((0, 0), dtype=np.float32),
    )
    return xr.Dataset({"v": (("time", "x"), arr)})


ENCODING = {"v": {"chunks": (1, WIDTH)}}


def _job(impl: str, n: int, d: Path, client: Any, source: str) -> dict[str, Any]:
    marker = d / "first-task"
    ds = make_dataset(n, marker, source)
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
        future = client.compute(lazy)
        out["submit_s"] = time.time() - t1
        record = future.result()
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
        t1 = time.time()
        future = client.compute(lazy)
        out["submit_s"] = time.time() - t1
        future.result()
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
    if "submit_s" in out:
        out["client_s"] = out["graph_build_s"] + out["submit_s"]
        out["client_us_per_block"] = out["client_s"] / n * 1e6
    out["client_rss_growth"] = proc_status("VmHWM") - rss0 if peak_reset else None
    out["client_rss_after"] = proc_status("VmRSS")
    out["scheduler_rss_before"] = sched0
    out["scheduler_rss_after"] = client.run_on_scheduler(_rss)
    out["load"] = loadavg()
    return out


def section_jobs(args: argparse.Namespace) -> dict[str, Any]:
    n = 5_000 if args.quick else args.job_blocks
    order = [i for i in args.job_order.split(",") if args.icechunk or i != "icechunk"]
    res: dict[str, Any] = {
        "blocks": n,
        "source": args.job_source,
        "load_before": loadavg(),
        "jobs": [],
    }
    with cluster_process() as client:
        for impl in order:
            with tempdir(f"bench-job-{impl}-") as d:
                r = _job(impl, n, d, client, args.job_source)
            res["jobs"].append(r)
            print(
                f"  job {impl}: client {r.get('client_us_per_block', float('nan')):.1f} us/block, "
                f"first task after {fmt_time(r['first_task_s'])} "
                f"({r['first_task_us_per_block']:.1f} us/block), total {fmt_time(r['total_s'])}, "
                f"client RSS +{fmt_bytes(r['client_rss_growth'])}, scheduler RSS "
                f"{fmt_bytes(r['scheduler_rss_before'])} -> {fmt_bytes(r['scheduler_rss_after'])}",
                flush=True,
            )
    res["load_after"] = loadavg()
    return res


def _scheduler_flat(jobs: list[dict[str, Any]]) -> str:
    """Verdict on the scheduler's RSS: mean growth per job after the second job."""
    if len(jobs) < 4:
        return "- (needs 4 jobs)"
    grown = jobs[-1]["scheduler_rss_after"] - jobs[1]["scheduler_rss_after"]
    per_job = grown / (len(jobs) - 2)
    sign = "+" if per_job >= 0 else "-"
    return (
        f"{verdict(per_job, TARGETS['scheduler_growth_bytes'])} "
        f"({sign}{fmt_bytes(abs(per_job))} per job over jobs 3-{len(jobs)})"
    )


def report_jobs(res: dict[str, Any]) -> str:
    rows = []
    for i, r in enumerate(res["jobs"]):
        ours = r["impl"] == "ours"
        client = r.get("client_us_per_block")
        growth = r["scheduler_rss_after"] - r["scheduler_rss_before"]
        rows.append(
            [
                str(i + 1),
                r["impl"],
                "-"
                if client is None
                else f"{client:.1f}"
                + (f" {verdict(client, TARGETS['client_us_per_block'])}" if ours else ""),
                fmt_time(r["graph_build_s"]) if "graph_build_s" in r else "-",
                fmt_time(r["submit_s"]) if "submit_s" in r else "-",
                f"{fmt_time(r['first_task_s'])} ({r['first_task_us_per_block']:.1f})",
                fmt_time(r["total_s"]),
                fmt_bytes(r["client_rss_growth"])
                + (
                    f" {verdict(r['client_rss_growth'], TARGETS['client_rss_bytes'])}"
                    if ours
                    else ""
                ),
                (
                    f"{fmt_bytes(r['scheduler_rss_before'])} -> "
                    f"{fmt_bytes(r['scheduler_rss_after'])} ({'+' if growth >= 0 else '-'}"
                    f"{fmt_bytes(abs(growth))})"
                ),
                f"{r['load'][0]:.1f}",
            ]
        )
    ours_jobs = [r for r in res["jobs"] if r["impl"] == "ours"]
    head = (
        f"### `to_zarr` job of {res['blocks']:,} dask blocks (4 KiB chunks) on "
        f"LocalCluster(2x1), source {res.get('source', 'block-info')}, jobs in the order run\n\n"
        f"Scheduler RSS flat (ours, after job 2 it grows by <= "
        f"{fmt_bytes(TARGETS['scheduler_growth_bytes'])} per job on average): "
        f"{_scheduler_flat(ours_jobs) if len(ours_jobs) == len(res['jobs']) else '- (mixed run)'}"
        "\n\n"
    )
    return head + table(
        [
            "job",
            "impl",
            "client µs/block (build + submit)",
            "graph build",
            "submit",
            "until first task, end to end (µs/block)",
            "total (incl. commit)",
            "client RSS growth",
            "scheduler RSS",
            "load",
        ],
        rows,
    )
