"""Fault campaign, concurrency: racing committer processes, a polling reader, durability.

Everything runs in real processes (``spawn``) on the local-filesystem backend:

* 8 processes x 25 commits on one branch, disjoint chunks, with a round every
  5 commits in which all 8 also write one shared chunk from the same base. The
  history must be one chain holding every acknowledged commit exactly once and
  nothing unacknowledged; in every shared round exactly one writer wins and the
  7 others get a ``ConflictError`` naming the chunk, and lose nothing (their
  retried writes land).
* A reader process polls the branch while a writer commits: every read sees
  one whole snapshot (data, attributes and message agree), never a mix.
* Data outlives the process that wrote it, in both directions.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from icechunk_dask import ConflictError, Repository, local_filesystem_storage
from icechunk_dask._sync import run
from icechunk_dask.format import BranchRef, branch_ref_key

N_PROCS = 8
N_COMMITS = 25
SHARED_EVERY = 5
CHUNK = 16  # int64 elements per chunk: 128 bytes, stored as a chunk object
TIMEOUT = 300

SPAWN = mp.get_context("spawn")


# -- racing committers --------------------------------------------------------------------------


def _write_own(repo: Repository, proc: int, i: int, token: int) -> Any:
    session = repo.writable_session("main")
    block = proc * N_COMMITS + i
    zarr.open_array(session.store, path="a")[block * CHUNK : (block + 1) * CHUNK] = token
    return session


def _committer(root: str, proc: int, barrier: Any, out: Any) -> None:
    try:
        repo = Repository.open(local_filesystem_storage(root))
        acked: list[tuple[str, str, int, bool]] = []
        refused: list[tuple[str, str, list[tuple[str, str]], str]] = []
        for i in range(N_COMMITS):
            shared = i % SHARED_EVERY == 0
            token = proc * 1000 + i + 1
            if shared:
                barrier.wait(TIMEOUT)  # every earlier commit has landed
            session = _write_own(repo, proc, i, token)
            if shared:
                zarr.open_array(session.store, path="shared")[:] = token
                barrier.wait(TIMEOUT)  # all 8 sessions start from the same snapshot
            message = f"p{proc} c{i}"
            try:
                acked.append((message, session.commit(message), token, shared))
            except ConflictError as e:
                refused.append((message, type(e).__name__, e.conflicts, str(e)))
                session = _write_own(repo, proc, i, token)
                message += " retry"
                acked.append((message, session.commit(message), token, False))
        out.put(("ok", proc, acked, refused))
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(("error", proc, traceback.format_exc(), None))


def _branch_log(root: Path) -> list[BranchRef]:
    refs = []
    seq = 0
    while (root / branch_ref_key("main", seq)).exists():
        key = branch_ref_key("main", seq)
        refs.append(BranchRef.decode((root / key).read_bytes(), key))
        seq += 1
    return refs


def test_racing_committers_lose_nothing(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path))
    session = repo.writable_session("main")
    size = N_PROCS * N_COMMITS * CHUNK
    opts: dict[str, Any] = {"dtype": "int64", "fill_value": 0, "compressors": None}
    zarr.create_array(session.store, name="a", shape=(size,), chunks=(CHUNK,), **opts)
    zarr.create_array(session.store, name="shared", shape=(CHUNK,), chunks=(CHUNK,), **opts)
    setup_id = session.commit("setup")

    barrier = SPAWN.Barrier(N_PROCS)
    out = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_committer, args=(str(tmp_path), p, barrier, out))
        for p in range(N_PROCS)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=TIMEOUT) for _ in procs]
    for p in procs:
        p.join(TIMEOUT)
    errors = [r[2] for r in results if r[0] == "error"]
    assert not errors, errors[0]

    acked = [a for r in results for a in r[2]]
    refused = [x for r in results for x in r[3]]
    shared_rounds = N_COMMITS // SHARED_EVERY
    assert len(acked) == N_PROCS * N_COMMITS

    # one chain: every acknowledged commit exactly once, nothing else
    history = list(Repository.open(local_filesystem_storage(tmp_path)).ancestry(branch="main"))
    ids = [h.id for h in history]
    assert len(ids) == len(set(ids))
    assert ids[-2] == setup_id
    chain = {h.id: h.message for h in history[:-2]}
    assert {sid: msg for msg, sid, _, _ in acked} == chain  # acknowledged == landed
    lost = [msg for msg, sid, _, _ in acked if sid not in chain]
    assert lost == []

    # the branch log itself is linear: each entry's parent is the previous entry
    log = _branch_log(tmp_path)
    assert len(log) == len(history)
    for prev, entry in itertools.pairwise(log):
        assert entry.parent_id == prev.snapshot_id
    assert log[-1].snapshot_id == ids[0]
    # every commit that lost a race and queued left the commit queue
    assert run(local_filesystem_storage(tmp_path).list("queue/")) == []

    # every shared round: exactly one winner; the 7 others refused, naming the chunk
    winners = [a for a in acked if a[3]]
    assert len(winners) == shared_rounds
    assert len(refused) == (N_PROCS - 1) * shared_rounds
    for _, kind, conflicts, text in refused:
        assert kind == "RebaseFailedError"
        assert ("shared/c/0" in {k for c in conflicts for k in c.keys}) and "shared/c/0" in text

    # nothing was lost: every process's every write is there, and the last winner's
    reader = Repository.open(local_filesystem_storage(tmp_path)).readonly_session("main")
    data = zarr.open_array(reader.store, path="a", mode="r")[:].reshape(-1, CHUNK)
    expected = np.array([p * 1000 + i + 1 for p in range(N_PROCS) for i in range(N_COMMITS)])
    np.testing.assert_array_equal(data, np.repeat(expected[:, None], CHUNK, axis=1))
    last_winner = min(winners, key=lambda w: ids.index(w[1]))  # newest first
    shared_now = zarr.open_array(reader.store, path="shared", mode="r")[:]
    assert (shared_now == last_winner[2]).all()
    counts = Counter(msg.split()[0] for msg, *_ in acked)
    assert set(counts.values()) == {N_COMMITS}


# -- a reader polling while a writer commits ----------------------------------------------------

N_VERSIONS = 30
X_CHUNKS = 8


def _poll(root: str, seen: Any, stop: Any, out: Any) -> None:
    try:
        storage = local_filesystem_storage(root)
        long_lived = Repository.open(storage)
        reads, mixed, versions = 0, [], set()
        while not stop.is_set():
            repo = long_lived if reads % 2 else Repository.open(local_filesystem_storage(root))
            session = repo.readonly_session("main")
            array = zarr.open_array(session.store, path="x", mode="r")
            values = array[:]
            version = int(array.attrs["version"])
            (info, *_) = repo.ancestry(snapshot_id=session.snapshot_id)
            reads += 1
            if not (values == version).all() or info.message != f"v{version}":
                mixed.append((session.snapshot_id, version, sorted(set(values.tolist()))))
            versions.add(version)
            with seen.get_lock():
                seen.value = max(seen.value, version)
        out.put(("ok", reads, mixed, sorted(versions)))
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(("error", traceback.format_exc(), None, None))


def test_reader_sees_whole_snapshots_while_writer_commits(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path))
    session = repo.writable_session("main")
    array = zarr.create_array(
        session.store,
        name="x",
        shape=(X_CHUNKS * CHUNK,),
        chunks=(CHUNK,),
        dtype="int64",
        fill_value=-1,
        compressors=None,
    )
    array[:] = 0
    array.attrs["version"] = 0
    session.commit("v0")

    seen, stop, out = SPAWN.Value("i", -1), SPAWN.Event(), SPAWN.Queue()
    reader = SPAWN.Process(target=_poll, args=(str(tmp_path), seen, stop, out))
    reader.start()
    try:
        for version in range(1, N_VERSIONS + 1):
            session = repo.writable_session("main")
            array = zarr.open_array(session.store, path="x")
            array[:] = version
            array.attrs["version"] = version
            session.commit(f"v{version}")
            # the reader keeps polling while the next commit is written; wait only until
            # it has seen this version, so that it observes every one of them
            for _ in range(TIMEOUT * 100):
                if seen.value >= version or not reader.is_alive():
                    break
                stop.wait(0.01)
            assert seen.value >= version, "the reader stopped seeing new commits"
    finally:
        stop.set()
        result = out.get(timeout=TIMEOUT)
        reader.join(TIMEOUT)
    assert result[0] == "ok", result[1]
    _, reads, mixed, versions = result
    assert mixed == []
    assert set(range(1, N_VERSIONS + 1)) <= set(versions) <= set(range(N_VERSIONS + 1))
    assert reads >= N_VERSIONS


# -- data outlives the process ------------------------------------------------------------------


def _payload(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((40, 30))


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _write_and_exit(root: str, out: Any) -> None:
    try:
        repo = Repository.create(local_filesystem_storage(root))
        session = repo.writable_session("main")
        data = _payload(1)
        zarr.create_array(session.store, name="v", data=data, chunks=(16, 16))
        out.put(("ok", session.commit("from a child process"), _digest(data)))
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(("error", traceback.format_exc(), None))


def _read_and_exit(root: str, out: Any) -> None:
    try:
        repo = Repository.open(local_filesystem_storage(root))
        session = repo.readonly_session("main")
        values = zarr.open_array(session.store, path="v", mode="r")[:]
        out.put(("ok", session.snapshot_id, _digest(values)))
    except BaseException:  # noqa: BLE001 - report anything to the parent process
        out.put(("error", traceback.format_exc(), None))


def _in_child(target: Any, root: Path) -> tuple[str, str]:
    out = SPAWN.Queue()
    child = SPAWN.Process(target=target, args=(str(root), out))
    child.start()
    status, first, second = out.get(timeout=TIMEOUT)
    child.join(TIMEOUT)
    assert status == "ok", first
    assert child.exitcode == 0
    return first, second


def test_data_outlives_the_process(tmp_path: Path) -> None:
    snapshot_id, digest = _in_child(_write_and_exit, tmp_path)
    repo = Repository.open(local_filesystem_storage(tmp_path))
    assert repo.lookup_branch("main") == snapshot_id
    values = zarr.open_array(repo.readonly_session("main").store, path="v", mode="r")[:]
    assert _digest(values) == digest == _digest(_payload(1))

    session = repo.writable_session("main")
    zarr.open_array(session.store, path="v")[:] = _payload(2)
    mine = session.commit("from the parent")
    assert _in_child(_read_and_exit, tmp_path) == (mine, _digest(_payload(2)))
