"""Start-up time: ``import icechunk_dask`` and the command line, next to zarr and icechunk.

Each case runs in a fresh interpreter (``python -c ...`` or the ``icechunk-dask``
console script of this venv), interleaved with the others, ``--repeats`` times;
the table gives the median and the best wall time, and the same for an empty
``python -c pass`` (the interpreter's own start) as the baseline. ``log`` and
``show`` read a small repository made once (3 commits on local storage). Target (issue 9):
``icechunk-dask --help`` and ``icechunk-dask log`` well under 0.5 s.

Usage: ``PYTHONPATH=. .venv/bin/python bench/bench_startup.py [--repeats 21] [--output
startup.json]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    environment,
    fmt_time,
    loadavg,
    median,
    table,
    tempdir,
    verdict,
    write_json,
)

TARGET_S = 0.5


def _cli() -> list[str]:
    """The ``icechunk-dask`` script next to this interpreter (else ``python -m``)."""
    script = Path(sys.executable).with_name("icechunk-dask")
    return [str(script)] if script.exists() else [sys.executable, "-m", "icechunk_dask"]


def _make_repo(path: Path) -> None:
    import numpy as np
    import zarr

    from icechunk_dask import Repository, local_filesystem_storage

    repo = Repository.create(local_filesystem_storage(path))
    for i in range(3):
        s = repo.writable_session("main")
        if i == 0:
            zarr.create_array(s.store, name="a", shape=(8,), chunks=(4,), dtype="i4")
        zarr.open_array(s.store, path="a")[:] = np.full(8, i, dtype="i4")
        s.commit(f"commit {i}")


def _cases(repo: Path) -> dict[str, list[str]]:
    py, cli = sys.executable, _cli()
    cases = {
        "python -c pass (baseline)": [py, "-c", "pass"],
        "import zarr": [py, "-c", "import zarr"],
        "import icechunk_dask": [py, "-c", "import icechunk_dask"],
        "icechunk-dask --help": [*cli, "--help"],
        "icechunk-dask log <repo>": [*cli, "log", str(repo)],
        "icechunk-dask show <repo>": [*cli, "show", str(repo)],
    }
    try:
        import icechunk  # noqa: F401
    except ImportError:
        pass
    else:
        cases["import icechunk"] = [py, "-c", "import icechunk"]
    return cases


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=120)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--output", default="startup.json")
    args = parser.parse_args()
    env = environment()
    env["command"] = "python bench/bench_startup.py " + " ".join(sys.argv[1:])
    with tempdir("icd-startup-") as d:
        _make_repo(d / "repo")
        cases = _cases(d / "repo")
        times: dict[str, list[float]] = {name: [] for name in cases}
        for cmd in cases.values():  # warm the page cache once
            _run(cmd)
        for rep in range(args.repeats):
            names = list(cases)
            names = names[rep % len(names) :] + names[: rep % len(names)]
            for name in names:
                times[name].append(_run(cases[name]))
    res: dict[str, Any] = {"environment": env, "load_after": loadavg(), "cases": {}}
    rows = []
    for name, ts in times.items():
        res["cases"][name] = {"times": ts, "median_s": median(ts), "best_s": min(ts)}
        cli = name.startswith("icechunk-dask")
        rows.append(
            [
                name,
                fmt_time(median(ts)),
                fmt_time(min(ts)),
                verdict(median(ts), TARGET_S) if cli else "-",
            ]
        )
    print(
        f"load {env['loadavg_start']} -> {res['load_after']}, {args.repeats} runs each\n\n"
        + table(["case", "median", "best", f"<= {TARGET_S} s"], rows)
    )
    print(f"\nwrote {write_json(args.output, res)}")


if __name__ == "__main__":
    main()
