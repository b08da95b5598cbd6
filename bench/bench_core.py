"""Core benchmarks of icechunk_dask: commit, fork, merge and read (local filesystem).

Run from the repository root::

    PYTHONPATH=. python bench/bench_core.py            # everything, ~3-5 minutes on 2 cores
    PYTHONPATH=. python bench/bench_core.py --quick    # smaller sizes, fewer repeats
    PYTHONPATH=. python bench/bench_core.py --only commit,read

It prints a table and writes ``bench/results/core.json``. Icechunk columns
are filled when the ``icechunk`` package is importable (``--no-icechunk`` to
skip them).

What is measured (see bench/README.md for the reasoning):

commit
    A fresh repository per repeat; one writable session creates a 2-d array
    with zarr (chunks of 1x1, so the chunk keys look like ``a/c/i/j``), then
    N chunk references are put into a synthetic ``ChangeSet`` (chunk ids as
    ``Session.write`` makes them: writer id + hex sequence, one writer per
    ``--per-writer`` chunks; random lengths around 4 MiB and random 64-bit checksums)
    which is merged into the session with ``session.merge``. Only
    ``session.commit()`` is timed. The chunk objects themselves are not
    written: a commit never reads them. Every measurement runs in a fresh
    interpreter: timing runs, a tracemalloc run (peak of Python allocations
    during the commit) and an RSS run (``VmHWM`` after the commit minus
    ``VmRSS`` before it, the peak having been reset with ``clear_refs``).
    Icechunk: the same N references set with ``set_virtual_refs_arr``
    (virtual references: icechunk's fastest bulk path for refs without
    writing chunks), commit timed the same way.
fork
    Median time of ``session.fork()`` on a session without uncommitted chunk
    writes (with and without uncommitted array metadata), files in the
    repository before/after, pickled size of a fork, and bytes per chunk of
    a fork that wrote N real chunks through zarr.
merge
    10k forks each write one real 4 KiB chunk (``fork.store.set_sync``);
    time of ``session.merge(*forks)``, of ``session.merge(*records)`` for
    their unpickled change records, and of a fan-in-16 tree of
    ``ChangeSet.merge_all`` plus the final merge.
read
    64 chunks of 4 MiB written with zarr into (a) our repository, (b)
    ``zarr.storage.LocalStore``, (c) an icechunk repository. Raw
    ``store.get`` of every chunk of an uncompressed array (asyncio.gather)
    and ``arr[:]`` of a zstd array, page cache warm, repeats interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import pickle
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import zarr
from _common import (
    collect,
    count_files,
    environment,
    fmt_bytes,
    fmt_time,
    loadavg,
    median,
    proc_status,
    reset_peak_rss,
    run_child,
    table,
    tempdir,
    verdict,
    write_json,
)
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from icechunk_dask import ChangeSet, Repository, local_filesystem_storage
from icechunk_dask.format import new_id

SCRIPT = Path(__file__).resolve()

TARGETS = {
    "commit_100k_s": 1.0,
    "commit_1M_s": 5.0,
    "commit_10M_s": 15.0,
    "commit_1M_peak_bytes": 300 * 2**20,
    "fork_s": 100e-6,
    "fork_pickle_bytes": 2048,
    "bytes_per_chunk": 32,
    "merge_10k_s": 0.100,
    "read_ratio": 1.1,
}


def _have_icechunk() -> bool:
    try:
        import icechunk  # noqa: F401
    except ImportError:
        return False
    return True


def _quiet_icechunk() -> None:
    import icechunk

    icechunk.set_logs_filter("error")


# =============================================================================================
# commit
# =============================================================================================


def _synthetic_refs(n: int, side: int, per_writer: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3_000_000, 4_194_304, n).tolist()
    crcs = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True).tolist()
    writers = [new_id() for _ in range(-(-n // per_writer))]
    return {
        f"a/c/{i // side}/{i % side}": (
            f"{writers[i // per_writer]}{i % per_writer:x}",
            0,
            lengths[i],
            crcs[i],
        )
        for i in range(n)
    }


def _time_barrier(storage: Any) -> list[float]:
    """Record how long each ``durability_barrier`` (``syncfs``) call of ``storage`` takes."""
    spent: list[float] = []
    inner = storage.durability_barrier

    async def timed_barrier() -> None:
        t = time.perf_counter()
        await inner()
        spent.append(time.perf_counter() - t)

    storage.durability_barrier = timed_barrier
    return spent


def child_commit_ours(n: int, mode: str, reps: int, per_writer: int) -> dict[str, Any]:
    side = math.isqrt(n - 1) + 1
    out: dict[str, Any] = {"times": [], "fill_s": [], "merge_s": [], "repo_bytes": []}
    for rep in range(reps):
        with tempdir("icd-commit-") as d:
            repo = Repository.create(local_filesystem_storage(d / "repo"))
            s = repo.writable_session("main")
            zarr.create_array(
                s.store,
                name="a",
                shape=(side, side),
                chunks=(1, 1),
                dtype="f4",
                compressors=None,
                fill_value=0,
            )
            t0 = time.perf_counter()
            cs = ChangeSet(repo.repo_id, s.snapshot_id)
            cs.chunks = _synthetic_refs(n, side, per_writer, rep)
            t1 = time.perf_counter()
            s.merge(cs)
            t2 = time.perf_counter()
            del cs
            collect()
            before = sum(f.stat().st_size for f in (d / "repo").rglob("*") if f.is_file())
            if mode == "time":
                barrier = _time_barrier(repo.storage)
                c = time.process_time()
                t = time.perf_counter()
                s.commit("bench")
                out["times"].append(time.perf_counter() - t)
                out.setdefault("cpu_times", []).append(time.process_time() - c)
                out.setdefault("barrier_times", []).append(sum(barrier))
            elif mode == "tracemalloc":
                tracemalloc.start()
                cur0 = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                s.commit("bench")
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                out["tracemalloc_peak"] = peak - cur0
            elif mode == "rss":
                out["clear_refs"] = reset_peak_rss()
                rss0 = proc_status("VmRSS")
                hwm0 = proc_status("VmHWM")
                s.commit("bench")
                out["rss_before"] = rss0
                out["rss_growth"] = proc_status("VmHWM") - (rss0 if out["clear_refs"] else hwm0)
                out["rss_after"] = proc_status("VmRSS")
            after = sum(f.stat().st_size for f in (d / "repo").rglob("*") if f.is_file())
            out["fill_s"].append(t1 - t0)
            out["merge_s"].append(t2 - t1)
            out["repo_bytes"].append(after - before)
            assert len(list((d / "repo" / "manifests").iterdir())) >= 1
    return out


def child_commit_icechunk(n: int, mode: str, reps: int, per_writer: int) -> dict[str, Any]:
    import icechunk

    _quiet_icechunk()
    side = math.isqrt(n - 1) + 1
    out: dict[str, Any] = {"times": []}
    for _ in range(reps):
        with tempdir("ic-commit-") as d:
            repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(d / "repo")))
            s = repo.writable_session("main")
            zarr.create_array(
                s.store,
                name="a",
                shape=(side, side),
                chunks=(1, 1),
                dtype="f4",
                compressors=None,
                fill_value=0,
            )
            total = side * side
            locs = [f"file:///data/f{i // per_writer}.bin" if i < n else "" for i in range(total)]
            offsets = (np.arange(total, dtype=np.uint64) % per_writer) * np.uint64(4_194_304)
            lengths = np.full(total, 4_000_000, dtype=np.uint64)
            failed = s.store.set_virtual_refs_arr(
                "/a", (side, side), locs, offsets, lengths, validate_containers=False
            )
            assert failed is None, failed
            del locs
            collect()
            if mode == "time":
                c = time.process_time()
                t = time.perf_counter()
                s.commit("bench")
                out["times"].append(time.perf_counter() - t)
                out.setdefault("cpu_times", []).append(time.process_time() - c)
            elif mode == "rss":
                out["clear_refs"] = reset_peak_rss()
                rss0 = proc_status("VmRSS")
                s.commit("bench")
                out["rss_growth"] = proc_status("VmHWM") - rss0
    return out


def bench_commit(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    res: dict[str, Any] = {"per_writer": args.per_writer, "sizes": {}}
    for n in sizes:
        reps = args.repeats if n <= 100_000 else max(1, args.repeats // 2 + 1)
        pw = str(args.per_writer)
        row: dict[str, Any] = {"load_before": loadavg()}
        t = run_child(SCRIPT, ["commit-ours", str(n), "time", str(reps), pw])
        row["ours"] = {
            **t,
            "median_s": median(t["times"]),
            "median_cpu_s": median(t["cpu_times"]),
            "median_barrier_s": median(t["barrier_times"]),
        }
        if n <= 1_000_000:  # tracemalloc makes a 10M-ref commit take minutes
            tm = run_child(SCRIPT, ["commit-ours", str(n), "tracemalloc", "1", pw])
            row["ours"]["tracemalloc_peak"] = tm["tracemalloc_peak"]
        rs = run_child(SCRIPT, ["commit-ours", str(n), "rss", "1", pw])
        row["ours"]["rss_growth"] = rs["rss_growth"]
        row["ours"]["rss_clear_refs"] = rs["clear_refs"]
        if args.icechunk:
            ic_reps = reps if n <= 100_000 else 1
            it = run_child(SCRIPT, ["commit-icechunk", str(n), "time", str(ic_reps), pw])
            ir = run_child(SCRIPT, ["commit-icechunk", str(n), "rss", "1", pw])
            row["icechunk"] = {
                **it,
                "median_s": median(it["times"]),
                "median_cpu_s": median(it["cpu_times"]),
                "rss_growth": ir["rss_growth"],
                "how": "set_virtual_refs_arr (virtual refs), commit timed",
            }
        row["load_after"] = loadavg()
        res["sizes"][str(n)] = row
        print(f"  commit {n}: {fmt_time(row['ours']['median_s'])}", flush=True)
    return res


# =============================================================================================
# fork
# =============================================================================================


def _timeit_per_call(fn: Any, number: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        collect()
        t = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t) / number)
    return out


def _rows(store: Any, name: str, nrows: int, **kwargs: Any) -> Any:
    """An uncompressed float32 array of ``nrows`` rows of 1024, one chunk per row."""
    return zarr.create_array(
        store,
        name=name,
        shape=(nrows, 1024),
        chunks=(1, 1024),
        dtype="f4",
        compressors=None,
        fill_value=0,
        **kwargs,
    )


def bench_fork(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"load_before": loadavg()}
    nwrite = [1000] if args.quick else [1000, 10_000]
    nrows = max(nwrite)
    with tempdir("icd-fork-") as d:
        root = d / "repo"
        repo = Repository.create(local_filesystem_storage(root))
        s0 = repo.writable_session("main")
        _rows(s0.store, "b", nrows)
        s0.commit("array")

        # committed metadata only
        s = repo.writable_session("main")
        files0 = count_files(root)
        times = _timeit_per_call(s.fork, 2000, args.repeats + 2)
        files1 = count_files(root)
        fork = s.fork()
        res["plain"] = {
            "median_s": median(times),
            "times": times,
            "files_before": files0,
            "files_after": files1,
            "pickle_bytes": len(pickle.dumps(fork)),
            "changes_pickle_bytes": len(pickle.dumps(fork.changes())),
        }
        files2 = count_files(root)
        res["plain"]["files_after_pickle"] = files2

        # uncommitted array metadata (as during a to_zarr: metadata first, then chunks)
        sm = repo.writable_session("main")
        _rows(sm.store, "c", nrows, attributes={"units": "K", "long_name": "temperature"})
        files0 = count_files(root)
        times = _timeit_per_call(sm.fork, 2000, args.repeats + 2)
        fork = sm.fork()
        pk = len(pickle.dumps(fork))
        res["uncommitted_metadata"] = {
            "median_s": median(times),
            "times": times,
            "files_before": files0,
            "files_after": count_files(root),
            "pickle_bytes": pk,
        }

        # forks that wrote N real chunks (4 KiB each, uncompressed) through zarr
        res["wrote"] = {}
        rng = np.random.default_rng(0)
        for n in nwrite:
            f = s.fork()
            arr = zarr.open_array(f.store, path="b", mode="r+")
            arr[:n] = rng.standard_normal((n, 1024), dtype=np.float32)
            assert f.changes().nchunks == n
            rec = f.changes()
            t = time.perf_counter()
            blob = pickle.dumps(rec)
            t_dump = time.perf_counter() - t
            t = time.perf_counter()
            back = pickle.loads(blob)
            t_load = time.perf_counter() - t
            assert back.nchunks == n
            fork_blob = pickle.dumps(f)
            res["wrote"][str(n)] = {
                "changes_pickle_bytes": len(blob),
                "changes_bytes_per_chunk": len(blob) / n,
                "fork_pickle_bytes": len(fork_blob),
                "fork_bytes_per_chunk": len(fork_blob) / n,
                "dump_s": t_dump,
                "load_s": t_load,
            }
    res["load_after"] = loadavg()
    return res


# =============================================================================================
# merge
# =============================================================================================


def _tree_merge(records: list[ChangeSet], fan_in: int) -> ChangeSet:
    level = records
    while len(level) > 1:
        level = [ChangeSet.merge_all(level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level[0]


def bench_merge(args: argparse.Namespace) -> dict[str, Any]:
    from zarr.core.buffer import cpu

    n = 2_000 if args.quick else 10_000
    res: dict[str, Any] = {"n": n, "load_before": loadavg()}
    with tempdir("icd-merge-") as d:
        repo = Repository.create(local_filesystem_storage(d / "repo"))
        s0 = repo.writable_session("main")
        _rows(s0.store, "m", n)
        s0.commit("array")
        s = repo.writable_session("main")
        rng = np.random.default_rng(1)
        payload = rng.standard_normal(1024, dtype=np.float32).tobytes()
        t = time.perf_counter()
        forks = []
        for i in range(n):
            f = s.fork()
            f.store.set_sync(f"m/c/{i}/0", cpu.Buffer.from_bytes(payload))
            forks.append(f)
        res["setup_write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        blobs = [pickle.dumps(f.changes()) for f in forks]
        res["pickle_records_s"] = time.perf_counter() - t
        res["record_bytes_mean"] = sum(map(len, blobs)) / n
        t = time.perf_counter()
        records = [pickle.loads(b) for b in blobs]
        res["unpickle_records_s"] = time.perf_counter() - t

        def once(what: str) -> float:
            s.discard_changes()
            collect()
            t = time.perf_counter()
            if what == "forks":
                s.merge(*forks)
            elif what == "records":
                s.merge(*records)
            else:
                s.merge(_tree_merge(records, 16))
            dt = time.perf_counter() - t
            assert s.changes().nchunks == n
            return dt

        kinds = ["forks", "records", "tree16"]
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.repeats):
            for k in kinds[rep % 3 :] + kinds[: rep % 3]:
                times[k].append(once(k))
        for k in kinds:
            res[k] = {"median_s": median(times[k]), "times": times[k]}
        merged = s.changes()
        blob = pickle.dumps(merged)
        res["merged_record_bytes"] = len(blob)
        res["merged_bytes_per_chunk"] = len(blob) / n
    res["load_after"] = loadavg()
    return res


# =============================================================================================
# read
# =============================================================================================

NCHUNK_READ = 64
ROWS = 1024  # 1024 x 1024 float32 = 4 MiB per chunk


def _read_data() -> np.ndarray:
    rng = np.random.default_rng(2)
    out = np.empty((NCHUNK_READ * ROWS, 1024), dtype=np.float32)
    for i in range(NCHUNK_READ):
        block = rng.standard_normal((ROWS, 1024), dtype=np.float32).cumsum(axis=1)
        np.round(block, 1, out=block)
        out[i * ROWS : (i + 1) * ROWS] = block
    return out


def _write_arrays(store: Any, data: np.ndarray) -> None:
    from zarr.codecs import ZstdCodec

    for name, compressors in (("raw", None), ("zstd", ZstdCodec(level=3))):
        arr = zarr.create_array(
            store,
            name=name,
            shape=data.shape,
            chunks=(ROWS, 1024),
            dtype="f4",
            compressors=compressors,
            fill_value=0,
        )
        arr[:] = data


def bench_read(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"chunks": NCHUNK_READ, "chunk_bytes": ROWS * 1024 * 4}
    res["load_before"] = loadavg()
    data = _read_data()
    proto = default_buffer_prototype()
    keys = [f"raw/c/{i}/0" for i in range(NCHUNK_READ)]
    with tempdir("icd-read-") as d:
        stores: dict[str, Any] = {}
        # ours
        repo = Repository.create(local_filesystem_storage(d / "ours"))
        s = repo.writable_session("main")
        _write_arrays(s.store, data)
        s.commit("data")
        stores["ours"] = repo.readonly_session(branch="main").store
        # zarr LocalStore
        local = zarr.storage.LocalStore(d / "zarr")
        _write_arrays(local, data)
        stores["zarr"] = zarr.storage.LocalStore(d / "zarr", read_only=True)
        # icechunk
        if args.icechunk:
            import icechunk

            _quiet_icechunk()
            irepo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(d / "ic")))
            isess = irepo.writable_session("main")
            _write_arrays(isess.store, data)
            isess.commit("data")
            stores["icechunk"] = irepo.readonly_session(branch="main").store
        res["zstd_bytes_on_disk"] = {
            name: sum(
                f.stat().st_size
                for f in (d / name).rglob("*")
                if f.is_file() and "raw" not in f.parts
            )
            for name in stores
        }

        async def get_all(store: Any) -> list[Any]:
            return await asyncio.gather(*(store.get(k, proto) for k in keys))

        arrays = {name: zarr.open_array(st, path="zstd", mode="r") for name, st in stores.items()}

        def raw(name: str) -> float:
            t = time.perf_counter()
            bufs = sync(get_all(stores[name]))
            dt = time.perf_counter() - t
            assert all(b is not None and len(b) == ROWS * 1024 * 4 for b in bufs)
            return dt

        def full(name: str) -> float:
            t = time.perf_counter()
            got = arrays[name][:]
            dt = time.perf_counter() - t
            assert got.shape == data.shape
            return dt

        # warm the page cache and check the data once
        for name in stores:
            raw(name)
            got = arrays[name][:]
            assert np.array_equal(got, data), name
            del got
        names = list(stores)
        times: dict[str, dict[str, list[float]]] = {"raw_get": {}, "array_read": {}}
        for kind, fn in (("raw_get", raw), ("array_read", full)):
            for name in names:
                times[kind][name] = []
            for rep in range(args.read_repeats):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for name in order:
                    collect()
                    times[kind][name].append(fn(name))
        total = NCHUNK_READ * ROWS * 1024 * 4
        for kind in times:
            res[kind] = {}
            for name in names:
                m = median(times[kind][name])
                res[kind][name] = {
                    "median_s": m,
                    "min_s": min(times[kind][name]),
                    "times": times[kind][name],
                    "MBps": total / m / 1e6,
                }
            base = res[kind]["zarr"]["median_s"]
            res[kind]["ratio_ours_zarr"] = res[kind]["ours"]["median_s"] / base
            res[kind]["ratio_ours_zarr_min"] = (
                res[kind]["ours"]["min_s"] / res[kind]["zarr"]["min_s"]
            )
            if "icechunk" in res[kind]:
                res[kind]["ratio_ours_icechunk"] = (
                    res[kind]["ours"]["median_s"] / res[kind]["icechunk"]["median_s"]
                )
    res["load_after"] = loadavg()
    return res


# =============================================================================================
# report
# =============================================================================================


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    T = TARGETS
    if "commit" in results:
        rows = []
        for n, row in results["commit"]["sizes"].items():
            o = row["ours"]
            target = (
                T["commit_10M_s"]
                if int(n) >= 10_000_000
                else T["commit_1M_s"]
                if int(n) >= 1_000_000
                else T["commit_100k_s"]
            )
            ic = row.get("icechunk")
            rows.append(
                [
                    f"{int(n):,}",
                    fmt_time(o["median_s"]),
                    f"<= {target:g} s {verdict(o['median_s'], target)}",
                    fmt_time(o["median_cpu_s"]),
                    fmt_time(o["median_barrier_s"]),
                    fmt_bytes(o.get("tracemalloc_peak")),
                    fmt_bytes(o["rss_growth"]),
                    fmt_bytes(median(o["repo_bytes"])),
                    fmt_time(ic["median_s"]) if ic else "-",
                    fmt_time(ic["median_cpu_s"]) if ic else "-",
                    fmt_bytes(ic["rss_growth"]) if ic else "-",
                    f"{o['median_s'] / ic['median_s']:.2f}" if ic else "-",
                    f"{row['load_before'][0]:.1f}",
                ]
            )
        lines += [
            "## commit (session.commit() alone, local filesystem)",
            "",
            table(
                [
                    "refs",
                    "ours wall",
                    "target",
                    "ours CPU",
                    "of which syncfs",
                    "tracemalloc peak",
                    "RSS growth",
                    "bytes written",
                    "icechunk wall",
                    "icechunk CPU",
                    "icechunk RSS growth",
                    "ours/icechunk (wall)",
                    "load",
                ],
                rows,
            ),
            (
                f"peak-memory target for 1M: <= {fmt_bytes(T['commit_1M_peak_bytes'])}. "
                "CPU = process CPU time during the commit (all threads)."
            ),
            "",
        ]
    if "fork" in results:
        f = results["fork"]
        rows = [
            [
                "fork(), committed metadata",
                fmt_time(f["plain"]["median_s"]),
                verdict(f["plain"]["median_s"], T["fork_s"]),
                (
                    f"{f['plain']['files_before']} -> {f['plain']['files_after']}"
                    f" (after pickling: {f['plain']['files_after_pickle']})"
                ),
                f"{f['plain']['pickle_bytes']} B",
                verdict(f["plain"]["pickle_bytes"], T["fork_pickle_bytes"]),
            ],
            [
                "fork(), uncommitted array metadata",
                fmt_time(f["uncommitted_metadata"]["median_s"]),
                verdict(f["uncommitted_metadata"]["median_s"], T["fork_s"]),
                (
                    f"{f['uncommitted_metadata']['files_before']} -> "
                    f"{f['uncommitted_metadata']['files_after']}"
                ),
                f"{f['uncommitted_metadata']['pickle_bytes']} B",
                verdict(f["uncommitted_metadata"]["pickle_bytes"], T["fork_pickle_bytes"]),
            ],
        ]
        lines += [
            "## fork",
            "",
            table(["case", "time/fork", "<=100 µs", "files", "pickled fork", "<=2 KB"], rows),
            "",
        ]
        rows = [
            [
                f"{int(n):,}",
                f"{w['changes_bytes_per_chunk']:.1f}",
                verdict(w["changes_bytes_per_chunk"], T["bytes_per_chunk"]),
                f"{w['fork_bytes_per_chunk']:.1f}",
                verdict(w["fork_bytes_per_chunk"], T["bytes_per_chunk"]),
                fmt_time(w["dump_s"]),
                fmt_time(w["load_s"]),
            ]
            for n, w in f["wrote"].items()
        ]
        lines += [
            table(
                [
                    "chunks written by the fork",
                    "B/chunk pickle(changes())",
                    "<=32",
                    "B/chunk pickle(fork)",
                    "<=32",
                    "dumps",
                    "loads",
                ],
                rows,
            ),
            "",
        ]
    if "merge" in results:
        m = results["merge"]
        rows = [
            [k, fmt_time(m[k]["median_s"]), verdict(m[k]["median_s"], T["merge_10k_s"])]
            for k in ("forks", "records", "tree16")
        ]
        lines += [
            f"## merge of {m['n']:,} single-chunk forks",
            "",
            table(["what is merged", "time", "<=100 ms"], rows),
            (
                f"record per fork: {m['record_bytes_mean']:.0f} B pickled; unpickling all: "
                f"{fmt_time(m['unpickle_records_s'])}; merged record: "
                f"{m['merged_bytes_per_chunk']:.1f} B/chunk"
            ),
            "",
        ]
    if "read" in results:
        r = results["read"]
        names = [n for n in ("ours", "zarr", "icechunk") if n in r["raw_get"]]
        rows = []
        for kind, label in (("raw_get", "store.get x64 (raw)"), ("array_read", "arr[:] (zstd)")):
            rk = r[kind]
            rows.append(
                [
                    label,
                    *(f"{fmt_time(rk[n]['median_s'])} ({rk[n]['MBps']:.0f} MB/s)" for n in names),
                    f"{rk['ratio_ours_zarr']:.2f} {verdict(rk['ratio_ours_zarr'], T['read_ratio'])}",
                    f"{rk['ratio_ours_zarr_min']:.2f}",
                    f"{rk['ratio_ours_icechunk']:.2f}" if "ratio_ours_icechunk" in rk else "-",
                ]
            )
        lines += [
            "## read, 64 chunks of 4 MiB (page cache warm)",
            "",
            table(
                ["read", *names, "ours/zarr (<=1.1)", "ours/zarr (best of)", "ours/icechunk"],
                rows,
            ),
            "medians of interleaved repeats; 'best of' = ratio of the fastest repeats",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    ap.add_argument("--only", default="commit,fork,merge,read", help="comma-separated sections")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--read-repeats", type=int, default=11)
    ap.add_argument(
        "--sizes", default="", help="commit sizes, e.g. 100000,1000000,10000000 (default: 100k,1M)"
    )
    ap.add_argument("--per-writer", type=int, default=256, help="chunks per writer id (commit)")
    ap.add_argument("--no-icechunk", dest="icechunk", action="store_false")
    ap.add_argument("--output", default="core.json")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        what, n, mode, reps, pw = args.child
        fn = child_commit_ours if what == "commit-ours" else child_commit_icechunk
        import json

        print(json.dumps(fn(int(n), mode, int(reps), int(pw))))
        return
    if args.quick:
        args.repeats = min(args.repeats, 3)
        args.read_repeats = min(args.read_repeats, 3)
    args.icechunk = args.icechunk and _have_icechunk()
    env = environment()
    print(f"load average {env['loadavg_start']} on {env['cpus']} cores", flush=True)
    results: dict[str, Any] = {"environment": env, "targets": TARGETS}
    sections = {
        "commit": bench_commit,
        "fork": bench_fork,
        "merge": bench_merge,
        "read": bench_read,
    }
    t0 = time.perf_counter()
    for name in args.only.split(","):
        print(f"[{name}] ...", flush=True)
        t = time.perf_counter()
        results[name] = sections[name](args)
        results[name]["section_s"] = time.perf_counter() - t
    env["loadavg_end"] = loadavg()
    env["wall_s"] = time.perf_counter() - t0
    text = report(results)
    print()
    print(text)
    path = write_json(args.output, results)
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    print(f"load average at end {env['loadavg_end']}; wall {env['wall_s']:.0f} s")
    _ = os  # keep import for BENCH_TMP users


if __name__ == "__main__":
    main()
