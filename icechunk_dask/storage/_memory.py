"""In-memory storage: a dict behind a lock, for tests and scratch work."""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from icechunk_dask._exceptions import InvalidInputError, NotFoundError
from icechunk_dask.storage._base import ObjectInfo, Storage

__all__ = ["InMemoryStorage", "in_memory_storage"]

_REGISTRY: weakref.WeakValueDictionary[str, InMemoryStorage] = weakref.WeakValueDictionary()


class InMemoryStorage(Storage):
    """Process-local storage in a dict.

    It pickles as a reference to the live dict of *this* process: unpickling
    in the same process finds the same data; using it in another process (a
    Dask worker, a ProcessPoolExecutor) raises :class:`InvalidInputError`.
    """

    process_local = True

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._mtime: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex
        self._pid = os.getpid()
        _REGISTRY[self._token] = self

    @property
    def url(self) -> str:
        """``memory://`` and a unique id: this storage's name in this process."""
        return f"memory://{self._token[:12]}"

    def __repr__(self) -> str:
        return f"InMemoryStorage({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InMemoryStorage) and other._token == self._token

    def __hash__(self) -> int:
        return hash(self._token)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_lookup_memory_storage, (self._token, self._pid))

    def check_usable(self) -> None:
        """Accept: the storage is usable in the process that holds it.

        A copy unpickled in another process fails while unpickling, with an
        :class:`~icechunk_dask.InvalidInputError` that says to use local or object
        storage for multi-process writes.
        """

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
        """
        try:
            return self._data[key]
        except KeyError:
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None

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
            The bytes (fewer past the object's end, as slicing).

        Raises
        ------
        NotFoundError
            If there is no object at ``key``.
        """
        data = await self.get(key)
        return data[start:] if length is None else data[start : start + length]

    async def put(self, key: str, data: bytes) -> None:
        """Store an object, replacing any previous one.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes (copied).
        """
        with self._lock:
            self._data[key] = bytes(data)
            self._mtime[key] = datetime.now(UTC)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store an object only if there is none at ``key`` (atomic under a lock).

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes (copied).

        Returns
        -------
        bool
            ``True`` if this call created the object, ``False`` if one existed.
        """
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = bytes(data)
            self._mtime[key] = datetime.now(UTC)
            return True

    async def list(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all keys).

        Returns
        -------
        list of str
            The keys, in insertion order.
        """
        with self._lock:
            return [k for k in self._data if k.startswith(prefix)]

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, with size and time.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectInfo
            Key, size and time of the last write of one object (as they were when
            the listing started).
        """
        with self._lock:
            infos = [
                ObjectInfo(k, len(v), self._mtime[k])
                for k, v in self._data.items()
                if k.startswith(prefix)
            ]
        for info in infos:
            yield info

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing keys are ignored.

        Parameters
        ----------
        keys : iterable of str
            The keys to delete.
        """
        with self._lock:
            for k in keys:
                self._data.pop(k, None)
                self._mtime.pop(k, None)

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
        """
        return key in self._data


def _lookup_memory_storage(token: str, pid: int) -> InMemoryStorage:
    found = _REGISTRY.get(token)
    if found is None or pid != os.getpid():
        raise InvalidInputError(
            "in-memory storage lives only in the process that created it and cannot be "
            "used from another process (a Dask worker or a process pool). Use "
            "local_filesystem_storage(path) (or S3 storage) for multi-process writes."
        )
    return found


def in_memory_storage() -> InMemoryStorage:
    """Create a new, empty in-memory storage.

    Returns
    -------
    InMemoryStorage
        Storage whose data lives in this process only.
    """
    return InMemoryStorage()
