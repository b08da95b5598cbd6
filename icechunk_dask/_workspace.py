"""A workspace: one snapshot plus uncommitted changes, with the read and write paths.

Reads look through three layers: the workspace's own change set, what it
inherited from the session it was forked from (uncommitted metadata, and
uncommitted chunk references, possibly from a scratch object), and the base
snapshot's manifests. Writes store chunk bytes at once (small chunks in
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
from icechunk_dask._exceptions import (
    READ_ONLY_MESSAGE,
    CorruptObjectError,
    NotFoundError,
    ReadOnlyError,
)
from icechunk_dask._fork import ForkTicket, leave_marker, load_scratch
from icechunk_dask._manifests import load_node, lookup
from icechunk_dask._packing import PACK_MAX_CHUNK, PackBuffer
from icechunk_dask.format import ChunkRef, chunk_checksum, new_id
from icechunk_dask.format._keys import is_meta_key
from icechunk_dask.format._locate import node_of

__all__ = ["Workspace"]

_MISSING: Any = object()


class Workspace:
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
        if ref is _MISSING:
            inherited = self.inh_chunks
            if inherited is None or inherited:
                ref = (await self.inherited_chunks()).get(key, _MISSING)
        if ref is _MISSING:
            ref = await self._committed_ref(key)
        return ref  # type: ignore[no-any-return]

    async def read(self, key: str, start: int = 0, length: int | None = None) -> bytes | None:
        """Read a key's bytes (optionally a range); ``None`` if the key does not exist.

        Every chunk is verified against the checksum in the manifest: a whole
        read directly, a byte range by checking the whole chunk the first time
        any part of it is read (remembered per repository object).

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
        loc, offset, size, crc = ref
        if isinstance(loc, bytes):
            return loc[start:] if length is None else loc[start : start + length]
        pending = self.packs.pending_part(loc, offset)
        if pending is not None:
            return pending[start:] if length is None else pending[start : start + length]
        obj = f"chunks/{loc}"
        whole = start == 0 and (length is None or length >= size)
        verified_key = f"{loc}:{offset}:{size}:{crc}"
        # A byte range cannot be checked on its own: the first read of any part of a chunk
        # reads and checks all of it; later ranges of a verified chunk read just the range.
        verify = whole or self.assets.verified_chunks.get(verified_key) is None
        start = min(start, size)
        want = size - start if length is None else max(0, min(length, size - start))
        read_at, read_len = (0, size) if verify else (start, want)

        def check(data: bytes) -> bytes:
            if len(data) != read_len:
                raise CorruptObjectError(
                    f"chunk {key!r} (object {obj!r}) is truncated: {len(data)} of {read_len} bytes",
                    key=obj,
                )
            if verify and chunk_checksum(data) != crc:
                raise CorruptObjectError(
                    f"chunk {key!r} (object {obj!r}) fails its checksum: it is damaged",
                    key=obj,
                )
            return data

        try:
            data = await self.assets.storage.get_range_then(obj, offset + read_at, read_len, check)
        except NotFoundError:
            raise CorruptObjectError(
                f"chunk {key!r} is referenced but its object {obj!r} is missing: the "
                "repository is damaged",
                key=obj,
            ) from None
        if verify:
            self.assets.verified_chunks.put(verified_key, True)
        return data if whole or not verify else data[start : start + want]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists in this workspace's view."""
        if is_meta_key(key):
            return await self.get_meta(key) is not None
        return await self.get_ref(key) is not None

    async def _committed_keys(self, under: str) -> set[str]:
        """Committed keys that may start with ``under`` (a superset is fine), cleared ones excluded."""
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        cleared = self._cleared()
        keys = {k for k in snap.meta if k.startswith(under)}
        for node, nm in snap.nodes.items():
            head = f"{node}/" if node else ""
            if not (head.startswith(under) or under.startswith(head)):
                continue
            if any(p == "" or head.startswith(p + "/") for p in cleared):
                continue
            keys.update(head + suffix for suffix in await load_node(self.assets, node, nm))
        if cleared:
            keys = {k for k in keys if is_meta_key(k) or not self.hidden(k, cleared)}
        return keys

    def _overlay(self, keys: set[str], prefix: str, inherited: dict[str, Any]) -> set[str]:
        layers: list[dict[str, Any]] = [self.inh_meta, inherited, self.cs.meta, self.cs.chunks]
        for layer in layers:
            for k, v in list(layer.items()):
                if not k.startswith(prefix):
                    continue
                if v is None:
                    keys.discard(k)
                else:
                    keys.add(k)
        return keys

    async def list_prefix(self, prefix: str) -> set[str]:
        """All keys starting with ``prefix`` in this workspace's view."""
        committed = {k for k in await self._committed_keys(prefix) if k.startswith(prefix)}
        return self._overlay(committed, prefix, await self.inherited_chunks())

    async def list_dir(self, prefix: str) -> set[str]:
        """The names directly under directory ``prefix`` ("" = the root).

        Answered from the snapshot's node tree and the uncommitted changes: a
        node's manifests are read only when the listing reaches into the node
        (or deletions make a node's emptiness uncertain), never for a group.
        """
        head = f"{prefix}/" if prefix else ""
        snap = await self.assets.get_snapshot(self.base, expired_ok=True)
        inherited = await self.inherited_chunks()
        cleared = self._cleared()
        deleted = [
            k for layer in (inherited, self.cs.chunks) for k, v in layer.items() if v is None
        ]
        children: set[str] = set()
        exact: set[str] = set()  # keys that must be checked one by one
        for node, nm in snap.nodes.items():
            nhead = f"{node}/" if node else ""
            if any(p == "" or nhead.startswith(p + "/") for p in cleared):
                continue
            if nhead.startswith(head) and nhead != head:
                child = nhead[len(head) :].split("/", 1)[0]
                uncertain = (
                    not nm.exact
                    or any(k.startswith(nhead) for k in deleted)
                    or any(p.startswith(nhead) for p in cleared)
                )
                if nm.upper_count and not uncertain:
                    children.add(child)
                    continue
            elif not head.startswith(nhead):
                continue
            elif (
                nhead == head
                and nm.encoding is not None
                and nm.encoding[0] == "default"
                and "" not in nm.boxes
                and nm.exact
                and not any(k.startswith(nhead) for k in deleted)
                and not any(p.startswith(nhead) for p in cleared)
            ):
                if nm.upper_count:
                    children.add("c")
                continue
            exact.update(nhead + s for s in await load_node(self.assets, node, nm))
        for key in snap.meta:
            if key.startswith(head):
                exact.add(key)
        if cleared:
            exact = {k for k in exact if is_meta_key(k) or not self.hidden(k, cleared)}
        for key in self._overlay(exact, head, inherited):
            children.add(key[len(head) :].split("/", 1)[0])
        return children

    # -- writing --------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise :class:`ReadOnlyError` if writes are refused."""
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

    async def _record(self, key: str, value: Any, meta: bool) -> None:
        inherited: dict[str, Any] = self.inh_meta if meta else await self.inherited_chunks()
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
            await self.assets.storage.put(f"chunks/{chunk_id}", data)
            ref = (chunk_id, 0, size, crc)
        await self._record(key, ref, meta=False)

    async def _write_packed(self, key: str, data: bytes, crc: int) -> None:
        # Append to the open pack and record the ref in one critical section, so that a
        # concurrent fork()/changes() either sees neither or both (and then stores the pack).
        inherited = await self.inherited_chunks()
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
        with self.lock:
            self.check_writable()
            view_meta = {**snap.meta, **self.inh_meta, **self.cs.meta}
            for key, doc in view_meta.items():
                if doc is not None and key.startswith(head):
                    self._record_locked(key, None, True, self.inh_meta)
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
