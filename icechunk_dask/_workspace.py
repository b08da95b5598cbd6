"""A workspace: one snapshot plus uncommitted changes, with the read and write paths.

Reads look through: the workspace's own change set (its chunk entries, then
its pre-built manifest layers, see :mod:`icechunk_dask._prebuilt`), what it
inherited from the session it was forked from (uncommitted metadata,
uncommitted chunk references, possibly from a scratch object, then that
session's pre-built layers), and the base snapshot's manifests.

A session keeps pre-built layers of its own only while it inherited no
uncommitted chunks (a root session): a fork's merges load them, so that
"own entries, own layers, inherited entries, inherited layers" is always
newest to oldest. Writes store chunk bytes at once (small chunks in
packs) and record only references; a tracked copy (unpickled from another
process) leaves a marker in storage before its first change.

:class:`~icechunk_dask.Session` wraps a workspace and adds committing,
merging, forking and pickling.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._chunkio import BLOCKED_MIN, blocked_payload, read_chunk
from icechunk_dask._exceptions import READ_ONLY_MESSAGE, ReadOnlyError, SessionStateError
from icechunk_dask._fork import ForkTicket, leave_marker, load_scratch
from icechunk_dask._listing import Listing
from icechunk_dask._manifests import lookup
from icechunk_dask._packing import PACK_MAX_CHUNK, PackBuffer
from icechunk_dask._prebuilt import MISSING, layered_keys, lookup_layered
from icechunk_dask.format import ChunkRef, NodeManifests, chunk_checksum, new_id
from icechunk_dask.format._keys import is_meta_key
from icechunk_dask.format._locate import node_of

__all__ = ["Workspace"]

_MISSING: Any = object()


class Workspace(Listing):
    """The state and the I/O paths of a session.

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    base : str
        The snapshot the changes are made on.
    session_id : str
        Shared by a session and all its copies.
    read_only : bool
        Refuse writes.
    tracked : bool
        Leave a marker in storage before the first change (unpickled copies).
    """

    def __init__(
        self,
        assets: AssetManager,
        base: str,
        *,
        session_id: str,
        read_only: bool,
        tracked: bool = False,
    ) -> None:
        self.assets = assets
        self.base = base
        self.session_id = session_id
        self.read_only = read_only
        self.committed = False
        self.tracked = tracked
        self.cs = ChangeSet(assets.repo_id, base)
        self.inh_meta: dict[str, bytes | None] = {}
        self.inh_chunks: dict[str, ChunkRef | None] | None = {}
        self.inh_scratch: str | None = None
        #: prefixes cleared (``delete_dir``) by the sessions this one was forked from
        self.inh_cleared: frozenset[str] = frozenset()
        #: pre-built manifest layers of the session this one was forked from
        self.inh_layers: dict[str, NodeManifests] = {}
        self.lock = threading.Lock()
        # Chunk object ids are the writer id plus a counter. The writer id is the session id
        # (unique in the repository) plus 80 random bits (unique among the session's forks,
        # even millions of them): the shared prefix compresses away in change records.
        self.writer = session_id + new_id(16)
        self._seq = itertools.count()
        self._marker_done = False
        #: the Dask task this copy works for (rerouted graphs), named in its marker
        self.task = ""
        #: set for forks made by ``session.fork()``: commit checks they were merged
        self.ticket: ForkTicket | None = None
        #: a commit is reading the change set (not copied): writes must wait
        self.frozen = False
        #: bumped whenever the chunk changes change (keys scratch objects of pickled copies)
        self.chunks_version = 0
        self.packs = PackBuffer(assets.storage, self.lock, self._next_object_id)

    def _next_object_id(self) -> str:
        return f"{self.writer}{next(self._seq):x}"

    # -- reading --------------------------------------------------------------

    async def inherited_chunks(self) -> dict[str, ChunkRef | None]:
        """Uncommitted chunk references inherited from the parent (loaded on first use)."""
        chunks = self.inh_chunks
        if chunks is not None:
            return chunks
        # concurrent first reads may both load it: the object is immutable, either copy is right
        assert self.inh_scratch is not None
        loaded = await load_scratch(self.assets, self.inh_scratch)
        self.inh_chunks = loaded
        return loaded

    def _cleared(self) -> set[str]:
        return {*self.inh_cleared, *self.cs.cleared}

    def hidden(self, key: str, cleared: set[str] | None = None) -> bool:
        """Whether ``key``'s committed value is hidden by a ``delete_dir`` of this view."""
        prefixes = self._cleared() if cleared is None else cleared
        return any(p == "" or key.startswith(p + "/") for p in prefixes)

    async def _committed_ref(self, key: str) -> ChunkRef | None:
        if (self.cs.cleared or self.inh_cleared) and self.hidden(key):
            return None
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        node, suffix = node_of(key, snap.arrays)
        nm = snap.nodes.get(node)
        if nm is None:
            return None
        return await lookup(self.assets, node, nm, suffix)

    async def get_meta(self, key: str) -> bytes | None:
        """The current metadata document at ``key`` (``None`` if absent)."""
        doc = self.cs.meta.get(key, _MISSING)
        if doc is _MISSING:
            doc = self.inh_meta.get(key, _MISSING)
        if doc is _MISSING:
            doc = (await self.assets.get_snapshot(self.base, expired_ok=True)).meta.get(key)
        return doc  # type: ignore[no-any-return]

    async def get_ref(self, key: str) -> ChunkRef | None:
        """The current chunk reference at ``key`` (``None`` if absent)."""
        ref = self.cs.chunks.get(key, _MISSING)
        if ref is _MISSING and self.cs.layers:
            ref = await lookup_layered(self.assets, self.cs.layers, key)
        if ref is _MISSING:
            inherited = self.inh_chunks
            if inherited is None or inherited:
                ref = (await self.inherited_chunks()).get(key, _MISSING)
        if ref is _MISSING and self.inh_layers:
            ref = await lookup_layered(self.assets, self.inh_layers, key)
        if ref is _MISSING:
            ref = await self._committed_ref(key)
        return ref  # type: ignore[no-any-return]

    @property
    def inherits(self) -> bool:
        """Whether this workspace inherited uncommitted chunk changes (then it keeps no layers)."""
        return bool(self.inh_chunks or self.inh_scratch or self.inh_layers)

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes | None:
        """Read a key's bytes (optionally a range); ``None`` if the key does not exist.

        Every chunk is verified against its checksums (see
        :mod:`icechunk_dask._chunkio`): a byte range of a big chunk reads and
        checks only the blocks it overlaps.

        Raises
        ------
        CorruptObjectError
            If the stored chunk is truncated or fails its checksum.
        """
        if is_meta_key(key):
            doc = await self.get_meta(key)
            if doc is None:
                return None
            return doc[start:] if length is None else doc[start : start + length]
        ref = await self.get_ref(key)
        if ref is None:
            return None
        loc, offset = ref[0], ref[1]
        if isinstance(loc, bytes):
            return loc[start:] if length is None else loc[start : start + length]
        pending = self.packs.pending_part(loc, offset)
        if pending is not None:
            return pending[start:] if length is None else pending[start : start + length]
        return await read_chunk(self.assets, key, ref, start, length)

    async def size(self, key: str) -> int | None:
        """The size in bytes of ``key``'s value (``None`` if the key does not exist)."""
        if is_meta_key(key):
            doc = await self.get_meta(key)
            return None if doc is None else len(doc)
        ref = await self.get_ref(key)
        return None if ref is None else ref[2]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists in this workspace's view."""
        if is_meta_key(key):
            return await self.get_meta(key) is not None
        return await self.get_ref(key) is not None

    # -- writing --------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise :class:`ReadOnlyError` if writes are refused."""
        if self.frozen:
            raise SessionStateError(
                "this session is committing: writes through it are refused until the commit "
                "ends (write through a fork, or a new session, meanwhile)"
            )
        if self.read_only:
            why = "it was committed" if self.committed else "it is a read-only session"
            raise ReadOnlyError(
                f"{READ_ONLY_MESSAGE}: {why}. Start a new one with "
                "repo.writable_session(branch) to write"
            )

    async def _mark_writer(self) -> None:
        # A tracked copy (any session rebuilt from a pickle) leaves a marker before its
        # first change, so that commit can tell whether its changes came back; a public
        # in-process fork marks its ticket.
        ticket = self.ticket
        if ticket is not None and not ticket.dirty:
            with self.lock:
                ticket.dirty = True
                self.cs.writers.add(self.writer)
        if self.tracked and not self._marker_done:
            await leave_marker(self.assets, self.session_id, self.writer, self.task)
            with self.lock:
                self.cs.writers.add(self.writer)
                self._marker_done = True

    async def _inherited_view(self, key: str) -> dict[str, Any]:
        """What this workspace inherited, as far as ``key``'s previous value is concerned."""
        inherited = await self.inherited_chunks()
        if self.inh_layers and key not in inherited:
            value = await lookup_layered(self.assets, self.inh_layers, key)
            if value is not MISSING:
                return {key: value}
        return inherited

    async def _record(self, key: str, value: Any, meta: bool) -> None:
        inherited: dict[str, Any] = self.inh_meta if meta else await self._inherited_view(key)
        with self.lock:
            self.check_writable()
            self._record_locked(key, value, meta, inherited)

    def _record_locked(self, key: str, value: Any, meta: bool, inherited: dict[str, Any]) -> None:
        """Record ``value`` at ``key``, remembering what it overrides (hold ``lock``)."""
        own = self.cs.meta if meta else self.cs.chunks
        if key not in own and key in inherited:
            prev = self.cs.prev_meta if meta else self.cs.prev_chunks
            prev[key] = inherited[key]
        own[key] = value
        if not meta:
            self.chunks_version += 1

    async def write(self, key: str, data: bytes) -> None:
        """Record a write of ``data`` at ``key``.

        Raises
        ------
        ReadOnlyError
            If the workspace is read-only or committed.
        """
        self.check_writable()
        await self._mark_writer()
        if is_meta_key(key):
            await self._record(key, bytes(data), meta=True)
            return
        size = len(data)
        crc = chunk_checksum(data)
        if size <= self.assets.config.inline_threshold:
            ref: ChunkRef = (bytes(data), 0, size, crc)
        elif size <= PACK_MAX_CHUNK:
            await self._write_packed(key, bytes(data), crc)
            return
        else:
            chunk_id = self._next_object_id()
            payload: bytes = data
            if size >= BLOCKED_MIN and await self._range_read(key):
                chunk_id, payload = blocked_payload(chunk_id, data)
            await self.assets.storage.put(f"chunks/{chunk_id}", payload)
            ref = (chunk_id, 0, size, crc)
        await self._record(key, ref, meta=False)

    async def _range_read(self, key: str) -> bool:
        """Whether zarr reads byte ranges of chunk ``key`` (its array shards), so block it.

        Zarr reads ranges only of shards; any other chunk is read whole, so its
        object holds exactly its bytes (a trailer would push a chunk of exactly
        4 MiB over the piece size of stores that split objects, such as
        SeaweedFS's, and cost a second piece per chunk). Either answer is safe:
        a range of an unblocked chunk is verified by reading the chunk whole once.
        """
        dirname = key
        while dirname:
            dirname = dirname.rpartition("/")[0]
            doc = await self.get_meta(f"{dirname}/zarr.json" if dirname else "zarr.json")
            if doc is not None:
                return b'"sharding_indexed"' in doc
        return True  # no array above the key: keep the range reads verified

    async def _write_packed(self, key: str, data: bytes, crc: int) -> None:
        # Append to the open pack and record the ref in one critical section, so that a
        # concurrent fork()/changes() either sees neither or both (and then stores the pack).
        inherited = await self._inherited_view(key)
        with self.lock:
            self.check_writable()
            pack_id, offset, claims = self.packs.append_locked(data)
            self._record_locked(key, (pack_id, offset, len(data), crc), False, inherited)
        if claims:
            await self.packs.store(claims)

    async def remove(self, key: str) -> None:
        """Record the deletion of ``key`` (no-op if it does not exist)."""
        self.check_writable()
        if not await self.exists(key):
            return
        await self._mark_writer()
        await self._record(key, None, meta=is_meta_key(key))

    async def delete_dir(self, prefix: str) -> None:
        """Delete every key under directory ``prefix`` ("" = everything), in O(metadata).

        Committed chunks are not listed: the prefix is recorded once (a node
        -level deletion the commit applies to whole manifests); metadata
        documents and uncommitted chunks under it are deleted one by one.

        Raises
        ------
        ReadOnlyError
            If the workspace is read-only or committed.
        """
        self.check_writable()
        path = prefix.strip("/")
        head = f"{path}/" if path else ""
        await self._mark_writer()
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        inherited = await self.inherited_chunks()
        committed = any(
            path == "" or n == path or n.startswith(head) or head.startswith(f"{n}/" if n else "")
            for n in snap.nodes
        )

        def inside(layers: dict[str, NodeManifests]) -> list[str]:  # nodes holding the prefix
            return [n for n in layers if n != path and head.startswith(f"{n}/" if n else "")]

        # pre-built layers: those under the prefix go; a node that holds the prefix (and every
        # inherited one that reaches it) is loaded, so that its keys can be deleted one by one
        own_inside = await layered_keys(self.assets, self.cs.layers, inside(self.cs.layers))
        reached = [
            n
            for n in self.inh_layers
            if (f"{n}/" if n else "").startswith(head) or n in inside(self.inh_layers)
        ]
        inh_layered = await layered_keys(self.assets, self.inh_layers, reached)
        with self.lock:
            self.check_writable()
            if self.cs.layers:
                mine = self.cs.layers
                for key, ref in own_inside.items():
                    self.cs.chunks.setdefault(key, ref)
                self.cs.layers = {
                    n: lnm
                    for n, lnm in mine.items()
                    if n not in inside(mine) and not (path == "" or n == path or n.startswith(head))
                }
            view_meta = {**snap.meta, **self.inh_meta, **self.cs.meta}
            for key, doc in view_meta.items():
                if doc is not None and key.startswith(head):
                    self._record_locked(key, None, True, self.inh_meta)
            for key, ref in inh_layered.items():
                if ref is not None and key.startswith(head) and key not in inherited:
                    self._record_locked(key, None, False, {key: ref})
            for key in [k for k in self.cs.chunks if k.startswith(head)]:
                del self.cs.chunks[key]  # written before the deletion
                self.cs.prev_chunks.pop(key, None)
            for key, ref in inherited.items():
                if ref is not None and key.startswith(head):
                    self._record_locked(key, None, False, inherited)
            if committed:
                self.cs.cleared = {p for p in self.cs.cleared if not (p + "/").startswith(head)}
                self.cs.cleared.add(path)
            self.chunks_version += 1

    # -- snapshots of the state -------------------------------------------------

    def freeze(self) -> ChangeSet:
        """The change set itself (not a copy), with every pack stored, for a commit.

        Writes are refused until ``frozen`` is reset.
        """
        with self.lock:
            pending = self.packs.close_locked()
            self.frozen = True
            cs = self.cs
        try:
            self.packs.ensure_stored(pending)
        except BaseException:
            self.frozen = False
            raise
        return cs

    def changes(self) -> ChangeSet:
        """A copy of the own change set, with every pack it points into stored first."""
        with self.lock:
            pending = self.packs.close_locked()
            cs = self.cs.copy()
        self.packs.ensure_stored(pending)
        return cs

    def discard(self) -> None:
        """Drop every uncommitted change."""
        with self.lock:
            if self.ticket is not None:
                self.ticket.dirty = False
            self.cs = ChangeSet(self.assets.repo_id, self.base)
            self.packs.discard_locked()
            self.chunks_version += 1
