"""Local-filesystem storage (``storage/_local.py``, ``storage/_local_files.py``) at its edges.

``test_storage.py`` runs the storage contract and ``test_local_storage_errors.py`` the
filesystem's failures; these pin what mutation testing found unchecked (issue 13): keys
refused before any path is built, what reads, listings, deletions and lookups do with
folders, files in the way and names no file can have, the files a write leaves (mode, no
temporary), when early writeback starts, and the storage's identity.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from icechunk_dask._exceptions import InvalidInputError, NotFoundError, StorageError
from icechunk_dask.storage import (
    LocalFileSystemStorage,
    _local,
    _local_files,
    local_filesystem_storage,
)
from icechunk_dask.storage._base import ObjectInfo, ObjectPage
from icechunk_dask.storage._local_walk import walk_pages
from tests.fs_faults import SmallTmpfs, without_dac_override

LONG = "x" * 256  # one byte more than a file name can have


@pytest.fixture
def storage(tmp_path: Path) -> LocalFileSystemStorage:
    return local_filesystem_storage(tmp_path / "repo", durable=False)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("key", ["", "/a", "/", "..", "a/..", "../a", "a/../b"])
async def test_keys_that_leave_the_root_are_refused(
    storage: LocalFileSystemStorage, key: str
) -> None:
    for call in (
        storage.get(key),
        storage.get_range(key, 0, 1),
        storage.put(key, b"x"),
        storage.put_if_absent(key, b"x"),
        storage.exists(key),
        storage.delete([key]),
    ):
        with pytest.raises(InvalidInputError) as info:
            await call
        assert str(info.value) == f"invalid storage key {key!r}"
    assert not storage.root.exists()


async def test_dots_inside_a_name_are_a_key_like_any_other(
    storage: LocalFileSystemStorage,
) -> None:
    for key in ("a..b", "...", "a/..b/c", ".hidden"):
        await storage.put(key, key.encode())
        assert await storage.get(key) == key.encode()


async def test_reads_of_folders_files_in_the_way_and_impossible_names_find_nothing(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a/b", b"x")
    for key in ("a", "a/b/c", f"a/{LONG}", f"{LONG}/b"):
        with pytest.raises(NotFoundError) as info:
            await storage.get(key)
        assert str(info.value) == f"no object at {key!r} in {storage.url}"
        with pytest.raises(NotFoundError):
            await storage.get_range(key, 0, 1)
        assert await storage.exists(key) is False
    assert await storage.exists("a/b") is True


async def test_a_range_from_past_the_end_to_the_end_is_empty(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("k", b"abcde")
    assert await storage.get_range("k", 7, None) == b""
    assert await storage.get_range("k", 5, None) == b""
    assert await storage.get_range("k", 4, None) == b"e"
    assert await storage.get_range_then("k", 1, 3, bytes.upper) == b"BCD"


async def test_written_objects_are_plain_files_readable_by_all(
    storage: LocalFileSystemStorage, umask_022: None
) -> None:
    await storage.put("a/b/c", b"data")
    assert await storage.put_if_absent("refs/r", b"ref")
    # and in folders that exist already (the first attempt succeeds)
    await storage.put("a/b/d", b"data")
    assert await storage.put_if_absent("refs/s", b"ref")
    for key in ("a/b/c", "refs/r", "a/b/d", "refs/s"):
        mode = os.stat(storage.root / key).st_mode
        assert oct(mode & 0o7777) == oct(0o644)
    assert sorted(p.name for p in storage.root.rglob("*") if p.is_file()) == ["c", "d", "r", "s"]


async def test_temporary_files_are_not_objects(storage: LocalFileSystemStorage) -> None:
    await storage.put("a/b", b"x")
    tmp = storage.root / "a" / f"{_local_files._TMP}left-behind"
    tmp.write_bytes(b"partial")
    assert await storage.list("") == ["a/b"]
    assert await storage.list("a/") == ["a/b"]
    assert [i.key async for i in storage.list_objects("")] == ["a/b"]
    found = [i async for i in storage.list_temporary()]
    assert [(i.key, i.size) for i in found] == [(f"a/{tmp.name}", 7)]


async def test_listings_under_a_file_or_an_impossible_name_are_empty(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a", b"file")
    await storage.put("b/c", b"x")
    for prefix in ("a/", "a/b", f"{LONG}/", f"b/{LONG}/c"):
        assert await storage.list(prefix) == []
        assert [i async for i in storage.list_objects(prefix)] == []
    assert await storage.list("b/c") == ["b/c"]
    assert await storage.list("b/c/") == []


async def test_listed_objects_carry_their_file_size_and_time(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("d/one", b"1")
    await storage.put("d/e/three", b"333")
    await storage.put("empty", b"")
    when = datetime(2020, 5, 17, 12, 30, 15, tzinfo=UTC)
    os.utime(storage.root / "d" / "e" / "three", (when.timestamp(), when.timestamp()))
    infos = {i.key: i async for i in storage.list_objects("")}
    assert {k: i.size for k, i in infos.items()} == {"d/one": 1, "d/e/three": 3, "empty": 0}
    assert infos["d/e/three"].last_modified == when
    st = os.stat(storage.root / "d" / "one")
    assert infos["d/one"].last_modified == datetime.fromtimestamp(st.st_mtime, UTC)
    assert [i.key async for i in storage.list_objects("d/e/")] == ["d/e/three"]
    assert sorted([i.key async for i in storage.list_objects("d/")]) == ["d/e/three", "d/one"]


async def test_a_deletion_goes_on_past_keys_with_nothing_to_delete(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("file", b"x")
    await storage.put("dir/obj", b"x")
    keys = [f"k/{i:04d}" for i in range(300)]  # more than one part of a parallel deletion
    for k in keys:
        await storage.put(k, b"x")
    # no file could have the name; nothing there; a file in the way; a folder
    await storage.delete([LONG, "missing", "file/below", "dir", *keys, "file"])
    assert await storage.list("") == ["dir/obj"]


async def test_a_barrier_before_anything_was_written_does_nothing(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "never-written")
    await storage.durability_barrier()
    assert not storage.root.exists()


class _WritebackRecorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, int]] = []
        real = _local_files._SYNC_FILE_RANGE

        def record(fd: int, offset: int, length: int, flags: int) -> int:
            self.calls.append((offset, length, flags))
            assert os.fstat(fd).st_size == length  # the temporary file just written
            return int(real(fd, offset, length, flags)) if real is not None else 0

        monkeypatch.setattr(_local_files, "_SYNC_FILE_RANGE", record)


@pytest.mark.parametrize("durable", [True, False])
async def test_large_objects_start_their_writeback_when_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    recorder = _WritebackRecorder(monkeypatch)
    storage = local_filesystem_storage(tmp_path / "repo", durable=durable)
    size = _local_files._EARLY_WRITEBACK
    assert size == 1 << 20
    await storage.put("small", bytes(size - 1))
    await storage.put("large", bytes(size))
    await storage.put("larger", bytes(size + 1))
    assert await storage.put_if_absent("created", bytes(size))  # fsynced instead (if durable)
    expected = [(0, size, 2), (0, size + 1, 2)] if durable else []
    assert recorder.calls == expected
    assert await storage.get("larger") == bytes(size + 1)


def test_the_c_functions_are_found_in_the_process() -> None:
    assert _local_files._libc_function("no_such_function_in_libc") is None
    syncfs = _local_files._libc_function("syncfs")
    assert syncfs is not None and syncfs is not _local_files._libc_function("sync_file_range")
    ctypes.set_errno(0)
    assert syncfs(-1) == -1 and ctypes.get_errno() == 9  # EBADF: errno is kept


def test_identity_url_repr_and_pickling(tmp_path: Path) -> None:
    a = local_filesystem_storage(tmp_path / "repo", durable=False)
    same = local_filesystem_storage(str(tmp_path / "repo"))
    other = local_filesystem_storage(tmp_path / "other")
    assert a == same and hash(a) == hash(same)
    assert a != other and a != str(tmp_path / "repo")
    assert a.url == f"file://{tmp_path / 'repo'}"
    assert repr(a) == f"LocalFileSystemStorage({str(tmp_path / 'repo')!r})"
    for durable in (True, False):
        clone = pickle.loads(pickle.dumps(local_filesystem_storage(tmp_path, durable=durable)))
        assert clone.root == tmp_path and clone.durable is durable
    # durable unless told otherwise, through the function and the class
    assert local_filesystem_storage(tmp_path).durable is True
    assert LocalFileSystemStorage(tmp_path).durable is True


def test_relative_and_home_paths_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_filesystem_storage("rel/repo").root == tmp_path / "rel" / "repo"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert local_filesystem_storage("~/repo").root == tmp_path / "home" / "repo"


def _scandir_order(folder: Path) -> list[str]:
    return [entry.name for entry in os.scandir(folder)]


def _walk(storage: LocalFileSystemStorage, prefix: str, page: int = 1) -> Iterator[str]:
    """The keys of the objects under ``prefix``, walked ``page`` files at a time."""
    for found in walk_pages(
        storage.root,
        prefix,
        temporary=False,
        where=storage.url,
        name_max=storage.max_name_bytes,
        page=page,
    ):
        yield from found.keys


def test_a_folder_removed_while_listing_does_not_end_the_listing(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    for name in ("a", "b", "c"):
        (storage.root / name).mkdir(parents=True)
        (storage.root / name / "obj").write_bytes(b"x")
    # the walk takes folders last in, first out
    first, removed, last = reversed(_scandir_order(storage.root))
    walk = _walk(storage, "")
    assert next(walk) == f"{first}/obj"
    shutil.rmtree(storage.root / removed)
    assert list(walk) == [f"{last}/obj"]


def test_a_file_removed_while_listing_does_not_end_the_listing(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    storage.root.mkdir()
    for name in ("f1", "f2", "f3"):
        (storage.root / name).write_bytes(b"x")
    first, removed, last = _scandir_order(storage.root)
    walk = _walk(storage, "")
    assert next(walk) == first
    (storage.root / removed).unlink()
    assert list(walk) == [last]


async def test_a_folder_that_cannot_be_listed_fails_the_listing(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a/b", b"x")
    (storage.root / "loop").symlink_to(storage.root / "loop")  # ELOOP, even for root
    with pytest.raises(StorageError) as info:
        [i async for i in storage.list_objects("loop/")]
    assert str(info.value).startswith(
        f"cannot list 'loop/' in {storage.url}: Too many levels of symbolic links (ELOOP) at "
        f"{str(storage.root / 'loop')!r}; "
    )


def test_a_forked_child_deletes_with_threads_of_its_own(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    asyncio.run(storage.put("parent", b"x"))
    asyncio.run(storage.delete(["parent"]))  # the parent's deletion threads exist now
    asyncio.run(storage.put("child", b"x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            asyncio.run(storage.delete(["child"]))
            os._exit(0)
        finally:
            os._exit(1)
    for _ in range(1200):  # a child on the parent's dead threads never finishes: 60 s
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's deletion never finished")
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(storage.list("")) == []


async def test_a_deletion_the_filesystem_refuses_fails_with_the_key(tmp_path: Path) -> None:
    with SmallTmpfs(tmp_path / "mnt", 1 << 20, inodes=64) as fs:
        storage = local_filesystem_storage(fs.path / "repo", durable=False)
        await storage.put("a/b", b"x")
        fs.remount("ro")
        with pytest.raises(StorageError) as info:
            await storage.delete(["a/b"])
        assert str(info.value).startswith(
            f"cannot delete 'a/b' in {storage.url}: Read-only file system (EROFS) at "
            f"{str(storage.root / 'a' / 'b')!r}; "
        )
        fs.remount("rw")
        assert await storage.get("a/b") == b"x"


async def test_a_symbolic_link_is_listed_as_itself_never_followed(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a/b", b"xyz")
    (storage.root / "a" / "up").symlink_to(storage.root)  # a loop, if it were followed
    infos = {i.key: i.size async for i in storage.list_objects("")}
    assert infos == {"a/b": 3, "a/up": os.lstat(storage.root / "a" / "up").st_size}


def test_storages_of_different_folders_hash_apart(tmp_path: Path) -> None:
    a = local_filesystem_storage(tmp_path / "a")
    b = local_filesystem_storage(tmp_path / "b")
    assert hash(a) != hash(b)
    assert hash(a) == hash(local_filesystem_storage(tmp_path / "a", durable=False))


def test_the_walk_error_hook_passes_over_removed_folders_only() -> None:
    assert _local_files._raise(FileNotFoundError(2, "gone")) is None
    for error in (PermissionError(13, "no"), NotADirectoryError(20, "file"), OSError(5, "io")):
        with pytest.raises(type(error)) as info:
            _local_files._raise(error)
        assert info.value is error


def test_a_forked_child_forgets_the_deletion_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    parent_pool = _local_files.delete_pool()
    monkeypatch.setattr(_local_files, "_POOL", parent_pool)  # restored after the test
    monkeypatch.setattr(_local_files, "_POOL_LOCK", _local_files._POOL_LOCK)
    old_lock = _local_files._POOL_LOCK
    _local_files._forget_pool_after_fork()  # what runs in a forked child
    assert _local_files._POOL is None
    assert _local_files._POOL_LOCK is not old_lock
    assert type(_local_files._POOL_LOCK) is type(threading.Lock())
    own = _local_files.delete_pool()
    try:
        assert own is not parent_pool and _local_files.delete_pool() is own
    finally:
        own.shutdown()


_LIST_IN_CHILD = """
import asyncio, json, sys
from icechunk_dask.storage import local_filesystem_storage
storage = local_filesystem_storage(sys.argv[1], durable=False)
async def main():
    out = {}
    for prefix in ("a/c/", "a/c/3", "a/"):
        try:
            out[prefix] = sorted([i.key async for i in storage.list_objects(prefix)])
        except Exception as e:
            out[prefix] = type(e).__name__
        try:
            out["list " + prefix] = sorted(await storage.list(prefix))
        except Exception as e:
            out["list " + prefix] = type(e).__name__
    return out
print(json.dumps(asyncio.run(main())))
"""


def test_a_listing_reads_only_the_folders_under_its_prefix(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    for key in ("a/1", "a/b/2", "a/c/3"):
        asyncio.run(storage.put(key, b"x"))
    (storage.root / "a" / "b").chmod(0)  # unreadable, but not under a/c/
    try:
        child = subprocess.run(
            [*without_dac_override(), sys.executable, "-c", _LIST_IN_CHILD, str(storage.root)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        (storage.root / "a" / "b").chmod(0o755)
    assert json.loads(child.stdout) == {
        "a/c/": ["a/c/3"],
        "list a/c/": ["a/c/3"],
        "a/c/3": ["a/c/3"],
        "list a/c/3": ["a/c/3"],
        "a/": "StorageError",  # the folder is unreadable in the child
        "list a/": "StorageError",
    }


async def test_listings_are_read_a_page_at_a_time(
    storage: LocalFileSystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumed = 0

    def pages(*args: object, **kwargs: object) -> Iterator[ObjectPage]:
        nonlocal consumed
        for i in range(3):
            consumed += 1
            yield ObjectPage.of([ObjectInfo(str(i), i, datetime(2020, 1, 1, tzinfo=UTC))])

    monkeypatch.setattr(_local, "walk_pages", pages)
    stream = storage.list_objects("")
    first = await anext(stream)
    assert first == ObjectInfo("0", 0, datetime(2020, 1, 1, tzinfo=UTC))
    assert consumed == 1
    assert [info.size async for info in stream] == [1, 2]
    assert consumed == 3


def test_a_walk_yields_pages_of_the_size_asked(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    (storage.root / "d").mkdir(parents=True)
    for i in range(5):
        (storage.root / "d" / f"o{i}").write_bytes(b"x" * i)
    pages = list(
        walk_pages(storage.root, "", temporary=False, where=storage.url, name_max=255, page=2)
    )
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(k for p in pages for k in p.keys) == [f"d/o{i}" for i in range(5)]
    sizes = {k: int(s) for p in pages for k, s in zip(p.keys, p.sizes, strict=True)}
    assert sizes == {f"d/o{i}": i for i in range(5)}
    # by default, a page holds up to _local_walk.PAGE files
    whole = list(walk_pages(storage.root, "", temporary=False, where=storage.url, name_max=255))
    assert [len(p) for p in whole] == [5]


def test_a_walk_opens_only_the_folder_its_prefix_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    for folder in ("a/b", "a/c", "d"):
        (storage.root / folder).mkdir(parents=True)
        (storage.root / folder / "o").write_bytes(b"x")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> int:
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    assert list(_walk(storage, "a/b/")) == ["a/b/o"]
    assert opened == [str(storage.root / "a" / "b")]


def test_a_named_pipe_where_a_folder_should_be_is_listed_as_nothing(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    storage.root.mkdir()
    fifo = storage.root / "p"
    os.mkfifo(fifo)
    found: list[list[str]] = []
    walker = threading.Thread(
        target=lambda: found.append(list(_walk(storage, "p/"))),
        daemon=True,
    )
    walker.start()
    walker.join(30)  # opening the pipe as a folder would wait for a writer
    if walker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let it go
        walker.join()
        pytest.fail("listing under a named pipe opened the pipe")
    assert found == [[]]
    assert list(_walk(storage, "")) == ["p"]


def test_a_folder_opened_but_not_scanned_fails_the_listing_and_is_closed(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    (storage.root / "a").mkdir(parents=True)
    (storage.root / "a" / "obj").write_bytes(b"x")
    # a descriptor limit that lets the folder be opened, but not the scan's copy of it
    first, second = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY)
    os.close(first)
    os.close(second)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (second, hard))
    try:
        with pytest.raises(StorageError) as info:
            list(_walk(storage, "a/"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert str(info.value).startswith(
        f"cannot list 'a/' in {storage.url}: Too many open files (EMFILE) at "
        f"{str(storage.root / 'a')!r}"
    )
    probe = os.open(os.devnull, os.O_RDONLY)  # the folder's descriptor was closed
    os.close(probe)
    assert probe == first


_EXAMINE_IN_CHILD = """
import asyncio, sys
from icechunk_dask.storage import local_filesystem_storage
storage = local_filesystem_storage(sys.argv[1], durable=False)
async def main():
    return [i.key async for i in storage.list_objects("a/")]
try:
    print(asyncio.run(main()))
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_file_that_cannot_be_examined_fails_the_listing_with_its_key(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    asyncio.run(storage.put("a/obj", b"x"))
    (storage.root / "a").chmod(0o444)  # names readable, files not reachable: stat fails
    try:
        child = subprocess.run(
            [*without_dac_override(), sys.executable, "-c", _EXAMINE_IN_CHILD, str(storage.root)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    finally:
        (storage.root / "a").chmod(0o755)
    assert child.stdout.startswith(
        f"StorageError cannot examine 'a/obj' in {storage.url}: Permission denied (EACCES) at "
        f"{str(storage.root / 'a' / 'obj')!r}; "
    )


class _SyncfsRecorder:
    """The C ``syncfs`` wrapped: which folder each call flushes, then the real call or a failure."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int = 0) -> None:
        self.flushed: list[tuple[int, int]] = []
        real = _local_files._SYNCFS

        def record(fd: int) -> int:
            st = os.fstat(fd)
            self.flushed.append((st.st_dev, st.st_ino))
            if fail:
                ctypes.set_errno(fail)
                return -1
            return int(real(fd)) if real is not None else 0

        monkeypatch.setattr(_local_files, "_SYNCFS", record)


async def test_a_durable_barrier_flushes_the_repository_filesystem_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _SyncfsRecorder(monkeypatch)
    storage = local_filesystem_storage(tmp_path / "repo")
    await storage.put("a/b", b"x")
    await storage.durability_barrier()
    st = os.stat(storage.root)
    assert recorder.flushed == [(st.st_dev, st.st_ino)]
    await local_filesystem_storage(tmp_path / "repo", durable=False).durability_barrier()
    assert len(recorder.flushed) == 1


async def test_a_failed_flush_is_reported_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _SyncfsRecorder(monkeypatch, fail=errno.EIO)
    storage = local_filesystem_storage(tmp_path / "repo")
    await storage.put("a/b", b"x")
    with pytest.raises(StorageError) as info:
        await storage.durability_barrier()
    assert str(info.value).startswith(
        f"cannot flush {storage.url} to disk: Input/output error (EIO) at "
        f"{str(storage.root)!r}; the device or filesystem reported an I/O error"
    )


async def test_deletions_run_on_the_storage_threads(storage: LocalFileSystemStorage) -> None:
    await storage.put("k", b"x")
    await storage.delete(["k"])
    pool = _local_files.delete_pool()
    assert pool is _local_files.delete_pool()
    assert pool._max_workers == _local_files._DELETE_THREADS == 8
    names = [t.name for t in threading.enumerate()]
    assert any(n.startswith("icechunk_dask-delete_") for n in names), names


async def test_temporary_files_anywhere_in_a_folder_hide_no_object(
    storage: LocalFileSystemStorage,
) -> None:
    folder = storage.root / "a"
    folder.mkdir(parents=True)
    keys = []
    for i in range(5):  # temporaries created before, between and after the objects
        (folder / f"{_local_files._TMP}{i}").write_bytes(b"partial")
        await storage.put(f"a/o{i}", b"x")
        keys.append(f"a/o{i}")
    (folder / f"{_local_files._TMP}last").write_bytes(b"partial")
    assert sorted(await storage.list("")) == keys
    assert sorted(await storage.list("a/")) == keys
    assert sorted([i.key async for i in storage.list_objects("a/")]) == keys
    assert len([i async for i in storage.list_temporary()]) == 6


async def test_every_call_through_a_symbolic_link_loop_names_the_call_key_and_path(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a", b"x")
    (storage.root / "loop").symlink_to(storage.root / "loop")  # ELOOP, even for root
    advice = "too many levels of symbolic links: check the links along the repository path"
    at_key = f"{str(storage.root / 'loop' / 'x')!r}; {advice}"
    calls = [
        ("read", storage.get("loop/x"), at_key),
        ("read", storage.get_range("loop/x", 0, 1), at_key),
        ("look up", storage.exists("loop/x"), at_key),
        ("write", storage.put("loop/x", b"x"), at_key),
        ("create", storage.put_if_absent("loop/x", b"x"), at_key),
        ("delete", storage.delete(["loop/x"]), f"{str(storage.root / 'loop')!r}; {advice}"),
    ]
    for action, call, where in calls:
        with pytest.raises(StorageError) as info:
            await call
        assert str(info.value) == (
            f"cannot {action} 'loop/x' in {storage.url}: Too many levels of symbolic links "
            f"(ELOOP) at {where}"
        )
    assert sorted(await storage.list("")) == ["a", "loop"]  # nothing left behind


async def test_only_created_objects_are_fsynced_with_their_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(_local_files.os, "fsync", record)
    durable = local_filesystem_storage(tmp_path / "repo")
    await durable.put("a/b", b"x")
    assert synced == []
    assert await durable.put_if_absent("a/c", b"x")
    assert len(synced) == 2
    assert synced[0].startswith(str(durable.root / "a" / _local_files._TMP))
    assert synced[1] == str(durable.root / "a")
    assert not await durable.put_if_absent("a/c", b"y")
    assert len(synced) == 3  # the loser's temporary file, never its folder
    scratch = local_filesystem_storage(tmp_path / "repo", durable=False)
    await scratch.put("a/d", b"x")
    assert await scratch.put_if_absent("a/e", b"x")
    assert len(synced) == 3


def test_a_repository_path_that_is_or_lies_below_a_file_is_refused_in_full(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InvalidInputError) as info:
        local_filesystem_storage(tmp_path / "file")
    assert str(info.value) == (
        f"the repository path {str(tmp_path / 'file')!r} is a file, not a directory; "
        "give the path of a directory (it is created if missing)"
    )
    with pytest.raises(InvalidInputError) as info:
        local_filesystem_storage(tmp_path / "file" / "repo")
    assert str(info.value) == (
        f"the repository path {str(tmp_path / 'file' / 'repo')!r} lies below a file, not a "
        "directory; give the path of a directory (it is created if missing)"
    )
    assert local_filesystem_storage(tmp_path).root == tmp_path  # an existing folder is fine


async def test_a_folder_where_the_object_belongs_is_reported_in_full(
    storage: LocalFileSystemStorage,
) -> None:
    await storage.put("a/b", b"x")
    for action, op in (("write", storage.put), ("create", storage.put_if_absent)):
        with pytest.raises(StorageError) as info:
            await op("a", b"y")
        assert str(info.value) == (
            f"cannot {action} 'a' in {storage.url}: Is a directory (EISDIR) at "
            f"{str(storage.root / 'a')!r}; a folder stands where the object belongs: something "
            "other than icechunk_dask changed the repository folder; restore it"
        )


async def test_listings_leave_no_descriptor_open(storage: LocalFileSystemStorage) -> None:
    for key in ("a/b/c", "a/d", "e"):
        await storage.put(key, b"x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert sorted([i.key async for i in storage.list_objects("")]) == ["a/b/c", "a/d", "e"]
        assert sorted(await storage.list("a/")) == ["a/b/c", "a/d"]
    assert len(os.listdir("/proc/self/fd")) == before


async def test_deleting_a_key_whose_folder_is_missing_touches_nothing_else(
    storage: LocalFileSystemStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No folder, no object: nothing is unlinked, least of all a file of that name elsewhere."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "victim").write_bytes(b"keep me")
    monkeypatch.chdir(elsewhere)
    await storage.delete(["no/such/folder/victim", "nofolder/victim"])
    assert (elsewhere / "victim").read_bytes() == b"keep me"


async def test_temporary_pages_hold_the_temporary_files_only(tmp_path: Path) -> None:
    storage = local_filesystem_storage(tmp_path / "repo", durable=False)
    await storage.put("chunks/a", b"abc")
    (storage.root / "chunks" / f"{_local_files._TMP}x").write_bytes(b"partial")
    (storage.root / f"{_local_files._TMP}y").write_bytes(b"")
    pages = [page async for page in storage.list_temporary_pages()]
    found = {k: int(s) for page in pages for k, s in zip(page.keys, page.sizes, strict=True)}
    assert found == {f"chunks/{_local_files._TMP}x": 7, f"{_local_files._TMP}y": 0}
    assert sorted(found) == sorted([info.key async for info in storage.list_temporary()])
    objects = [page async for page in storage.list_object_pages("")]
    assert [page.keys for page in objects] == [["chunks/a"]]
