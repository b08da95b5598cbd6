"""bench_scale.py section 5: a commit of 10M chunk references (time and RSS growth).

The measurements are bench_core.py's commit children (see its docstring), run
with N = 10,000,000 in fresh interpreters: a timing run and an RSS run for
icechunk_dask, and the same for icechunk (references set with
``set_virtual_refs_arr``, commit timed alone).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _common import fmt_bytes, fmt_time, loadavg, run_child, table, verdict

BENCH_CORE = Path(__file__).resolve().parent / "bench_core.py"
TARGETS = {"commit_10M_s": 15.0, "commit_10M_rss_bytes": 2**30}


def section_commit(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Time and RSS growth of one commit of ``n`` refs, ours then icechunk, alternating."""
    pw = "256"
    res: dict[str, Any] = {"n": n, "load_before": loadavg(), "runs": []}
    impls = ["ours", "icechunk"] if args.icechunk else ["ours"]
    out: dict[str, dict[str, list[Any]]] = {i: {"time": [], "cpu": [], "rss": []} for i in impls}
    for rep in range(args.commit_repeats):
        order = impls if rep % 2 == 0 else impls[::-1]
        for impl in order:
            child = f"commit-{impl}"
            t = run_child(BENCH_CORE, [child, str(n), "time", "1", pw], timeout=3600)
            out[impl]["time"] += t["times"]
            out[impl]["cpu"] += t["cpu_times"]
            r = run_child(BENCH_CORE, [child, str(n), "rss", "1", pw], timeout=3600)
            out[impl]["rss"].append(r["rss_growth"])
            res["runs"].append({"impl": impl, "time": t, "rss": r, "load": loadavg()})
            print(
                f"  commit {n:,} {impl}: {fmt_time(t['times'][0])}, RSS +{fmt_bytes(r['rss_growth'])}",
                flush=True,
            )
    res["summary"] = {
        i: {
            "times": o["time"],
            "cpu_times": o["cpu"],
            "rss_growth": o["rss"],
            "median_s": sorted(o["time"])[len(o["time"]) // 2],
            "max_rss": max(o["rss"]),
        }
        for i, o in out.items()
    }
    res["load_after"] = loadavg()
    return res


def report_commit(res: dict[str, Any]) -> str:
    rows = []
    for impl, s in res["summary"].items():
        ours = impl == "ours"
        rows.append(
            [
                impl,
                ", ".join(fmt_time(t) for t in s["times"])
                + (f" {verdict(s['median_s'], TARGETS['commit_10M_s'])}" if ours else ""),
                ", ".join(fmt_time(t) for t in s["cpu_times"]),
                ", ".join(fmt_bytes(b) for b in s["rss_growth"])
                + (f" {verdict(s['max_rss'], TARGETS['commit_10M_rss_bytes'])}" if ours else ""),
            ]
        )
    head = f"### Commit of {res['n']:,} chunk references (one commit per fresh process)\n\n"
    return head + table(["impl", "wall", "CPU", "RSS growth"], rows)
