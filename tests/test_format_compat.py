"""A repository written in format version 1 stays readable and writable.

``tests/data/format1-repo`` was written by the format-1 code (hash-sharded
manifests, refs that do not name their keys); see ``make_format1_repo.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import Repository, local_filesystem_storage
from icechunk_dask._sync import run

DATA = Path(__file__).parent / "data" / "format1-repo"
FIRST = np.arange(48, dtype="i4").reshape(6, 8)
SECOND = FIRST.copy()
SECOND[0:2, 0:2] = -1
SECOND[4:6, 6:8] = 100


@pytest.fixture
def old_repo(tmp_path: Path) -> Repository:
    shutil.copytree(DATA, tmp_path / "repo")
    return Repository.open(local_filesystem_storage(tmp_path / "repo"))


def test_format1_repository_reads_as_written(old_repo: Repository) -> None:
    assert old_repo._assets.config.format_version == 1
    main = old_repo.readonly_session("main").store
    np.testing.assert_array_equal(zarr.open_array(main, path="grid")[:], SECOND)
    assert zarr.open_array(main, path="sub/tiny")[:].tolist() == [1, 2, 3]
    assert zarr.open_group(main, mode="r").attrs["title"] == "format 1 fixture"
    tagged = old_repo.readonly_session(tag="v1").store
    np.testing.assert_array_equal(zarr.open_array(tagged, path="grid")[:], FIRST)
    dev = old_repo.readonly_session("dev").store
    np.testing.assert_array_equal(zarr.open_array(dev, path="grid")[:], FIRST)
    assert [s.message for s in old_repo.ancestry(branch="main")] == [
        "second",
        "first",
        "Repository initialized",
    ]
    assert old_repo.list_branches() == {"main", "dev"}
    assert old_repo.list_tags() == {"v1"}
    listed = _alist(main, "grid/c/")
    assert len(listed) == 11  # 12 chunks, one deleted (fill value)


async def _agen(store: zarr.abc.store.Store, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


def _alist(store: zarr.abc.store.Store, prefix: str) -> list[str]:
    return run(_agen(store, prefix))


def test_commits_on_a_format1_repository_rewrite_touched_nodes_into_boxes(
    old_repo: Repository,
) -> None:
    session = old_repo.writable_session("main")
    arr = zarr.open_array(session.store, path="grid")
    arr[2:4, 0:2] = 7
    new = session.commit("third, format 2")
    expected = SECOND.copy()
    expected[2:4, 0:2] = 7
    fresh = Repository.open(old_repo.storage)
    np.testing.assert_array_equal(
        zarr.open_array(fresh.readonly_session("main").store, path="grid")[:], expected
    )
    snap = run(fresh._assets.get_snapshot(new))
    assert not snap.nodes["grid"].legacy and snap.nodes["grid"].split is not None
    assert snap.nodes["sub/tiny"].legacy  # untouched: still the format-1 shards, reused
    assert zarr.open_array(fresh.readonly_session("main").store, path="sub/tiny")[:].tolist() == [
        1,
        2,
        3,
    ]
    # history below the new commit is still the old one
    np.testing.assert_array_equal(
        zarr.open_array(fresh.readonly_session(tag="v1").store, path="grid")[:], FIRST
    )
