"""Packing small chunks: many chunks per stored object, referenced by offset.

Chunks of at most :data:`PACK_MAX_CHUNK` bytes are appended to the writer's
open *pack* (one ``chunks/<id>`` holding many chunks) instead of one object
each. A pack is stored once it holds :data:`PACK_TARGET` bytes, and at the
latest before any reference into it leaves the writer (a change record, a
fork, a pickle, a commit): :meth:`PackBuffer.ensure_stored`.

The buffer shares its owner's lock, so that appending a chunk and recording
its reference happen in one critical section: a concurrent fork either sees
neither or both (and then stores the pack first).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from icechunk_dask._sync import run
from icechunk_dask.storage import Storage

__all__ = ["PACK_MAX_CHUNK", "PACK_TARGET", "PackBuffer"]

#: Chunks of at most this many bytes are packed.
PACK_MAX_CHUNK = 256 * 1024
#: An open pack is stored once it holds this many bytes.
PACK_TARGET = 8 * 1024 * 1024

_Claims = list[tuple[str, dict[int, bytes]]]


class PackBuffer:
    """The open pack of one writer, and its packs not stored yet.

    Methods whose names end in ``_locked`` must be called with ``lock`` held.

    Parameters
    ----------
    storage : Storage
        Where packs are stored (``chunks/<pack id>``).
    lock : threading.Lock
        The owner's lock, which guards this buffer too.
    new_object_id : Callable[[], str]
        Returns a fresh object id for the next pack.
    """

    def __init__(
        self, storage: Storage, lock: threading.Lock, new_object_id: Callable[[], str]
    ) -> None:
        self._storage = storage
        self._lock = lock
        self._new_object_id = new_object_id
        self._open_id: str | None = None
        self._open: dict[int, bytes] = {}
        self._open_size = 0
        # closed packs not stored yet (in flight, or failed: retried by the next flush),
        # readable from memory until they are; and who is storing which
        self._unstored: dict[str, dict[int, bytes]] = {}
        self._inflight: dict[str, threading.Event] = {}

    def append_locked(self, data: bytes) -> tuple[str, int, _Claims]:
        """Append ``data``; return ``(pack id, offset, claims)``.

        ``claims`` is non-empty when the pack became full: the caller stores it
        (after releasing the lock) with :meth:`store`.
        """
        if self._open_id is None:
            self._open_id = self._new_object_id()
        pack_id, offset = self._open_id, self._open_size
        self._open[offset] = data
        self._open_size += len(data)
        claims: _Claims = []
        if self._open_size >= PACK_TARGET:  # full: store it now
            self.close_locked()
            claims = self._claim_locked({pack_id})[0]
        return pack_id, offset, claims

    def pending_part(self, loc: str, offset: int) -> bytes | None:
        """A packed chunk that is not in storage yet (``None`` if it is)."""
        if loc == self._open_id or loc in self._unstored:
            with self._lock:
                parts = self._open if loc == self._open_id else self._unstored.get(loc)
                if parts is not None:
                    return parts.get(offset)
        return None

    def close_locked(self) -> set[str]:
        """Close the open pack; return the ids of every pack not stored yet."""
        if self._open_id is not None:
            self._unstored[self._open_id] = self._open
            self._open_id, self._open, self._open_size = None, {}, 0
        return set(self._unstored)

    def discard_locked(self) -> None:
        """Forget the open pack and the unstored packs nobody is storing."""
        self._open_id, self._open, self._open_size = None, {}, 0
        for pack_id in set(self._unstored) - set(self._inflight):
            del self._unstored[pack_id]

    def _claim_locked(self, ids: set[str]) -> tuple[_Claims, list[threading.Event]]:
        """Claim the packs of ``ids`` nobody is storing; events of the others."""
        claims = [(i, self._unstored[i]) for i in ids if i not in self._inflight]
        waits = [self._inflight[i] for i in ids if i in self._inflight]
        for i, _ in claims:
            self._inflight[i] = threading.Event()
        return claims, waits

    async def store(self, claims: _Claims) -> None:
        """Store claimed packs (concurrently); a failed one stays pending for a retry."""

        async def one(pack_id: str, parts: dict[int, bytes]) -> None:
            stored = False
            try:
                await self._storage.put(f"chunks/{pack_id}", b"".join(parts.values()))
                stored = True
            finally:
                with self._lock:
                    if stored:
                        self._unstored.pop(pack_id, None)
                    self._inflight.pop(pack_id).set()

        results = await asyncio.gather(*(one(*c) for c in claims), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def ensure_stored(self, ids: set[str]) -> None:
        """Block until the packs ``ids`` are in storage (storing or retrying them as needed).

        Call (without the lock) before chunk refs leave the writer: they may
        point into these packs.

        Raises
        ------
        StorageError
            If a pack cannot be stored; it stays pending, and the next call retries it.
        """
        while ids:
            with self._lock:
                ids &= self._unstored.keys()
                claims, waits = self._claim_locked(ids)
            if claims:
                run(self.store(claims))
            for event in waits:
                event.wait()
