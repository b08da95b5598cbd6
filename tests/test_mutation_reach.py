"""Mutation-campaign tests for icechunk_dask/_reach.py (issue 13, part 4b)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask._reach import reachable
from icechunk_dask._sync import run
from tests.lifecycle_helpers import age


def test_a_ref_naming_a_snapshot_another_walk_saw_expired_keeps_it(tmp_path: Path) -> None:
    """The snapshot a ref names is reachable even when an earlier walk passed it expired.

    A ref can name an expired snapshot (it moved there while ``expire_snapshots`` ran, after
    its last look at the refs). Found while writing these tests: the walk from ``main``
    (sorted first) marked the expired parent of its tip as visited, so the walk from
    ``zzz``, which names that parent, was skipped, and garbage collection deleted the
    snapshot, its transaction log and its manifest; with a ref named ``aaa`` it was kept.
    """
    repo = Repository.create(local_filesystem_storage(tmp_path, durable=False))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(2,), dtype="i4", fill_value=0)
    ids = [repo.lookup_branch("main"), s.commit("create")]
    for value in (1, 2):
        s = repo.writable_session("main")
        zarr.open_array(s.store, path="a")[:] = value
        ids.append(s.commit(f"{value}"))
    assert repo.expire_snapshots(datetime.now(UTC)) == {ids[1], ids[2]}
    # the race's outcome, by hand: the ref lands on the snapshot just expired
    marker = tmp_path / "expired" / ids[2]
    saved = marker.read_bytes()
    marker.unlink()
    Repository.open(repo.storage).create_branch("zzz", ids[2])
    marker.write_bytes(saved)
    repo = Repository.open(repo.storage)
    reach = run(reachable(repo._assets))
    assert reach.refs == {"branch main": ids[3], "branch zzz": ids[2]}
    assert reach.snapshots == {ids[0], ids[2], ids[3]}  # ids[1]: expired, no ref
    age(tmp_path)
    repo.garbage_collect(datetime.now(UTC))
    assert (tmp_path / "snapshots" / ids[2]).exists()
    assert (tmp_path / "transactions" / ids[2]).exists()
    snap = run(repo._assets.get_snapshot(ids[2], expired_ok=True))
    for manifest in snap.nodes["a"].manifest_ids():
        assert (tmp_path / "manifests" / manifest).exists()
