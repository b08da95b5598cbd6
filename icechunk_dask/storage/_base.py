"""The byte-storage contract that every backend implements.

Keys are ``/``-separated strings relative to the repository root. Values are
``bytes``. A commit needs nothing more than these operations; nothing here
knows about Zarr.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np

from icechunk_dask._exceptions import NotFoundError

__all__ = ["ObjectInfo", "ObjectPage", "Storage"]

T = TypeVar("T")

#: Objects per page of a default paged listing.
_PAGE = 4096


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object as a listing reports it.

    What :meth:`Storage.list_objects` yields. Each parameter is also a
    (read-only) attribute of the same name.

    Parameters
    ----------
    key : str
        The object's key, relative to the repository root.
    size : int
        Its size in bytes.
    last_modified : datetime
        When it was last written (timezone-aware, UTC).
    """

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class ObjectPage:
    """A page of a listing, as columns: what :meth:`Storage.list_object_pages` yields.

    Maintenance reads millions of these entries; columns let it judge a page
    with array operations instead of an object per entry. Each parameter is
    also a (read-only) attribute of the same name.

    Parameters
    ----------
    keys : list of str
        The objects' keys, relative to the repository root.
    sizes : numpy.ndarray
        Their sizes in bytes (``int64``, one per key).
    mtimes : numpy.ndarray
        When each was last written, in seconds since the epoch (UTC, ``float64``).
    """

    keys: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray

    @classmethod
    def of(cls, infos: list[ObjectInfo]) -> ObjectPage:
        """The page holding ``infos``.

        Parameters
        ----------
        infos : list of ObjectInfo
            Entries of a listing.

        Returns
        -------
        ObjectPage
            The same entries as columns.
        """
        return cls(
            [i.key for i in infos],
            np.fromiter((i.size for i in infos), np.int64, len(infos)),
            np.fromiter((i.last_modified.timestamp() for i in infos), np.float64, len(infos)),
        )

    def __len__(self) -> int:
        return len(self.keys)


async def _paged(infos: AsyncIterator[ObjectInfo]) -> AsyncIterator[ObjectPage]:
    page: list[ObjectInfo] = []
    async for info in infos:
        page.append(info)
        if len(page) >= _PAGE:
            yield ObjectPage.of(page)
            page = []
    if page:
        yield ObjectPage.of(page)


class Storage(ABC):
    """Asynchronous byte storage behind a repository.

    Implementations must be safe to call concurrently from many tasks and
    threads, and must be picklable (a pickled storage names the same place).
    Keys are ``/``-separated strings relative to the repository root. Every
    operation raises :class:`~icechunk_dask.StorageError` when the backend
    fails; a backend may refuse keys it cannot hold with
    :class:`~icechunk_dask.InvalidInputError`.

    Attributes
    ----------
    process_local : bool
        ``True`` when the data only lives in this process (in-memory storage).
    max_name_bytes : int or None
        The longest path component (bytes, UTF-8) a key may have, ``None`` if
        unlimited.
    """

    #: ``True`` when the data only lives in this process (in-memory storage).
    process_local: bool = False
    #: The longest path component (bytes, UTF-8) a key may have, ``None`` if unlimited.
    #: Local filesystems allow 255 bytes per file or directory name.
    max_name_bytes: int | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """A short URL-like description of where the data lives (``file:///...``, ``s3://...``)."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the whole object.

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
            If there is no object at ``key``.
        StorageError
            If the backend fails.
        """

    @abstractmethod
    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        """Return ``length`` bytes from ``start`` (to the end when ``length`` is None).

        Parameters
        ----------
        key : str
            The object's key.
        start : int
            The first byte (0-based).
        length : int or None
            How many bytes; ``None`` reads to the end.

        Returns
        -------
        bytes
            The bytes, fewer (or none) where the range passes the object's end,
            as slicing does.

        Raises
        ------
        NotFoundError
            If there is no object at ``key``.
        StorageError
            If the backend fails.
        """

    async def get_range_then(
        self, key: str, start: int, length: int | None, then: Callable[[bytes], T]
    ) -> T:
        """Read a range and apply ``then`` to it (for example a checksum check).

        Backends that read in worker threads run ``then`` in the same thread,
        while the bytes are still in the CPU cache and off the event loop.

        Parameters
        ----------
        key : str
            The object's key.
        start : int
            The first byte (0-based).
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
            If there is no object at ``key``.
        StorageError
            If the backend fails.
        """
        return then(await self.get_range(key, start, length))

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Write an object, replacing any previous one atomically.

        Used for objects with unique names (chunks, manifests, snapshots) and for
        best-effort hints; a reader sees the old object or the new one, never a
        partial write.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its new bytes.

        Raises
        ------
        StorageError
            If the backend fails (the object may or may not have been written).
        """

    @abstractmethod
    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists at ``key``.

        Exactly one of several concurrent callers wins.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes (callers make them unique, so that a read-back tells
            whether this call created the object).

        Returns
        -------
        bool
            ``True`` if this call created the object, ``False`` if it already
            existed. Backends whose acknowledgements can be lost (S3) must
            read the object back and report ``True`` when it holds ``data``.

        Raises
        ------
        StorageError
            If the backend fails and the outcome cannot be established.
        """

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix`` (full keys, any order).

        Parameters
        ----------
        prefix : str
            The start of the keys (plain string comparison; ``""``: all keys).

        Returns
        -------
        list of str
            The keys.

        Raises
        ------
        StorageError
            If the backend fails (a partial listing is never returned).
        """

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, with size and time (any order).

        Used by maintenance (garbage collection, usage reports); it streams, so
        a listing of millions of objects needs no more memory than one page.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectInfo
            Key, size and modification time of one object.

        Raises
        ------
        NotImplementedError
            If the backend cannot report sizes and times.
        StorageError
            If the backend fails.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list objects with their times")
        yield ObjectInfo("", 0, datetime.min)  # type: ignore[unreachable]  # an async generator

    async def list_temporary(self) -> AsyncIterator[ObjectInfo]:
        """Yield the temporary objects that interrupted writes left behind (optional).

        Backends that write through temporary objects (the local filesystem's
        ``.tmp-*`` files) report them here, so that garbage collection can
        delete the old ones with :meth:`delete`; a listing never shows them.
        The default yields nothing.

        Yields
        ------
        ObjectInfo
            Key, size and modification time of one temporary object.
        """
        return
        yield ObjectInfo("", 0, datetime.min)  # type: ignore[unreachable]  # an async generator

    async def list_object_pages(self, prefix: str) -> AsyncIterator[ObjectPage]:
        """Yield :meth:`list_objects`'s entries a page at a time, as columns.

        What garbage collection reads. The default groups :meth:`list_objects`;
        a backend whose listing costs per entry (the local filesystem) builds the
        columns directly.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectPage
            Keys, sizes and modification times of some of the objects.

        Raises
        ------
        NotImplementedError
            If the backend cannot report sizes and times.
        StorageError
            If the backend fails.
        """
        async for page in _paged(self.list_objects(prefix)):
            yield page

    async def list_temporary_pages(self) -> AsyncIterator[ObjectPage]:
        """Yield :meth:`list_temporary`'s entries a page at a time, as columns.

        Yields
        ------
        ObjectPage
            Keys, sizes and modification times of some temporary objects.

        Raises
        ------
        StorageError
            If the backend fails.
        """
        async for page in _paged(self.list_temporary()):
            yield page

    @abstractmethod
    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing keys are ignored.

        Parameters
        ----------
        keys : iterable of str
            The keys to delete.

        Raises
        ------
        StorageError
            If the backend fails (some of the objects may be deleted).
        """

    async def exists(self, key: str) -> bool:
        """Return whether an object exists at ``key``.

        Parameters
        ----------
        key : str
            The object's key.

        Returns
        -------
        bool
            ``True`` if there is an object.

        Raises
        ------
        StorageError
            If the backend fails.
        """
        try:
            await self.get_range(key, 0, 0)
        except NotFoundError:
            return False
        return True

    async def durability_barrier(self) -> None:  # noqa: B027 - optional hook
        """Make every object written so far durable before a ref is written.

        The default does nothing (object stores are durable on acknowledgement).

        Raises
        ------
        StorageError
            If the data cannot be made durable (then a commit is not published).
        """

    def check_usable(self) -> None:  # noqa: B027 - optional hook
        """Raise a clear error if this storage cannot be used in this process.

        Called when a repository is opened and when a session arrives in a
        worker. The default accepts every process.

        Raises
        ------
        InvalidInputError
            If the storage cannot be used here (its settings are invalid, or
            its data lives in another process).
        """
