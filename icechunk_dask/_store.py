"""SessionStore: the zarr v3 ``Store`` through which a session reads and writes.

It accepts any key (validation happens at commit, a layer above), so zarr's
own store test-suite and state machines run against it unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from icechunk_dask._compat.zarr import sync
from icechunk_dask._exceptions import READ_ONLY_MESSAGE, InvalidInputError, ReadOnlyError
from icechunk_dask._workspace import Workspace

__all__ = ["SessionStore"]


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidInputError(f"store keys must be str, got {type(key).__name__} {key!r}")
    return key


class _SessionLike(Protocol):
    """What the store needs of :class:`~icechunk_dask.Session` (defined a layer above)."""

    _workspace: Workspace

    @property
    def session_id(self) -> str: ...

    @property
    def snapshot_id(self) -> str: ...

    @property
    def read_only(self) -> bool: ...


class SessionStore(Store):
    """A zarr store backed by a :class:`~icechunk_dask.Session`.

    Get one as ``session.store``; open arrays and groups on it with zarr or
    xarray. Reads show the session's snapshot plus its uncommitted changes;
    writes are recorded in the session (chunk bytes go to storage at once,
    nothing is visible in the repository before ``session.commit``). Any key
    is accepted; metadata documents are validated at commit.

    Reads can raise :class:`~icechunk_dask.CorruptObjectError` (a stored
    object is damaged) and :class:`~icechunk_dask.StorageError` (the backend
    failed); writes through a read-only store raise
    :class:`~icechunk_dask.ReadOnlyError`.

    Parameters
    ----------
    session : Session
        The session to read from and record writes into.
    read_only : bool, optional
        A read-only view of a writable session (default ``False``; the store of
        a read-only session is always read-only).
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True

    @property
    def supports_consolidated_metadata(self) -> bool:
        """``False``: a snapshot already holds all metadata, so zarr need not consolidate."""
        return False

    def __init__(self, session: _SessionLike, *, read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.session: Any = session

    @property
    def _ws(self) -> Workspace:
        # looked up at each use: a session that refused to travel raises here, on first use
        return self.session._workspace  # type: ignore[no-any-return]

    @property
    def read_only(self) -> bool:
        """Whether writes through this store are refused."""
        return self._read_only or self.session.read_only

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE} (this is a read-only view of the session)")
        self._ws.check_writable()

    def with_read_only(self, read_only: bool = False) -> SessionStore:
        """Return a view of the same session, read-only or not.

        Parameters
        ----------
        read_only : bool, optional
            Whether the new view refuses writes (default ``False``; the view of
            a read-only session refuses them anyway).

        Returns
        -------
        SessionStore
            A new store on the same session.
        """
        return type(self)(self.session, read_only=read_only)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SessionStore)
            and other.session.session_id == self.session.session_id
            and other.session.snapshot_id == self.session.snapshot_id
            and other.read_only == self.read_only
        )

    def __hash__(self) -> int:
        return hash((self.session.session_id, self._read_only))

    def __repr__(self) -> str:
        return f"SessionStore({self.session!r}, read_only={self.read_only})"

    def __str__(self) -> str:
        return f"icechunk-dask://{self.session.session_id}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (SessionStore, (self.session,), {"_read_only": self._read_only})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._read_only = state["_read_only"]
        self._is_open = False

    # -- reads ----------------------------------------------------------------

    async def get(
        self,
        key: str,
        prototype: BufferPrototype,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Return the value of ``key`` (or a byte range of it) in the session's view.

        Parameters
        ----------
        key : str
            The key (``"a/zarr.json"``, ``"a/c/0/1"``).
        prototype : BufferPrototype
            The kind of buffer to return (zarr's ``default_buffer_prototype()``).
        byte_range : ByteRequest or None, optional
            ``None`` (default) for the whole value, else a ``RangeByteRequest``,
            ``OffsetByteRequest`` or ``SuffixByteRequest``.

        Returns
        -------
        Buffer or None
            The bytes, or ``None`` if the key does not exist.

        Raises
        ------
        InvalidInputError
            If ``key`` is not a str or ``byte_range`` is of an unknown type.
        CorruptObjectError
            If the stored chunk is damaged or missing.
        StorageError
            If the storage cannot be read.
        """
        _check_key(key)
        if byte_range is None:
            data = await self._ws.read(key)
        elif isinstance(byte_range, RangeByteRequest):
            data = await self._ws.read(
                key, byte_range.start, max(0, byte_range.end - byte_range.start)
            )
        elif isinstance(byte_range, OffsetByteRequest):
            data = await self._ws.read(key, byte_range.offset)
        elif isinstance(byte_range, SuffixByteRequest):
            size = await self._ws.size(key)
            if size is None:
                return None
            data = await self._ws.read(key, max(0, size - byte_range.suffix))
        else:
            raise InvalidInputError(f"Unexpected byte_range, got {byte_range!r}")
        if data is None:
            return None
        return prototype.buffer.from_bytes(data)

    async def exists(self, key: str) -> bool:
        """Return whether ``key`` exists in the session's view.

        Parameters
        ----------
        key : str
            The key.

        Returns
        -------
        bool
            ``True`` if it exists (committed or written by this session, and
            not deleted by it).

        Raises
        ------
        InvalidInputError
            If ``key`` is not a str.
        """
        return await self._ws.exists(_check_key(key))

    # -- writes ---------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        """Write ``value`` at ``key`` in the session (visible after its commit).

        Parameters
        ----------
        key : str
            The key.
        value : Buffer
            The bytes, as a zarr buffer.

        Raises
        ------
        ReadOnlyError
            If this store is a read-only view, or its session is read-only or
            committed.
        InvalidInputError
            If ``key`` is not a str.
        TypeError
            If ``value`` is not a ``Buffer``.
        StorageError
            If the chunk's bytes cannot be stored.
        """
        self._check_writable()
        _check_key(key)
        if not isinstance(value, Buffer):
            raise TypeError(
                f"SessionStore.set(): `value` must be a Buffer instance. Got an instance of "
                f"{type(value)} instead."
            )
        await self._ws.write(key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        """Write ``value`` at ``key`` unless the key exists in the session's view.

        Parameters
        ----------
        key : str
            The key.
        value : Buffer
            The bytes, as a zarr buffer.

        Raises
        ------
        ReadOnlyError
            If the store or its session is read-only.
        InvalidInputError
            If ``key`` is not a str.
        TypeError
            If ``value`` is not a ``Buffer``.
        """
        self._check_writable()
        if not await self._ws.exists(_check_key(key)):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        """Delete ``key`` in the session; deleting a missing key does nothing.

        Parameters
        ----------
        key : str
            The key.

        Raises
        ------
        ReadOnlyError
            If the store or its session is read-only.
        InvalidInputError
            If ``key`` is not a str.
        """
        self._check_writable()
        await self._ws.remove(_check_key(key))

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key under ``prefix``; committed chunks in O(1) (not listed).

        Parameters
        ----------
        prefix : str
            A directory (``"g/a"``, with or without a trailing ``/``); ``""``
            deletes everything.

        Raises
        ------
        ReadOnlyError
            If the store or its session is read-only.
        InvalidInputError
            If ``prefix`` is not a str.
        """
        self._check_writable()
        await self._ws.delete_dir(_check_key(prefix))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Read several keys or byte ranges, concurrently.

        Parameters
        ----------
        prototype : BufferPrototype
            The kind of buffers to return.
        key_ranges : iterable of tuple of (str, ByteRequest or None)
            The keys and their byte ranges (``None``: the whole value).

        Returns
        -------
        list of Buffer or None
            One per request, in order; ``None`` where the key does not exist.

        Raises
        ------
        InvalidInputError
            If a key is not a str or a range is of an unknown type.
        """
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    # -- synchronous fast paths (zarr's Supports*Sync protocols) ------------------

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Read ``key`` without an event loop (zarr's synchronous fast path).

        Parameters
        ----------
        key : str
            The key.
        prototype : BufferPrototype or None, optional
            The kind of buffer to return (default: zarr's default prototype).
        byte_range : ByteRequest or None, optional
            The range to read (default: the whole value).

        Returns
        -------
        Buffer or None
            As :meth:`get`.

        Raises
        ------
        InvalidInputError
            As :meth:`get`.
        """
        return sync(self.get(key, prototype or default_buffer_prototype(), byte_range))

    def set_sync(self, key: str, value: Buffer) -> None:
        """Write ``key`` without an event loop (zarr's synchronous fast path).

        Parameters
        ----------
        key : str
            The key.
        value : Buffer
            The bytes.

        Raises
        ------
        ReadOnlyError
            As :meth:`set`.
        """
        sync(self.set(key, value))

    def delete_sync(self, key: str) -> None:
        """Delete ``key`` without an event loop (zarr's synchronous fast path).

        Parameters
        ----------
        key : str
            The key.

        Raises
        ------
        ReadOnlyError
            As :meth:`delete`.
        """
        sync(self.delete(key))

    # -- listing --------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        """Yield every key of the session's view, sorted.

        Yields
        ------
        str
            A key.
        """
        for key in sorted(await self._ws.list_prefix("")):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        """Yield every key that starts with ``prefix``, sorted.

        Parameters
        ----------
        prefix : str
            The start of the keys (plain string comparison; ``""``: all keys).

        Yields
        ------
        str
            A full key.

        Raises
        ------
        InvalidInputError
            If ``prefix`` is not a str.
        """
        for key in sorted(await self._ws.list_prefix(_check_key(prefix))):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        """Yield the names directly under directory ``prefix``, sorted.

        Answered from the snapshot's node tree, without reading manifests
        unless the listing reaches into an array's chunks.

        Parameters
        ----------
        prefix : str
            The directory (``""``: the root; a trailing ``/`` is ignored).

        Yields
        ------
        str
            A child's name, relative to ``prefix`` (``"zarr.json"``, ``"a"``, ``"c"``).

        Raises
        ------
        InvalidInputError
            If ``prefix`` is not a str.
        """
        for child in sorted(await self._ws.list_dir(_check_key(prefix).rstrip("/"))):
            if child:
                yield child
