"""A storage wrapper that injects failures and delays, for fault-injection tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any, TypeVar

from icechunk_dask._exceptions import InvalidInputError, StorageError
from icechunk_dask.storage._base import ObjectInfo, Storage

__all__ = ["FaultyStorage"]

T = TypeVar("T")

#: The operations that can be counted, delayed and failed.
OPERATIONS = frozenset(
    {
        "get",
        "get_range",
        "put",
        "put_if_absent",
        "list",
        "list_objects",
        "delete",
        "exists",
        "durability_barrier",
    }
)


def _check_ops(what: str, ops: Iterable[str]) -> None:
    unknown = sorted(set(ops) - OPERATIONS)
    if unknown:
        raise InvalidInputError(
            f"unknown operation(s) {unknown} in {what}; choose from {sorted(OPERATIONS)}"
        )


class FaultyStorage(Storage):
    """Wrap a storage and make chosen calls fail, slow down or lose their acknowledgement.

    Calls are counted per operation kind (``"get"``, ``"get_range"``, ``"put"``,
    ``"put_if_absent"``, ``"list"``, ``"list_objects"``, ``"delete"``,
    ``"exists"``, ``"durability_barrier"``), starting at 1. Counting is
    thread-safe. The wrapper pickles (with its counters) exactly when the
    inner storage does.

    Parameters
    ----------
    inner : Storage
        The storage that does the real work.
    fail_on : Mapping of str to int or collection of int, optional
        Operation -> call number(s) that fail, e.g. ``{"put": 3, "get": [1, 2]}``
        makes the 3rd ``put`` and the first two ``get`` calls fail. Default:
        no failures.
    error : type of BaseException, BaseException or None, optional
        What a failing call raises: an exception class (instantiated with a
        message naming the operation, call number and key) or an instance.
        Defaults to :class:`StorageError`.
    delay : Mapping of str to float, optional
        Operation -> seconds to sleep before every call of that kind.
    fail_after_apply : collection of str, optional
        Operations whose failing calls first run on the inner storage and only
        then raise: the write happened but its acknowledgement was "lost".

    Attributes
    ----------
    inner : Storage
        The wrapped storage.
    injected : list of tuple of (str, int, str)
        ``(operation, call number, key)`` of every injected failure, in order.

    Raises
    ------
    InvalidInputError
        If ``fail_on``, ``delay`` or ``fail_after_apply`` names an unknown
        operation.

    Examples
    --------
    >>> from icechunk_dask.storage import in_memory_storage
    >>> flaky = FaultyStorage(
    ...     in_memory_storage(), fail_on={"put_if_absent": 1}, fail_after_apply={"put_if_absent"}
    ... )
    """

    def __init__(
        self,
        inner: Storage,
        *,
        fail_on: Mapping[str, int | Collection[int]] | None = None,
        error: type[BaseException] | BaseException | None = None,
        delay: Mapping[str, float] | None = None,
        fail_after_apply: Collection[str] = (),
    ) -> None:
        fail_on = dict(fail_on or {})
        delay = dict(delay or {})
        _check_ops("fail_on", fail_on)
        _check_ops("delay", delay)
        _check_ops("fail_after_apply", fail_after_apply)
        self.inner = inner
        self.fail_on: dict[str, frozenset[int]] = {
            op: frozenset([n] if isinstance(n, int) else n) for op, n in fail_on.items()
        }
        self.error = error
        self.delay: dict[str, float] = {op: float(s) for op, s in delay.items()}
        self.fail_after_apply = frozenset(fail_after_apply)
        self.process_local = inner.process_local
        self.max_name_bytes = inner.max_name_bytes
        self._calls: dict[str, int] = {}
        #: ``(operation, call number, key)`` of every injected failure, in order.
        self.injected: list[tuple[str, int, str]] = []
        self._lock = threading.Lock()

    # -- bookkeeping ---------------------------------------------------------------

    @property
    def calls(self) -> dict[str, int]:
        """A snapshot of how many calls of each operation were made."""
        with self._lock:
            return dict(self._calls)

    def reset(self) -> None:
        """Zero the call counters and forget the injected failures."""
        with self._lock:
            self._calls.clear()
            self.injected.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultyStorage({self.inner!r}, fail_on={dict(self.fail_on)!r})"

    @property
    def url(self) -> str:
        """The inner storage's URL."""
        return self.inner.url

    def check_usable(self) -> None:
        """Check the inner storage (not counted, never fails by injection).

        Raises
        ------
        InvalidInputError
            If the inner storage cannot be used in this process.
        """
        self.inner.check_usable()

    def _make_error(self, op: str, n: int, key: str) -> BaseException:
        message = f"injected failure: call {n} of {op} ({key!r}) in {self.inner.url}"
        if self.error is None:
            return StorageError(message)
        if isinstance(self.error, BaseException):
            return self.error
        return self.error(message)

    async def _call(self, op: str, key: str, run: Callable[[], Awaitable[T]]) -> T:
        with self._lock:
            n = self._calls.get(op, 0) + 1
            self._calls[op] = n
            fail = n in self.fail_on.get(op, ())
            if fail:
                self.injected.append((op, n, key))
        seconds = self.delay.get(op, 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)
        if not fail:
            return await run()
        if op in self.fail_after_apply:
            await run()
        raise self._make_error(op, n, key)

    # -- the async protocol ----------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """Return the whole object.

        Counted as ``"get"``: delayed and failed as configured, else
        delegated to the inner storage.

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
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        return await self._call("get", key, lambda: self.inner.get(key))

    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        """Return ``length`` bytes from ``start``.

        Counted as ``"get_range"``: delayed and failed as configured, else
        delegated to the inner storage.

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
            The bytes.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        return await self._call("get_range", key, lambda: self.inner.get_range(key, start, length))

    async def put(self, key: str, data: bytes) -> None:
        """Write an object, replacing any previous one.

        Counted as ``"put"``: delayed and failed as configured, else
        delegated to the inner storage.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        await self._call("put", key, lambda: self.inner.put(key, data))

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists.

        Counted as ``"put_if_absent"``: delayed and failed as configured, else
        delegated to the inner storage.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            Its bytes.

        Returns
        -------
        bool
            ``True`` if this call created the object.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        return await self._call("put_if_absent", key, lambda: self.inner.put_if_absent(key, data))

    async def list(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``.

        Counted as ``"list"``: delayed and failed as configured, else
        delegated to the inner storage.

        Parameters
        ----------
        prefix : str
            The start of the keys.

        Returns
        -------
        list of str
            The keys.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        return await self._call("list", prefix, lambda: self.inner.list(prefix))

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, with size and time.

        Counted once per listing as ``"list_objects"``: the inner listing is
        collected first, so an injected failure comes before any object.

        Parameters
        ----------
        prefix : str
            The start of the keys.

        Yields
        ------
        ObjectInfo
            Key, size and time of one object.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """

        async def collect() -> list[ObjectInfo]:
            return [info async for info in self.inner.list_objects(prefix)]

        for info in await self._call("list_objects", prefix, collect):
            yield info

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects; missing keys are ignored.

        Counted as ``"delete"``: delayed and failed as configured, else
        delegated to the inner storage.

        Parameters
        ----------
        keys : iterable of str
            The keys to delete (one counted call for all).

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        keys = list(keys)
        label = keys[0] if len(keys) == 1 else f"{len(keys)} keys"
        await self._call("delete", label, lambda: self.inner.delete(keys))

    async def exists(self, key: str) -> bool:
        """Return whether an object exists at ``key``.

        Counted as ``"exists"``: delayed and failed as configured, else
        delegated to the inner storage.

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
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        return await self._call("exists", key, lambda: self.inner.exists(key))

    async def durability_barrier(self) -> None:
        """Make the objects written so far durable.

        Counted as ``"durability_barrier"``: delayed and failed as configured, else
        delegated to the inner storage.

        Raises
        ------
        StorageError
            On a call that ``fail_on`` names (or the configured ``error``);
            otherwise whatever the inner storage raises.
        """
        await self._call("durability_barrier", "", self.inner.durability_barrier)
