"""Local-filesystem storage: atomic writes, create-only refs, one durability barrier.

The blocking file operations live in ``_local_files`` and run in worker
threads; this module is the async protocol and its documentation.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from icechunk_dask._exceptions import InvalidInputError
from icechunk_dask.storage._base import ObjectInfo, ObjectPage, Storage
from icechunk_dask.storage._local_errors import NAME_MAX, os_error
from icechunk_dask.storage._local_files import DELETE_PART, LocalFiles, delete_pool
from icechunk_dask.storage._local_walk import walk_pages

__all__ = ["LocalFileSystemStorage", "local_filesystem_storage"]

T = TypeVar("T")


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
        self._files = LocalFiles(root, durable)

    @property
    def root(self) -> Path:
        """The absolute path of the repository directory."""
        return self._files.root

    @property
    def durable(self) -> bool:
        """Whether commits are flushed to disk."""
        return self._files.durable

    @property
    def url(self) -> str:
        """``file://`` and the absolute path of the repository directory."""
        return self._files.url

    def __repr__(self) -> str:
        return f"LocalFileSystemStorage({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalFileSystemStorage) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (str(self.root), self.durable))

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
        return await asyncio.to_thread(self._files.get, key)

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
        return await asyncio.to_thread(self._files.get, key, start, length)

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
        return await asyncio.to_thread(lambda: then(self._files.get(key, start, length)))

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
        await asyncio.to_thread(self._files.put, key, data)

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
        return await asyncio.to_thread(self._files.put_if_absent, key, data)

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
        return await asyncio.to_thread(self._files.list_keys, prefix)

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
        pool = delete_pool()
        parts = [todo[i : i + DELETE_PART] for i in range(0, len(todo), DELETE_PART)]
        await asyncio.gather(*(loop.run_in_executor(pool, self._files.delete, p) for p in parts))

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
        return await asyncio.to_thread(self._files.exists, key)

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
            await asyncio.to_thread(self._files.barrier)


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
