"""Repository: creation, opening, branches, tags and history."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import zarr

from icechunk_dask import (
    CorruptObjectError,
    FormatVersionError,
    InvalidInputError,
    NotFoundError,
    Repository,
    in_memory_storage,
    local_filesystem_storage,
)
from icechunk_dask.format import FORMAT_VERSION, RepoConfig
from tests.helpers import make_array, new_repo


def commit_something(repo: Repository, branch: str = "main", name: str = "a") -> str:
    s = repo.writable_session(branch)
    make_array(s, name)
    return s.commit(f"write {name}")


def test_create_open_exists(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "r")
    assert not Repository.exists(storage)
    repo = Repository.create(storage)
    assert Repository.exists(storage)
    assert Repository.open(storage).repo_id == repo.repo_id
    assert Repository.open_or_create(storage).repo_id == repo.repo_id
    assert repo.list_branches() == {"main"}
    with pytest.raises(InvalidInputError, match="already exists"):
        Repository.create(storage)
    fresh = Repository.open_or_create(local_filesystem_storage(tmp_path / "new"))
    assert fresh.list_branches() == {"main"}


def test_open_missing_and_bad_locations(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no repository") as info:
        Repository.open(local_filesystem_storage(tmp_path / "missing"))
    assert isinstance(info.value, KeyError)
    f = tmp_path / "file"
    f.write_text("not a directory")
    with pytest.raises(InvalidInputError, match="is a file"):
        local_filesystem_storage(f)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="not empty"):
        Repository.create(local_filesystem_storage(other))
    assert sorted(p.name for p in other.iterdir()) == ["data.txt"]


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    cfg = repo._assets.config
    newer = RepoConfig(cfg.repo_id, FORMAT_VERSION + 1, cfg.created_at)
    (tmp_path / "r" / "config.json").write_bytes(newer.encode())
    with pytest.raises(FormatVersionError, match="upgrade"):
        Repository.open(local_filesystem_storage(tmp_path / "r"))


def test_branches(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    first = repo.lookup_branch("main")
    second = commit_something(repo)
    repo.create_branch("dev", first)
    assert repo.list_branches() == {"main", "dev"}
    assert repo.lookup_branch("dev") == first
    with pytest.raises(InvalidInputError, match="already exists"):
        repo.create_branch("dev", second)
    third = commit_something(repo, "dev", "b")
    assert [i.id for i in repo.ancestry(branch="dev")][:2] == [third, first]
    repo.reset_branch("dev", second)
    assert repo.lookup_branch("dev") == second
    repo.delete_branch("dev")
    assert repo.list_branches() == {"main"}
    with pytest.raises(NotFoundError, match="dev"):
        repo.lookup_branch("dev")
    with pytest.raises(NotFoundError):
        repo.writable_session("dev")
    repo.create_branch("dev", third)  # a deleted branch can be created again
    assert repo.lookup_branch("dev") == third
    with pytest.raises(InvalidInputError, match="cannot be deleted"):
        repo.delete_branch("main")


@pytest.mark.parametrize("name", ["", "a/b", "..", "-x", "x..y", "x y", "é", "a" * 300, 3])
def test_invalid_names(tmp_path: Path, name: object) -> None:
    repo = new_repo(tmp_path / "r")
    sid = repo.lookup_branch("main")
    with pytest.raises(InvalidInputError, match="invalid branch name"):
        repo.create_branch(name, sid)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="invalid tag name"):
        repo.create_tag(name, sid)  # type: ignore[arg-type]
    assert repo.list_branches() == {"main"} and repo.list_tags() == set()


def test_tags(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    sid = commit_something(repo)
    repo.create_tag("v1", sid)
    assert repo.list_tags() == {"v1"}
    assert repo.lookup_tag("v1") == sid
    with pytest.raises(InvalidInputError, match="already exists"):
        repo.create_tag("v1", sid)
    ro = repo.readonly_session(tag="v1")
    assert ro.snapshot_id == sid and ro.read_only
    repo.delete_tag("v1")
    assert repo.list_tags() == set()
    with pytest.raises(NotFoundError):
        repo.lookup_tag("v1")
    with pytest.raises(InvalidInputError, match="cannot be reused"):
        repo.create_tag("v1", sid)


def test_unknown_refs_raise_not_found(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    for call in (
        lambda: repo.lookup_branch("nope"),
        lambda: repo.lookup_tag("nope"),
        lambda: repo.readonly_session(snapshot_id="0" * 20),
        lambda: repo.readonly_session(snapshot_id="not-an-id"),
        lambda: repo.create_branch("x", "0" * 20),
        lambda: list(repo.ancestry(tag="nope")),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert isinstance(info.value, KeyError)
    with pytest.raises(InvalidInputError, match="exactly one"):
        repo.readonly_session(branch="main", tag="x")


def test_ancestry_is_newest_first(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    ids = [commit_something(repo, name=f"a{i}") for i in range(3)]
    infos = list(repo.ancestry(branch="main"))
    assert [i.id for i in infos[:3]] == ids[::-1]
    assert infos[-1].parent_id is None and infos[-1].message == "Repository initialized"
    assert all(a.parent_id == b.id for a, b in itertools.pairwise(infos))
    assert infos[0].written_at >= infos[1].written_at


def test_corrupt_snapshot_is_reported_with_its_key(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    sid = commit_something(repo)
    path = tmp_path / "r" / "snapshots" / sid
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = Repository.open(local_filesystem_storage(tmp_path / "r"))
    with pytest.raises(CorruptObjectError, match=f"snapshots/{sid}") as info:
        fresh.readonly_session(branch="main")
    assert info.value.key == f"snapshots/{sid}"


def test_corrupt_chunk_is_never_returned(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    s = repo.writable_session("main")
    a = make_array(s)
    a[:] = 1.0
    s.commit("data")
    chunk = next((tmp_path / "r" / "chunks").iterdir())
    raw = bytearray(chunk.read_bytes())
    raw[5] ^= 0x01
    chunk.write_bytes(bytes(raw))
    fresh = Repository.open(local_filesystem_storage(tmp_path / "r"))
    with pytest.raises(CorruptObjectError, match="checksum") as info:
        zarr.open_array(fresh.readonly_session(branch="main").store, path="a")[:]
    assert info.value.key == f"chunks/{chunk.name}"
    chunk.write_bytes(bytes(raw[:10]))
    with pytest.raises(CorruptObjectError, match="truncated"):
        zarr.open_array(fresh.readonly_session(branch="main").store, path="a")[:]


def test_repository_pickles(tmp_path: Path) -> None:
    import pickle

    repo = new_repo(tmp_path / "r")
    copy = pickle.loads(pickle.dumps(repo))
    assert copy.repo_id == repo.repo_id and copy.list_branches() == {"main"}
    mem = Repository.create(in_memory_storage())
    assert pickle.loads(pickle.dumps(mem)).repo_id == mem.repo_id


@pytest.mark.s3
def test_repository_on_s3(s3_bucket: dict[str, object]) -> None:
    import pickle

    import numpy as np

    from icechunk_dask.storage import s3_storage

    storage = s3_storage(prefix="repo", **s3_bucket)  # type: ignore[arg-type]
    repo = Repository.create(storage)
    s = repo.writable_session("main")
    a = make_array(s)
    a[:] = 4.0
    with s.allow_pickling():
        copy = pickle.loads(pickle.dumps(s))  # as a worker on another machine would get it
    zarr.open_array(copy.store, path="a")[:4, :4] = 5.0
    s.merge(pickle.loads(pickle.dumps(copy)))
    sid = s.commit("on s3")
    other = Repository.open(s3_storage(prefix="repo", **s3_bucket))  # type: ignore[arg-type]
    assert other.lookup_branch("main") == sid
    out = zarr.open_array(other.readonly_session(branch="main").store, path="a")[:]
    expected = np.full((8, 8), 4.0)
    expected[:4, :4] = 5.0
    np.testing.assert_array_equal(out, expected)
    s1, s2 = other.writable_session("main"), other.writable_session("main")
    make_array(s1, "b")
    make_array(s2, "c")
    s1.commit("b")
    s2.commit("c (rebased)")
    assert [i.message for i in other.ancestry(branch="main")][:3] == ["c (rebased)", "b", "on s3"]
