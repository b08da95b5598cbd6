"""bench_scale.py section 7: uncoordinated writers, each committing its own region.

16 processes (``python bench/_scale_writers.py ...``) open the same repository,
signal that they are ready, wait for one "go" from the parent, then each makes
5 commits in a row; commit ``i`` of writer ``p`` writes row ``5p + i`` of the
arrays ``a`` and ``b`` (float32, 80 x 256, one chunk per row) with the value
``1000p + i + 1``. Every commit is timed (``session.commit``, including its
rebases and retries). The parent then checks that every row holds its value
(nothing lost) and counts the commits on ``main``.

ours
    ``session.commit(...)`` (rebases disjoint changes itself, jittered backoff).
icechunk
    ``session.commit(..., rebase_with=ConflictDetector())`` (icechunk 2.3).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

ROWS_PER_WRITER = 5
WIDTH = 256


def open_repo(impl: str, spec: dict[str, Any]) -> Any:
    """Open (or with ``create``, create) the repository described by ``spec``."""
    if impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage, s3_storage

        if spec["kind"] == "local":
            storage: Any = local_filesystem_storage(spec["path"])
        else:
            storage = s3_storage(**spec["s3"])
        return Repository.create(storage) if spec.get("create") else Repository.open(storage)
    import icechunk

    icechunk.set_logs_filter("error")
    if spec["kind"] == "local":
        storage = icechunk.local_filesystem_storage(spec["path"])
    else:
        kw = spec["s3"]
        storage = icechunk.s3_storage(
            bucket=kw["bucket"],
            prefix=kw.get("prefix"),
            region=kw["region"],
            endpoint_url=kw["endpoint_url"],
            allow_http=True,
            access_key_id=kw["access_key_id"],
            secret_access_key=kw["secret_access_key"],
            force_path_style=True,
        )
    if spec.get("create"):
        return icechunk.Repository.create(storage)
    return icechunk.Repository.open(storage)


def setup(impl: str, spec: dict[str, Any], writers: int) -> None:
    """Create the repository with arrays ``a`` and ``b`` (all zeros) in one commit."""
    repo = open_repo(impl, {**spec, "create": True})
    s = repo.writable_session("main")
    for name in ("a", "b"):
        zarr.create_array(
            s.store,
            name=name,
            shape=(writers * ROWS_PER_WRITER, WIDTH),
            chunks=(1, WIDTH),
            dtype="f4",
            fill_value=0,
        )
    s.commit("arrays")


def writer(impl: str, spec: dict[str, Any], p: int) -> dict[str, Any]:
    """One writer process: ready, wait for go, commit 5 times."""
    repo = open_repo(impl, spec)
    conflict = None
    if impl == "icechunk":
        import icechunk

        conflict = icechunk.ConflictDetector()
    print("ready", flush=True)
    sys.stdin.readline()
    out: dict[str, Any] = {"writer": p, "latency": [], "errors": [], "start": time.time()}
    for i in range(ROWS_PER_WRITER):
        row = p * ROWS_PER_WRITER + i
        try:
            s = repo.writable_session("main")
            for name in ("a", "b"):
                arr = zarr.open_array(s.store, path=name, mode="r+")
                arr[row] = np.full(WIDTH, 1000 * p + i + 1, dtype=np.float32)
            t = time.perf_counter()
            if conflict is not None:
                s.commit(f"writer {p} commit {i}", rebase_with=conflict)
            else:
                s.commit(f"writer {p} commit {i}")
            out["latency"].append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - reported, counted as not landed
            out["errors"].append(f"{type(e).__name__}: {e}"[:500])
    out["end"] = time.time()
    return out


def verify(impl: str, spec: dict[str, Any], writers: int) -> dict[str, Any]:
    """Rows holding their expected values, and commits on ``main``."""
    repo = open_repo(impl, spec)
    s = repo.readonly_session(branch="main")
    ok = 0
    for name in ("a", "b"):
        data = np.asarray(zarr.open_array(s.store, path=name, mode="r")[:])
        for p in range(writers):
            for i in range(ROWS_PER_WRITER):
                ok += bool(np.all(data[p * ROWS_PER_WRITER + i] == 1000 * p + i + 1))
    commits = len(list(repo.ancestry(branch="main")))
    return {"rows_ok": ok // 2, "rows_expected": writers * ROWS_PER_WRITER, "commits": commits}


def run_writers(impl: str, spec: dict[str, Any], writers: int) -> dict[str, Any]:
    """Set up, start ``writers`` processes, release them together, collect and verify."""
    setup(impl, spec, writers)
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, impl, json.dumps(spec), str(p)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for p in range(writers)
    ]
    results: list[dict[str, Any]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(
                    f"writer not ready: {line!r} {proc.stderr.read() if proc.stderr else ''}"
                )
        t0 = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=1800)
            lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"writer failed ({proc.returncode}): {stderr[-2000:]}")
            results.append(json.loads(lines[-1]))
        total = max(r["end"] for r in results) - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    lat = [x for r in results for x in r["latency"]]
    errors = [e for r in results for e in r["errors"]]
    check = verify(impl, spec, writers)
    return {
        "impl": impl,
        "storage": spec["kind"],
        "writers": writers,
        "commits_attempted": writers * ROWS_PER_WRITER,
        "commits_ok": len(lat),
        "errors": errors[:20],
        "n_errors": len(errors),
        "latency": lat,
        "total_s": total,
        **check,
    }


if __name__ == "__main__":
    _impl, _spec, _p = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(writer(_impl, _spec, _p)), flush=True)
