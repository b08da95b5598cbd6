"""The local storage's blocking file operations, run in worker threads.

Atomic writes (a temporary file renamed or hard-linked into place), ``pread``
reads, listings, ``unlinkat`` deletions on threads of their own, and the
durability flush (``syncfs``). Every ``OSError`` becomes the library's typed
error naming the path and what to do (``_local_errors.os_error``); a write that
fails removes its temporary file, whatever the failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from icechunk_dask._exceptions import IcechunkDaskError, InvalidInputError, NotFoundError
from icechunk_dask.storage._local_errors import (
    NAME_MAX,
    TMP_PREFIX,
    long_component,
    name_too_long,
    os_error,
)

__all__ = ["DELETE_PART", "LocalFiles", "delete_pool"]

_TMP = TMP_PREFIX
#: Keys per thread of a deletion, and threads deleting at most.
DELETE_PART, _DELETE_THREADS = 128, 8
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


def delete_pool() -> ThreadPoolExecutor:
    """The deletion threads of this process (a forked child starts its own)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_DELETE_THREADS, thread_name_prefix="icechunk_dask-delete")
        return _POOL


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


class LocalFiles:
    """The objects of one repository folder, as blocking calls.

    The synchronous half of ``LocalFileSystemStorage``, which runs these in
    worker threads and documents what they raise.

    Parameters
    ----------
    root : pathlib.Path
        The absolute path of the repository folder.
    durable : bool
        Whether create-only writes are fsynced and ``barrier`` flushes.
    """

    __slots__ = ("durable", "root", "url")

    max_name_bytes = NAME_MAX

    def __init__(self, root: Path, durable: bool) -> None:
        self.root = root
        self.durable = durable
        self.url = f"file://{root}"

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

    def get(self, key: str, start: int = 0, length: int | None = None) -> bytes:
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

    def put(self, key: str, data: bytes) -> None:
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

    def put_if_absent(self, key: str, data: bytes) -> bool:
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

    def list_keys(self, prefix: str) -> list[str]:
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

    def delete(self, keys: Iterable[str]) -> None:
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

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if not self._can_exist(key):
            return False
        try:
            return stat.S_ISREG(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:
            raise self._error(e, "look up", key) from e

    def barrier(self) -> None:
        try:
            if not stat.S_ISDIR(os.stat(self.root).st_mode):
                return  # pragma: no cover - a file where the repository was
            _syncfs(self.root)
        except FileNotFoundError:
            return  # nothing written yet: nothing to flush
        except OSError as e:
            raise os_error(e, f"flush {self.url} to disk", self.root) from e
