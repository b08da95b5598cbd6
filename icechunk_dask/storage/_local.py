"""Local-filesystem storage: atomic writes, create-only refs, one durability barrier."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from icechunk_dask._exceptions import InvalidInputError, NotFoundError, StorageError
from icechunk_dask.storage._base import ObjectInfo, Storage

__all__ = ["LocalFileSystemStorage", "local_filesystem_storage"]

_TMP = ".tmp-"
T = TypeVar("T")


def _libc_function(name: str) -> Any:
    """A function of the C library already loaded in this process, or ``None``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc included
    except (OSError, TypeError):  # pragma: no cover - platforms without dlopen(NULL)
        return None
    return getattr(libc, name, None)


_SYNCFS = _libc_function("syncfs")
_SYNC_FILE_RANGE = _libc_function("sync_file_range")
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _SYNC_FILE_RANGE.restype = ctypes.c_int
_SYNC_FILE_RANGE_WRITE = 2  # start writeback, do not wait


def _syncfs(path: Path) -> None:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``), else ``os.sync``."""
    if _SYNCFS is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


#: Objects at least this large start their writeback as soon as they are written, so that
#: the commit's durability barrier finds little left to flush (the disk works while the job
#: computes instead of after it).
_EARLY_WRITEBACK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFileSystemStorage(Storage):
    """Objects as files under a root directory.

    Writes go to a temporary file that is then renamed into place (``put``) or
    hard-linked (``put_if_absent``: exactly one concurrent creator wins), so a
    reader never sees a partial object. Create-only writes are fsynced with
    their directory; :meth:`durability_barrier` flushes the filesystem once
    before a commit publishes its ref. Safe for concurrent committers on one
    host.

    Parameters
    ----------
    path
        The repository directory; created on first write.
    durable
        Flush to disk before a commit is published (default). ``False`` skips
        every fsync: commits stay atomic if a *process* dies, but not if the
        machine loses power. For scratch data and tests.
    """

    max_name_bytes = 255

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        root = Path(path).expanduser().absolute()
        if root.exists() and not root.is_dir():
            raise InvalidInputError(
                f"the repository path {str(root)!r} is a file, not a directory; "
                "give the path of a directory (it is created if missing)"
            )
        self.root = root
        self.durable = durable

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def __repr__(self) -> str:
        return f"LocalFileSystemStorage({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFileSystemStorage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self.root), self.durable))

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidInputError(f"invalid storage key {key!r}")
        return self.root / key

    # -- synchronous implementations, run in worker threads -----------------

    def _get_sync(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        try:
            # one pread into the result (no buffered file object, no seek)
            fd = os.open(path, os.O_RDONLY)
            try:
                if length is None:
                    length = max(0, os.fstat(fd).st_size - start)
                data = os.pread(fd, length, start)
                if len(data) < length:  # short read (signals, huge ranges): finish it
                    parts, got = [data], len(data)
                    while got < length and (more := os.pread(fd, length - got, start + got)):
                        parts.append(more)
                        got += len(more)
                    data = b"".join(parts)
                return data
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None
        except IsADirectoryError:
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None
        except OSError as e:
            raise StorageError(f"cannot read {key!r} in {self.url}: {e}") from e

    def _write_tmp(self, path: Path, data: bytes, fsync: bool) -> Path:
        tmp = path.with_name(f"{_TMP}{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if fsync:
                os.fsync(fd)
            elif self.durable and _SYNC_FILE_RANGE and len(data) >= _EARLY_WRITEBACK:
                # best effort: a failure only means the barrier flushes more
                _SYNC_FILE_RANGE(fd, 0, len(data), _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)
        return tmp

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data, fsync=False)
            os.replace(tmp, path)
        except OSError as e:
            raise StorageError(f"cannot write {key!r} in {self.url}: {e}") from e

    def _put_if_absent_sync(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_tmp(path, data, fsync=self.durable)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if self.durable:
                _fsync_dir(path.parent)
            return True
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise StorageError(f"cannot create {key!r} in {self.url}: {e}") from e

    def _list_sync(self, prefix: str) -> list[str]:
        head, _, _ = prefix.rpartition("/")
        base = self.root / head if head else self.root
        if not base.is_dir():
            return []
        out: list[str] = []
        rel0 = f"{head}/" if head else ""
        for dirpath, _dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, base)
            rel = rel0 if rel_dir == "." else f"{rel0}{rel_dir.replace(os.sep, '/')}/"
            for name in filenames:
                if name.startswith(_TMP):
                    continue
                key = rel + name
                if key.startswith(prefix):
                    out.append(key)
        return out

    def _list_info_sync(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for key in self._list_sync(prefix):
            try:
                st = os.stat(self.root / key)
            except FileNotFoundError:  # deleted while listing
                continue
            out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        return out

    def _delete_sync(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))

    # -- the async protocol ---------------------------------------------------

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get_sync, key)

    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        return await asyncio.to_thread(self._get_sync, key, start, length)

    async def get_range_then(
        self, key: str, start: int, length: int | None, then: Callable[[bytes], T]
    ) -> T:
        return await asyncio.to_thread(lambda: then(self._get_sync(key, start, length)))

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, key, data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        return await asyncio.to_thread(self._put_if_absent_sync, key, data)

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list_sync, prefix)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._list_info_sync, prefix):
            yield info

    async def delete(self, keys: Iterable[str]) -> None:
        await asyncio.to_thread(self._delete_sync, list(keys))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def durability_barrier(self) -> None:
        if self.durable and self.root.is_dir():
            await asyncio.to_thread(_syncfs, self.root)


def _rebuild(path: str, durable: bool) -> LocalFileSystemStorage:
    return LocalFileSystemStorage(path, durable=durable)


def local_filesystem_storage(
    path: str | os.PathLike[str], *, durable: bool = True
) -> LocalFileSystemStorage:
    """Storage in a local directory (the default backend).

    Parameters
    ----------
    path
        Directory of the repository; created if missing.
    durable
        Flush to disk before each commit is published (default ``True``).
        ``False`` keeps commits atomic against process crashes but not
        against power loss; use it for scratch data and tests.

    Returns
    -------
    LocalFileSystemStorage
        Storage safe for concurrent committers on one host.

    Raises
    ------
    InvalidInputError
        If ``path`` exists and is not a directory.
    """
    return LocalFileSystemStorage(path, durable=durable)
