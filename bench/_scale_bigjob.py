"""bench_scale.py section ``bigjob``: a 10M-reference Dask job with manifests built on workers.

``store_sessions`` of ``v(time, y, x)`` float32, ``steps`` x 32 x 32 in 1x1x1
chunks (10,000 steps: 10,240,000 chunks of ~13 bytes, inline in the
manifests), the data of :func:`_scale_build.dataset` in dask blocks of
``block_steps`` steps, on ``LocalCluster(n_workers=2, threads_per_worker=1)``
running in a child process (:func:`_scale_jobs.cluster_process`), so that the
benchmark process is only the client.

The repository's default configuration builds the manifest of every box
(65,536 references: 64 steps) on the workers (``icechunk_dask/_buildboxes.py``):
the change record that reaches the client holds manifest layers instead of
references. Measured, for each repeat, in a fresh repository whose array was
created and committed first:

job
    wall time of ``store_sessions(..., compute=True)`` (graph, compute, merge
    of the record into the session).
record
    ``session.changes()``: pre-built layers (sum over boxes) and chunk entries
    the client holds.
commit
    wall time of ``session.commit``.
client RSS growth
    ``VmHWM`` after the commit minus ``VmRSS`` before the job, with the peak
    reset through ``/proc/self/clear_refs`` before the job.
read back
    the first and the last step read through a read-only session on ``main``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import zarr
from _common import (
    collect,
    fmt_bytes,
    fmt_time,
    loadavg,
    proc_status,
    reset_peak_rss,
    table,
    tempdir,
    verdict,
)
from _scale_build import SIDE, dataset, expected_step
from _scale_jobs import cluster_process

#: the commit targets of issue 14, applied to the client's commit of the job
TARGETS = {"commit_s": 15.0, "client_rss_bytes": 2**30}


def _one_job(client: Any, steps: int, block_steps: int) -> dict[str, Any]:
    from icechunk_dask import Repository, local_filesystem_storage, store_sessions

    with tempdir("bench-bigjob-") as d:
        repo = Repository.create(local_filesystem_storage(d / "repo"))
        s = repo.writable_session("main")
        zarr.create_array(
            s.store, name="v", shape=(steps, SIDE, SIDE), chunks=(1, 1, 1), dtype="float32"
        )
        s.commit("create v")
        s = repo.writable_session("main")
        source = dataset(0, steps, block_steps)["v"].data
        target = zarr.open_array(s.store, path="v", mode="r+")
        collect()
        peak_reset = reset_peak_rss()
        rss0 = proc_status("VmRSS")
        t0 = time.perf_counter()
        store_sessions([source], [target], s)
        t1 = time.perf_counter()
        record = s.changes()
        layers = sum(len(box) for nm in record.layers.values() for box in nm.boxes.values())
        out: dict[str, Any] = {
            "steps": steps,
            "chunks": steps * SIDE * SIDE,
            "block_steps": block_steps,
            "dask_blocks": source.npartitions,
            "job_s": t1 - t0,
            "record_layers": layers,
            "record_chunks": len(record.chunks),
            "record_nchunks": record.nchunks,
            "record_bytes": len(record.to_bytes()),
        }
        del record
        t2 = time.perf_counter()
        out["snapshot"] = s.commit("job")
        out["commit_s"] = time.perf_counter() - t2
        out["client_rss_growth"] = proc_status("VmHWM") - rss0 if peak_reset else None
        ro = repo.readonly_session(branch="main")
        arr = zarr.open_array(ro.store, path="v", mode="r")
        out["read_back_ok"] = bool(
            np.array_equal(arr[0], expected_step(0))
            and np.array_equal(arr[steps - 1], expected_step(steps - 1))
        )
        out["load"] = loadavg()
    return out


def section_bigjob(args: argparse.Namespace, steps: int) -> dict[str, Any]:
    """``args.bigjob_repeats`` jobs of ``steps`` steps on one LocalCluster(2x1)."""
    res: dict[str, Any] = {"steps": steps, "load_before": loadavg(), "jobs": []}
    with cluster_process() as client:
        for _ in range(args.bigjob_repeats):
            r = _one_job(client, steps, args.bigjob_block_steps)
            res["jobs"].append(r)
            print(
                f"  bigjob {r['chunks']:,} chunks: job {fmt_time(r['job_s'])}, commit "
                f"{fmt_time(r['commit_s'])}, client RSS +{fmt_bytes(r['client_rss_growth'])}, "
                f"record {r['record_layers']} layers / {r['record_chunks']} chunks "
                f"(load {r['load'][0]:.1f})",
                flush=True,
            )
    res["load_after"] = loadavg()
    return res


def report_bigjob(res: dict[str, Any]) -> str:
    rows = []
    for i, r in enumerate(res["jobs"]):
        rows.append(
            [
                str(i + 1),
                f"{r['chunks']:,}",
                f"{r['dask_blocks']:,}",
                fmt_time(r["job_s"]),
                fmt_time(r["commit_s"]) + f" {verdict(r['commit_s'], TARGETS['commit_s'])}",
                fmt_bytes(r["client_rss_growth"])
                + f" {verdict(r['client_rss_growth'], TARGETS['client_rss_bytes'])}",
                (
                    f"{r['record_layers']} layers, {r['record_chunks']} chunks "
                    f"({fmt_bytes(r['record_bytes'])})"
                ),
                "yes" if r["read_back_ok"] else "NO",
                f"{r['load'][0]:.1f}",
            ]
        )
    head = (
        f"### `store_sessions` job of {res['steps'] * SIDE * SIDE:,} chunk references on "
        "LocalCluster(2x1), manifests built on the workers\n\n"
    )
    return head + table(
        [
            "job",
            "chunks",
            "dask blocks",
            "job (compute + merge)",
            "client commit",
            "client RSS growth",
            "change record",
            "read back",
            "load",
        ],
        rows,
    )
