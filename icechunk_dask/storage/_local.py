"""Local-filesystem storage: atomic writes, create-only refs, one durability barrier.

Every ``OSError`` from the filesystem leaves this module as the library's typed
error naming the path and what to do (``_os_error``); a write that fails
removes its temporary file, whatever the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import stat
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from icechunk_dask._exceptions import IcechunkDaskError, InvalidInputError, NotFoundError
from icechunk_dask.storage._base import ObjectInfo, ObjectPage, Storage
from icechunk_dask.storage._local_errors import (
    NAME_MAX,
    TMP_PREFIX,
    long_component,
    name_too_long,
    os_error,
)
from icechunk_dask.storage._local_walk import walk_pages

__all__ = ["LocalFileSystemStorage", "local_filesystem_storage"]

_TMP = TMP_PREFIX
#: Keys per thread of a deletion, and threads deleting at most.
_DELETE_PART, _DELETE_THREADS = 128, 8
#: Deletions unlink relative to their folder's descriptor (listings: ``_local_walk``).
_UNLINK_AT = os.unlink in os.supports_dir_fd
#: A descriptor that only names a folder (unlinking needs no read permission on it).
_FOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork() -> None:
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _delete_pool() -> ThreadPoolExecutor:
    """The deletion threads of this process (a forked child starts its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_DELETE_THREADS, thread_name_prefix="icechunk_dask-delete")
        return _POOL


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
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``), else ``os.sync``.

    Raises
    ------
    OSError
        If ``syncfs`` reports an error: since Linux 5.8 that includes a failed
        writeback (``EIO``, ``ENOSPC``) of any file on the filesystem, which means
        data written earlier may not be on disk.
    """
    if _SYNCFS is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
            code = ctypes.get_errno()
        finally:
            os.close(fd)
        if code != errno.ENOSYS:
            raise OSError(code, os.strerror(code), str(path))
    os.sync()  # no syncfs: flush everything (reports no errors)


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


def _remove(path: Path) -> None:
    """Remove a temporary file, ignoring every error (it may never have been created)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _check_key(key: str) -> None:
    """Refuse a key that is empty, absolute or leaves the repository folder."""
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise InvalidInputError(f"invalid storage key {key!r}")


def _raise(e: OSError) -> None:
    """``os.walk``'s error hook: a folder that cannot be listed fails the listing."""
    if not isinstance(e, FileNotFoundError):  # a folder removed while walking: nothing in it
        raise e


class LocalFileSystemStorage(Storage):
    """Objects as files under a root directory.

    Writes go to a temporary file that is then renamed into place (``put``) or
    hard-linked (``put_if_absent``: exactly one concurrent creator wins), so a
    reader never sees a partial object; a write that fails (a full disk, a
    missing permission, ...) removes its temporary file. Create-only writes are
    fsynced with their directory; ``durability_barrier`` flushes the
    filesystem once before a commit publishes its ref. Safe for concurrent
    committers on one host.

    Every operating-system error becomes a :class:`StorageError` naming the path
    and what to do; a key with a path component longer than ``max_name_bytes``
    (255 bytes of UTF-8, the limit of Linux filesystems) cannot be written
    (:class:`InvalidInputError`, before anything touches the disk) and is never
    found by reads.

    Create with :func:`local_filesystem_storage`.

    Parameters
    ----------
    path : str or os.PathLike
        The repository directory; created on first write (``~`` is expanded).
    durable : bool, optional
        Flush to disk before a commit is published (default ``True``).
        ``False`` skips every fsync: commits stay atomic if a *process* dies,
        but not if the machine loses power. For scratch data and tests.

    Attributes
    ----------
    root : pathlib.Path
        The absolute path of the repository directory.
    durable : bool
        Whether commits are flushed to disk.

    Raises
    ------
    InvalidInputError
        If ``path`` is a file, lies below a file, or has a name too long.
    StorageError
        If ``path`` cannot be examined (for example a folder above it is not
        readable by this user).
    """

    max_name_bytes = NAME_MAX

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        root = Path(path).expanduser().absolute()
        try:
            is_file = not stat.S_ISDIR(os.stat(root).st_mode)
        except FileNotFoundError:
            is_file = False
        except NotADirectoryError:
            raise InvalidInputError(
                f"the repository path {str(root)!r} lies below a file, not a directory; "
                "give the path of a directory (it is created if missing)"
            ) from None
        except OSError as e:
            raise os_error(e, f"use {str(root)!r} as a repository folder", root) from e
        if is_file:
            raise InvalidInputError(
                f"the repository path {str(root)!r} is a file, not a directory; "
                "give the path of a directory (it is created if missing)"
            )
        self.root = root
        self.durable = durable

    @property
    def url(self) -> str:
        """``file://`` and the absolute path of the repository directory."""
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
        _check_key(key)
        return self.root / key

    def _can_exist(self, key: str) -> bool:
        """Whether a file could have ``key``'s name (no component is too long)."""
        return long_component(key, self.max_name_bytes) is None

    def _write_path(self, action: str, key: str) -> Path:
        """The path to write ``key`` at; refuses names the filesystem cannot hold."""
        path = self._path(key)
        if not self._can_exist(key):
            raise name_too_long(action, key, self.url, self.max_name_bytes)
        return path

    def _error(self, e: OSError, action: str, key: str) -> IcechunkDaskError:
        return os_error(e, f"{action} {key!r} in {self.url}", self.root / key)

    # -- synchronous implementations, run in worker threads -----------------

    def _get_sync(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        if not self._can_exist(key):
            raise NotFoundError(f"no object at {key!r} in {self.url}")
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
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None
        except OSError as e:
            raise self._error(e, "read", key) from e

    def _write_tmp(self, path: Path, data: bytes, fsync: bool) -> Path:
        """Write ``data`` to a new temporary file beside ``path``; on any error, remove it."""
        tmp = path.with_name(f"{_TMP}{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # a file where a folder of the key should be
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)
                ) from None
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
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
        except BaseException:
            _remove(tmp)
            raise
        return tmp

    def _put_sync(self, key: str, data: bytes) -> None:
        path = self._write_path("write", key)
        try:
            tmp = self._write_tmp(path, data, fsync=False)
            try:
                os.replace(tmp, path)
            except BaseException:
                _remove(tmp)
                raise
        except OSError as e:
            raise self._error(e, "write", key) from e

    def _put_if_absent_sync(self, key: str, data: bytes) -> bool:
        path = self._write_path("create", key)
        try:
            tmp = self._write_tmp(path, data, fsync=self.durable)
            try:
                os.link(tmp, path)
            except FileExistsError:
                if os.path.isdir(path):  # not an object: a folder in the way
                    code = errno.EISDIR
                    raise IsADirectoryError(code, os.strerror(code), str(path)) from None
                return False
            finally:
                _remove(tmp)
            if self.durable:
                _fsync_dir(path.parent)
        except OSError as e:
            raise self._error(e, "create", key) from e
        return True

    def _list_sync(self, prefix: str) -> list[str]:
        head, _, _ = prefix.rpartition("/")
        if head and not self._can_exist(head):
            return []
        base = self.root / head if head else self.root
        try:
            if not stat.S_ISDIR(os.stat(base).st_mode):
                return []
        except (FileNotFoundError, NotADirectoryError):
            return []  # nothing was ever written under the prefix
        except OSError as e:
            raise os_error(e, f"list {prefix!r} in {self.url}", base) from e
        out: list[str] = []
        rel0 = f"{head}/" if head else ""
        try:
            for dirpath, _dirnames, filenames in os.walk(base, onerror=_raise):
                rel_dir = os.path.relpath(dirpath, base)
                rel = rel0 if rel_dir == "." else f"{rel0}{rel_dir.replace(os.sep, '/')}/"
                for name in filenames:
                    if name.startswith(_TMP):
                        continue
                    key = rel + name
                    if key.startswith(prefix):
                        out.append(key)
        except OSError as e:  # a folder that cannot be read: the listing would be incomplete
            raise os_error(e, f"list {prefix!r} in {self.url}", base) from e
        return out

    def _delete_sync(self, keys: Iterable[str]) -> None:
        folders: dict[str, int | None] = {}  # parent folder -> its descriptor (None: absent)
        try:
            for key in keys:
                _check_key(key)
                if not self._can_exist(key):
                    continue  # no object can be there: deleting it is a no-op
                if not _UNLINK_AT:  # pragma: no cover - platforms without unlinkat
                    self._unlink(key, None, self.root / key)
                    continue
                parent, _, name = key.rpartition("/")
                if parent not in folders:
                    folders[parent] = self._open_folder(parent, key)
                if folders[parent] is not None:  # no folder: nothing to delete
                    self._unlink(key, folders[parent], name)
        finally:
            for fd in folders.values():
                if fd is not None:
                    os.close(fd)

    def _open_folder(self, folder: str, key: str) -> int | None:
        """A descriptor of ``folder`` to unlink in (``None``: there is no such folder)."""
        try:
            return os.open(self.root / folder, _FOLDER_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error(e, "delete", key) from e

    def _unlink(self, key: str, folder: int | None, name: str | Path) -> None:
        """Delete ``key``: ``name`` in the ``folder`` descriptor, or a whole path."""
        try:
            os.unlink(name, dir_fd=folder)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return  # no object there: deleting it is a no-op
        except OSError as e:
            raise self._error(e, "delete", key) from e

    def _exists_sync(self, key: str) -> bool:
        path = self._path(key)
        if not self._can_exist(key):
            return False
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise self._error(e, "look up", key) from e

    def _barrier_sync(self) -> None:
        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                return  # pragma: no cover - a file where the repository was
            _syncfs(self.root)
        except FileNotFoundError:
            return  # nothing written yet: nothing to flush
        except OSError as e:
            raise os_error(e, f"flush {self.url} to disk", self.root) from e

    # -- the async protocol ---------------------------------------------------

    async def get(self, key: str) -> bytes:
        """Return the whole object (one ``pread`` of the file).

        Parameters
        ----------
        key : str
            The object's key.

        Returns
        -------
        bytes
            Its bytes.

        Raises
        ------
        NotFoundError
            If there is no file at ``key`` (also for names longer than the
            filesystem allows, which no file can have).
        InvalidInputError
            If ``key`` is empty, absolute or contains a ``..`` component.
        StorageError
            If the file cannot be read (permission, I/O error); the message names
            the path and what to do.
        """
        return await asyncio.to_thread(self._get_sync, key)

    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        """Return ``length`` bytes from ``start`` (to the end when ``length`` is None).

        Parameters
        ----------
        key : str
            The object's key.
        start : int
            The first byte.
        length : int or None
            How many bytes; ``None`` reads to the end.

        Returns
        -------
        bytes
            The bytes (fewer past the end of the file, as slicing).

        Raises
        ------
        NotFoundError
            If there is no file at ``key`` (also for names longer than the
            filesystem allows, which no file can have).
        InvalidInputError
            If ``key`` is empty, absolute or contains a ``..`` component.
        StorageError
            If the file cannot be read (permission, I/O error); the message names
            the path and what to do.
        """
        return await asyncio.to_thread(self._get_sync, key, start, length)

    async def get_range_then(
        self, key: str, start: int, length: int | None, then: Callable[[bytes], T]
    ) -> T:
        """Read a range and apply ``then`` to it, both in a worker thread.

        Parameters
        ----------
        key : str
            The object's key.
        start : int
            The first byte.
        length : int or None
            How many bytes; ``None`` reads to the end.
        then : callable
            Called with the bytes read; what it raises propagates.

        Returns
        -------
        T
            What ``then`` returns.

        Raises
        ------
        NotFoundError
            If there is no file at ``key`` (also for names longer than the
            filesystem allows, which no file can have).
        InvalidInputError
            If ``key`` is empty, absolute or contains a ``..`` component.
        StorageError
            If the file cannot be read (permission, I/O error); the message names
            the path and what to do.
        """
        return await asyncio.to_thread(lambda: then(self._get_sync(key, start, length)))

    async def put(self, key: str, data: bytes) -> None:
        """Write an object atomically: a temporary file renamed into place.

        Folders are created as needed. The file is not fsynced here;
        :meth:`durability_barrier` flushes before a commit is published.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes.

        Raises
        ------
        InvalidInputError
            If ``key`` is empty, absolute, contains a ``..`` component, or has a
            component longer than ``max_name_bytes`` (before anything is written).
        StorageError
            If the file cannot be written (full disk, permission, a file where a
            folder of the key should be); its temporary file is removed.
        """
        await asyncio.to_thread(self._put_sync, key, data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists: a temporary file hard-linked into place.

        Exactly one of several concurrent creators (threads or processes on this
        host) wins. With ``durable``, the file and its folder are fsynced first.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes.

        Returns
        -------
        bool
            ``True`` if this call created the object, ``False`` if one existed.

        Raises
        ------
        InvalidInputError
            If ``key`` is empty, absolute, contains a ``..`` component, or has a
            component longer than ``max_name_bytes`` (before anything is written).
        StorageError
            If the file cannot be written (full disk, permission, a file where a
            folder of the key should be); its temporary file is removed.
        """
        return await asyncio.to_thread(self._put_if_absent_sync, key, data)

    async def list(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix`` (temporary files left out).

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all keys).

        Returns
        -------
        list of str
            The keys, in no particular order.

        Raises
        ------
        StorageError
            If a folder under the prefix cannot be read (the listing would be
            incomplete).
        """
        return await asyncio.to_thread(self._list_sync, prefix)

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, with size and time.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectInfo
            Key, size and modification time (UTC) of one file.

        Raises
        ------
        StorageError
            If a folder or file cannot be examined.
        """
        async for page in self._pages(prefix, temporary=False):
            for info in self._infos(page):
                yield info

    async def list_temporary(self) -> AsyncIterator[ObjectInfo]:
        """Yield the ``.tmp-*`` files that interrupted writes left behind.

        Yields
        ------
        ObjectInfo
            Key, size and modification time (UTC) of one temporary file.

        Raises
        ------
        StorageError
            If a folder or file cannot be examined.
        """
        async for page in self._pages("", temporary=True):
            for info in self._infos(page):
                yield info

    async def _pages(self, prefix: str, temporary: bool) -> AsyncIterator[ObjectPage]:
        """Drive a blocking walk in worker threads, a page at a time (bounded memory)."""
        walk = walk_pages(
            self.root, prefix, temporary=temporary, where=self.url, name_max=self.max_name_bytes
        )
        while page := await asyncio.to_thread(next, walk, None):
            yield page

    async def list_object_pages(self, prefix: str) -> AsyncIterator[ObjectPage]:
        """Yield every object whose key starts with ``prefix``, a page of columns at a time.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectPage
            Keys, sizes and modification times of up to 4,096 files.

        Raises
        ------
        StorageError
            If a folder or file cannot be examined.
        """
        async for page in self._pages(prefix, temporary=False):
            yield page

    async def list_temporary_pages(self) -> AsyncIterator[ObjectPage]:
        """Yield the ``.tmp-*`` files interrupted writes left, a page of columns at a time.

        Yields
        ------
        ObjectPage
            Keys, sizes and modification times of up to 4,096 temporary files.

        Raises
        ------
        StorageError
            If a folder or file cannot be examined.
        """
        async for page in self._pages("", temporary=True):
            yield page

    @staticmethod
    def _infos(page: ObjectPage) -> Iterator[ObjectInfo]:
        for key, size, mtime in zip(
            page.keys, page.sizes.tolist(), page.mtimes.tolist(), strict=True
        ):
            yield ObjectInfo(key, size, datetime.fromtimestamp(mtime, UTC))

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing keys are ignored.

        Parameters
        ----------
        keys : iterable of str
            The keys to delete.

        Raises
        ------
        InvalidInputError
            If ``key`` is empty, absolute or contains a ``..`` component.
        StorageError
            If a file cannot be deleted (the ones before it are deleted).
        """
        # unlink is slow on some filesystems (tens of µs) and releases the GIL: a large
        # deletion (garbage collection) runs in parallel on threads of its own
        todo = list(keys)
        loop = asyncio.get_running_loop()
        pool = _delete_pool()
        parts = [todo[i : i + _DELETE_PART] for i in range(0, len(todo), _DELETE_PART)]
        await asyncio.gather(*(loop.run_in_executor(pool, self._delete_sync, p) for p in parts))

    async def exists(self, key: str) -> bool:
        """Return whether a file exists at ``key``.

        Parameters
        ----------
        key : str
            The object's key.

        Returns
        -------
        bool
            ``True`` if there is a regular file.

        Raises
        ------
        InvalidInputError
            If ``key`` is empty, absolute or contains a ``..`` component.
        StorageError
            If the path cannot be examined.
        """
        return await asyncio.to_thread(self._exists_sync, key)

    async def durability_barrier(self) -> None:
        """Flush the filesystem (Linux ``syncfs``, else ``os.sync``) if ``durable``.

        Raises
        ------
        StorageError
            If the flush reports an error (since Linux 5.8 that includes a failed
            writeback of any file on the filesystem); the commit is then not
            published.
        """
        if self.durable:
            await asyncio.to_thread(self._barrier_sync)


def _rebuild(path: str, durable: bool) -> LocalFileSystemStorage:
    return LocalFileSystemStorage(path, durable=durable)


def local_filesystem_storage(
    path: str | os.PathLike[str], *, durable: bool = True
) -> LocalFileSystemStorage:
    """Storage in a local directory (the default backend).

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the repository; created on first write if missing.
    durable : bool, optional
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
        If ``path`` exists and is not a directory, lies below a file, or has a
        name longer than the filesystem allows.
    StorageError
        If ``path`` cannot be examined (for example a folder above it is not
        readable by this user); the message names the path and what to do.
    """
    return LocalFileSystemStorage(path, durable=durable)
