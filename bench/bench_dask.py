"""Dask/xarray write benchmarks: plain zarr vs icechunk vs icechunk_dask, side by side.

Run from the repository root::

    PYTHONPATH=. python bench/bench_dask.py             # ~4-6 minutes on 2 cores
    PYTHONPATH=. python bench/bench_dask.py --quick     # one repeat, smaller data
    PYTHONPATH=. python bench/bench_dask.py --schedulers threads --cases small

It prints a table and writes ``bench/results/dask.json``.

Every run writes the same xarray Dataset (one float32 variable, dask-backed,
values rounded to 0.01 so zstd has something to do) with the same encoding
(``ZstdCodec(level=1)``, same zarr chunks) on the same scheduler into a fresh
directory, and is timed from the write call to the end of the commit:

plain
    ``ds.to_zarr(zarr.storage.LocalStore(path), mode="w", consolidated=False)``
icechunk
    ``icechunk.xarray.to_icechunk(ds, session, mode="w")`` + ``session.commit``
ours
    ``icechunk_dask.to_zarr(ds, session, mode="w")`` + ``session.commit``
    (durable local storage: one ``syncfs`` before the branch ref is written)
ours-nosync
    the same with ``local_filesystem_storage(path, durable=False)``, which
    like zarr's LocalStore and icechunk's local storage does not flush to disk

Cases: ``big`` = 1 GiB in 256 zarr chunks of 4 MiB (dask chunks = zarr
chunks); ``small`` = 64 MiB in 16,384 zarr chunks of 4 KiB, dask chunks of
1 MiB (64 dask blocks of 256 zarr chunks). Schedulers:
``LocalCluster(n_workers=2, threads_per_worker=1)`` and the threaded scheduler
with 2 threads. Repeats are interleaved (the order of the implementations
rotates).

Also measured, on each scheduler: the pickled size of the merged change
record that reaches the client (``to_zarr(..., compute=False)`` computed with
``dask.compute``) per zarr chunk, and on the cluster the scheduler's RSS
before/after each of our writes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from _common import (
    environment,
    fmt_bytes,
    fmt_time,
    loadavg,
    median,
    table,
    tempdir,
    verdict,
    write_json,
)
from zarr.codecs import ZstdCodec

TARGETS = {
    "big_vs_plain": 1.05,
    "big_vs_icechunk": 1.0,
    "small_vs_plain": 0.5,
    "small_vs_icechunk": 0.4,
    "bytes_per_chunk": 32,
}

CASES: dict[str, dict[str, Any]] = {
    # 16384 x 16384 float32 = 1 GiB; zarr chunks 1024 x 1024 = 4 MiB -> 256 chunks
    "big": {"shape": (16384, 16384), "zchunks": (1024, 1024), "dchunks": (1024, 1024)},
    # 4096 x 4096 float32 = 64 MiB; zarr chunks 32 x 32 = 4 KiB -> 16384 chunks
    "small": {"shape": (4096, 4096), "zchunks": (32, 32), "dchunks": (512, 512)},
}
QUICK_CASES: dict[str, dict[str, Any]] = {
    "big": {"shape": (8192, 8192), "zchunks": (1024, 1024), "dchunks": (1024, 1024)},
    "small": {"shape": (2048, 2048), "zchunks": (32, 32), "dchunks": (512, 512)},
}


def _block(block_id: tuple[int, ...] | None = None, block_info: Any = None) -> np.ndarray:
    shape = block_info[None]["chunk-shape"]
    seed = hash(block_id) & 0xFFFFFFFF
    out = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return np.round(out, 2, out=out)


def make_dataset(case: dict[str, Any]) -> xr.Dataset:
    arr = da.map_blocks(
        _block,
        dtype=np.float32,
        chunks=_dask_chunks(case["shape"], case["dchunks"]),
        meta=np.empty((0, 0), dtype=np.float32),
    )
    return xr.Dataset({"v": (("y", "x"), arr)})


def _dask_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(
        tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(shape, chunks, strict=True)
    )


def _encoding(case: dict[str, Any]) -> dict[str, Any]:
    return {"v": {"chunks": case["zchunks"], "compressors": [ZstdCodec(level=1)]}}


def nchunks(case: dict[str, Any]) -> int:
    return int(np.prod([-(-s // c) for s, c in zip(case["shape"], case["zchunks"], strict=True)]))


# ---------------------------------------------------------------------------------------------
# the implementations: each writes ds into path and returns (seconds, extra info)
# ---------------------------------------------------------------------------------------------


def run_plain(ds: xr.Dataset, path: Path, case: dict[str, Any]) -> float:
    store = zarr.storage.LocalStore(path / "plain")
    t = time.perf_counter()
    ds.to_zarr(store, mode="w", encoding=_encoding(case), zarr_format=3, consolidated=False)
    return time.perf_counter() - t


def run_icechunk(ds: xr.Dataset, path: Path, case: dict[str, Any]) -> float:
    import icechunk
    from icechunk.xarray import to_icechunk

    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path / "ic")))
    t = time.perf_counter()
    session = repo.writable_session("main")
    to_icechunk(ds, session, mode="w", encoding=_encoding(case))
    session.commit("bench")
    return time.perf_counter() - t


def _run_ours(ds: xr.Dataset, path: Path, case: dict[str, Any], durable: bool) -> float:
    from icechunk_dask import Repository, local_filesystem_storage
    from icechunk_dask.xarray import to_zarr

    repo = Repository.create(local_filesystem_storage(path / "ours", durable=durable))
    t = time.perf_counter()
    session = repo.writable_session("main")
    to_zarr(ds, session, mode="w", encoding=_encoding(case))
    session.commit("bench")
    return time.perf_counter() - t


def run_ours(ds: xr.Dataset, path: Path, case: dict[str, Any]) -> float:
    return _run_ours(ds, path, case, durable=True)


def run_ours_nosync(ds: xr.Dataset, path: Path, case: dict[str, Any]) -> float:
    return _run_ours(ds, path, case, durable=False)


IMPLS = {
    "plain": run_plain,
    "icechunk": run_icechunk,
    "ours": run_ours,
    "ours-nosync": run_ours_nosync,
}


def record_size(ds: xr.Dataset, case: dict[str, Any]) -> dict[str, Any]:
    """Pickled size of the merged change record that reaches the client."""
    from icechunk_dask import Repository, local_filesystem_storage
    from icechunk_dask.xarray import to_zarr

    with tempdir("icd-rec-") as d:
        repo = Repository.create(local_filesystem_storage(d / "ours", durable=False))
        session = repo.writable_session("main")
        lazy = to_zarr(ds, session, mode="w", encoding=_encoding(case), compute=False)
        t = time.perf_counter()
        (record,) = dask.compute(lazy)
        dt = time.perf_counter() - t
        blob = pickle.dumps(record)
        n = record.nchunks
        session.merge(record)
        session.commit("record")
    return {
        "record_bytes": len(blob),
        "record_chunks": n,
        "bytes_per_chunk": len(blob) / max(n, 1),
        "compute_s": dt,
    }


def _cpu_seconds() -> float:
    """CPU time of the calling process (user + system, all threads)."""
    return time.process_time()


def cluster_cpu(client: Any) -> float:
    """CPU seconds used so far by this process, plus the scheduler and workers if any."""
    total = time.process_time()
    if client is not None:
        total += client.run_on_scheduler(_cpu_seconds)
        total += sum(client.run(_cpu_seconds).values())
    return total


def _scheduler_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return -1


@contextlib.contextmanager
def scheduler(name: str) -> Iterator[Any]:
    if name == "distributed":
        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        with dask.config.set(scheduler="threads", num_workers=2):
            yield None


def bench(args: argparse.Namespace) -> dict[str, Any]:
    cases = QUICK_CASES if args.quick else CASES
    impls = [i for i in args.impls.split(",") if i != "icechunk" or args.icechunk]
    out: dict[str, Any] = {}
    for sched in args.schedulers.split(","):
        out[sched] = {}
        with scheduler(sched) as client:
            for cname in args.cases.split(","):
                case = cases[cname]
                ds = make_dataset(case)
                res: dict[str, Any] = {
                    "shape": case["shape"],
                    "zarr_chunks": case["zchunks"],
                    "dask_chunks": case["dchunks"],
                    "nchunks": nchunks(case),
                    "load_before": loadavg(),
                }
                times: dict[str, list[float]] = {i: [] for i in impls}
                cpu: dict[str, list[float]] = {i: [] for i in impls}
                sched_rss: list[tuple[int, int]] = []
                for rep in range(args.repeats):
                    order = impls[rep % len(impls) :] + impls[: rep % len(impls)]
                    for impl in order:
                        gc.collect()
                        with tempdir(f"bench-{impl}-") as d:
                            before = client.run_on_scheduler(_scheduler_rss) if client else None
                            cpu0 = cluster_cpu(client)
                            times[impl].append(IMPLS[impl](ds, d, case))
                            cpu[impl].append(cluster_cpu(client) - cpu0)
                            if client is not None and impl.startswith("ours"):
                                after = client.run_on_scheduler(_scheduler_rss)
                                sched_rss.append((before, after))
                        print(
                            f"  {sched:11s} {cname:5s} {impl:11s} {times[impl][-1]:7.2f} s "
                            f"(load {loadavg()[0]:.1f})",
                            flush=True,
                        )
                res["times"] = times
                res["cpu_times"] = cpu
                res["median_s"] = {i: median(t) for i, t in times.items()}
                res["median_cpu_s"] = {i: median(t) for i, t in cpu.items()}
                m, c = res["median_s"], res["median_cpu_s"]
                for ours in ("ours", "ours-nosync"):
                    if ours not in m:
                        continue
                    for other in ("plain", "icechunk"):
                        if other in m:
                            res[f"{ours}/{other}"] = m[ours] / m[other]
                            res[f"{ours}/{other} cpu"] = c[ours] / c[other]
                if sched_rss:
                    res["scheduler_rss"] = sched_rss
                    res["scheduler_rss_growth_max"] = max(a - b for b, a in sched_rss)
                    res["scheduler_rss_first_last"] = (sched_rss[0][0], sched_rss[-1][1])
                if not args.no_record:
                    res["record"] = record_size(ds, case)
                res["load_after"] = loadavg()
                out[sched][cname] = res
    return out


def report(results: dict[str, Any]) -> str:
    lines = ["## to_zarr of one dask-backed variable, write + commit (median wall time)", ""]
    rows = []
    for sched, cases in results["runs"].items():
        for cname, r in cases.items():
            m = r["median_s"]
            tgt_p = TARGETS[f"{cname}_vs_plain"]
            tgt_i = TARGETS[f"{cname}_vs_icechunk"]

            def ratio(key: str, tgt: float, r: dict[str, Any] = r) -> str:
                return f"{r[key]:.2f} {verdict(r[key], tgt)}" if key in r else "-"

            rec = r.get("record")
            rss = r.get("scheduler_rss_growth_max")
            rows.append(
                [
                    sched,
                    f"{cname} ({r['nchunks']:,} chunks)",
                    *(fmt_time(m[i]) if i in m else "-" for i in IMPLS),
                    ratio("ours/plain", tgt_p),
                    ratio("ours/icechunk", tgt_i),
                    ratio("ours-nosync/plain", tgt_p),
                    ratio("ours-nosync/icechunk", tgt_i),
                    f"{rec['bytes_per_chunk']:.1f}" if rec else "-",
                    fmt_bytes(rss) if rss is not None else "-",
                    f"{r['load_before'][0]:.1f}",
                ]
            )
    lines.append(
        table(
            [
                "scheduler",
                "case",
                *IMPLS,
                "ours/plain",
                "ours/icechunk",
                "nosync/plain",
                "nosync/icechunk",
                "record B/chunk",
                "sched. RSS growth",
                "load",
            ],
            rows,
        )
    )
    lines.append(
        "targets: big <= 1.05x plain and <= 1.0x icechunk; small <= 0.5x plain and "
        "<= 0.4x icechunk; record <= 32 B/chunk"
    )
    lines += ["", "CPU seconds (client + scheduler + workers), medians, and ratios:", ""]
    rows = []
    for sched, cases in results["runs"].items():
        for cname, r in cases.items():
            c = r.get("median_cpu_s", {})
            rows.append(
                [
                    sched,
                    cname,
                    *(f"{c[i]:.2f}" if i in c else "-" for i in IMPLS),
                    *(
                        f"{r[k]:.2f}" if k in r else "-"
                        for k in ("ours/plain cpu", "ours/icechunk cpu")
                    ),
                ]
            )
    lines.append(table(["scheduler", "case", *IMPLS, "ours/plain", "ours/icechunk"], rows))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="half-size data, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="big,small")
    ap.add_argument("--schedulers", default="distributed,threads")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--no-icechunk", dest="icechunk", action="store_false")
    ap.add_argument("--no-record", action="store_true", help="skip the change-record size run")
    ap.add_argument("--output", default="dask.json")
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    if args.icechunk:
        try:
            import icechunk

            icechunk.set_logs_filter("error")
        except ImportError:
            args.icechunk = False
    env = environment()
    print(f"load average {env['loadavg_start']} on {env['cpus']} cores", flush=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"environment": env, "targets": TARGETS}
    results["runs"] = bench(args)
    env["loadavg_end"] = loadavg()
    env["wall_s"] = time.perf_counter() - t0
    print()
    print(report(results))
    path = write_json(args.output, results)
    print(f"\nwrote {path}")
    print(f"load average at end {env['loadavg_end']}; wall {env['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
