"""Session: a base snapshot plus a thread-safe change set; commit, fork, merge.

A writable session records every write in its :class:`ChangeSet`. Chunk
bytes go to storage as they are written (``chunks/<id>``); only references
stay in memory, so what a worker sends back is small. ``commit`` publishes
all of it at once by appending one entry to the branch's create-only log,
rebasing onto commits that landed meanwhile when they do not conflict.

Forks (``fork()``, or pickled copies made under ``allow_pickling()``) see
their parent's uncommitted state and record only their own changes, which
``merge`` brings back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from icechunk_dask._changeset import ChangeSet
from icechunk_dask._commit import (
    UNMERGED_MESSAGE,
    commit_changes,
    unmerged_writers,
    validate_metadata,
)
from icechunk_dask._exceptions import (
    CorruptObjectError,
    InvalidInputError,
    NoChangesToCommitError,
    NotFoundError,
    PicklingNotAllowedError,
    ReadOnlyError,
    SessionStateError,
    UnmergedWritesError,
)
from icechunk_dask._flush import shard_of
from icechunk_dask._repository import Repository
from icechunk_dask._status import SessionStatus, compute_status
from icechunk_dask._sync import run
from icechunk_dask.format import (
    ChunkRef,
    chunk_checksum,
    decode_scratch,
    encode_scratch,
    new_id,
)
from icechunk_dask.format._keys import is_meta_key, split_key

if TYPE_CHECKING:
    from icechunk_dask._store import SessionStore

__all__ = ["ALLOW_PICKLING_HOOKS", "Session", "SessionStatus"]

#: Context-manager factories entered (outermost level only) by ``Session.allow_pickling``.
#: ``icechunk_dask.dask`` registers one that makes plain ``ds.to_zarr(session.store)``
#: bring worker-side writes back on a distributed cluster.
ALLOW_PICKLING_HOOKS: list[Callable[[Session], contextlib.AbstractContextManager[None]]] = []

READ_ONLY_MESSAGE = "store was opened in read-only mode and does not support writing"

PICKLING_MESSAGE = (
    "A writable session cannot be pickled without opting in: a copy sent to another "
    "process (a Dask worker, a process pool) records its writes in its own change set, and "
    "they are lost unless that copy comes back and is merged. Choose one:\n"
    "  * icechunk_dask.to_zarr(ds, session) or icechunk_dask.store_sessions(...) for Dask "
    "arrays: they fork, write and merge for you;\n"
    "  * session.fork() for a picklable child whose changes you merge back with "
    "session.merge(...);\n"
    "  * 'with session.allow_pickling():' to send the session itself, then return the "
    "copies and merge them with merge_sessions(session, *copies) before commit.\n"
    "To only read data, pass repo.readonly_session(...) instead."
)

_MISSING: Any = object()

#: Chunks of at most this many bytes are packed: appended to the session's open pack object
#: (one ``chunks/<id>`` holding many chunks, referenced by offset) instead of one object each.
PACK_MAX_CHUNK = 256 * 1024
#: An open pack is stored once it holds this many bytes (and, at the latest, when the
#: session's changes leave it: ``changes()``, ``fork()``, pickling, ``commit()``).
PACK_TARGET = 8 * 1024 * 1024


class Session:
    """A view of one snapshot, writable or not, that records and commits changes.

    Sessions are made by :meth:`Repository.writable_session` and
    :meth:`Repository.readonly_session`; do not construct them directly.
    """

    def __init__(
        self,
        repo: Repository,
        snapshot_id: str,
        *,
        branch: str | None,
        read_only: bool,
        session_id: str | None = None,
        is_fork: bool = False,
        tracked: bool = False,
    ) -> None:
        self._repo = repo
        self._base = snapshot_id
        self._branch = branch
        self._read_only = read_only
        self._committed = False
        self._is_fork = is_fork
        self._tracked = tracked
        self._session_id = session_id or new_id()
        self._cs = ChangeSet(repo.repo_id, snapshot_id)
        self._inh_meta: dict[str, bytes | None] = {}
        self._inh_chunks: dict[str, ChunkRef | None] | None = {}
        self._inh_scratch: str | None = None
        self._lock = threading.Lock()
        self._load_lock = asyncio.Lock()
        # Chunk object ids are the writer id plus a counter. The writer id is the session id
        # (unique in the repository) plus 80 random bits (unique among the session's forks,
        # even millions of them): the shared prefix compresses away in change records.
        self._writer = self._session_id + new_id(16)
        self._seq = itertools.count()
        self._marker_done = False
        self._pickle_depth = 0
        self._pickle_stack: contextlib.ExitStack | None = None
        self._chunks_version = 0
        self._scratch_cache: tuple[int, str] | None = None
        self._store: SessionStore | None = None
        # Packed small chunks (guarded by _lock): the open pack (object id, parts by offset,
        # size); closed packs not stored yet (in flight, or failed: retried by the next
        # flush), readable from memory until they are; and who is storing which.
        self._pack_id: str | None = None
        self._pack: dict[int, bytes] = {}
        self._pack_size = 0
        self._unstored: dict[str, dict[int, bytes]] = {}
        self._inflight: dict[str, threading.Event] = {}

    # -- properties -----------------------------------------------------------

    @property
    def repository(self) -> Repository:
        """The repository this session belongs to."""
        return self._repo

    @property
    def store(self) -> SessionStore:
        """The Zarr store through which this session reads and writes."""
        if self._store is None:
            from icechunk_dask._store import SessionStore

            self._store = SessionStore(self)
        return self._store

    @property
    def branch(self) -> str | None:
        """The branch this session commits to (``None`` for forks and snapshot views)."""
        return self._branch

    @property
    def snapshot_id(self) -> str:
        """The snapshot the session is based on (after commit: the new snapshot)."""
        return self._base

    @property
    def session_id(self) -> str:
        """Id shared by a session, its forks and its pickled copies."""
        return self._session_id

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (read-only sessions, and sessions after commit)."""
        return self._read_only

    @property
    def is_fork(self) -> bool:
        """Whether this is a fork or a pickled copy (it merges back; it cannot commit)."""
        return self._is_fork

    @property
    def has_uncommitted_changes(self) -> bool:
        """Whether this session holds changes of its own."""
        return bool(self._cs)

    def __repr__(self) -> str:
        kind = "read-only" if self._read_only else ("fork" if self._is_fork else "writable")
        return (
            f"<Session {kind} branch={self._branch!r} snapshot={self._base} "
            f"changes={len(self._cs)}>"
        )

    # -- reading --------------------------------------------------------------

    async def _inherited_chunks(self) -> dict[str, ChunkRef | None]:
        chunks = self._inh_chunks
        if chunks is not None:
            return chunks
        async with self._load_lock:
            if self._inh_chunks is None:
                assert self._inh_scratch is not None
                key = self._inh_scratch
                self._inh_chunks = decode_scratch(await self._repo.storage.get(key), key)
            return self._inh_chunks

    async def _committed_ref(self, key: str) -> ChunkRef | None:
        snap = await self._repo.get_snapshot(self._base)
        node, suffix = split_key(key)
        nm = snap.nodes.get(node)
        if nm is None:
            return None
        mid = nm.shards[shard_of(suffix, len(nm.shards))]
        if mid is None:
            return None
        return (await self._repo.get_manifest(mid)).get(suffix)

    async def get_meta(self, key: str) -> bytes | None:
        """The current metadata document at ``key`` (``None`` if absent)."""
        doc = self._cs.meta.get(key, _MISSING)
        if doc is _MISSING:
            doc = self._inh_meta.get(key, _MISSING)
        if doc is _MISSING:
            doc = (await self._repo.get_snapshot(self._base)).meta.get(key)
        return doc  # type: ignore[no-any-return]

    async def get_ref(self, key: str) -> ChunkRef | None:
        """The current chunk reference at ``key`` (``None`` if absent)."""
        ref = self._cs.chunks.get(key, _MISSING)
        if ref is _MISSING:
            inherited = self._inh_chunks
            if inherited is None or inherited:
                ref = (await self._inherited_chunks()).get(key, _MISSING)
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
        pending = self._pending_part(loc, offset)
        if pending is not None:
            return pending[start:] if length is None else pending[start : start + length]
        obj = f"chunks/{loc}"
        whole = start == 0 and (length is None or length >= size)
        verified_key = f"{loc}:{offset}:{size}:{crc}"
        # A byte range cannot be checked on its own: the first read of any part of a chunk
        # reads and checks all of it; later ranges of a verified chunk read just the range.
        verify = whole or self._repo.verified_chunks.get(verified_key) is None
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
            data = await self._repo.storage.get_range_then(obj, offset + read_at, read_len, check)
        except NotFoundError:
            raise CorruptObjectError(
                f"chunk {key!r} is referenced but its object {obj!r} is missing: the "
                "repository is damaged",
                key=obj,
            ) from None
        if verify:
            self._repo.verified_chunks.put(verified_key, True)
        return data if whole or not verify else data[start : start + want]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists in this session's view."""
        if is_meta_key(key):
            return await self.get_meta(key) is not None
        return await self.get_ref(key) is not None

    async def list_prefix(self, prefix: str) -> set[str]:
        """All keys starting with ``prefix`` in this session's view."""
        snap = await self._repo.get_snapshot(self._base)
        keys = {k for k in snap.meta if k.startswith(prefix)}
        for node, nm in snap.nodes.items():
            head = f"{node}/" if node else ""
            if not (head.startswith(prefix) or prefix.startswith(head)):
                continue
            for mid in nm.shards:
                if mid is None:
                    continue
                for suffix in await self._repo.get_manifest(mid):
                    k = head + suffix
                    if k.startswith(prefix):
                        keys.add(k)
        layers: list[dict[str, Any]] = [self._inh_meta, await self._inherited_chunks()]
        layers += [self._cs.meta, self._cs.chunks]
        for layer in layers:
            for k, v in list(layer.items()):
                if not k.startswith(prefix):
                    continue
                if v is None:
                    keys.discard(k)
                else:
                    keys.add(k)
        return keys

    # -- writing --------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._read_only:
            why = "it was committed" if self._committed else "it is a read-only session"
            raise ReadOnlyError(
                f"{READ_ONLY_MESSAGE}: {why}. Start a new one with "
                "repo.writable_session(branch) to write"
            )

    async def _mark_writer(self) -> None:
        # A tracked copy (any session rebuilt from a pickle) leaves a marker before its
        # first change, so that commit can tell whether its changes came back.
        if self._tracked and not self._marker_done:
            key = f"sessions/{self._session_id}/{self._writer}"
            await self._repo.storage.put(key, b"")
            with self._lock:
                self._cs.writers.add(self._writer)
                self._marker_done = True

    async def _record(self, key: str, value: Any, meta: bool) -> None:
        inherited: dict[str, Any] = self._inh_meta if meta else await self._inherited_chunks()
        with self._lock:
            self._check_writable()
            self._record_locked(key, value, meta, inherited)

    def _record_locked(self, key: str, value: Any, meta: bool, inherited: dict[str, Any]) -> None:
        """Record ``value`` at ``key``, remembering what it overrides (hold ``_lock``)."""
        own = self._cs.meta if meta else self._cs.chunks
        if key not in own and key in inherited:
            prev = self._cs.prev_meta if meta else self._cs.prev_chunks
            prev[key] = inherited[key]
        own[key] = value
        if not meta:
            self._chunks_version += 1

    async def write(self, key: str, data: bytes) -> None:
        """Record a write of ``data`` at ``key``.

        Raises
        ------
        ReadOnlyError
            If the session is read-only or committed.
        """
        self._check_writable()
        await self._mark_writer()
        if is_meta_key(key):
            await self._record(key, bytes(data), meta=True)
            return
        size = len(data)
        crc = chunk_checksum(data)
        if size <= self._repo.config.inline_threshold:
            ref: ChunkRef = (bytes(data), 0, size, crc)
        elif size <= PACK_MAX_CHUNK:
            await self._write_packed(key, bytes(data), crc)
            return
        else:
            chunk_id = f"{self._writer}{next(self._seq):x}"
            await self._repo.storage.put(f"chunks/{chunk_id}", data)
            ref = (chunk_id, 0, size, crc)
        await self._record(key, ref, meta=False)

    async def _write_packed(self, key: str, data: bytes, crc: int) -> None:
        # Append to the open pack and record the ref in one critical section, so that a
        # concurrent fork()/changes() either sees neither or both (and then stores the pack).
        inherited = await self._inherited_chunks()
        with self._lock:
            self._check_writable()
            if self._pack_id is None:
                self._pack_id = f"{self._writer}{next(self._seq):x}"
            pack_id, offset = self._pack_id, self._pack_size
            self._pack[offset] = data
            self._pack_size += len(data)
            self._record_locked(key, (pack_id, offset, len(data), crc), False, inherited)
            claims: list[tuple[str, dict[int, bytes]]] = []
            if self._pack_size >= PACK_TARGET:  # full: store it now
                self._close_pack()
                claims = self._claim({pack_id})[0]
        if claims:
            await self._store_packs(claims)

    def _pending_part(self, loc: str, offset: int) -> bytes | None:
        """A packed chunk that is not in storage yet (``None`` if it is)."""
        if loc == self._pack_id or loc in self._unstored:
            with self._lock:
                parts = self._pack if loc == self._pack_id else self._unstored.get(loc)
                if parts is not None:
                    return parts.get(offset)
        return None

    def _close_pack(self) -> set[str]:
        """Close the open pack; return the ids of every pack not stored yet (hold ``_lock``)."""
        if self._pack_id is not None:
            self._unstored[self._pack_id] = self._pack
            self._pack_id, self._pack, self._pack_size = None, {}, 0
        return set(self._unstored)

    def _claim(
        self, ids: set[str]
    ) -> tuple[list[tuple[str, dict[int, bytes]]], list[threading.Event]]:
        """Claim the packs of ``ids`` nobody is storing; events of the others (hold ``_lock``)."""
        claims = [(i, self._unstored[i]) for i in ids if i not in self._inflight]
        waits = [self._inflight[i] for i in ids if i in self._inflight]
        for i, _ in claims:
            self._inflight[i] = threading.Event()
        return claims, waits

    async def _store_packs(self, claims: list[tuple[str, dict[int, bytes]]]) -> None:
        async def one(pack_id: str, parts: dict[int, bytes]) -> None:
            stored = False
            try:
                await self._repo.storage.put(f"chunks/{pack_id}", b"".join(parts.values()))
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

    def _ensure_stored(self, ids: set[str]) -> None:
        """Block until the packs ``ids`` are in storage (storing or retrying them as needed).

        Call before chunk refs leave the session (a record, a fork, a pickle, a commit):
        they may point into these packs. Raises if a pack cannot be stored; it stays
        pending, and the next call retries it.
        """
        while ids:
            with self._lock:
                ids &= self._unstored.keys()
                claims, waits = self._claim(ids)
            if claims:
                run(self._store_packs(claims))
            for event in waits:
                event.wait()

    async def remove(self, key: str) -> None:
        """Record the deletion of ``key`` (no-op if it does not exist)."""
        self._check_writable()
        if not await self.exists(key):
            return
        await self._mark_writer()
        await self._record(key, None, meta=is_meta_key(key))

    # -- status ---------------------------------------------------------------

    def status(self) -> SessionStatus:
        """Summarise this session's changes (including what a fork inherited).

        Returns
        -------
        SessionStatus
            New, updated and deleted groups and arrays, and chunk counts per array.
        """
        snap = run(self._repo.get_snapshot(self._base))
        with self._lock:
            meta = {**self._inh_meta, **self._cs.meta}
            chunks = dict(self._cs.chunks)
        return compute_status(snap.meta, meta, chunks)

    def discard_changes(self) -> None:
        """Drop every uncommitted change of this session."""
        self._check_writable()
        with self._lock:
            self._cs = ChangeSet(self._repo.repo_id, self._base)
            self._pack_id, self._pack, self._pack_size = None, {}, 0
            for pack_id in set(self._unstored) - set(self._inflight):
                del self._unstored[pack_id]
            self._chunks_version += 1

    # -- fork / merge ---------------------------------------------------------

    def _child(self, *, tracked: bool) -> Session:
        child = Session(
            self._repo,
            self._base,
            branch=self._branch,
            read_only=False,
            session_id=self._session_id,
            is_fork=True,
            tracked=tracked,
        )
        return child

    def fork(self) -> Session:
        """Return a picklable child that sees this session's uncommitted state.

        The child records only its own changes; bring them back with
        :meth:`merge`. Forking does no I/O unless this session holds
        uncommitted small chunks in its open pack (stored first, so the child
        can read them) or a pickled fork must carry uncommitted chunk writes
        of its parent (then they are stored once, as a small scratch object,
        when the fork is first pickled).

        Returns
        -------
        Session
            A fork: writable, picklable, cannot commit.

        Raises
        ------
        SessionStateError
            If this session is read-only or committed.
        """
        if self._read_only:
            raise SessionStateError(
                "cannot fork a read-only or committed session; forks are for writing. Use "
                "repo.writable_session(branch).fork()"
            )
        child = self._child(tracked=False)
        with self._lock:
            pending = self._close_pack()  # the child must be able to read every inherited ref
            own_meta, own_chunks = self._cs.meta, self._cs.chunks
            child._inh_meta = {**self._inh_meta, **own_meta} if own_meta else self._inh_meta
            if not own_chunks:
                child._inh_chunks = self._inh_chunks
                child._inh_scratch = self._inh_scratch
            else:
                child._inh_chunks = None if self._inh_chunks is None else dict(self._inh_chunks)
                child._inh_scratch = self._inh_scratch
                if child._inh_chunks is None:
                    child._inh_chunks = dict(run(self._inherited_chunks()))
                child._inh_chunks.update(own_chunks)
                child._inh_scratch = None
        self._ensure_stored(pending)
        return child

    def changes(self) -> ChangeSet:
        """Return a compact, picklable record of this session's own changes.

        Pure: the session keeps its changes. Small chunks still buffered in
        the session's open pack are stored first, because the record points
        into it. A Dask task returns this record; :meth:`merge` accepts it.

        Returns
        -------
        ChangeSet
            A copy of the session's change set.
        """
        with self._lock:
            pending = self._close_pack()  # the refs leave the session: store what they point to
            cs = self._cs.copy()
        self._ensure_stored(pending)
        return cs

    def merge(self, *others: Session | ChangeSet) -> None:
        """Merge forks, pickled copies or change records into this session, in place.

        All or nothing: if any record cannot be merged, the session is unchanged.

        Parameters
        ----------
        *others
            Sessions (forks or copies of this session) or :class:`ChangeSet` records.

        Raises
        ------
        InvalidInputError
            If a record belongs to another repository or another base snapshot.
        ConflictError
            If two records wrote different bytes to one chunk, or conflicting metadata.
        TypeError
            If an argument is neither a Session nor a ChangeSet.
        """
        self._check_writable()
        records: list[ChangeSet] = []
        for other in others:
            if isinstance(other, Session):
                if other is not self:
                    records.append(other.changes())
            elif isinstance(other, ChangeSet):
                records.append(other)
            else:
                raise TypeError(
                    f"merge accepts Session and ChangeSet objects, got {type(other).__name__}"
                )
        with self._lock:
            merged = self._cs.copy()
            for rec in records:
                merged.update(rec)
            self._cs = merged
            self._chunks_version += 1

    # -- pickling -------------------------------------------------------------

    @contextlib.contextmanager
    def allow_pickling(self) -> Iterator[None]:
        """Allow this writable session to be pickled inside the block (nestable).

        Every unpickled copy is a fork that records its own writes and must be
        returned and merged (``merge_sessions(session, *copies)``) before
        :meth:`commit`; commit refuses to proceed if a copy wrote data that
        never came back.

        Yields
        ------
        None
        """
        with self._lock:
            self._pickle_depth += 1
            outer = self._pickle_depth == 1
        stack = contextlib.ExitStack()
        try:
            if outer:
                for hook in ALLOW_PICKLING_HOOKS:
                    stack.enter_context(hook(self))
            yield
        finally:
            stack.close()
            with self._lock:
                self._pickle_depth -= 1

    @property
    def pickling_allowed(self) -> bool:
        """Whether this session may be pickled now."""
        return self._read_only or self._is_fork or self._pickle_depth > 0

    def _scratch_key(self, chunks: dict[str, ChunkRef | None], version: int) -> str | None:
        if not chunks:
            return None
        cached = self._scratch_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        key = f"scratch/{new_id()}"
        run(self._repo.storage.put(key, encode_scratch(self._base, chunks)))
        self._scratch_cache = (version, key)
        return key

    def __reduce__(self) -> tuple[Any, ...]:
        if self._read_only:
            return (_rebuild_readonly, (self._repo, self._base, self._branch, self._session_id))
        if not self.pickling_allowed:
            raise PicklingNotAllowedError(PICKLING_MESSAGE)
        with self._lock:
            pending = self._close_pack()
            if self._is_fork:
                # a fork travels with its own changes; what it inherited stays inherited
                meta = self._inh_meta
                own: bytes | None = self._cs.to_bytes()
                inherited = self._inh_chunks or {}
                scratch = self._inh_scratch
                # every unpickled copy is tracked: only in-process forks are not
                version, tracked = -1, True
            else:
                # a copy of a root session: the root's changes become the copy's inheritance
                meta = {**self._inh_meta, **self._cs.meta}
                own = None
                inherited = dict(self._cs.chunks)
                scratch = None
                version, tracked = self._chunks_version, True
        self._ensure_stored(pending)
        if scratch is None and inherited:
            scratch = self._scratch_key(inherited, version)
        state = (self._repo, self._base, self._branch, self._session_id, meta, scratch, own)
        return (_rebuild_fork, (*state, tracked))

    # -- commit ---------------------------------------------------------------

    def commit(
        self,
        message: str,
        metadata: dict[str, Any] | None = None,
        *,
        rebase_tries: int = 1000,
    ) -> str:
        """Commit every change of this session atomically to its branch.

        If the branch moved since the session started, the changes are
        rebased onto the new tip when they do not touch the same keys (with a
        jittered exponential backoff between attempts). After a commit the
        session is read-only at the new snapshot.

        Parameters
        ----------
        message
            Commit message.
        metadata
            JSON-serialisable properties stored with the snapshot.
        rebase_tries
            How many times to retry when other commits land first.

        Returns
        -------
        str
            The new snapshot id.

        Raises
        ------
        NoChangesToCommitError
            If there is nothing to commit.
        RebaseFailedError
            If commits that landed meanwhile changed the same keys (named in the error).
        UnmergedWritesError
            If pickled copies of this session wrote data that was never merged back.
        SessionStateError
            If this is a fork (merge it into its parent instead).
        InvalidInputError
            If a metadata document is not valid Zarr v3, or ``metadata`` is not JSON.
        """
        self._check_writable()
        if self._is_fork:
            raise SessionStateError(
                "a fork cannot commit: merge it into the session it was forked from "
                "(session.merge(fork) or merge_sessions(session, fork)) and commit that one"
            )
        if not isinstance(message, str):
            raise InvalidInputError(f"the commit message must be a str, got {message!r}")
        tries: object = rebase_tries  # checked at run time: callers may pass anything
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 0:
            raise InvalidInputError(
                f"rebase_tries must be an int >= 0 (0: never rebase), got {rebase_tries!r}"
            )
        try:
            meta_json = json.loads(json.dumps(metadata or {}))
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"commit metadata must be JSON-serialisable: {e}") from e
        if not isinstance(meta_json, dict):
            raise InvalidInputError("commit metadata must be a dict")
        with self._lock:
            pending = self._close_pack()
            cs = self._cs.copy()
        self._ensure_stored(pending)
        if not cs:
            if run(unmerged_writers(self._repo, self._session_id, cs)):
                raise UnmergedWritesError(f"some {UNMERGED_MESSAGE}")
            raise NoChangesToCommitError(
                "there are no changes to commit; write data through session.store first"
            )
        for key, doc in cs.meta.items():
            if doc is not None:
                validate_metadata(key, doc)
        assert self._branch is not None
        new_id_ = run(
            commit_changes(
                self._repo,
                self._branch,
                self._session_id,
                self._base,
                cs,
                message,
                meta_json,
                rebase_tries,
            )
        )
        with self._lock:
            self._base = new_id_
            self._read_only = True
            self._committed = True
            self._cs = ChangeSet(self._repo.repo_id, new_id_)
        return new_id_


def _rebuild_readonly(
    repo: Repository, snapshot_id: str, branch: str | None, session_id: str
) -> Session:
    return Session(repo, snapshot_id, branch=branch, read_only=True, session_id=session_id)


def _rebuild_fork(
    repo: Repository,
    base: str,
    branch: str | None,
    session_id: str,
    meta: dict[str, bytes | None],
    scratch: str | None,
    own: bytes | None,
    tracked: bool,
) -> Session:
    repo.storage.check_usable()
    s = Session(
        repo,
        base,
        branch=branch,
        read_only=False,
        session_id=session_id,
        is_fork=True,
        tracked=tracked,
    )
    s._inh_meta = meta
    if scratch is not None:
        s._inh_chunks = None
        s._inh_scratch = scratch
    if own is not None:
        s._cs = ChangeSet.from_bytes(own)
    return s
