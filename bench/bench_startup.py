"""Start-up time of the command line and of ``import icechunk_dask``.

Usage: ``PYTHONPATH=. .venv/bin/python bench/bench_startup.py [--repeats N]``

Each command runs in a fresh process; the table shows the median and the
spread of the wall time over the repeats, next to plain ``python -c pass``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        repo = tmp / "repo"
        setup = (
            "import zarr, sys; from icechunk_dask import Repository; "
            "r = Repository.create(sys.argv[1]); s = r.writable_session('main'); "
            "zarr.create_array(s.store, name='a', shape=(4,), chunks=(2,), dtype='i4')[:] = 1; "
            "s.commit('one')"
        )
        subprocess.run([sys.executable, "-c", setup, str(repo)], check=True)
        cli = [sys.executable, "-m", "icechunk_dask"]
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import icechunk_dask'": [sys.executable, "-c", "import icechunk_dask"],
            "icechunk-dask --help": [*cli, "--help"],
            "icechunk-dask log REPO": [*cli, "log", str(repo)],
            "icechunk-dask show REPO": [*cli, "show", str(repo)],
        }
        print("| command | median s | min s | max s |")
        print("|---|---|---|---|")
        for name, cmd in cases.items():
            times = _time(cmd, args.repeats)
            print(
                f"| `{name}` | {statistics.median(times):.3f} | {min(times):.3f} | "
                f"{max(times):.3f} |"
            )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
