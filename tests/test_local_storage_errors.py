"""Local storage when the operating system says no: cases L01-L10 of docs/errors.md.

Every failure is real (see tests/fs_faults.py): a tmpfs that is really full or
read-only, a process that really lacks a permission or has a file-size limit,
names the filesystem really refuses. Each test checks the typed error and its
message (the path, the ``errno`` name, what to do), that no temporary file is
left, and that retrying after the cause is gone works.
"""

from __future__ import annotations

import ctypes
import errno
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from icechunk_dask import (
    InvalidInputError,
    NotFoundError,
    Repository,
    StorageError,
    local_filesystem_storage,
)
from icechunk_dask.storage import _local_files
from tests.fs_children import new_array, rows
from tests.fs_faults import (
    SmallTmpfs,
    all_files,
    fill_inodes,
    fill_space,
    run_child,
    temp_files,
    without_dac_override,
)

PERMISSION = "permission denied: give the user running this process read and write access"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[SmallTmpfs]:
    """An 8 MiB tmpfs with 256 inodes, private to the test."""
    with SmallTmpfs(tmp_path / "mnt", 8 << 20, inodes=256) as fs:
        yield fs


def _check_storage_error(e: StorageError, code: str, path: Path, advice: str) -> None:
    assert e.kind == "storage"
    assert f"({code}) at '{path}" in str(e), str(e)
    assert advice in str(e), str(e)


# -- L01-L03, L07: processes without a permission or with a file-size limit ---------------


def test_l01_unreadable_parent_folder(tmp_path: Path) -> None:
    seen = json.loads(run_child("unreadable_parent", str(tmp_path), prefix=without_dac_override()))
    repo = tmp_path / "locked" / "repo"
    assert seen.pop("rows after the permission is back") == [1.0, 0.0, 0.0, 0.0]
    assert len(seen) == 13  # the storage functions and every entry point
    for name, outcome in seen.items():
        assert outcome["error"] == "StorageError", (name, outcome)
        assert outcome["kind"] == "storage"
        assert f"(EACCES) at '{repo}" in outcome["message"], (name, outcome)
        assert "search (x) access to every folder above it" in outcome["message"]
    assert seen["local_filesystem_storage"]["message"].startswith(
        f"cannot use '{repo}' as a repository folder"
    )


def test_l02_folder_without_write_permission(tmp_path: Path) -> None:
    seen = json.loads(run_child("read_only_folder", str(tmp_path), prefix=without_dac_override()))
    write = seen["write"]
    assert write["error"] == "StorageError"
    assert f"(EACCES) at '{tmp_path / 'repo' / 'chunks'}/" in write["message"]
    assert PERMISSION in write["message"]
    assert seen["temp files"] == []
    assert seen["rows while locked"] == [1.0, 0.0, 0.0, 0.0]
    assert seen["rows after retry"] == [1.0, 2.0, 0.0, 0.0]


def test_l03_a_folder_that_cannot_be_read_fails_the_listing(tmp_path: Path) -> None:
    # os.walk skips what it cannot read: a listing of refs or chunks would silently shrink
    seen = json.loads(run_child("unlistable_folder", str(tmp_path), prefix=without_dac_override()))
    listing = seen["list"]
    assert listing["error"] == "StorageError"
    assert f"cannot list 'a/' in file://{tmp_path / 'store'}" in listing["message"]
    assert f"(EACCES) at '{tmp_path / 'store' / 'a' / 'b'}'" in listing["message"]
    assert seen["list c"] == {"error": None, "result": "['a/c/3']"}


def test_l07_file_size_limit(tmp_path: Path) -> None:
    seen = json.loads(run_child("file_size_limit", str(tmp_path)))
    for name in ("write", "write in a new session"):
        assert seen[name]["error"] == "StorageError", seen[name]
        assert "(EFBIG) at" in seen[name]["message"]
        assert "raise the limit or write smaller chunks" in seen[name]["message"]
    assert seen["temp files"] == seen["temp files after the second"] == []
    assert seen["big"] == [4.0]
    assert seen["rows"] == [1.0, 0.0, 0.0, 0.0]


# -- L04-L06: a small filesystem, really full or read-only ----------------------------------


def test_l04_full_disk_through_the_public_api(small_fs: SmallTmpfs) -> None:
    path = small_fs.path / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    new_array(repo)
    full = "the device is full (no space or no free inodes): free space, then retry"

    # a chunk write fails; after freeing space the same session retries
    session = repo.writable_session("main")
    array = zarr.open_array(session.store, path="a")
    filler = fill_space(small_fs.path)
    with pytest.raises(StorageError) as e:
        array[1] = 2.0
    _check_storage_error(e.value, "ENOSPC", path / "chunks", full)
    assert temp_files(small_fs.path) == []
    filler.unlink()
    array[1] = 2.0
    session.commit("row 1")

    # a write fails in one session; a new session retries
    session = repo.writable_session("main")
    filler = fill_space(small_fs.path)
    with pytest.raises(StorageError, match="ENOSPC"):
        zarr.open_array(session.store, path="a")[2] = 3.0
    assert temp_files(small_fs.path) == []
    filler.unlink()
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[2] = 3.0
    session.commit("row 2")

    # the commit itself fails (it stores the pack of small chunks and the manifests)
    session = repo.writable_session("main")
    small = zarr.create_array(
        session.store, name="small", shape=(65536,), chunks=(1024,), dtype="i8", compressors=None
    )
    small[:] = np.arange(65536)
    zarr.open_array(session.store, path="a")[3] = 4.0
    tip = repo.lookup_branch("main")
    filler = fill_space(small_fs.path)
    with pytest.raises(StorageError, match="ENOSPC"):
        session.commit("row 3")
    assert temp_files(small_fs.path) == []
    assert repo.lookup_branch("main") == tip
    filler.unlink()
    session.commit("row 3")

    fresh = Repository.open(local_filesystem_storage(path))
    assert rows(fresh) == [1.0, 2.0, 3.0, 4.0]
    read = zarr.open_array(fresh.readonly_session("main").store, path="small", mode="r")
    np.testing.assert_array_equal(read[:], np.arange(65536))
    assert [s.message for s in fresh.ancestry(branch="main")][:3] == ["row 3", "row 2", "row 1"]


@pytest.mark.parametrize("op", ["put", "put_if_absent"])
async def test_l04_full_disk_storage_writes(small_fs: SmallTmpfs, op: str) -> None:
    storage = local_filesystem_storage(small_fs.path / "repo")
    await storage.put("chunks/first", b"1")
    write = getattr(storage, op)
    data = bytes(range(256)) * 256
    filler = fill_space(small_fs.path)
    with pytest.raises(StorageError) as e:
        await write("chunks/x", data)
    _check_storage_error(e.value, "ENOSPC", storage.root / "chunks" / "x", "free space")
    assert temp_files(small_fs.path) == []
    assert not await storage.exists("chunks/x")
    filler.unlink()
    assert await write("chunks/x", data) in (None, True)
    assert await storage.get("chunks/x") == data


async def test_l05_failing_link_removes_the_temp_file(small_fs: SmallTmpfs) -> None:
    # tmpfs counts a hard link as an inode: with one inode free, the temporary file takes
    # it and the create-only link fails with ENOSPC, after the temporary file was written
    storage = local_filesystem_storage(small_fs.path / "repo")
    assert await storage.put_if_absent("refs/branch.main/0.json", b"0")
    fillers = fill_inodes(small_fs.path)
    fillers.pop().unlink()
    with pytest.raises(StorageError) as e:
        await storage.put_if_absent("refs/branch.main/1.json", b"1")
    _check_storage_error(e.value, "ENOSPC", storage.root / "refs", "free space")
    assert temp_files(small_fs.path) == []
    assert not await storage.exists("refs/branch.main/1.json")
    for filler in fillers[:4]:
        filler.unlink()
    assert await storage.put_if_absent("refs/branch.main/1.json", b"1")
    assert not await storage.put_if_absent("refs/branch.main/1.json", b"2")
    assert await storage.get("refs/branch.main/1.json") == b"1"


def test_l06_read_only_filesystem(small_fs: SmallTmpfs) -> None:
    path = small_fs.path / "repo"
    repo = Repository.create(local_filesystem_storage(path))
    new_array(repo)
    small_fs.remount("ro")
    reopened = Repository.open(local_filesystem_storage(path))
    assert rows(reopened) == [1.0, 0.0, 0.0, 0.0]  # reading works
    session = reopened.writable_session("main")
    with pytest.raises(StorageError) as e:
        zarr.open_array(session.store, path="a")[1] = 2.0
    _check_storage_error(e.value, "EROFS", path / "chunks", "the filesystem is mounted read-only")
    small_fs.remount("rw")
    zarr.open_array(session.store, path="a")[1] = 2.0
    session.commit("row 1")
    assert rows(reopened) == [1.0, 2.0, 0.0, 0.0]
    assert temp_files(small_fs.path) == []


# -- L08: names longer than the filesystem allows --------------------------------------------

FITS = ["n" * 255, "é" * 127 + "n"]  # 255 bytes of UTF-8
TOO_LONG = ["n" * 256, "é" * 128]  # 256 bytes


@pytest.mark.parametrize("name", FITS, ids=["ascii", "utf8"])
async def test_l08_names_of_255_bytes_work(tmp_path: Path, name: str) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    for key in (f"d/{name}", f"{name}/c"):
        assert await storage.put_if_absent(key, b"1")
        await storage.put(key, b"2")
        assert await storage.get(key) == b"2"
        assert await storage.exists(key)
        assert await storage.list(key.rpartition("/")[0] + "/") == [key]
        assert [i.key async for i in storage.list_objects(key)] == [key]
        await storage.delete([key])
        assert not await storage.exists(key)


@pytest.mark.parametrize("name", TOO_LONG, ids=["ascii", "utf8"])
async def test_l08_longer_names_are_refused_before_any_write(tmp_path: Path, name: str) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    await storage.put("d/x", b"x")
    before = all_files(storage.root)
    for key in (f"d/{name}", f"{name}/c", f"d/{name}/c"):
        for op, action in ((storage.put, "write"), (storage.put_if_absent, "create")):
            with pytest.raises(InvalidInputError) as e:
                await op(key, b"1")
            assert e.value.kind == "invalid-input"
            assert str(e.value).startswith(f"cannot {action} ")
            assert f" in {storage.url}: the name " in str(e.value)
            assert "256 bytes (UTF-8), and a local filesystem allows at most 255 bytes" in str(
                e.value
            )
            assert "use a shorter name (nothing was written)" in str(e.value)
        with pytest.raises(NotFoundError):  # no such object can exist
            await storage.get(key)
        assert not await storage.exists(key)
        assert await storage.list(key.rpartition("/")[0] + "/") == (
            [] if key != f"d/{name}" else ["d/x"]
        )
        await storage.delete([key])
    assert all_files(storage.root) == before


def test_l08_long_branch_and_tag_names(tmp_path: Path) -> None:
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    new_array(repo)
    tip = repo.lookup_branch("main")
    before = all_files(tmp_path / "repo")
    # refs/tag.<name>.json and refs/branch.<name>/: the file or folder name is longer
    for make, name in ((repo.create_tag, "t" * 248), (repo.create_branch, "b" * 249)):
        with pytest.raises(InvalidInputError, match=r"names of at most 2[34]8 bytes"):
            make(name, tip)
    assert all_files(tmp_path / "repo") == before
    with pytest.raises(NotFoundError, match="does not exist"):  # not "cannot read"
        repo.writable_session("b" * 250)
    with pytest.raises(NotFoundError, match="does not exist"):
        repo.readonly_session(tag="t" * 250)
    # the longest names that fit
    repo.create_branch("b" * 248, tip)
    session = repo.writable_session("b" * 248)
    zarr.open_array(session.store, path="a")[1] = 2.0
    session.commit("on a long branch")
    repo.create_tag("t" * 238, tip)
    repo.delete_tag("t" * 238)


# -- L09: something else in the way ------------------------------------------------------


async def test_l09_a_file_where_a_folder_belongs(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    await storage.put("a", b"file")
    for op in (storage.put_if_absent, storage.put):  # put_if_absent used to answer "exists"
        with pytest.raises(StorageError) as e:
            await op("a/b", b"x")
        _check_storage_error(e.value, "ENOTDIR", storage.root / "a", "a file stands where")
    with pytest.raises(NotFoundError):
        await storage.get("a/b")
    assert not await storage.exists("a/b")
    assert await storage.list("a/") == []
    await storage.delete(["a/b"])
    assert await storage.get("a") == b"file"
    # a dangling symbolic link where the folder belongs: the folder cannot be made
    (storage.root / "link").symlink_to(storage.root / "nowhere")
    for op in (storage.put_if_absent, storage.put):
        with pytest.raises(StorageError) as e:
            await op("link/b", b"x")
        _check_storage_error(e.value, "ENOTDIR", storage.root / "link", "a file stands where")
        assert str(e.value).startswith("cannot ")
        assert f"Not a directory (ENOTDIR) at {str(storage.root / 'link')!r}; " in str(e.value)
    assert not (storage.root / "nowhere").exists()
    assert temp_files(storage.root) == []


async def test_l09_a_folder_where_the_object_belongs(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo")
    await storage.put("a/b", b"x")
    for op in (storage.put, storage.put_if_absent):  # the rename or link fails
        with pytest.raises(StorageError) as e:
            await op("a", b"y")
        _check_storage_error(e.value, "EISDIR", storage.root / "a", "a folder stands where")
        assert temp_files(storage.root) == []
    with pytest.raises(NotFoundError):
        await storage.get("a")
    assert not await storage.exists("a")
    await storage.delete(["a"])
    assert await storage.get("a/b") == b"x"


def test_l09_repository_path_below_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="lies below a file, not a directory"):
        local_filesystem_storage(tmp_path / "f" / "repo")


# -- L10: a flush that fails ---------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_l10_a_failed_flush_fails_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # syncfs reports writeback errors of the whole filesystem (Linux >= 5.8); no real
    # device fails here, so the C function is replaced by one that fails as the kernel would
    def failing_syncfs(fd: int) -> int:
        ctypes.set_errno(code)
        return -1

    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    new_array(repo)
    tip = repo.lookup_branch("main")
    session = repo.writable_session("main")
    zarr.open_array(session.store, path="a")[1] = 2.0
    with monkeypatch.context() as m:
        m.setattr(_local_files, "_SYNCFS", failing_syncfs)
        with pytest.raises(StorageError) as e:
            session.commit("row 1")
    name = errno.errorcode[code]
    assert f"cannot flush file://{tmp_path / 'repo'} to disk" in str(e.value)
    assert f"({name}) at '{tmp_path / 'repo'}'" in str(e.value)
    assert repo.lookup_branch("main") == tip  # nothing published
    session.commit("row 1")
    assert rows(repo) == [1.0, 2.0, 0.0, 0.0]


def test_l10_without_syncfs_the_barrier_syncs_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing_syncfs(fd: int) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    synced: list[bool] = []
    monkeypatch.setattr(_local_files, "_SYNCFS", missing_syncfs)
    monkeypatch.setattr(_local_files.os, "sync", lambda: synced.append(True))
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    new_array(repo)
    assert synced  # creation and commit flushed through os.sync
    assert rows(repo) == [1.0, 0.0, 0.0, 0.0]


def test_l08_every_tag_that_can_be_created_can_be_deleted(tmp_path: Path) -> None:
    # Core: refs/tag.<name>.deleted.json (the tombstone) is 8 bytes longer than
    # refs/tag.<name>.json, so on local storage a tag of 239-247 bytes can be created and
    # then never deleted. Names must be refused up front where the tombstone cannot fit
    # (local limit for tags: 255 - len("tag.") - len(".deleted.json") = 238 bytes).
    repo = Repository.create(local_filesystem_storage(tmp_path / "repo"))
    new_array(repo)
    tip = repo.lookup_branch("main")
    for n in (238, 239, 243, 247):
        name = "t" * n
        try:
            repo.create_tag(name, tip)
        except InvalidInputError:
            continue  # refused up front: fine
        repo.delete_tag(name)
        with pytest.raises(NotFoundError):
            repo.readonly_session(tag=name)
