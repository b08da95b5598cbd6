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
    """A zarr store backed by a :class:`Session`.

    Parameters
    ----------
    session
        The session to read from and record writes into.
    read_only
        A read-only view of a writable session (always read-only for
        read-only sessions).
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
        """Return a view of the same session, read-only or not."""
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
        # docstring inherited
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
            whole = await self._ws.read(key)
            if whole is None:
                return None
            data = whole[max(0, len(whole) - byte_range.suffix) :]
        else:
            raise InvalidInputError(f"Unexpected byte_range, got {byte_range!r}")
        if data is None:
            return None
        return prototype.buffer.from_bytes(data)

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self._ws.exists(_check_key(key))

    # -- writes ---------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        _check_key(key)
        if not isinstance(value, Buffer):
            raise TypeError(
                f"SessionStore.set(): `value` must be a Buffer instance. Got an instance of "
                f"{type(value)} instead."
            )
        await self._ws.write(key, value.to_bytes())

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()
        if not await self._ws.exists(_check_key(key)):
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()
        await self._ws.remove(_check_key(key))

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key under ``prefix``; committed chunks in O(1) (not listed)."""
        self._check_writable()
        await self._ws.delete_dir(_check_key(prefix))

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited; the ranges are read concurrently
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    # -- synchronous fast paths (zarr's Supports*Sync protocols) ------------------

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """Synchronous ``get``."""
        return sync(self.get(key, prototype or default_buffer_prototype(), byte_range))

    def set_sync(self, key: str, value: Buffer) -> None:
        """Synchronous ``set``."""
        sync(self.set(key, value))

    def delete_sync(self, key: str) -> None:
        """Synchronous ``delete``."""
        sync(self.delete(key))

    # -- listing --------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in sorted(await self._ws.list_prefix("")):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in sorted(await self._ws.list_prefix(_check_key(prefix))):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited; answered from the node tree, without reading manifests
        for child in sorted(await self._ws.list_dir(_check_key(prefix).rstrip("/"))):
            if child:
                yield child
