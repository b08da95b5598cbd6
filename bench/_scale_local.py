"""bench_scale.py sections on local repositories: append, update, overwrite, list_dir.

Each ``section_*`` function takes the run's :class:`Repos` and the parsed
arguments and returns plain data (JSON); ``report_*`` turns it into markdown.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import numpy as np
import xarray as xr
import zarr
from _common import (
    StorageCounter,
    collect,
    dir_bytes,
    fmt_bytes,
    fmt_time,
    loadavg,
    median,
    proc_io,
    table,
    verdict,
)
from _scale_build import (
    SIDE,
    Built,
    Repos,
    append_step,
    dataset,
    expected_step,
    icechunk_open,
    read_last_step,
    threads,
)

TARGETS = {
    "append_bytes_ratio": 3.0,
    "append_time_ratio": 3.0,
    "update_s": 0.050,
    "update_bytes": 256 * 1024,
    "overwrite_changes_bytes": 1024,
}

ICECHUNK = ("ic-nosplit", "ic-split16", "ic-split1")


def _rotate(items: list[str], rep: int) -> list[str]:
    k = rep % len(items)
    return items[k:] + items[:k]


# =============================================================================================
# 1. append one step
# =============================================================================================


def section_append(repos: Repos, args: argparse.Namespace, steps: int, appends: int) -> Any:
    """``appends`` one-step appends into a ``steps``-step and a 1-step repository, per impl."""
    impls = ["ours", *(ICECHUNK if args.icechunk else ()), "plain"]
    res: dict[str, Any] = {"steps": steps, "chunks": steps * SIDE * SIDE, "impls": {}}
    big = {i: repos.get(i, steps) for i in impls}
    one = {i: repos.get(i, 1) for i in impls}
    if args.icechunk and steps <= repos.ICECHUNK_TO_ZARR_MAX and not args.quick:
        # calibration: the same unsplit icechunk, built with virtual refs as at 10M
        big["ic-nosplit-virtual"] = repos.get("ic-nosplit", steps, "virtual")
        one["ic-nosplit-virtual"] = one["ic-nosplit"]
        impls.append("ic-nosplit-virtual")
    res["builds"] = {i: big[i].as_json() for i in impls}
    res["load_before"] = loadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {i: {"big": [], "one": []} for i in impls}
    first = {i: _length(big[i]) for i in impls}
    first_one = {i: _length(one[i]) for i in impls}
    for rep in range(appends):
        for impl in _rotate(impls, rep):
            collect()
            runs[impl]["big"].append(append_step(big[impl], first[impl] + rep))
            if impl != "ic-nosplit-virtual":
                collect()
                runs[impl]["one"].append(append_step(one[impl], first_one[impl] + rep))
        print(
            f"  append {rep + 1}/{appends} at {steps} steps: "
            + ", ".join(f"{i} {runs[i]['big'][-1]['total_s']:.2f} s" for i in impls)
            + f" (load {loadavg()[0]:.1f})",
            flush=True,
        )
    for impl in impls:
        ok = bool(
            np.array_equal(read_last_step(big[impl]), expected_step(first[impl] + appends - 1))
        )
        b, o = runs[impl]["big"], runs[impl]["one"] or runs["ic-nosplit"]["one"]
        row = {
            "big": b,
            "one": o if impl != "ic-nosplit-virtual" else [],
            "read_back_ok": ok,
            **_summary(b, "big"),
            **_summary(o, "one"),
        }
        row["bytes_ratio"] = row["big_bytes_median"] / row["one_bytes_median"]
        row["time_ratio"] = row["big_total_median"] / row["one_total_median"]
        row["bytes_ratio_max"] = row["big_bytes_max"] / row["one_bytes_median"]
        row["time_ratio_max"] = row["big_total_max"] / row["one_total_median"]
        res["impls"][impl] = row
    res["load_after"] = loadavg()
    return res


def _length(b: Built) -> int:
    if b.impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage

        store: Any = (
            Repository.open(local_filesystem_storage(b.path)).readonly_session(branch="main").store
        )
    elif b.impl.startswith("ic-"):
        store = icechunk_open(b.path).readonly_session(branch="main").store
    else:
        store = zarr.storage.LocalStore(b.path, read_only=True)
    return int(zarr.open_array(store, path="v", mode="r").shape[0])


def _summary(runs: list[dict[str, Any]], name: str) -> dict[str, float]:
    tot = [r["total_s"] for r in runs]
    com = [r["commit_s"] for r in runs]
    byt = [r["bytes"] for r in runs]
    return {
        f"{name}_total_median": median(tot),
        f"{name}_total_max": max(tot),
        f"{name}_commit_median": median(com),
        f"{name}_commit_max": max(com),
        f"{name}_bytes_median": median(byt),
        f"{name}_bytes_max": max(byt),
    }


def report_append(res: dict[str, Any]) -> str:
    rows = []
    for impl, r in res["impls"].items():
        b = res["builds"][impl]
        rows.append(
            [
                impl,
                f"{b['how']} {fmt_time(b['build_s'])}",
                f"{fmt_bytes(r['big_bytes_median'])} / {fmt_bytes(r['big_bytes_max'])}",
                f"{fmt_time(r['big_total_median'])} / {fmt_time(r['big_total_max'])}",
                f"{fmt_time(r['big_commit_median'])} / {fmt_time(r['big_commit_max'])}",
                f"{fmt_bytes(r['one_bytes_median'])}",
                f"{fmt_time(r['one_total_median'])}",
                f"{r['bytes_ratio']:.2f} ({r['bytes_ratio_max']:.2f}) "
                + (
                    verdict(r["bytes_ratio"], TARGETS["append_bytes_ratio"])
                    if impl == "ours"
                    else ""
                ),
                f"{r['time_ratio']:.2f} ({r['time_ratio_max']:.2f}) "
                + (
                    verdict(r["time_ratio"], TARGETS["append_time_ratio"]) if impl == "ours" else ""
                ),
                "yes" if r["read_back_ok"] else "NO",
            ]
        )
    head = (
        f"### Append one step (1,024 chunks) to {res['steps']:,} steps "
        f"({res['chunks']:,} chunks) vs to a 1-step repository; "
        f"{len(next(iter(res['impls'].values()))['big'])} appends each, median / max\n\n"
    )
    return head + table(
        [
            "impl",
            "build",
            "bytes big",
            "time big (to_zarr+commit)",
            "commit big",
            "bytes 1-step",
            "time 1-step",
            "bytes ratio (max)",
            "time ratio (max)",
            "read back",
        ],
        rows,
    )


# =============================================================================================
# 2. one-chunk update
# =============================================================================================


def _update_one(b: Built, t: int, y: int, x: int, value: float) -> dict[str, Any]:
    before = dir_bytes(b.path)
    t0 = time.perf_counter()
    if b.impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage

        s: Any = Repository.open(local_filesystem_storage(b.path)).writable_session("main")
    else:
        s = icechunk_open(b.path).writable_session("main")
    arr = zarr.open_array(s.store, path="v", mode="r+")
    arr[t, y, x] = value
    t1 = time.perf_counter()
    s.commit(f"update ({t}, {y}, {x})")
    t2 = time.perf_counter()
    return {
        "at": [t, y, x],
        "total_s": t2 - t0,
        "commit_s": t2 - t1,
        "bytes": dir_bytes(b.path) - before,
    }


def section_update(repos: Repos, args: argparse.Namespace, steps: int, reps: int) -> Any:
    """``reps`` commits that each change one chunk, at random places, in ``steps`` steps."""
    impls = ["ours", *(ICECHUNK if args.icechunk else ())]
    bs = {i: repos.get(i, steps) for i in impls}
    res: dict[str, Any] = {"steps": steps, "chunks": steps * SIDE * SIDE, "impls": {}}
    res["builds"] = {i: bs[i].as_json() for i in impls}
    res["load_before"] = loadavg()
    rng = np.random.default_rng(7)
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    for rep in range(reps):
        t, y, x = (
            int(rng.integers(0, steps)),
            int(rng.integers(0, SIDE)),
            int(rng.integers(0, SIDE)),
        )
        for impl in _rotate(impls, rep):
            collect()
            runs[impl].append(_update_one(bs[impl], t, y, x, float(-rep - 1)))
    for impl in impls:
        check = _read_point(bs[impl], *runs[impl][-1]["at"])
        rs = runs[impl]
        res["impls"][impl] = {
            "runs": rs,
            "read_back_ok": check == float(-reps),
            "total_median": median([r["total_s"] for r in rs]),
            "total_max": max(r["total_s"] for r in rs),
            "commit_median": median([r["commit_s"] for r in rs]),
            "bytes_median": median([r["bytes"] for r in rs]),
            "bytes_max": max(r["bytes"] for r in rs),
        }
    res["load_after"] = loadavg()
    return res


def _read_point(b: Built, t: int, y: int, x: int) -> float:
    if b.impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage

        store: Any = (
            Repository.open(local_filesystem_storage(b.path)).readonly_session(branch="main").store
        )
    else:
        store = icechunk_open(b.path).readonly_session(branch="main").store
    return float(zarr.open_array(store, path="v", mode="r")[t, y, x])


def report_update(res: dict[str, Any]) -> str:
    rows = []
    for impl, r in res["impls"].items():
        ours = impl == "ours"
        rows.append(
            [
                impl,
                res["builds"][impl]["how"],
                f"{fmt_time(r['total_median'])} / {fmt_time(r['total_max'])}"
                + (f" {verdict(r['total_median'], TARGETS['update_s'])}" if ours else ""),
                fmt_time(r["commit_median"]),
                f"{fmt_bytes(r['bytes_median'])} / {fmt_bytes(r['bytes_max'])}"
                + (f" {verdict(r['bytes_max'], TARGETS['update_bytes'])}" if ours else ""),
                "yes" if r["read_back_ok"] else "NO",
            ]
        )
    n = len(next(iter(res["impls"].values()))["runs"])
    head = (
        f"### One-chunk update in {res['chunks']:,} chunks (open + write + commit), "
        f"{n} commits each, median / max\n\n"
    )
    return head + table(
        ["impl", "build", "time", "of which commit", "bytes written", "read back"], rows
    )


# =============================================================================================
# 3. mode="w" over a big array
# =============================================================================================


def _overwrite(b: Built, branch: str, how: str) -> dict[str, Any]:
    ours = b.impl == "ours"
    if ours:
        from icechunk_dask import Repository, local_filesystem_storage, to_zarr

        repo: Any = Repository.open(local_filesystem_storage(b.path))
        repo.create_branch(branch, b.snapshot)
    else:
        from icechunk.xarray import to_icechunk

        repo = icechunk_open(b.path)
        repo.create_branch(branch, snapshot_id=b.snapshot)
    before = dir_bytes(b.path)
    t0 = time.perf_counter()
    s = repo.writable_session(branch)
    if how == "open_group":
        zarr.open_group(s.store, mode="w")
    else:
        ds: xr.Dataset = dataset(0, 1, 1)
        with threads():
            if ours:
                to_zarr(ds, s, mode="w")
            else:
                to_icechunk(ds, s, mode="w")
    t1 = time.perf_counter()
    changes = len(s.changes().to_bytes()) if ours else None
    t2 = time.perf_counter()
    s.commit(f"overwrite ({how})")
    t3 = time.perf_counter()
    return {
        "how": how,
        "write_s": t1 - t0,
        "commit_s": t3 - t2,
        "changes_bytes": changes,
        "bytes": dir_bytes(b.path) - before,
    }


def section_overwrite(repos: Repos, args: argparse.Namespace, steps: int, reps: int) -> Any:
    """``mode="w"`` over the ``steps``-step array, on a new branch from the build's snapshot."""
    impls = ["ours", *(ICECHUNK if args.icechunk else ())]
    bs = {i: repos.get(i, steps) for i in impls}
    res: dict[str, Any] = {"steps": steps, "chunks": steps * SIDE * SIDE, "cases": {}}
    res["load_before"] = loadavg()
    stamp = uuid.uuid4().hex[:8]
    for how in ("open_group", "to_zarr"):
        runs: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
        for rep in range(reps):
            for impl in _rotate(impls, rep):
                collect()
                runs[impl].append(_overwrite(bs[impl], f"w-{how}-{stamp}-{rep}", how))
        res["cases"][how] = {
            impl: {
                "runs": rs,
                "changes_bytes": rs[-1]["changes_bytes"],
                "write_median": median([r["write_s"] for r in rs]),
                "commit_median": median([r["commit_s"] for r in rs]),
                "bytes_median": median([r["bytes"] for r in rs]),
            }
            for impl, rs in runs.items()
        }
    res["load_after"] = loadavg()
    return res


def report_overwrite(res: dict[str, Any]) -> str:
    rows = []
    for how, impls in res["cases"].items():
        for impl, r in impls.items():
            cb = r["changes_bytes"]
            rows.append(
                [
                    '`zarr.open_group(store, mode="w")`'
                    if how == "open_group"
                    else '`to_zarr(1 step, mode="w")`',
                    impl,
                    "-"
                    if cb is None
                    else f"{cb:,} B"
                    + (
                        f" {verdict(cb, TARGETS['overwrite_changes_bytes'])}"
                        if how == "open_group"
                        else ""
                    ),
                    fmt_time(r["write_median"]),
                    fmt_time(r["commit_median"]),
                    fmt_bytes(r["bytes_median"]),
                ]
            )
    head = f'### `mode="w"` over the {res["chunks"]:,}-chunk array (medians)\n\n'
    return head + table(
        ["operation", "impl", "change set", "write", "commit", "bytes written"], rows
    )


# =============================================================================================
# 4. list_dir: storage reads
# =============================================================================================


def _ours_listing(b: Built, snapshot: str) -> dict[str, Any]:
    from icechunk_dask import Repository, local_filesystem_storage

    storage = local_filesystem_storage(b.path)
    counter = StorageCounter(storage)
    out: dict[str, Any] = {}
    io0 = proc_io()
    repo = Repository.open(storage)
    s = repo.readonly_session(snapshot_id=snapshot)
    out["open"] = {**counter.snapshot(), "s": 0.0}
    for what, fn in (
        ("list_dir('')", lambda: _drain(s.store.list_dir(""))),
        ("list_dir('v')", lambda: _drain(s.store.list_dir("v"))),
        ("xr.open_zarr", lambda: xr.open_zarr(s.store, consolidated=False, chunks=None)),
    ):
        counter.reset()
        t = time.perf_counter()
        fn()
        out[what] = {**counter.snapshot(), "s": time.perf_counter() - t}
    out["rchar_total"] = proc_io()["rchar"] - io0["rchar"]
    return out


def _icechunk_listing(b: Built, snapshot: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    io0 = proc_io()
    repo = icechunk_open(b.path)
    s = repo.readonly_session(snapshot_id=snapshot)
    io1 = proc_io()
    out["open"] = {"syscr": io1["syscr"] - io0["syscr"], "rchar": io1["rchar"] - io0["rchar"]}
    for what, fn in (
        ("list_dir('')", lambda: _drain(s.store.list_dir(""))),
        ("list_dir('v')", lambda: _drain(s.store.list_dir("v"))),
        ("xr.open_zarr", lambda: xr.open_zarr(s.store, consolidated=False, chunks=None)),
    ):
        a = proc_io()
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        z = proc_io()
        out[what] = {"syscr": z["syscr"] - a["syscr"], "rchar": z["rchar"] - a["rchar"], "s": dt}
    return out


def _drain(agen: Any) -> list[str]:
    from zarr.core.sync import sync

    async def go() -> list[str]:
        return [k async for k in agen]

    return sync(go())


def section_listdir(repos: Repos, args: argparse.Namespace, sizes: list[int]) -> Any:
    """Reads of listings at each size, right after the build and after one more append."""
    impls = ["ours", *(("ic-nosplit", "ic-split16") if args.icechunk else ())]
    res: dict[str, Any] = {"load_before": loadavg(), "sizes": {}}
    # warm up imports and code paths once, so that reading Python files is not counted
    warm = repos.get("ours", 1)
    _ours_listing(warm, warm.snapshot or "")
    for steps in sizes:
        per: dict[str, Any] = {}
        for impl in impls:
            b = repos.get(impl, steps)
            branch = f"ls-{uuid.uuid4().hex[:8]}"
            if impl == "ours":
                from icechunk_dask import Repository, local_filesystem_storage

                Repository.open(local_filesystem_storage(b.path)).create_branch(branch, b.snapshot)
            else:
                icechunk_open(b.path).create_branch(branch, snapshot_id=b.snapshot)
            appended = append_step(b, steps, branch)["snapshot"]
            listing = _ours_listing if impl == "ours" else _icechunk_listing
            collect()
            per[impl] = {"built": listing(b, b.snapshot or ""), "appended": listing(b, appended)}
        res["sizes"][str(steps * SIDE * SIDE)] = per
    res["load_after"] = loadavg()
    return res


def report_listdir(res: dict[str, Any]) -> str:
    rows = []
    for chunks, per in res["sizes"].items():
        for impl, states in per.items():
            for state, r in states.items():
                for what in ("list_dir('')", "list_dir('v')", "xr.open_zarr"):
                    m = r[what]
                    reads = (
                        f"{m['reads']} ({fmt_bytes(m['bytes_read'])})"
                        if impl == "ours"
                        else f"{m['syscr']} syscalls ({fmt_bytes(m['rchar'])})"
                    )
                    rows.append(
                        [f"{int(chunks):,}", impl, state, f"`{what}`", reads, fmt_time(m["s"])]
                    )
    head = (
        "### Listing a group that holds a big array: storage reads after opening "
        "the session (ours: counted calls to the storage; icechunk: read syscalls of "
        "the process)\n\n"
    )
    return head + table(["chunks", "impl", "snapshot", "operation", "reads (bytes)", "time"], rows)
