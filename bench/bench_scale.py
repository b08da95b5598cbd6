"""Production-scale benchmarks (issues 12 and 14): icechunk_dask vs icechunk 2.3 vs plain zarr.

Run from the repository root::

    PYTHONPATH=. python bench/bench_scale.py                    # everything, ~1.5-2 h on 2 cores
    PYTHONPATH=. python bench/bench_scale.py --quick            # a smoke run, small sizes
    PYTHONPATH=. python bench/bench_scale.py --only append,listdir --no-huge

It prints markdown tables and writes ``bench/results/scale.json``. The
repositories are built under ``$BENCH_TMP`` (default: the system temp dir) and
deleted at the end, unless ``--workdir DIR`` is given (then they are kept and a
later run with the same ``--workdir`` reuses them).

Sections (``--only``; details in the docstrings of the ``_scale_*`` modules):

append
    one-step appends (``to_zarr(append_dim="time")`` + commit) into a
    1,000 x 32 x 32 array in 1x1x1 chunks (1,024,000 chunks) and into a
    1-step repository, per implementation (ours, icechunk without splitting,
    split every 16 and every 1 step along time, plain zarr): bytes written and
    time, median and max of ``--appends`` appends; then the same at 10,000
    steps (10,240,000 chunks) unless ``--no-huge``.
update
    one-chunk commits in the 10,240,000-chunk repositories.
overwrite
    ``mode="w"`` over the 1,024,000-chunk array: change set size, commit time.
listdir
    storage reads of ``list_dir`` / ``xr.open_zarr`` at 10,240 and 1,024,000 chunks.
commit
    a commit of 10,000,000 chunk references: time and RSS growth.
bigjob
    a ``store_sessions`` job of 10,240,000 chunk references on LocalCluster(2x1),
    manifests built on the workers: job time, client commit time and RSS
    growth, layers vs chunks in the change record.
jobs
    a ``to_zarr`` job of 100,000 dask blocks on LocalCluster(2x1): client time
    before the first task starts, client and scheduler RSS.
writers
    16 processes x 5 commits of their own regions, local disk and S3 (SeaweedFS).
s3
    throughput of ``to_zarr`` into S3 and commit latency / requests per commit.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _scale_local as local
from _common import environment, fmt_time, loadavg, percentile, table, tempdir, write_json
from _scale_bigjob import report_bigjob, section_bigjob
from _scale_build import Repos
from _scale_commit import report_commit, section_commit
from _scale_jobs import report_jobs, section_jobs
from _scale_writers import run_writers

SECTIONS = (
    "append",
    "update",
    "overwrite",
    "listdir",
    "commit",
    "bigjob",
    "jobs",
    "writers",
    "s3",
)
WRITERS_P99_TARGET = 2.0


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempdir("bench-scale-") as d:
            yield d


def _writers(args: argparse.Namespace, server: Any) -> dict[str, Any]:
    n = 4 if args.quick else args.writers
    impls = ["ours", *(["icechunk"] if args.icechunk else [])]
    out: dict[str, Any] = {"load_before": loadavg(), "runs": []}
    kinds = ["local", *(["s3"] if server is not None else [])]
    rounds = [(kind, impl) for kind in kinds for _ in range(args.writers_repeats) for impl in impls]
    for kind, impl in rounds:  # the implementations alternate, repeat after repeat
        with tempdir(f"bench-writers-{impl}-") as d:
            if kind == "local":
                spec: dict[str, Any] = {"kind": "local", "path": str(d / "repo")}
            else:
                kw = server.storage_kwargs(server.create_bucket())
                spec = {"kind": "s3", "s3": {**kw, "prefix": f"writers-{impl}"}}
            r = run_writers(impl, spec, n)
        r["p50"] = percentile(r["latency"], 50)
        r["p99"] = percentile(r["latency"], 99)
        r["load"] = loadavg()
        out["runs"].append(r)
        print(
            f"  writers {kind} {impl}: {r['commits_ok']}/{r['commits_attempted']} commits, "
            f"rows ok {r['rows_ok']}/{r['rows_expected']}, p50 {fmt_time(r['p50'])}, "
            f"p99 {fmt_time(r['p99'])}, total {fmt_time(r['total_s'])}",
            flush=True,
        )
    out["load_after"] = loadavg()
    return out


def _report_writers(res: dict[str, Any]) -> str:
    rows = []
    for r in res["runs"]:
        ours_local = r["impl"] == "ours" and r["storage"] == "local"
        p99 = fmt_time(r["p99"])
        if ours_local:
            p99 += " ok" if r["p99"] <= WRITERS_P99_TARGET else " MISS"
        rows.append(
            [
                r["storage"],
                r["impl"],
                f"{r['commits_ok']}/{r['commits_attempted']}",
                f"{r['rows_ok']}/{r['rows_expected']}",
                str(r["commits"]),
                str(r["n_errors"]),
                fmt_time(r["p50"]),
                p99,
                fmt_time(max(r["latency"])) if r["latency"] else "-",
                fmt_time(r["total_s"]),
                f"{r['load'][0]:.1f}",
            ]
        )
    n = res["runs"][0]["writers"] if res["runs"] else 0
    head = f"### {n} uncoordinated writer processes x 5 commits of their own rows\n\n"
    return head + table(
        [
            "storage",
            "impl",
            "commits returned",
            "rows intact",
            "commits on main",
            "errors",
            "p50",
            "p99",
            "max",
            "total",
            "load",
        ],
        rows,
    )


def run(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    only = args.only.split(",")
    big = 50 if args.quick else 1000
    huge = 100 if args.quick else args.huge_steps
    appends = 3 if args.quick else args.appends
    texts: list[str] = []

    def done(name: str, res: Any, text: str) -> None:
        results[name] = res
        texts.append(text)
        print("\n" + text + "\n", flush=True)
        write_json(args.output, results)  # keep what is measured if a later section fails

    with _workdir(args.workdir) as wd:
        repos = Repos(wd / "repos")
        if "append" in only:
            res = local.section_append(repos, args, big, appends)
            done("append", res, local.report_append(res))
            if not args.no_huge:
                res = local.section_append(repos, args, huge, max(3, appends // 2))
                done("append_huge", res, local.report_append(res))
        if "update" in only and not args.no_huge:
            res = local.section_update(repos, args, huge, 3 if args.quick else 11)
            done("update", res, local.report_update(res))
        if "overwrite" in only:
            res = local.section_overwrite(repos, args, big, 2 if args.quick else 5)
            done("overwrite", res, local.report_overwrite(res))
        if "listdir" in only:
            res = local.section_listdir(repos, args, [10, big])
            done("listdir", res, local.report_listdir(res))
        if args.workdir is None:
            repos.remove()
    if "commit" in only:
        res = section_commit(args, 100_000 if args.quick else 10_000_000)
        done("commit", res, report_commit(res))
    if "bigjob" in only:
        res = section_bigjob(args, 100 if args.quick else args.bigjob_steps)
        done("bigjob", res, report_bigjob(res))
    if "jobs" in only:
        res = section_jobs(args)
        done("jobs", res, report_jobs(res))
    if "writers" in only or "s3" in only:
        import _scale_s3 as s3

        with s3.seaweed() if not args.no_s3 else contextlib.nullcontext() as server:
            if "writers" in only:
                res = _writers(args, server)
                done("writers", res, _report_writers(res))
            if "s3" in only and server is not None:
                res = s3.section_throughput(args, server)
                done("s3_throughput", res, s3.report_throughput(res))
                res = s3.section_latency(args, server)
                done("s3_latency", res, s3.report_latency(res))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats: a smoke run")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    ap.add_argument("--appends", type=int, default=20, help="appends per implementation")
    ap.add_argument("--huge-steps", type=int, default=10_000, help="steps of the 10M repository")
    ap.add_argument("--no-huge", action="store_true", help="skip the 10M-chunk repositories")
    ap.add_argument("--commit-repeats", type=int, default=2)
    ap.add_argument("--bigjob-steps", type=int, default=10_000, help="steps of the bigjob")
    ap.add_argument("--bigjob-block-steps", type=int, default=100, help="steps per dask block")
    ap.add_argument("--bigjob-repeats", type=int, default=1)
    ap.add_argument("--job-blocks", type=int, default=100_000)
    ap.add_argument(
        "--job-order",
        default="ours,plain,ours,icechunk,ours",
        help="jobs section: implementations in the order run (ours, plain, icechunk)",
    )
    ap.add_argument(
        "--job-source",
        choices=["block-info", "constant"],
        default="block-info",
        help="jobs section: blocks made with block_info (row numbers) or constant ones",
    )
    ap.add_argument("--writers", type=int, default=16)
    ap.add_argument("--writers-repeats", type=int, default=1, help="runs per implementation")
    ap.add_argument("--s3-repeats", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true", help="no SeaweedFS server (local only)")
    ap.add_argument("--no-icechunk", dest="icechunk", action="store_false")
    ap.add_argument("--workdir", help="keep the repositories here (and reuse them)")
    ap.add_argument("--output", default="scale.json")
    args = ap.parse_args()
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.icechunk:
        try:
            import icechunk

            icechunk.set_logs_filter("error")
        except ImportError:
            args.icechunk = False
    env = environment()
    env["tmp"] = tempfile.gettempdir()
    print(f"load average {env['loadavg_start']} on {env['cpus']} cores", flush=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {"environment": env}
    texts = run(args, results)
    env["loadavg_end"] = loadavg()
    env["wall_s"] = time.perf_counter() - t0
    path = write_json(args.output, results)
    print("\n\n".join(texts))
    print(f"\nwrote {path}")
    print(f"load average at end {env['loadavg_end']}; wall {env['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
