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


# -- format 2 (zlib bodies): ``tests/data/format2-repo``, see ``make_format2_repo.py`` ---------

DATA2 = Path(__file__).parent / "data" / "format2-repo"
SERIES = np.array([[s, s + 0.5, s + 0.25] for s in range(4)])


@pytest.fixture
def repo2(tmp_path: Path) -> Repository:
    shutil.copytree(DATA2, tmp_path / "repo")
    return Repository.open(local_filesystem_storage(tmp_path / "repo"))


def _versions(root: Path) -> dict[str, set[int]]:
    """The envelope format version of every object, by folder."""
    out: dict[str, set[int]] = {}
    for f in root.rglob("*"):
        data = f.read_bytes() if f.is_file() else b""
        if data[:4] == b"ICDK":
            out.setdefault(f.relative_to(root).parts[0], set()).add(data[4])
    return out


def test_format2_repository_reads_as_written(repo2: Repository) -> None:
    assert repo2._assets.config.format_version == 2
    assert max(max(v) for v in _versions(Path(repo2.storage.root)).values()) == 2
    main = repo2.readonly_session("main").store
    np.testing.assert_array_equal(zarr.open_array(main, path="grid")[:], SECOND)
    np.testing.assert_array_equal(zarr.open_array(main, path="series")[:], SERIES)
    assert zarr.open_array(main, path="sub/tiny")[:].tolist() == [1, 2, 3]
    assert "gone" not in zarr.open_group(main, mode="r")
    assert zarr.open_group(main, mode="r").attrs["title"] == "format 2 fixture"
    for first in (repo2.readonly_session(tag="v1").store, repo2.readonly_session("dev").store):
        np.testing.assert_array_equal(zarr.open_array(first, path="grid")[:], FIRST)
        assert zarr.open_array(first, path="series").shape == (0, 3)
        assert zarr.open_array(first, path="gone")[:].tolist() == [1, 2, 3, 4]
    assert [s.message for s in repo2.ancestry(branch="main")] == [
        "last",
        *(f"append {i}" for i in (3, 2, 1, 0)),
        "first",
        "Repository initialized",
    ]
    assert repo2.list_tags() == {"v1"} and repo2.list_branches() == {"main", "dev"}
    assert len(_alist(main, "grid/c/")) == 11  # 12 chunks, one deleted (fill value)


def test_commits_on_a_format2_repository_write_format3_objects(repo2: Repository) -> None:
    root = Path(repo2.storage.root)
    session = repo2.writable_session("main")
    arr = zarr.open_array(session.store, path="series")
    arr.resize((5, 3))
    arr[4] = [9, 9, 9]
    zarr.open_array(session.store, path="grid")[2:4, 0:2] = 7
    session.commit("format 3")
    versions = _versions(root)
    assert versions["snapshots"] == {2, 3} and versions["manifests"] == {2, 3}
    fresh = Repository.open(local_filesystem_storage(root))
    main = fresh.readonly_session("main").store
    expected = SECOND.copy()
    expected[2:4, 0:2] = 7
    np.testing.assert_array_equal(zarr.open_array(main, path="grid")[:], expected)
    np.testing.assert_array_equal(
        zarr.open_array(main, path="series")[:], np.vstack([SERIES, [[9, 9, 9]]])
    )
    # the older layers of the appended box are still the format-2 ones, stacked under the new
    np.testing.assert_array_equal(
        zarr.open_array(fresh.readonly_session(tag="v1").store, path="grid")[:], FIRST
    )
    assert fresh.verify().ok
