"""The object-store backends' common part: one storage class on top of obstore.

S3, Google Cloud Storage and Azure Blob Storage differ only in how the obstore
client is configured (:meth:`ObstoreStorage._build_client`) and how the
location is named; reads, writes, listings, retries, the concurrency limit,
error mapping and the create-only write with read-back live here.

obstore is imported lazily, on first use of a client, so that
``icechunk_dask.storage`` imports without it.

Create-only writes (``put_if_absent``) use the service's conditional create
(obstore ``mode="create"``: S3 ``If-None-Match: *``, GCS
``ifGenerationMatch=0``, Azure ``If-None-Match: *``). Such a write whose
acknowledgement is lost cannot be retried blindly: the retry would trip the
write's own precondition and look exactly like a lost race. So whenever the
outcome is unclear (already exists, connection lost, timed out) the storage
reads the key back and reports success when it holds exactly the bytes written;
callers make those bytes unique (ref bodies carry a writer token). If the key is
still missing, the write is tried again (create-only writes are safe to repeat).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn, Protocol, TypeVar

from icechunk_dask._exceptions import InvalidInputError, NotFoundError, StorageError
from icechunk_dask.storage._base import ObjectInfo, Storage
from icechunk_dask.storage._requests import Limiter, RequestSettings, Retrying, is_transient

__all__ = ["ObstoreStorage"]

T = TypeVar("T")

#: Keys per bulk delete request (the S3 maximum).
_DELETE_BATCH = 1000
#: Objects per page of a streamed listing.
_LIST_CHUNK = 1000
#: Longest backend message quoted in an error (obstore appends full debug dumps).
_MAX_DETAIL = 300

_exit_guard_lock = threading.Lock()
_exit_guard_registered = False


class _HasRequests(Protocol):
    @property
    def requests(self) -> RequestSettings: ...


def import_obstore(extra: str) -> None:
    """Import obstore or raise an ImportError that says how to install it."""
    try:
        import obstore  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{extra.upper()} storage needs the optional dependency 'obstore'; install it with "
            f"`pip install icechunk-dask[{extra}]` (or `pip install obstore`)"
        ) from e


def _backend_errors() -> tuple[type[Exception], ...]:
    """The exception types obstore raises for failed requests and bad paths."""
    from obstore.exceptions import BaseError

    return (BaseError, OSError, ValueError, RuntimeError)


def _let_runtime_threads_finish() -> None:
    # obstore completes asyncio futures from tokio threads that re-take the GIL
    # afterwards; if the interpreter is already finalizing, CPython 3.12 makes such
    # a thread pthread_exit through Rust frames and the process aborts (exit 134)
    # although every operation succeeded. Releasing the GIL briefly at exit lets
    # those threads finish first.
    time.sleep(0.02)


def register_exit_guard() -> None:
    """Register (once) the exit hook that lets obstore's threads finish."""
    global _exit_guard_registered
    with _exit_guard_lock:
        if not _exit_guard_registered:
            atexit.register(_let_runtime_threads_finish)
            _exit_guard_registered = True


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to true (``1``, ``true``, ``yes``).

    obstore ignores client settings from the environment (such as
    ``AWS_ALLOW_HTTP``) once client options are passed, so the backends read
    the few that matter themselves.
    """
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def detail(exc: BaseException) -> str:
    """A one-line, bounded description of a backend exception."""
    text = str(exc).split("\n", 1)[0].strip()
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "..."
    return f"{type(exc).__name__}: {text}"


class ObstoreStorage(Storage):
    """Objects in a bucket or container of an object store, through obstore.

    Subclasses name the location (``url``, ``_location``) and build the
    client (:meth:`_build_client`). The storage pickles as its settings; the
    obstore client, the concurrency limiter and their locks are rebuilt lazily
    in each process that uses them.

    Parameters
    ----------
    settings
        The subclass's frozen settings; ``settings.requests`` holds the
        :class:`~icechunk_dask.storage._requests.RequestSettings`.
    """

    #: Texts in a backend error that mean the bucket or container is missing.
    _missing_container_markers: tuple[str, ...] = ()
    #: The name of the bucket-like thing in messages ("bucket", "container").
    _container_word = "bucket"

    def __init__(self, settings: _HasRequests) -> None:
        self._settings = settings
        self._requests: RequestSettings = settings.requests
        self._client: Any = None
        self._limiter: Limiter | None = None
        self._pid = -1
        self._lock = threading.Lock()

    # -- identity ----------------------------------------------------------------------

    @property
    def requests(self) -> RequestSettings:
        """Retry, timeout and concurrency settings."""
        return self._requests

    @abstractmethod
    def _location(self) -> tuple[object, ...]:
        """What identifies the stored data (equality, hashing)."""

    @property
    @abstractmethod
    def _container(self) -> str:
        """The bucket or container name."""

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ObstoreStorage)
            and type(other) is type(self)
            and other._location() == self._location()
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._location()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._settings,))

    # -- client ------------------------------------------------------------------------

    @abstractmethod
    def _build_client(self) -> Any:
        """Create the obstore store (raise InvalidInputError for bad settings)."""

    def _store(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._client = self._build_client()
                    self._limiter = Limiter(self._requests.max_concurrent_requests)
                    register_exit_guard()
                    self._pid = os.getpid()
        return self._client

    def _slot(self) -> Limiter:
        self._store()
        assert self._limiter is not None
        return self._limiter

    def check_usable(self) -> None:
        """Build this process's client if needed, so that bad settings fail early.

        Raises
        ------
        InvalidInputError
            If the client cannot be configured with these settings.
        ImportError
            If obstore is not installed (the message names the extra to install).
        """
        self._store()

    # -- errors and retries ------------------------------------------------------------

    def _fail(
        self, exc: BaseException, op: str, key: str, retry: Retrying | None = None
    ) -> NoReturn:
        info = detail(exc)
        if any(marker in str(exc) for marker in self._missing_container_markers):
            raise StorageError(
                f"cannot {op} {key!r} in {self.url}: the {self._container_word} "
                f"{self._container!r} does not exist ({info})"
            ) from exc
        if isinstance(exc, FileNotFoundError):
            raise NotFoundError(f"no object at {key!r} in {self.url}") from None
        if isinstance(exc, ValueError):
            raise InvalidInputError(f"invalid storage key {key!r} for {self.url}: {info}") from exc
        tried = ""
        if retry is not None and retry.attempts > 1:
            tried = f" after {retry.attempts} attempts in {retry.elapsed:.1f} s"
        raise StorageError(
            f"cannot {op} {key!r} in {self.url}{tried}: {info}. If the service is overloaded "
            "or unreachable, try again later or allow more retries (max_retries, "
            "retry_timeout)"
        ) from exc

    async def _call(self, op: str, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` under the concurrency limit, retrying transient failures."""
        store = self._store()
        retry = Retrying(self._requests)
        async with self._slot():
            while True:
                try:
                    return await fn(store)
                except _backend_errors() as e:
                    if is_transient(e) and await retry.next_attempt():
                        continue
                    self._fail(e, op, key, retry)

    # -- the async protocol ------------------------------------------------------------

    async def get(self, key: str) -> bytes:
        """Return the whole object (one GET, retried on transient failures).

        Parameters
        ----------
        key : str
            The object's key (below the storage's prefix).

        Returns
        -------
        bytes
            Its bytes.

        Raises
        ------
        NotFoundError
            If there is no object at ``key``.
        StorageError
            If the request still fails after the retries ``requests`` allows, or the
            bucket or container does not exist.
        InvalidInputError
            If the service refuses ``key`` as a path.
        """
        import obstore as obs

        async def read(store: Any) -> bytes:
            result = await obs.get_async(store, key)
            return bytes(await result.bytes_async())

        return await self._call("read", key, read)

    async def _size(self, key: str) -> int:
        import obstore as obs

        meta = await self._call("read", key, lambda store: obs.head_async(store, key))
        return int(meta["size"])

    async def get_range(self, key: str, start: int, length: int | None) -> bytes:
        """Return ``length`` bytes from ``start`` (to the end when ``length`` is None).

        Parameters
        ----------
        key : str
            The object's key (below the storage's prefix).
        start : int
            The first byte.
        length : int or None
            How many bytes; ``None`` reads to the end.

        Returns
        -------
        bytes
            The bytes (fewer, or none, past the object's end, as slicing).

        Raises
        ------
        NotFoundError
            If there is no object at ``key``.
        InvalidInputError
            If ``start`` or ``length`` is negative, or the service refuses ``key``.
        StorageError
            If the request still fails after the retries, or the bucket or
            container does not exist.
        """
        if start < 0 or (length is not None and length < 0):
            raise InvalidInputError(
                f"invalid byte range start={start}, length={length} for {key!r}: "
                "start and length must not be negative"
            )
        if length == 0:
            await self._size(key)  # NotFoundError if missing
            return b""
        if start == 0 and length is None:
            return await self.get(key)
        import obstore as obs

        async def read(store: Any) -> bytes:
            if length is None:
                result = await obs.get_async(store, key, options={"range": {"offset": start}})
                return bytes(await result.bytes_async())
            return bytes(await obs.get_range_async(store, key, start=start, length=length))

        try:
            return await self._call("read", key, read)
        except NotFoundError:
            raise
        except StorageError:
            # The services answer 416 for a range that starts at or past the end; the
            # contract (like slicing) returns no bytes there.
            if start >= await self._size(key):
                return b""
            raise

    async def put(self, key: str, data: bytes) -> None:
        """Write an object (one PUT, retried on transient failures).

        Parameters
        ----------
        key : str
            The object's key (below the storage's prefix).
        data : bytes
            Its bytes.

        Raises
        ------
        StorageError
            If the request still fails after the retries ``requests`` allows, or the
            bucket or container does not exist.
        InvalidInputError
            If the service refuses ``key`` as a path.
        """
        import obstore as obs

        await self._call("write", key, lambda store: obs.put_async(store, key, data))

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create an object only if none exists (a conditional PUT).

        When the outcome is unclear (the object already exists, the connection
        broke, the request timed out), the key is read back: the call reports
        success when the object holds exactly ``data``, and repeats the write
        while the object is missing and retries remain.

        Parameters
        ----------
        key : str
            The object's key (below the storage's prefix).
        data : bytes
            Its bytes (callers make them unique).

        Returns
        -------
        bool
            ``True`` if this call created the object, ``False`` if another one was
            there.

        Raises
        ------
        StorageError
            If the request still fails after the retries ``requests`` allows, or the
            bucket or container does not exist.
        InvalidInputError
            If the service refuses ``key`` as a path.
        """
        import obstore as obs
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        store = self._store()
        retry = Retrying(self._requests)
        while True:
            try:
                async with self._slot():
                    # One request: a multipart upload's conditional completion is not
                    # atomic on every server.
                    await obs.put_async(store, key, data, mode="create", use_multipart=False)
            except (AlreadyExistsError, PreconditionError):
                return await self._holds(key, data)
            except _backend_errors() as e:
                if not (is_transient(e) or _outcome_unknown(e)):
                    self._fail(e, "create", key, retry)
                # The write may have landed with its acknowledgement lost: read back.
                try:
                    stored = await self.get(key)
                except NotFoundError:
                    if is_transient(e) and await retry.next_attempt():
                        continue  # it did not land: a create-only write is safe to repeat
                    self._fail(e, "create", key, retry)
                except StorageError:
                    self._fail(e, "create", key, retry)
                return stored == bytes(data)
            else:
                return True

    async def _holds(self, key: str, data: bytes) -> bool:
        """Read back after "already exists": True if the object holds our bytes."""
        try:
            stored = await self.get(key)
        except NotFoundError:
            # Deleted in between (only garbage collection deletes refs): not ours.
            return False
        return stored == bytes(data)

    async def list(self, prefix: str) -> list[str]:
        """Return every key that starts with ``prefix``.

        Parameters
        ----------
        prefix : str
            The start of the keys (it may end in the middle of a name; ``""``: all).

        Returns
        -------
        list of str
            The keys, in lexicographic order.

        Raises
        ------
        StorageError
            If the listing still fails after the retries.
        """
        return [info.key async for info in self.list_objects(prefix)]

    async def list_objects(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Yield every object whose key starts with ``prefix``, page by page.

        A listing interrupted by a transient failure resumes after the last key
        received.

        Parameters
        ----------
        prefix : str
            The start of the keys (``""``: all objects).

        Yields
        ------
        ObjectInfo
            Key, size and modification time of one object, in key order.

        Raises
        ------
        StorageError
            If the listing still fails after the retries.
        """
        import obstore as obs

        store = self._store()
        # obstore lists whole path segments: list the enclosing "directory" and
        # filter, so that prefixes ending mid-name ("refs/branch.") work.
        head, _, _ = prefix.rpartition("/")
        retry = Retrying(self._requests)
        after: str | None = None  # resume point: keys come in lexicographic order
        while True:
            try:
                stream = obs.list(store, head or None, offset=after, chunk_size=_LIST_CHUNK)
                while True:
                    async with self._slot():
                        try:
                            page = await stream.__anext__()
                        except StopAsyncIteration:
                            return
                    for meta in page:
                        path = meta["path"]
                        if after is None or path > after:
                            after = path
                        if path.startswith(prefix):
                            yield ObjectInfo(path, int(meta["size"]), meta["last_modified"])
            except _backend_errors() as e:
                if is_transient(e) and await retry.next_attempt():
                    continue
                self._fail(e, "list", prefix, retry)

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete objects in batches of 1,000 keys; missing keys are ignored.

        Parameters
        ----------
        keys : iterable of str
            The keys to delete.

        Raises
        ------
        StorageError
            If a batch still fails after the retries (other batches may be deleted).
        """
        import obstore as obs

        batch = list(dict.fromkeys(keys))

        async def delete_batch(part: list[str]) -> None:
            async def remove(store: Any) -> None:
                try:
                    await obs.delete_async(store, part)
                except FileNotFoundError:
                    if len(part) > 1:  # one missing key must not spare the others
                        await asyncio.gather(*(_delete_one(store, k) for k in part))

            name = part[0] if len(part) == 1 else f"{part[0]}, ..."
            await self._call("delete", name, remove)

        await asyncio.gather(
            *(
                delete_batch(batch[i : i + _DELETE_BATCH])
                for i in range(0, len(batch), _DELETE_BATCH)
            )
        )

    async def exists(self, key: str) -> bool:
        """Return whether an object exists at ``key`` (a HEAD request).

        Parameters
        ----------
        key : str
            The object's key (below the storage's prefix).

        Returns
        -------
        bool
            ``True`` if there is an object.

        Raises
        ------
        StorageError
            If the request still fails after the retries ``requests`` allows, or the
            bucket or container does not exist.
        InvalidInputError
            If the service refuses ``key`` as a path.
        """
        try:
            await self._size(key)
        except NotFoundError:
            return False
        return True


async def _delete_one(store: Any, key: str) -> None:
    import obstore as obs

    with contextlib.suppress(FileNotFoundError):
        await obs.delete_async(store, key)


def _outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed write may nevertheless have been applied.

    obstore does not retry a conditional PUT whose connection broke or timed out
    and gives up after its own retries of 5xx answers; in both cases the object
    may exist. Not for client errors (4xx) or bad settings.
    """
    from obstore.exceptions import GenericError

    return isinstance(exc, GenericError) and "status code: 4" not in str(exc)
