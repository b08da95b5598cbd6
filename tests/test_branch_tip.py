"""Finding a branch's tip: the entry a process saw last, read again with the next one.

Branch entries are create-only, so an entry that reads back byte for byte is
still in the log and the tip is it or past it (``_assets.AssetManager.branch_tip``).
Each test uses two asset managers of one repository, as two processes would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask._assets import AssetManager
from icechunk_dask._sync import run
from tests.helpers import CountingReads


def _commit(repo: Repository, value: int) -> str:
    s = repo.writable_session("main")
    zarr.open_array(s.store, path="a", mode="r+")[:] = value
    return s.commit(f"value {value}")


def _repo(path: Path) -> Repository:
    repo = Repository.create(local_filesystem_storage(path, durable=False))
    s = repo.writable_session("main")
    zarr.create_array(s.store, name="a", shape=(4,), chunks=(4,), dtype="i4", fill_value=0)
    s.commit("array")
    return repo


def _manager(repo: Repository, path: Path) -> tuple[AssetManager, CountingReads]:
    """An asset manager of its own (another process's view) over its own storage object."""
    storage = local_filesystem_storage(path, durable=False)
    return AssetManager(storage, repo._assets.config), CountingReads(storage)


def test_a_known_tip_costs_two_reads_and_no_hint(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    assets, counting = _manager(repo, tmp_path / "repo")
    seq, ref = run(assets.branch_tip("main"))  # first time: hint, entry, next
    assert ref is not None and ref.snapshot_id == repo.lookup_branch("main")
    assert any(k.endswith("hint.json") for k in counting.reads)
    counting.reads.clear()
    assert run(assets.branch_tip("main")) == (seq, ref)
    assert sorted(counting.reads) == [
        f"refs/branch.main/{seq:020d}.json",
        f"refs/branch.main/{seq + 1:020d}.json",
    ]


def test_commits_of_another_process_are_seen(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    assets, _ = _manager(repo, tmp_path / "repo")
    seq, _ref = run(assets.branch_tip("main"))
    landed = [_commit(repo, v) for v in (1, 2, 3)]  # through the other manager
    seq2, ref = run(assets.branch_tip("main"))
    assert (seq2, ref.snapshot_id if ref else None) == (seq + 3, landed[-1])


@pytest.mark.parametrize("commits", [0, 2], ids=["shorter log", "same seq, another entry"])
def test_an_entry_that_reads_back_different_is_not_trusted(tmp_path: Path, commits: int) -> None:
    # the repository deleted and created again at the same place, under a live handle: the
    # entry this process saw is gone or another, so the tip is found from scratch
    path = tmp_path / "repo"
    repo = _repo(path)
    _commit(repo, 1)
    _commit(repo, 2)
    assets, counting = _manager(repo, tmp_path / "repo")
    seq, _ = run(assets.branch_tip("main"))
    shutil.rmtree(path)
    again = _repo(path)
    for v in range(commits):
        _commit(again, v + 1)
    fresh = again.lookup_branch("main")
    counting.reads.clear()
    seq2, ref = run(assets.branch_tip("main"))
    assert ref is not None and ref.snapshot_id == fresh
    assert seq2 == seq - 2 + commits
    assert any(k.endswith("hint.json") for k in counting.reads)


def test_commits_through_one_handle_read_back_through_another(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    other = Repository.open(repo.storage)
    for v in range(1, 4):
        sid = _commit(repo if v % 2 else other, v)
        for handle in (repo, other):
            assert handle.lookup_branch("main") == sid
            back = zarr.open_array(handle.readonly_session("main").store, path="a")
            np.testing.assert_array_equal(back[:], np.full(4, v, dtype="i4"))
