"""Garbage collection of a 1M-chunk repository: icechunk_dask vs icechunk, same shape.

The shape (both implementations): one array of N chunks of 16 bytes (no
compression, icechunk's inline threshold set to 0 so that every chunk is an
object), written in a first commit; a second commit overwrites the first
N/2 chunks; the first commit is expired; then ``garbage_collect`` with a cutoff
of now deletes the N/2 chunk objects only the expired commit referenced, its
snapshot, manifest(s) and transaction log. ``--packed`` adds a third case:
ours as our own writer lays such chunks out (1 KiB chunks packed 8,192 to an
object), where the collection deletes packs.

Building: icechunk's repository is written through its store (``store.set``,
5,000 concurrent calls at a time: zarr's array writes are slower); ours writes the
chunk objects as files directly and commits synthetic references to them (the
same bytes, keys and object layout a session would produce). Only the
collection is measured, after ``sync`` (written data on disk, as for a
repository built long before), in a fresh child process per run: wall time, CPU time,
and the process's peak RSS (``VmHWM``, Python and every import included) and RSS
at start.

Usage: ``PYTHONPATH=. .venv/bin/python bench/bench_gc.py [--chunks N] [--packed]
[--no-icechunk] [--output gc.json]``; ``--quick`` is N = 100k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xxhash

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    environment,
    fmt_bytes,
    fmt_time,
    loadavg,
    proc_status,
    run_child,
    table,
    verdict,
    write_json,
)

SCRIPT = Path(__file__).resolve()
TARGET_S, TARGET_RSS = 30.0, 500 * 1000 * 1000
CHUNK = 16
PACKED_CHUNK = 1024
PACK_CHUNKS = 8192  # 8 MiB packs, as the writer makes them


# -- building -------------------------------------------------------------------------------


def _write_objects(root: Path, ids: list[str], payloads: list[bytes]) -> None:
    folder = root / "chunks"
    folder.mkdir(parents=True, exist_ok=True)
    for oid, data in zip(ids, payloads, strict=True):
        fd = os.open(folder / oid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)


def _refs(
    root: Path, first: int, last: int, version: int, packed: bool
) -> dict[str, tuple[str, int, int, int]]:
    """Write the chunk objects of chunks ``first..last-1`` (version ``version``); their refs."""
    from icechunk_dask.format import new_id

    size = PACKED_CHUNK if packed else CHUNK
    payloads = [i.to_bytes(8, "little") * (size // 8) for i in range(first, last)]
    crcs = [xxhash.xxh3_64_intdigest(p) for p in payloads]
    writer = new_id(36) + f"{version}"
    if not packed:
        ids = [f"{writer}{i:x}" for i in range(first, last)]
        _write_objects(root, ids, payloads)
        return {
            f"a/c/{i}": (oid, 0, size, crc)
            for i, oid, crc in zip(range(first, last), ids, crcs, strict=True)
        }
    refs = {}
    packs, pack_data = [], []
    for start in range(0, last - first, PACK_CHUNKS):
        pid = f"{writer}p{start:x}"
        part = payloads[start : start + PACK_CHUNKS]
        packs.append(pid)
        pack_data.append(b"".join(part))
        for j in range(len(part)):
            i = first + start + j
            refs[f"a/c/{i}"] = (pid, j * size, size, crcs[start + j])
    _write_objects(root, packs, pack_data)
    return refs


def build_ours(path: Path, n: int, packed: bool) -> dict[str, Any]:
    from icechunk_dask import ChangeSet, Repository, RepositoryConfig, local_filesystem_storage

    t0 = time.perf_counter()
    storage = local_filesystem_storage(path, durable=False)
    repo = Repository.create(storage, RepositoryConfig(inline_chunk_threshold_bytes=0))
    import zarr

    s = repo.writable_session("main")
    size = PACKED_CHUNK if packed else CHUNK
    zarr.create_array(
        s.store, name="a", shape=(n * size,), chunks=(size,), dtype="u1", compressors=None
    )
    s.commit("array")
    for version, count in ((1, n), (2, n // 2)):
        s = repo.writable_session("main")
        cs = ChangeSet(repo.repo_id, s.snapshot_id)
        cs.chunks = _refs(path, 0, count, version, packed)  # type: ignore[assignment]
        s.merge(cs)
        del cs
        s.commit(f"write {count}")
        if version == 1:
            time.sleep(0.01)
            between = datetime.now(UTC)
    expired = repo.expire_snapshots(between)
    return {"build_s": time.perf_counter() - t0, "expired": len(expired)}


def build_icechunk(path: Path, n: int) -> dict[str, Any]:
    import icechunk
    import zarr
    from zarr.core.buffer import default_buffer_prototype

    icechunk.set_logs_filter("error")
    t0 = time.perf_counter()
    cfg = icechunk.RepositoryConfig.default()
    cfg.inline_chunk_threshold_bytes = 0
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)), config=cfg)
    proto = default_buffer_prototype()
    between = None
    for version, count in ((0, 0), (1, n), (2, n // 2)):
        s = repo.writable_session("main")
        if version == 0:
            zarr.create_array(
                s.store, name="a", shape=(n * CHUNK,), chunks=(CHUNK,), dtype="u1", compressors=None
            )
        else:

            async def put(store: Any, lo: int, hi: int, v: int) -> None:
                for start in range(lo, hi, 5000):
                    await asyncio.gather(
                        *(
                            store.set(
                                f"a/c/{i}",
                                proto.buffer.from_bytes((i + v).to_bytes(8, "little") * 2),
                            )
                            for i in range(start, min(hi, start + 5000))
                        )
                    )

            asyncio.run(put(s.store, 0, count, version))
        s.commit(f"write {count}")
        if version == 1:
            time.sleep(0.01)
            between = datetime.now(UTC)
    assert between is not None
    expired = repo.expire_snapshots(between)
    return {"build_s": time.perf_counter() - t0, "expired": len(expired)}


# -- measuring (child processes) ------------------------------------------------------------


def child_gc(impl: str, path: str) -> dict[str, Any]:
    rss0 = proc_status("VmRSS")
    if impl == "ours":
        from icechunk_dask import Repository, local_filesystem_storage

        repo = Repository.open(local_filesystem_storage(path, durable=False))
    else:
        import icechunk

        icechunk.set_logs_filter("error")
        repo = icechunk.Repository.open(icechunk.local_filesystem_storage(path))
    rss_open = proc_status("VmRSS")
    cpu, t = time.process_time(), time.perf_counter()
    summary = repo.garbage_collect(datetime.now(UTC))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    out = {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_start": rss0,
        "rss_before_gc": rss_open,
        "rss_peak": proc_status("VmHWM"),
        "chunks_deleted": summary.chunks_deleted,
        "manifests_deleted": summary.manifests_deleted,
        "snapshots_deleted": summary.snapshots_deleted,
        "transaction_logs_deleted": summary.transaction_logs_deleted,
        "bytes_deleted": summary.bytes_deleted,
    }
    if impl == "ours":
        t = time.perf_counter()
        report = repo.verify()
        out["verify_s"], out["verify_ok"] = time.perf_counter() - t, report.ok
        t = time.perf_counter()
        usage = repo.storage_usage()
        out["du_s"], out["du_objects"] = time.perf_counter() - t, usage.total.objects
    return out


def _count(path: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(path))


def run_case(name: str, impl: str, path: Path, build: Any) -> dict[str, Any]:
    print(f"[{name}] building ...", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    built = build()
    files_before = _count(path)
    # a collection deletes objects written long before: the kernel's writeback of a
    # just-built repository must not compete with it (both implementations alike)
    os.sync()
    time.sleep(1.1)  # the cutoff (now, in whole seconds) is after every object
    print(f"[{name}] {files_before} files; collecting ...", flush=True)
    measured = run_child(SCRIPT, ["gc", impl, str(path)], timeout=3600)
    measured.update(built, files_before=files_before, files_after=_count(path))
    shutil.rmtree(path, ignore_errors=True)
    return measured


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results["cases"].items():
        rows.append(
            [
                name,
                f"{r['files_before']:,}",
                f"{r['chunks_deleted']:,}",
                (
                    f"{r['manifests_deleted']} / {r['snapshots_deleted']} / "
                    f"{r['transaction_logs_deleted']}"
                ),
                fmt_time(r["wall_s"]),
                fmt_time(r["cpu_s"]),
                f"{fmt_bytes(r['rss_peak'])} ({fmt_bytes(r['rss_start'])} at start)",
                f"{verdict(r['wall_s'], TARGET_S)} / {verdict(r['rss_peak'], TARGET_RSS)}",
                fmt_time(r["build_s"]),
            ]
        )
    text = table(
        [
            "case",
            "objects before",
            "chunk objects deleted",
            "manifests / snapshots / tx logs deleted",
            "GC wall",
            "GC CPU",
            "peak RSS",
            "<= 30 s / <= 500 MB",
            "build",
        ],
        rows,
    )
    extra = [
        f"* {name}: verify {fmt_time(r['verify_s'])} (ok={r['verify_ok']}), du "
        f"{fmt_time(r['du_s'])} ({r['du_objects']:,} objects)"
        for name, r in results["cases"].items()
        if "verify_s" in r
    ]
    return "\n".join([text, "", *extra])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=1_000_000, help="chunks in the array")
    ap.add_argument("--quick", action="store_true", help="100k chunks")
    ap.add_argument("--packed", action="store_true", help="also ours with packed 1 KiB chunks")
    ap.add_argument("--no-icechunk", dest="icechunk", action="store_false")
    ap.add_argument("--output", default="gc.json")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.child:
        _, impl, path = args.child
        print(json.dumps(child_gc(impl, path)))
        return
    n = 100_000 if args.quick else args.chunks
    env = environment()
    print(f"load average {env['loadavg_start']} on {env['cpus']} cores; N = {n:,}", flush=True)
    base = Path(os.environ.get("BENCH_TMP", "/tmp")) / "icd-bench-gc"
    cases: dict[str, Any] = {}
    cases["icechunk_dask, one object per chunk"] = run_case(
        "ours", "ours", base / "ours", lambda: build_ours(base / "ours", n, packed=False)
    )
    if args.packed:
        cases["icechunk_dask, packed 1 KiB chunks"] = run_case(
            "ours-packed", "ours", base / "packed", lambda: build_ours(base / "packed", n, True)
        )
    if args.icechunk:
        try:
            import icechunk  # noqa: F401
        except ImportError:
            print("icechunk is not installed: skipped (ICD_EXTRAS=...,bench)")
        else:
            cases["icechunk 2.3, one object per chunk"] = run_case(
                "icechunk", "icechunk", base / "ic", lambda: build_icechunk(base / "ic", n)
            )
    env["loadavg_end"] = loadavg()
    results = {"environment": env, "chunks": n, "cases": cases}
    print()
    print(report(results))
    path = write_json(args.output, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
