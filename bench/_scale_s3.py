"""bench_scale.py sections on S3 (a local SeaweedFS server): throughput and commit latency.

The server is the test suite's (``tests.servers._seaweed.start_seaweed``: ``weed
server`` on 127.0.0.1, its own temp directory, random credentials, stopped by PID).
Every implementation writes into its own fresh bucket prefix on the same server.

throughput (issue 12)
    ``to_zarr`` of bench_dask.py's cases (1 GiB in 4 MiB chunks, Zstandard
    level 1 as there, ~1.7 MiB stored per chunk, and again without a
    compressor, ``big-raw``: objects of exactly 4 MiB; 64 MiB in 16,384
    chunks of 4 KiB) on ``LocalCluster(2x1)``: ours (``s3_storage``) +
    commit, plain xarray ``to_zarr`` into ``zarr.storage.ObjectStore`` over
    ``obstore.store.S3Store``, icechunk 2.3 (``s3_storage``) ``to_icechunk`` +
    commit. Interleaved repeats.
commit latency
    100 commits that each write one 4 KiB chunk of an existing array
    (ours and icechunk alternating), p50/p99 of ``session.commit``; then 10
    more of each through a counting HTTP proxy (tests/fault_proxy.py without
    fault rules) to count the HTTP requests each commit sends, by method.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from _common import (
    REPO_ROOT,
    collect,
    fmt_time,
    loadavg,
    median,
    percentile,
    table,
    tempdir,
    verdict,
)

TARGETS = {"s3_big_vs_plain": 1.0, "s3_big-raw_vs_plain": 1.0, "s3_small_vs_plain": 0.3}


@contextlib.contextmanager
def seaweed() -> Iterator[Any]:
    """A SeaweedFS S3 server for the duration of the block."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.servers._seaweed import start_seaweed

    with tempdir("bench-seaweed-") as d:
        server = start_seaweed(d)
        try:
            yield server
        finally:
            server.stop()


def ours_storage(kw: dict[str, Any], prefix: str) -> Any:
    from icechunk_dask import s3_storage

    return s3_storage(**kw, prefix=prefix)


def icechunk_storage(kw: dict[str, Any], prefix: str, endpoint: str | None = None) -> Any:
    import icechunk

    return icechunk.s3_storage(
        bucket=kw["bucket"],
        prefix=prefix,
        region=kw["region"],
        endpoint_url=endpoint or kw["endpoint_url"],
        allow_http=True,
        access_key_id=kw["access_key_id"],
        secret_access_key=kw["secret_access_key"],
        force_path_style=True,
    )


def plain_store(kw: dict[str, Any], prefix: str) -> Any:
    from obstore.store import S3Store

    s3 = S3Store(
        kw["bucket"],
        prefix=prefix,
        endpoint=kw["endpoint_url"],
        region=kw["region"],
        access_key_id=kw["access_key_id"],
        secret_access_key=kw["secret_access_key"],
        client_options={"allow_http": True},
        virtual_hosted_style_request=False,
    )
    return zarr.storage.ObjectStore(s3)


# =============================================================================================
# throughput
# =============================================================================================


def _write(impl: str, ds: Any, enc: dict[str, Any], kw: dict[str, Any], prefix: str) -> float:
    t = time.perf_counter()
    if impl == "ours":
        from icechunk_dask import Repository, to_zarr

        s = Repository.create(ours_storage(kw, prefix)).writable_session("main")
        t = time.perf_counter()
        to_zarr(ds, s, mode="w", encoding=enc)
        s.commit("bench")
    elif impl == "icechunk":
        import icechunk
        from icechunk.xarray import to_icechunk

        s = icechunk.Repository.create(icechunk_storage(kw, prefix)).writable_session("main")
        t = time.perf_counter()
        to_icechunk(ds, s, mode="w", encoding=enc)
        s.commit("bench")
    else:
        ds.to_zarr(
            plain_store(kw, prefix), mode="w", encoding=enc, zarr_format=3, consolidated=False
        )
    return time.perf_counter() - t


def section_throughput(args: argparse.Namespace, server: Any) -> dict[str, Any]:
    import bench_dask

    cases = bench_dask.QUICK_CASES if args.quick else bench_dask.CASES
    impls = ["plain", "ours", *(["icechunk"] if args.icechunk else [])]
    kw = server.storage_kwargs(server.create_bucket())
    res: dict[str, Any] = {"load_before": loadavg(), "cases": {}}
    reps = 1 if args.quick else args.s3_repeats
    with bench_dask.scheduler("distributed"):
        for cname in ("big", "big-raw", "small"):
            case = cases[cname.removesuffix("-raw")]
            ds = bench_dask.make_dataset(case)
            enc = bench_dask._encoding(case)
            if cname.endswith("-raw"):  # no compressor: every object exactly 4 MiB
                enc = {v: {**e, "compressors": None} for v, e in enc.items()}
            times: dict[str, list[float]] = {i: [] for i in impls}
            for rep in range(reps):
                k = rep % len(impls)
                for impl in impls[k:] + impls[:k]:
                    collect()
                    times[impl].append(_write(impl, ds, enc, kw, f"{cname}-{impl}-{rep}"))
                    print(
                        f"  s3 {cname} {impl}: {times[impl][-1]:.2f} s (load {loadavg()[0]:.1f})",
                        flush=True,
                    )
            m = {i: median(t) for i, t in times.items()}
            res["cases"][cname] = {
                "nchunks": bench_dask.nchunks(case),
                "times": times,
                "median_s": m,
                "ours/plain": m["ours"] / m["plain"],
                **({"ours/icechunk": m["ours"] / m["icechunk"]} if "icechunk" in m else {}),
            }
    res["load_after"] = loadavg()
    return res


def report_throughput(res: dict[str, Any]) -> str:
    rows = []
    for cname, r in res["cases"].items():
        m = r["median_s"]
        tgt = TARGETS[f"s3_{cname}_vs_plain"]
        rows.append(
            [
                f"{cname} ({r['nchunks']:,} chunks)",
                *(fmt_time(m[i]) if i in m else "-" for i in ("plain", "ours", "icechunk")),
                f"{r['ours/plain']:.2f} {verdict(r['ours/plain'], tgt)}",
                f"{r['ours/icechunk']:.2f} {verdict(r['ours/icechunk'], 1.0)}"
                if "ours/icechunk" in r
                else "-",
            ]
        )
    head = "### `to_zarr` into S3 (SeaweedFS), LocalCluster(2x1), write + commit, medians\n\n"
    return head + table(
        ["case", "plain (ObjectStore)", "ours", "icechunk", "ours/plain", "ours/icechunk"], rows
    )


# =============================================================================================
# commit latency and requests per commit
# =============================================================================================


def _prepare(impl: str, storage: Any) -> Any:
    if impl == "ours":
        from icechunk_dask import Repository

        repo: Any = Repository.create(storage)
    else:
        import icechunk

        repo = icechunk.Repository.create(storage)
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(1000, 1024), chunks=(1, 1024), dtype="f4")
    s.commit("array")
    return repo


def _one_commit(repo: Any, i: int) -> float:
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a", mode="r+")[i % 1000] = np.full(1024, i + 1, dtype=np.float32)
    t = time.perf_counter()
    s.commit(f"commit {i}")
    return time.perf_counter() - t


def section_latency(args: argparse.Namespace, server: Any) -> dict[str, Any]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fault_proxy import fault_proxy

    impls = ["ours", *(["icechunk"] if args.icechunk else [])]
    n = 20 if args.quick else 100
    kw = server.storage_kwargs(server.create_bucket())
    res: dict[str, Any] = {"load_before": loadavg(), "commits": n, "impls": {}}
    repos = {
        "ours": _prepare("ours", ours_storage(kw, "lat-ours")),
        **(
            {"icechunk": _prepare("icechunk", icechunk_storage(kw, "lat-ic"))}
            if args.icechunk
            else {}
        ),
    }
    lat: dict[str, list[float]] = {i: [] for i in impls}
    for i in range(n):
        for impl in impls if i % 2 == 0 else impls[::-1]:
            lat[impl].append(_one_commit(repos[impl], i))
    counted = 5 if args.quick else 10
    requests: dict[str, list[dict[str, int]]] = {i: [] for i in impls}
    whole: dict[str, list[int]] = {i: [] for i in impls}  # session start .. commit end
    paths: dict[str, list[str]] = {}
    with fault_proxy(kw["endpoint_url"]) as proxy:
        pkw = {**kw, "endpoint_url": proxy.endpoint}
        prepared = {
            "ours": _prepare("ours", ours_storage(pkw, "req-ours")),
            **(
                {"icechunk": _prepare("icechunk", icechunk_storage(kw, "req-ic", proxy.endpoint))}
                if args.icechunk
                else {}
            ),
        }
        for impl in impls:
            for i in range(counted):
                start = len(proxy.seen)
                s = prepared[impl].writable_session("main")
                zarr.open_array(s.store, path="a", mode="r+")[i] = np.full(1024, i + 1, dtype="f4")
                before = len(proxy.seen)
                s.commit(f"counted {i}")
                by: dict[str, int] = {}
                for seen in proxy.seen[before:]:
                    by[seen.method] = by.get(seen.method, 0) + 1
                requests[impl].append(by)
                whole[impl].append(len(proxy.seen) - start)
                if i == counted - 1:
                    paths[impl] = [f"{x.method} {x.path}" for x in proxy.seen[start:]]
    for impl in impls:
        ls = lat[impl]
        totals = [sum(r.values()) for r in requests[impl]]
        res["impls"][impl] = {
            "latency": ls,
            "p50": percentile(ls, 50),
            "p99": percentile(ls, 99),
            "max": max(ls),
            "requests": requests[impl],
            "requests_median": median(totals),
            "requests_with_write": whole[impl],
            "requests_with_write_median": median(whole[impl]),
            "last_requests": paths.get(impl, []),
        }
    res["load_after"] = loadavg()
    return res


def report_latency(res: dict[str, Any]) -> str:
    rows = []
    for impl, r in res["impls"].items():
        methods: dict[str, list[int]] = {}
        for by in r["requests"]:
            for k, v in by.items():
                methods.setdefault(k, []).append(v)
        rows.append(
            [
                impl,
                fmt_time(r["p50"]),
                fmt_time(r["p99"]),
                fmt_time(r["max"]),
                f"{r['requests_median']:g}",
                f"{r['requests_with_write_median']:g}",
                ", ".join(f"{k} {median(v):g}" for k, v in sorted(methods.items())),
            ]
        )
    head = (
        f"### Commit latency on S3 (SeaweedFS), {res['commits']} commits of one 4 KiB chunk "
        "each; HTTP requests per commit counted through a proxy\n\n"
    )
    return head + table(
        [
            "impl",
            "p50",
            "p99",
            "max",
            "requests in commit()",
            "session start to commit end",
            "in commit(), by method",
        ],
        rows,
    )
