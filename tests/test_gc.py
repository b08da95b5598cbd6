"""garbage_collect: what it deletes, what it keeps, and the summary it gives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from icechunk_dask import (
    ChangeSet,
    CorruptObjectError,
    GCSummary,
    Repository,
    RepositoryConfig,
    Session,
    _gc,
    in_memory_storage,
    local_filesystem_storage,
    store_sessions,
)
from icechunk_dask._exceptions import InvalidInputError, NotFoundError, StorageError
from icechunk_dask._gc import GC_KINDS
from icechunk_dask._jobs import store_result, store_task_record
from icechunk_dask._reach import manifest_chunks
from icechunk_dask._sync import run
from icechunk_dask.storage import _local_walk
from tests.helpers import make_array, read_array
from tests.lifecycle_helpers import age, files

LATER = timedelta(days=1)
#: two chunks of 264 KiB: one object each (chunks of at most 256 KiB are packed)
SHAPE, CHUNKS = (528, 128), (264, 128)
CHUNK_BYTES = 264 * 128 * 8


def _repo(path: Path) -> Repository:
    return Repository.create(local_filesystem_storage(path, durable=False))


def _write(repo: Repository, value: float, branch: str = "main", name: str = "a") -> str:
    session = repo.writable_session(branch)
    try:
        array = zarr.open_array(session.store, path=name)
    except FileNotFoundError:
        array = make_array(session, name, shape=SHAPE, chunks=CHUNKS)
    array[:] = value
    return session.commit(f"{name}={value:g}")


def _snapshot_data(repo: Repository) -> dict[str, np.ndarray]:
    """The data of every snapshot in the histories of every ref (for before/after checks)."""
    out = {}
    refs = [{"branch": b} for b in repo.list_branches()] + [{"tag": t} for t in repo.list_tags()]
    for ref in refs:
        for info in repo.ancestry(**ref):
            session = repo.readonly_session(snapshot_id=info.id)
            for name in ("a", "b"):
                try:
                    out[f"{info.id}/{name}"] = read_array(session, name)
                except FileNotFoundError:
                    continue
    return out


def test_unreachable_old_objects_go_reachable_ones_stay(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    repo.create_branch("doomed", repo.lookup_branch("main"))
    _write(repo, 2, branch="doomed")
    repo.delete_branch("doomed")
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 3  # written, never committed
    _write(repo, 4)
    before = _snapshot_data(repo)
    age(tmp_path)
    untouched = files(tmp_path)
    dry = repo.garbage_collect(datetime.now(UTC), dry_run=True)
    assert files(tmp_path) == untouched
    summary = repo.garbage_collect(datetime.now(UTC))
    assert isinstance(summary, GCSummary)
    assert dry.dry_run and not summary.dry_run
    assert dry.to_dict()["deleted"] == summary.to_dict()["deleted"]
    assert untouched != files(tmp_path)
    # the deleted branch's commit: snapshot, log, manifest, 2 chunks; the abandoned session's
    # 2 chunks; main's first chunks were overwritten by v4 but v1 is still in main's history
    assert summary.snapshots_deleted == 1
    assert summary.transaction_logs_deleted == 1
    assert summary.manifests_deleted == 1
    assert summary.chunks_deleted == 4
    assert summary.deleted["chunks"].bytes == 4 * CHUNK_BYTES
    assert summary.bytes_deleted == sum(c.bytes for c in summary.deleted.values())
    assert summary.attributes_deleted == 0
    fresh = Repository.open(repo.storage)
    assert _same(before, _snapshot_data(fresh))
    assert fresh.verify(chunks=True).ok
    # nothing left to collect
    assert repo.garbage_collect(datetime.now(UTC)).objects_deleted == 0


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def test_objects_newer_than_the_cutoff_are_kept(tmp_path: Path) -> None:
    """A session writing now is never harmed when the cutoff is before its writes."""
    repo = _repo(tmp_path)
    _write(repo, 1)
    age(tmp_path)
    cutoff = datetime.now(UTC) - timedelta(minutes=1)
    session = repo.writable_session("main")
    make_array(session, "b", shape=SHAPE, chunks=CHUNKS)[:] = 5.0  # not committed yet
    scratch_fork = session.fork()
    zarr.open_array(scratch_fork.store, path="b")[:264] = 6.0
    summary = repo.garbage_collect(cutoff)
    assert summary.objects_deleted == 0
    assert summary.recent["chunks"].objects == 3
    session.merge(scratch_fork)
    session.commit("b")
    b = read_array(repo.readonly_session("main"), "b")
    assert (b[:264] == 6.0).all() and (b[264:] == 5.0).all()
    # with a cutoff after the writes (what the docs say not to do) they would go
    age(tmp_path)
    orphan = repo.writable_session("main")
    zarr.open_array(orphan.store, path="b")[:] = 9.0
    assert repo.garbage_collect(datetime.now(UTC) - LATER).objects_deleted == 0


def test_a_cutoff_in_the_future_counts_as_now(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 2.0
    # the new chunks look written a day from now (a clock test that cannot race a second
    # boundary): kept by a cutoff clamped to now, deleted by one taken as given
    age(tmp_path, -LATER.total_seconds(), under="chunks")
    summary = repo.garbage_collect(datetime.now(UTC) + timedelta(days=365))
    assert summary.cutoff <= datetime.now(UTC)
    assert summary.deleted["chunks"].objects == 0
    session.commit("still fine")
    np.testing.assert_array_equal(read_array(repo.readonly_session("main")), 2.0)


def test_a_pack_partly_referenced_is_kept_whole(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    array = make_array(session, "p", shape=(8, 8), chunks=(4, 4))  # 128-byte chunks: packed
    array[:] = 1.0
    session.commit("packed")
    pack = {k for k in files(tmp_path) if k.startswith("chunks/")}
    assert len(pack) == 1
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="p")[:4, :4] = 2.0  # one chunk of four replaced
    session.commit("one chunk")
    repo.expire_snapshots(datetime.now(UTC))
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.snapshots_deleted == 1  # "packed" expired and collected
    assert pack <= set(files(tmp_path))  # still referenced by three chunks of the tip
    expected = np.ones((8, 8))
    expected[:4, :4] = 2.0
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "p"), expected)
    assert repo.verify(chunks=True).ok


def _stacked(tmp_path: Path) -> tuple[Repository, str, set[str]]:
    """Four chunk objects in one box, then one of them overwritten: a layer stacked on top."""
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    array = make_array(session, "s", shape=(4 * 264, 128), chunks=CHUNKS)
    array[:] = 1.0
    first = session.commit("four chunks")
    old = {k for k in files(tmp_path) if k.startswith("chunks/")}
    assert len(old) == 4
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="s")[:264] = 2.0
    session.commit("one chunk")
    snap = run(repo._assets.get_snapshot(repo.lookup_branch("main")))
    assert [len(layers) for layers in snap.nodes["s"].boxes.values()] == [2]  # stacked
    return repo, first, old


def test_a_reference_hidden_by_a_newer_layer_keeps_no_chunk(tmp_path: Path) -> None:
    repo, _, old = _stacked(tmp_path)
    repo.expire_snapshots(datetime.now(UTC))
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    # the overwritten chunk's object is referenced only by the lower layer, where the new
    # layer hides it; the lower layer itself stays (the tip's stack names it)
    assert summary.chunks_deleted == 1 and summary.manifests_deleted == 0
    left = {k for k in files(tmp_path) if k.startswith("chunks/")}
    assert len(old - left) == 1 and len(old & left) == 3
    expected = np.ones((4 * 264, 128))
    expected[:264] = 2.0
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "s"), expected)
    assert repo.verify(chunks=True).ok


def test_a_hidden_reference_still_visible_in_a_live_snapshot_keeps_its_chunk(
    tmp_path: Path,
) -> None:
    repo, first, old = _stacked(tmp_path)  # "four chunks" is not expired: still readable
    age(tmp_path)
    assert repo.garbage_collect(datetime.now(UTC)).chunks_deleted == 0
    repo.create_tag("kept", first)
    repo.expire_snapshots(datetime.now(UTC))  # a tagged snapshot never expires
    age(tmp_path)
    assert repo.garbage_collect(datetime.now(UTC)).objects_deleted == 0
    assert old <= set(files(tmp_path))
    np.testing.assert_array_equal(
        read_array(repo.readonly_session(tag="kept"), "s"), np.ones((4 * 264, 128))
    )


def test_verify_checks_the_references_a_lower_layer_still_shows(tmp_path: Path) -> None:
    repo, _, old = _stacked(tmp_path)
    repo.expire_snapshots(datetime.now(UTC))
    age(tmp_path)
    repo.garbage_collect(datetime.now(UTC))
    shown = sorted(k for k in old if (tmp_path / k).exists())
    (tmp_path / shown[0]).unlink()  # a chunk the lower layer shows (not overwritten)
    report = repo.verify()
    assert [(p.key, p.kind) for p in report.problems] == [(shown[0], "missing")]


def test_inline_chunks_name_no_object(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    session = repo.writable_session("main")
    make_array(session, "tiny", shape=(4,), chunks=(2,))[:] = 1.0  # 16-byte chunks: inline
    session.commit("inline")
    assert not any(k.startswith("chunks/") for k in files(tmp_path))
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.objects_deleted == 0
    assert summary.reachable["chunks"].objects == 0
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "tiny"), 1.0)


def test_job_records_in_use_keep_their_chunks(tmp_path: Path) -> None:
    """A resumable job's records: kept (and their chunks) while any of them is recent."""
    repo = _repo(tmp_path)
    _write(repo, 1)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 7.0  # two chunks, a task's writes
    record = session.changes()
    assert len(record.chunks) == 2
    assets = repo._assets
    run(store_task_record(assets, "ingest", 0, record))
    run(assets.storage.put("jobs/ingest/plan", b"fingerprint"))
    age(tmp_path)
    run(store_task_record(assets, "ingest", 1, ChangeSet(repo.repo_id, record.base)))  # now
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 0 and summary.deleted["jobs"].objects == 0
    assert summary.recent["jobs"].objects == 3
    assert summary.recent["chunks"].objects == 2
    # once the whole job is old, its records and chunks go together
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["jobs"].objects == 3
    assert summary.deleted["chunks"].objects == 2
    assert not any(k.startswith("jobs/") for k in files(tmp_path))


def _job_with_worker_built_layers(
    tmp_path: Path,
    shape: tuple[int, int],
    chunks: tuple[int, int],
    blocks: tuple[int, int],
    box_refs: int = 64,
) -> tuple[Repository, Session, ChangeSet, np.ndarray]:
    """A Dask job's writes into a new array, every reference in a worker-built layer."""
    storage = local_filesystem_storage(tmp_path, durable=False)
    repo = Repository.create(storage, RepositoryConfig(manifest_box_refs=box_refs))
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="a", shape=shape, chunks=chunks, dtype="i4")
    session.commit("create")
    data = np.arange(shape[0] * shape[1], dtype="i4").reshape(shape) * 1000
    session = repo.writable_session("main")
    with dask.config.set(scheduler="threads"):
        store_sessions(
            [da.from_array(data, chunks=blocks)],
            [zarr.open_array(session.store, path="a")],
            session,
        )
    record = session.changes()
    assert record.layers and not record.chunks  # every reference is in a worker-built layer
    return repo, session, record, data


def test_job_records_in_use_keep_the_layers_their_workers_built(tmp_path: Path) -> None:
    """A job record holding pre-built layers keeps those manifests and their chunks.

    The layers' manifests and chunks are old and unreachable (nothing committed
    them yet); a recent record of the same job is in use, so committing the
    job afterwards must still find every manifest and chunk.
    """
    # chunks of 16 bytes: inline in the layers
    repo, session, record, data = _job_with_worker_built_layers(tmp_path, (64, 32), (2, 2), (4, 8))
    layer_ids = {m for nm in record.layers.values() for m in nm.manifest_ids()}
    assets = repo._assets
    run(store_task_record(assets, "ingest", 0, record))
    age(tmp_path)
    run(store_task_record(assets, "ingest", 1, ChangeSet(repo.repo_id, record.base)))  # now
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["manifests"].objects == 0 and summary.deleted["chunks"].objects == 0
    assert summary.recent["manifests"].objects == len(layer_ids)
    assert {f"manifests/{m}" for m in layer_ids} <= set(files(tmp_path))
    session.commit("the job, committed after the collection")
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "a"), data)
    assert repo.verify().ok


def test_markers_scratch_and_temporary_files(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    storage = repo.storage
    run(storage.put("sessions/OLDSESSION/w1", b""))
    run(storage.put("sessions/OLDSESSION/w2", b""))
    run(storage.put("sessions/LIVESESSION/w1", b""))
    run(storage.put("scratch/OLDSCRATCH0000000000", b"x"))
    tmp_old = tmp_path / "chunks" / f".tmp-{uuid.uuid4().hex}"
    tmp_old.write_bytes(b"partial write")
    age(tmp_path)
    run(storage.put("sessions/LIVESESSION/w2", b""))  # the live session's second marker
    tmp_new = tmp_path / "manifests" / f".tmp-{uuid.uuid4().hex}"
    tmp_new.write_bytes(b"being written")
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["markers"].objects == 2
    assert summary.recent["markers"].objects == 2  # a session's markers go together
    assert summary.deleted["scratch"].objects == 1
    assert summary.deleted["temporary"].objects == 1
    assert summary.deleted["temporary"].bytes == len(b"partial write")
    assert summary.recent["temporary"].objects == 1
    assert not tmp_old.exists() and tmp_new.exists()
    left = files(tmp_path)
    assert "sessions/LIVESESSION/w1" in left and "sessions/OLDSESSION/w1" not in left


def test_a_damaged_reachable_object_stops_it_before_any_deletion(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 3
    _write(repo, 2)
    manifest = min((tmp_path / "manifests").iterdir())
    manifest.write_bytes(manifest.read_bytes()[:-3])
    age(tmp_path)
    before = set(files(tmp_path))
    with pytest.raises(CorruptObjectError, match="manifests/"):
        repo.garbage_collect(datetime.now(UTC))
    assert set(files(tmp_path)) == before
    os.remove(manifest)
    with pytest.raises(CorruptObjectError, match="missing"):
        repo.garbage_collect(datetime.now(UTC))


def test_in_memory_storage(tmp_path: Path) -> None:
    repo = Repository.create(in_memory_storage())
    before = datetime.now(UTC)
    _write(repo, 1)
    _write(repo, 2)
    repo.expire_snapshots(datetime.now(UTC))
    # the expired snapshot was written after ``before``: kept as recent, whatever the clock
    # did meanwhile (a cutoff of "now" would delete it once a second boundary passed)
    summary = repo.garbage_collect(before, dry_run=True)
    assert summary.reachable["snapshots"].objects == 2
    assert summary.recent["snapshots"].objects == 1
    assert summary.deleted["snapshots"].objects == 0


def test_usage_report(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    _write(repo, 2)
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 3
    usage = repo.storage_usage()
    assert usage.reachable["chunks"].objects == 4  # v1's and v2's
    assert usage.unreachable["chunks"].objects == 2
    assert usage.reachable["snapshots"].objects == 3
    assert usage.reachable["config"].objects == 1
    assert usage.total.objects == len(files(tmp_path))
    assert usage.total.bytes == sum(map(len, files(tmp_path).values()))
    repo.expire_snapshots(datetime.now(UTC))
    usage = repo.storage_usage()
    assert usage.unreachable["chunks"].objects == 4
    assert usage.unreachable["snapshots"].objects == 1
    assert usage.reachable["expiry_markers"].objects == 1


def test_a_recent_scratch_object_keeps_the_old_chunks_it_references(tmp_path: Path) -> None:
    """A pickled copy of a session carries its uncommitted chunks in a scratch object: while
    that object is newer than the cutoff, the chunks it names stay, however old they are."""
    repo = _repo(tmp_path)
    _write(repo, 1)
    _write(repo, 3, name="b")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 5.0  # two new chunk objects, uncommitted
    run(session.store.delete("b/c/1/0"))  # and a deletion: no object to keep
    chunk_files = {k for k in files(tmp_path) if k.startswith("chunks/")}
    assert len(chunk_files) == 6  # a, b and a's uncommitted two
    age(tmp_path)  # everything, the uncommitted chunks too, is older than the cutoff
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))  # writes the scratch object now
    scratch = {k for k in files(tmp_path) if k.startswith("scratch/")}
    assert len(scratch) == 1
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 0
    assert summary.recent["chunks"].objects == 2  # held by the scratch object
    assert summary.recent["scratch"].objects == 1
    assert chunk_files <= set(files(tmp_path))
    session.merge(copy)
    session.commit("the uncommitted chunks, committed after the collection")
    back = repo.readonly_session("main")
    np.testing.assert_array_equal(read_array(back, "a"), 5.0)
    b = read_array(back, "b")
    assert (b[:264] == 3.0).all() and np.isnan(b[264:]).all()  # deleted: the fill value
    assert repo.verify(chunks=True).ok


def test_the_summary_as_json(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    _write(repo, 2)
    repo.expire_snapshots(datetime.now(UTC))
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    d = summary.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d == {
        "dry_run": False,
        "cutoff": summary.cutoff.isoformat(),
        "objects_deleted": summary.objects_deleted,
        "bytes_deleted": summary.bytes_deleted,
        "deleted": {k: c.to_dict() for k, c in summary.deleted.items()},
        "reachable": {k: c.to_dict() for k, c in summary.reachable.items()},
        "recent": {k: c.to_dict() for k, c in summary.recent.items()},
    }
    assert d["objects_deleted"] == 5 and d["deleted"]["chunks"]["objects"] == 2
    assert set(d["deleted"]) == set(d["reachable"]) == set(d["recent"]) == set(GC_KINDS)


def test_deletions_go_in_batches_with_a_bounded_number_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gc, "_BATCH", 2)
    monkeypatch.setattr(_gc, "_DELETERS", 2)
    repo = _repo(tmp_path)
    _write(repo, 1)
    storage = repo.storage
    for i in range(11):
        run(storage.put(f"sessions/OLD{i:02d}/w", b""))
    age(tmp_path)
    sizes: list[int] = []
    in_flight = peak = 0
    delete = storage.delete

    async def counting_delete(keys: Iterable[str]) -> None:
        nonlocal in_flight, peak
        keys = list(keys)
        sizes.append(len(keys))
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
            await delete(keys)
        finally:
            in_flight -= 1

    monkeypatch.setattr(storage, "delete", counting_delete)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["markers"].objects == 11
    assert not [k for k in files(tmp_path) if k.startswith("sessions/")]
    assert sorted(sizes) == [1, 2, 2, 2, 2, 2]
    assert peak == 2


def _old_markers(tmp_path: Path, n: int) -> Repository:
    repo = _repo(tmp_path)
    _write(repo, 1)
    for i in range(n):
        run(repo.storage.put(f"sessions/OLD{i:02d}/w", b""))
    age(tmp_path)
    return repo


def test_a_slow_deletion_does_not_hold_up_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches in flight are topped up as each one ends, not when all of them have.

    The first deletion waits until two later ones have started (an event, no timing):
    that happens only if the others go on while it is in flight; otherwise it gives up
    after 30 s and the count says so.
    """
    monkeypatch.setattr(_gc, "_BATCH", 1)
    monkeypatch.setattr(_gc, "_DELETERS", 2)
    repo = _old_markers(tmp_path, 6)
    storage = repo.storage
    delete = storage.delete
    calls: list[int] = []
    first_running = False
    started_meanwhile = 0
    two_more: asyncio.Event | None = None

    async def one_slow_delete(keys: Iterable[str]) -> None:
        nonlocal first_running, started_meanwhile, two_more
        calls.append(1)
        if len(calls) == 1:
            first_running, two_more = True, asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(two_more.wait(), timeout=30)
            first_running = False
        elif first_running:
            started_meanwhile += 1
            if started_meanwhile == 2 and two_more is not None:
                two_more.set()
        await delete(keys)

    monkeypatch.setattr(storage, "delete", one_slow_delete)
    assert repo.garbage_collect(datetime.now(UTC)).deleted["markers"].objects == 6
    assert len(calls) == 6
    assert started_meanwhile >= 2  # waiting for both batches would start only one


def test_a_failed_deletion_is_raised_after_the_others_have_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gc, "_BATCH", 1)
    monkeypatch.setattr(_gc, "_DELETERS", 10)  # all three in flight at the end
    repo = _old_markers(tmp_path, 3)
    storage = repo.storage
    delete = storage.delete
    calls: list[str] = []

    async def failing_delete(keys: Iterable[str]) -> None:
        keys = list(keys)
        calls.extend(keys)
        if len(calls) == 1:
            raise StorageError(f"cannot delete {keys[0]!r}")
        await asyncio.sleep(0.3)
        await delete(keys)

    monkeypatch.setattr(storage, "delete", failing_delete)
    with pytest.raises(StorageError, match="cannot delete 'sessions/OLD"):
        repo.garbage_collect(datetime.now(UTC))
    # the other two deletions had ended when the error came back: nothing runs on behind it
    left = [k for k in files(tmp_path) if k.startswith("sessions/")]
    assert left == [calls[0]]


def _at(path: Path, when: datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_objects_written_at_the_cutoff_itself_are_in_use(tmp_path: Path) -> None:
    """The cutoff is inclusive: a session's marker or a scratch object written at exactly
    the cutoff keeps the session's older markers and the chunks the scratch object names."""
    repo = _repo(tmp_path)
    _write(repo, 1)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 5.0  # two chunks, uncommitted
    with session.allow_pickling():
        copy = pickle.loads(pickle.dumps(session))  # a scratch object naming them
    run(repo.storage.put("sessions/LIVE/w1", b""))
    run(repo.storage.put("sessions/LIVE/w2", b""))
    run(repo.storage.put("chunks/ORPHAN00000000000000", b"no reference, no session"))
    age(tmp_path)
    cutoff = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    (scratch,) = (tmp_path / "scratch").iterdir()
    _at(scratch, cutoff)
    _at(tmp_path / "sessions" / "LIVE" / "w2", cutoff)
    _at(tmp_path / "chunks" / "ORPHAN00000000000000", cutoff)
    summary = repo.garbage_collect(cutoff)
    assert summary.cutoff == cutoff
    assert summary.objects_deleted == 0
    assert summary.recent["markers"].objects == 2
    assert summary.recent["scratch"].objects == 1
    assert summary.recent["chunks"].objects == 3  # the two the scratch object names, the orphan
    session.merge(copy)
    session.commit("after the collection")
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "a"), 5.0)


def test_a_jobs_merged_result_keeps_its_chunks(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _write(repo, 1)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 7.0  # two chunks: the job's merged writes
    record = session.changes()
    assets = repo._assets
    run(store_result(assets, "ingest", record))
    age(tmp_path)
    run(store_task_record(assets, "ingest", 0, ChangeSet(repo.repo_id, record.base)))  # now
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 0
    assert summary.recent["chunks"].objects == 2
    assert summary.recent["jobs"].objects == 2
    session.commit("the job, committed after the collection")
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "a"), 7.0)


def test_listings_are_swept_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_local_walk, "PAGE", 2)
    repo = _repo(tmp_path)
    _write(repo, 1)
    abandoned = repo.writable_session("main")
    zarr.open_array(abandoned.store, path="a")[:] = 3.0  # two chunks nobody commits
    for i in range(5):
        run(repo.storage.put(f"sessions/OLD{i}/w", b""))
        (tmp_path / "chunks" / f".tmp-{i}").write_bytes(b"partial")
    age(tmp_path)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 2
    assert summary.reachable["chunks"].objects == 2
    assert summary.deleted["markers"].objects == 5
    assert summary.deleted["temporary"].objects == 5


def test_a_cutoff_that_is_no_datetime_is_refused_by_name(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    with pytest.raises(
        InvalidInputError, match=r"^delete_object_older_than must be a datetime, e\.g\. "
    ):
        repo.garbage_collect("yesterday")  # type: ignore[arg-type]


def test_worker_built_layers_of_a_job_in_use_keep_their_chunk_objects(tmp_path: Path) -> None:
    """As above, with chunks big enough to be objects (packs), not inline in the layers."""
    # 16 chunks of 1 KiB: packed into chunk objects
    repo, session, record, data = _job_with_worker_built_layers(
        tmp_path, (64, 64), (16, 16), (16, 64)
    )
    chunk_objects = {k for k in files(tmp_path) if k.startswith("chunks/")}
    assert chunk_objects
    assets = repo._assets
    run(store_task_record(assets, "ingest", 0, record))
    age(tmp_path)
    run(store_task_record(assets, "ingest", 1, ChangeSet(repo.repo_id, record.base)))  # now
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 0
    assert summary.recent["chunks"].objects == len(chunk_objects)
    session.commit("the job, committed after the collection")
    np.testing.assert_array_equal(read_array(repo.readonly_session("main"), "a"), data)


def test_job_records_deleted_while_collecting_are_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record gone by the time it is read (its job was committed) hides no other record."""
    repo = _repo(tmp_path)
    _write(repo, 1)
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[:] = 7.0
    record = session.changes()
    assets = repo._assets
    run(store_result(assets, "ingest", record))
    age(tmp_path)
    for task in range(3):  # recent: the job is in use
        run(store_task_record(assets, "ingest", task, ChangeSet(repo.repo_id, record.base)))
    storage = repo.storage
    get = storage.get

    async def tasks_gone(key: str) -> bytes:
        if "/tasks/" in key:
            raise NotFoundError(f"no object {key!r}")
        return await get(key)

    monkeypatch.setattr(storage, "get", tasks_gone)
    summary = repo.garbage_collect(datetime.now(UTC))
    assert summary.deleted["chunks"].objects == 0
    assert summary.recent["chunks"].objects == 2  # the result, read after the missing tasks


def test_a_job_layer_that_is_gone_does_not_stop_the_others_keeping_their_chunks(
    tmp_path: Path,
) -> None:
    """Committing such a job fails anyway; meanwhile its other layers still hold their chunks."""
    repo, _session, record, _data = _job_with_worker_built_layers(
        tmp_path, (64, 64), (16, 16), (16, 64), box_refs=4
    )
    layer_ids = sorted(m for nm in record.layers.values() for m in nm.manifest_ids())
    assert len(layer_ids) == 4  # one box of 4 chunks per task
    assets = repo._assets
    kept = {c for m in layer_ids[1:] for c in run(manifest_chunks(assets, m))}
    run(store_task_record(assets, "ingest", 0, record))
    (tmp_path / "manifests" / layer_ids[0]).unlink()  # the first in sorted order
    age(tmp_path)
    run(store_task_record(assets, "ingest", 1, ChangeSet(repo.repo_id, record.base)))  # now
    repo.garbage_collect(datetime.now(UTC))
    assert kept and {f"chunks/{c}" for c in kept} <= set(files(tmp_path))
