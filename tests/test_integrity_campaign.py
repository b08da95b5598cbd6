"""Integrity campaign: objects copied over each other, crashes before GC, GC racing committers.

1. **Substitutions.** In a repository with several commits, arrays, a group, two
   branches and tags (one deleted), every object of a kind is copied over every
   other object of the same kind (snapshots, manifests, transaction logs, tags and
   tombstones, branch log entries, branch hints), one pair at a time. Then every
   read path runs: open, branch and tag lookups, reading every array of every
   branch, tag and recorded snapshot, the ancestry of every ref, a diff, a commit
   on ``dev``, ``verify``. Each must give the recorded data or an
   ``IcechunkDaskError``; wrong data, another exception type, or a read that does
   not finish within the timeout fails the test. Every substituted object that a
   read path depends on must be reported by ``verify``.
2. **GC after crashes.** A writer is SIGKILLed at every step of a commit; then the
   leftovers are garbage-collected: the branch shows the old or the new version,
   every array reads completely, ``verify --chunks`` is clean, the crash's
   leftovers are gone, a later commit works.
3. **GC racing committers.** Two processes commit (rebasing onto each other) and
   a third makes garbage, while this process expires and garbage-collects in a
   loop. Nothing any commit made reachable is lost: every snapshot of the history
   reads what its committer wrote, and ``verify --chunks`` is clean.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from icechunk_dask import IcechunkDaskError, Repository, local_filesystem_storage
from tests.lifecycle_helpers import age, files

SPAWN = mp.get_context("spawn")
TIMEOUT = 120
READ_TIMEOUT = 60.0

# -- 1. substitutions -----------------------------------------------------------------------


def _observe(repo: Repository, **ref: str) -> dict[str, Any]:
    """Everything a reader sees at a ref: arrays a and b, the attributes of g."""
    session = repo.readonly_session(**ref)
    out: dict[str, Any] = {}
    for name in ("a", "b"):
        out[name] = np.asarray(zarr.open_array(session.store, path=name, mode="r")[...]).tolist()
    out["g"] = dict(zarr.open_group(session.store, path="g", mode="r").attrs)
    return out


def _write(repo: Repository, branch: str, message: str, edit: Callable[[Any], None]) -> str:
    session = repo.writable_session(branch)
    edit(session.store)
    return session.commit(message)


def _build(path: Path) -> Repository:
    """main: c1 (create) <- c2 (tag v1) <- c3 <- c5 (tag v2); dev: c2 <- c4; tag old deleted."""
    repo = Repository.create(local_filesystem_storage(path, durable=False))

    def create(store: Any) -> None:
        a = zarr.create_array(store, name="a", shape=(8, 8), chunks=(4, 4), dtype="f8")
        a[:] = 1.0  # 128-byte chunks: packed
        b = zarr.create_array(store, name="b", shape=(4,), chunks=(2,), dtype="f8")
        b[:] = 1.0  # 16-byte chunks: inline
        zarr.create_group(store, path="g", attributes={"v": 1})

    def edit_a(region: tuple[slice, slice], value: float) -> Callable[[Any], None]:
        def edit(store: Any) -> None:
            zarr.open_array(store, path="a")[region] = value

        return edit

    def edit_b_g(store: Any) -> None:
        zarr.open_array(store, path="b")[:] = 3.0
        zarr.open_group(store, path="g").attrs["v"] = 3

    c1 = _write(repo, "main", "c1", create)
    repo.create_tag("old", c1)
    repo.delete_tag("old")
    c2 = _write(repo, "main", "c2", edit_a((slice(0, 4), slice(0, 4)), 2.0))
    repo.create_tag("v1", c2)
    repo.create_branch("dev", c2)
    _write(repo, "main", "c3", edit_b_g)
    _write(repo, "dev", "c4", edit_a((slice(4, 8), slice(4, 8)), 4.0))
    repo.create_tag("v2", _write(repo, "main", "c5", edit_a((slice(None), slice(4, 8)), 5.0)))
    return repo


def _record(repo: Repository) -> dict[str, Any]:
    """What a sound repository shows on every read path."""
    refs = {"branch": ["main", "dev"], "tag": ["v1", "v2"]}
    rec: dict[str, Any] = {"tips": {}, "history": {}, "data": {}}
    for kind, names in refs.items():
        for name in names:
            ref = {kind: name}
            history = [i.id for i in repo.ancestry(**ref)]
            rec["tips"][f"{kind} {name}"] = history[0]
            rec["history"][f"{kind} {name}"] = history
    for sid in {s for h in rec["history"].values() for s in h[:-1]}:  # the root has no arrays
        rec["data"][sid] = _observe(repo, snapshot_id=sid)
    rec["diff"] = repr(repo.diff(from_tag="v1", to_branch="main"))
    return rec


def _read_paths(path: Path, rec: dict[str, Any]) -> tuple[list[str], bool]:
    """Run every read path; return (wrong results, whether verify saw a problem)."""
    wrong: list[str] = []

    def attempt(what: str, call: Callable[[], Any], expected: Any = None) -> Any:
        try:
            got = call()
        except IcechunkDaskError:
            return None
        except Exception as e:  # noqa: BLE001 - any other error type is a finding
            wrong.append(f"{what}: untyped {type(e).__name__}: {e}")
            return None
        if expected is not None and got != expected:
            wrong.append(f"{what}: wrong result {got!r}, expected {expected!r}")
        return got

    repo = attempt("open", lambda: Repository.open(local_filesystem_storage(path)))
    if repo is None:
        return wrong, True
    for label, tip in rec["tips"].items():
        kind, name = label.split(" ")
        lookup = repo.lookup_branch if kind == "branch" else repo.lookup_tag
        ref = {kind: name}
        attempt(f"lookup {label}", lambda f=lookup, n=name: f(n), tip)
        attempt(f"read {label}", lambda r=ref: _observe(repo, **r), rec["data"][tip])
        attempt(
            f"ancestry {label}",
            lambda r=ref: [i.id for i in repo.ancestry(**r)],
            rec["history"][label],
        )
    for sid, data in rec["data"].items():
        attempt(f"read {sid}", lambda s=sid: _observe(repo, snapshot_id=s), data)
    attempt("diff", lambda: repr(repo.diff(from_tag="v1", to_branch="main")), rec["diff"])

    def commit_on_dev() -> None:
        session = repo.writable_session("dev")
        zarr.open_array(session.store, path="a")[0, 0] = 99.0
        new = session.commit("probe")
        expected = rec["data"][rec["tips"]["branch dev"]]
        got = _observe(Repository.open(local_filesystem_storage(path)), snapshot_id=new)
        if got["a"][0][0] != 99.0 or got["b"] != expected["b"] or got["g"] != expected["g"]:
            wrong.append(f"commit on dev: wrong result {got!r}")
        got["a"][0][0] = expected["a"][0][0]
        if got != expected:
            wrong.append(f"commit on dev: other data changed: {got!r}")

    attempt("commit", commit_on_dev)
    report = attempt("verify", lambda: Repository.open(local_filesystem_storage(path)).verify())
    return wrong, report is None or not report.ok


def _kinds(root: Path) -> dict[str, list[str]]:
    keys = sorted(files(root))
    return {
        "snapshot": [k for k in keys if k.startswith("snapshots/")],
        "manifest": [k for k in keys if k.startswith("manifests/")],
        "transaction log": [k for k in keys if k.startswith("transactions/")],
        "tag": [k for k in keys if k.startswith("refs/tag.")],
        "branch entry": [
            k for k in keys if k.startswith("refs/branch.") and not k.endswith("hint.json")
        ],
        "branch hint": [k for k in keys if k.endswith("hint.json")],
    }


def _with_timeout(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail the test if it does not finish (a hang)."""
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(READ_TIMEOUT)
    assert not worker.is_alive(), "a read path did not finish: it hangs"
    return result[0]


@pytest.mark.slow
def test_every_same_kind_substitution_gives_recorded_data_or_a_typed_error(
    tmp_path: Path,
) -> None:
    repo = _build(tmp_path)
    rec = _record(repo)
    kinds = _kinds(tmp_path)
    tips = {f"refs/branch.{b}/" for b in ("main", "dev")}
    tip_entries = {max(k for k in kinds["branch entry"] if k.startswith(t)) for t in tips}
    stats: dict[str, list[int]] = {}
    findings: list[str] = []
    for kind, keys in kinds.items():
        done = undetected = 0
        for target in keys:
            for source in keys:
                if source == target:
                    continue
                before = files(tmp_path)
                (tmp_path / target).write_bytes(before[source])
                try:
                    wrong, detected = _with_timeout(lambda: _read_paths(tmp_path, rec))
                finally:
                    for extra in set(files(tmp_path)) - set(before):
                        (tmp_path / extra).unlink()
                    for key, data in before.items():
                        if (tmp_path / key).read_bytes() != data:
                            (tmp_path / key).write_bytes(data)
                findings += [f"{kind} {source} over {target}: {w}" for w in wrong]
                needed = kind != "branch entry" or target in tip_entries
                if kind == "branch hint":
                    needed = False  # a hint is only a lower bound: any value is harmless
                if needed and not detected:
                    undetected += 1
                    findings.append(f"{kind} {source} over {target}: verify saw nothing")
                done += 1
        stats[kind] = [len(keys), done, undetected]
    print("substitutions per kind [objects, pairs, undetected by verify]:", stats)
    assert not findings, "\n".join(findings[:20])
    assert sum(s[1] for s in stats.values()) >= 130


@pytest.mark.parametrize("kind", ["snapshot", "manifest", "transaction log", "tag", "branch entry"])
def test_one_substitution_per_kind(tmp_path: Path, kind: str) -> None:
    """The fast subset of the campaign above (the newest object over the oldest)."""
    _build(tmp_path)
    rec = _record(Repository.open(local_filesystem_storage(tmp_path)))
    keys = _kinds(tmp_path)[kind]
    if kind == "branch entry":  # main's tip entry, so that a read path depends on it
        keys = [k for k in keys if k.startswith("refs/branch.main/")]
    source, target = keys[0], keys[-1]
    (tmp_path / target).write_bytes((tmp_path / source).read_bytes())
    wrong, detected = _with_timeout(lambda: _read_paths(tmp_path, rec))
    assert not wrong
    assert detected


# -- 2. garbage collection after a crash at each commit step ----------------------------------


def _crash(root: str, point: tuple[str, str, int, str, bool]) -> Any:
    from tests.test_faults_crash import _doomed_writer

    op, prefix, nth, when, _ = point
    out = SPAWN.Queue()
    proc = SPAWN.Process(target=_doomed_writer, args=(root, op, prefix, nth, when, out))
    proc.start()
    proc.out = out  # type: ignore[attr-defined]
    return proc


@pytest.mark.slow
def test_gc_after_a_crash_at_each_commit_step(tmp_path: Path) -> None:
    """Every crash point of tests/test_faults_crash.py, then expire + GC, then more commits."""
    import tests.test_faults_crash as crash

    roots = []
    for i, _point in enumerate(crash.CRASH_POINTS):
        root = tmp_path / f"r{i}"
        repo = Repository.create(local_filesystem_storage(root, durable=False))
        session = repo.writable_session("main")
        zarr.create_array(
            session.store,
            name="a",
            shape=crash.SHAPE,
            chunks=crash.CHUNKS,
            dtype="f8",
            compressors=None,
        )
        zarr.create_group(session.store, path="g")
        session.commit("arrays")
        crash._write_version(repo, 1)
        roots.append(root)
    # two doomed writers at a time (2 cores)
    pending = list(zip(roots, crash.CRASH_POINTS, strict=True))
    running: list[Any] = []
    while pending or running:
        while pending and len(running) < 2:
            root, point = pending.pop()
            running.append(_crash(str(root), point))
        running[0].join(TIMEOUT)
        done = running.pop(0)
        assert done.exitcode == -signal.SIGKILL, done.out.get(timeout=5)
    deleted = {}
    for root, point in zip(roots, crash.CRASH_POINTS, strict=True):
        landed = point[-1]
        age(root)
        repo = Repository.open(local_filesystem_storage(root, durable=False))
        summary = repo.garbage_collect(datetime.now(UTC))
        deleted[f"{point[3]}-{point[0]}-{point[1]}{point[2]}"] = summary.objects_deleted
        crash._check_version(repo, 2 if landed else 1)
        assert repo.verify(chunks=True).ok
        assert repo.storage_usage().unreachable["chunks"].objects == 0
        crash._write_version(repo, 3)
        crash._check_version(Repository.open(local_filesystem_storage(root, durable=False)), 3)
        age(root)
        again = repo.garbage_collect(datetime.now(UTC))
        crash._check_version(repo, 3)
        assert again.reachable["snapshots"].objects == (5 if landed else 4)
    print("objects deleted after each crash:", deleted)
    # a crash after the first chunk was written and before the commit landed leaves
    # garbage, all of it collected; a commit that landed leaves none
    for (name, n), point in zip(deleted.items(), crash.CRASH_POINTS, strict=True):
        assert (n > 0) == (not point[-1] and name != "before-put-chunks/1"), name


# -- 3. garbage collection racing committers ----------------------------------------------------

ROWS = 264  # a chunk of `a`: 264 x 128 float64 = 264 KiB, one object
COMMITS = 12


def _race_storage(root: str) -> Any:
    return local_filesystem_storage(root, durable=False)


def _committer(root: str, me: int, out: Any) -> None:
    """Commit COMMITS times to rows of `a` and a row of `p` that only this process writes."""
    try:
        repo = Repository.open(_race_storage(root))
        for k in range(1, COMMITS + 1):
            session = repo.writable_session("main")
            zarr.open_array(session.store, path="a")[2 * me * ROWS : (2 * me + 2) * ROWS] = (
                100 * me + k
            )
            zarr.open_array(session.store, path="p")[me, :] = 100 * me + k  # packed chunks
            out.put((me, k, session.commit(f"c{me} k{k}")))
        out.put((me, 0, "done"))
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put((me, -1, traceback.format_exc()))


def _old_garbage(root: str, n: int) -> None:
    """Objects of every collectable kind that no ref reaches, dated an hour back."""
    from icechunk_dask.format import new_id

    old = time.time() - 3600
    for _ in range(n):
        for key in (
            f"chunks/{new_id(36)}",
            f"manifests/{new_id()}",
            f"snapshots/{new_id()}",
            f"transactions/{new_id()}",
            f"scratch/{new_id()}",
            f"sessions/{new_id()}/{new_id(36)}",
            f"jobs/{new_id()}/tasks/0",
            f"chunks/.tmp-{new_id(32).lower()}",
        ):
            path = Path(root, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"garbage")
            os.utime(path, (old, old))


def _garbage_maker(root: str, rounds: int, out: Any) -> None:
    """Abandoned sessions, commits on branches deleted at once, and old garbage of every kind."""
    try:
        repo = Repository.open(_race_storage(root))
        for i in range(rounds):
            _old_garbage(root, 10)
            abandoned = repo.writable_session("main")
            zarr.open_array(abandoned.store, path="p")[:] = -1.0
            name = f"tmp{i}"
            repo.create_branch(name, repo.lookup_branch("main"))
            session = repo.writable_session(name)
            zarr.open_array(session.store, path="a")[:ROWS] = -2.0
            session.commit("lost")
            repo.delete_branch(name)
        out.put((9, 0, "done"))
    except BaseException:  # noqa: BLE001
        out.put((9, -1, traceback.format_exc()))


@pytest.mark.slow
def test_gc_racing_committers_loses_nothing_reachable(tmp_path: Path) -> None:
    root = str(tmp_path)
    repo = Repository.create(_race_storage(root))
    session = repo.writable_session("main")
    a = zarr.create_array(
        session.store, name="a", shape=(4 * ROWS, 128), chunks=(ROWS, 128), dtype="f8"
    )
    a[:] = 0.0
    zarr.create_array(session.store, name="p", shape=(2, 64), chunks=(1, 16), dtype="f8")[:] = 0.0
    session.commit("arrays")
    for v in (1.0, 2.0):  # old history, to be expired and collected during the race
        session = repo.writable_session("main")
        zarr.open_array(session.store, path="a")[:] = v
        session.commit(f"old {v:g}")
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 3.0
    age(tmp_path)
    cutoff = datetime.now(UTC)  # everything the race writes is newer

    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=_committer, args=(root, me, out)) for me in (0, 1)]
    procs.append(SPAWN.Process(target=_garbage_maker, args=(root, 8, out)))
    for p in procs:
        p.start()
    runs = deleted = expired = 0
    try:
        while any(p.is_alive() for p in procs):
            expired += len(repo.expire_snapshots(cutoff))
            deleted += repo.garbage_collect(cutoff).objects_deleted
            runs += 1
    finally:
        for p in procs:
            p.join(TIMEOUT)
    results = [out.get(timeout=5) for _ in range(2 * COMMITS + 3)]
    assert not [r for r in results if r[1] == -1], [r[2] for r in results if r[1] == -1]
    commits = {(me, k): sid for me, k, sid in results if k > 0}
    assert len(commits) == 2 * COMMITS
    print(f"race: {runs} GC runs deleted {deleted} objects, {expired} snapshots expired")
    assert runs >= 2 and deleted > 8 * 10 * 8  # the garbage maker's old objects too
    assert expired == 3  # arrays, old 1, old 2 (the tip before the race); not the first

    def check(handle: Repository) -> None:
        history = [i.id for i in handle.ancestry(branch="main")]
        assert set(commits.values()) <= set(history)
        for (me, k), sid in commits.items():
            s = handle.readonly_session(snapshot_id=sid)
            mine = np.asarray(zarr.open_array(s.store, path="a", mode="r")[...])
            rows = slice(2 * me * ROWS, (2 * me + 2) * ROWS)
            assert (mine[rows] == 100 * me + k).all()
            other = mine[2 * (1 - me) * ROWS : (2 * (1 - me) + 2) * ROWS]
            assert other.min() == other.max() and other.max() in {
                2.0,
                *range(100 * (1 - me), 100 * (1 - me) + COMMITS + 1),
            }
            p = np.asarray(zarr.open_array(s.store, path="p", mode="r")[...])
            assert (p[me] == 100 * me + k).all()
        assert handle.verify(chunks=True).ok

    check(Repository.open(_race_storage(root)))
    # everything the race left behind is garbage once old: collect it, lose nothing
    age(tmp_path)
    final = repo.garbage_collect(datetime.now(UTC))
    assert final.objects_deleted > 0
    check(Repository.open(_race_storage(root)))
    assert Repository.open(_race_storage(root)).storage_usage().unreachable["chunks"].objects == 0
