"""The repository's objects: storage, settings, caches, snapshot and manifest reads, branch tips.

:class:`AssetManager` is the one layer that reads the repository's objects
and moves branches (the role Icechunk's asset manager plays). Sessions and
the commit protocol use it; :class:`~icechunk_dask.Repository` is a thin
layer above that opens sessions and manages refs.

Every object except branch hints is immutable; a branch is a create-only log
``refs/branch.<name>/<seq>.json`` whose highest entry is the tip, so moving a
branch is one atomic ``put_if_absent`` and exactly one concurrent writer wins
each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any, cast

from icechunk_dask._exceptions import (
    CorruptObjectError,
    IcechunkDaskError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from icechunk_dask.format import (
    ID_PATTERN,
    BranchRef,
    ChunkRef,
    ExpiryMarker,
    RepoConfig,
    Snapshot,
    TagRef,
    TransactionLog,
    branch_ref_key,
    decode_manifest,
    expiry_key,
    now_iso,
    tag_key,
    validate_ref_name,
    validate_snapshot_id,
)
from icechunk_dask.storage import Storage, storage_from_url

__all__ = ["CONFIG_KEY", "AssetManager", "check_storage"]

CONFIG_KEY = "config.json"


class _LRU:
    """A small thread-safe LRU cache weighted by item size."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: str, value: Any, weight: int = 1) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (value, weight)
            self._weight += weight
            while self._weight > self.capacity and len(self._items) > 1:
                _, (_, w) = self._items.popitem(last=False)
                self._weight -= w

    def discard(self, key: str) -> None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is not None:
                self._weight -= item[1]


def check_storage(storage: object) -> Storage:
    """Return the usable :class:`Storage` that ``storage`` is or names (a path or a URL).

    Raises
    ------
    InvalidInputError
        If ``storage`` is neither a storage nor a location, or cannot be used here.
    """
    if isinstance(storage, str | os.PathLike):
        storage = storage_from_url(storage)
    if not isinstance(storage, Storage):
        raise InvalidInputError(
            "expected a storage such as local_filesystem_storage(path), a path or a URL "
            f"(s3://bucket/prefix), got {storage!r}"
        )
    storage.check_usable()
    return storage


class AssetManager:
    """Reads and caches a repository's objects, and moves its branches.

    One instance per repository and process is shared by every handle and
    session (an unpickled copy finds the process's instance, caches included).

    Parameters
    ----------
    storage : Storage
        Where the repository lives.
    config : RepoConfig
        Its settings, as read from ``config.json``.
    """

    def __init__(self, storage: Storage, config: RepoConfig) -> None:
        self.storage = storage
        self.config = config
        self._snapshots = _LRU(256)
        self._manifests = _LRU(2_000_000)
        #: chunk objects whose whole bytes passed their checksum: partial reads of them
        #: (inner chunks of a shard) need no whole read to be trusted
        self.verified_chunks = _LRU(200_000)
        #: the block checksums of blocked chunk objects (weighted by bytes)
        self.trailers = _LRU(64 << 20)
        #: expiry markers read (immutable: a snapshot once expired stays expired)
        self._expiry = _LRU(100_000)
        #: the newest entry this process saw of each branch log, ``(seq, bytes)``
        self._tips: dict[str, tuple[int, bytes]] = {}
        #: when a commit of this process last lost the race for each branch (monotonic)
        self.lost_race_at: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<AssetManager {self.storage.url} id={self.config.repo_id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (shared_assets, (self.storage, self.config))

    @property
    def repo_id(self) -> str:
        """The repository's unique id."""
        return self.config.repo_id

    # -- immutable objects ----------------------------------------------------

    async def get_snapshot(self, snapshot_id: str, *, expired_ok: bool = False) -> Snapshot:
        """Fetch (and cache) a snapshot.

        Parameters
        ----------
        snapshot_id : str
            The snapshot.
        expired_ok : bool
            Also return a snapshot that ``expire_snapshots`` expired, while it is
            still stored (sessions already open on it, rebases); otherwise an
            expired snapshot is an error.

        Raises
        ------
        ExpiredSnapshotError
            If it was expired (and ``expired_ok`` is false, or it was collected since).
        NotFoundError
            If there is no such snapshot.
        CorruptObjectError
            If the stored object is damaged.
        """
        if not expired_ok:
            known = self._expiry.get(snapshot_id)
            if known is not None:
                raise known.error()
        cached = self._snapshots.get(snapshot_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        key = f"snapshots/{snapshot_id}"
        if expired_ok:
            data = await self._get_or_none(key)
            marker = None if data is not None else await self.get_expiry(snapshot_id)
        else:  # look for its expiry marker at the same time
            data, marker = await asyncio.gather(
                self._get_or_none(key), self.get_expiry(snapshot_id)
            )
        if marker is not None:
            raise marker.error()
        if data is None:
            raise NotFoundError(
                f"snapshot {snapshot_id} does not exist in the repository at {self.storage.url}"
            )
        snap = Snapshot.decode(data, key)
        self._snapshots.put(snapshot_id, snap)
        return snap

    async def _get_or_none(self, key: str) -> bytes | None:
        with contextlib.suppress(NotFoundError):
            return await self.storage.get(key)
        return None

    async def get_expiry(self, snapshot_id: str) -> ExpiryMarker | None:
        """The expiry marker of a snapshot, ``None`` if it was not expired.

        Raises
        ------
        CorruptObjectError
            If the marker is damaged or belongs to another snapshot.
        """
        cached = self._expiry.get(snapshot_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        key = expiry_key(snapshot_id)
        data = await self._get_or_none(key)
        if data is None:
            return None
        marker = ExpiryMarker.decode(data, key)
        self._expiry.put(snapshot_id, marker)
        return marker

    def note_expired(self, marker: ExpiryMarker) -> None:
        """Remember that a snapshot was expired (drops it from the snapshot cache)."""
        self._expiry.put(marker.snapshot_id, marker)
        self._snapshots.discard(marker.snapshot_id)

    def forget_expired(self, snapshot_id: str) -> None:
        """Forget an expiry this process recorded (its marker was withdrawn)."""
        self._expiry.discard(snapshot_id)

    async def get_manifest(
        self, manifest_id: str, node: str | None = None, box: str | None = None
    ) -> dict[str, ChunkRef | None]:
        """Fetch (and cache) one manifest: key suffix -> reference (``None``: tombstone).

        Parameters
        ----------
        manifest_id : str
            The manifest.
        node, box : str or None
            Where the snapshot says it belongs (checked against its header).

        Raises
        ------
        CorruptObjectError
            If it is damaged, missing, or belongs to another node or box.
        """
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        key = f"manifests/{manifest_id}"
        try:
            data = await self.storage.get(key)
        except NotFoundError:
            raise CorruptObjectError(
                f"manifest {key!r} is referenced but missing: the repository is damaged",
                key=key,
            ) from None
        entries = await asyncio.to_thread(decode_manifest, data, key, node=node, box=box)
        self._manifests.put(manifest_id, entries, max(1, len(entries)))
        return entries

    async def get_transaction_log(self, snapshot_id: str) -> TransactionLog:
        """Fetch the transaction log of a commit."""
        key = f"transactions/{snapshot_id}"
        return TransactionLog.decode(await self.storage.get(key), key)

    # -- branches -------------------------------------------------------------

    async def branch_tip(self, branch: str) -> tuple[int, BranchRef | None]:
        """Return ``(seq, ref)`` of a branch's newest log entry (``(-1, None)`` if none).

        The entry this process saw last is read again together with the next
        one (two requests, one round trip): entries are create-only, so while
        it reads back byte for byte (it carries a unique token) the log still
        holds it, and the tip is it or past it. Otherwise the hint, then a
        listing, find the tip.
        """
        known = self._tips.get(branch)
        if known is not None:
            seq, data = known
            again, nxt = await asyncio.gather(
                self._get_or_none(branch_ref_key(branch, seq)),
                self._get_or_none(branch_ref_key(branch, seq + 1)),
                return_exceptions=True,
            )
            for failed in (again, nxt):
                if isinstance(failed, BaseException):
                    raise failed
            if again == data:
                return await self._newest(branch, seq, data, cast("bytes | None", nxt))
        prefix = f"refs/branch.{branch}/"
        seq = 0
        with contextlib.suppress(NotFoundError, ValueError):
            seq = int((await self.storage.get(prefix + "hint.json")).decode())
        try:
            data = await self.storage.get(branch_ref_key(branch, seq))
        except NotFoundError:
            if seq == 0:
                return -1, None
            seq, found = await self._tip_by_listing(branch)
            if found is None:
                return -1, None
            data = found
        return await self._newest(
            branch, seq, data, await self._get_or_none(branch_ref_key(branch, seq + 1))
        )

    async def _newest(
        self, branch: str, seq: int, data: bytes, nxt: bytes | None
    ) -> tuple[int, BranchRef]:
        """Walk the log from entry ``seq`` (``nxt``: entry ``seq + 1`` or None) to its end."""
        while nxt is not None:
            seq, data = seq + 1, nxt
            nxt = await self._get_or_none(branch_ref_key(branch, seq + 1))
        ref = BranchRef.decode(data, branch_ref_key(branch, seq))
        self._tips[branch] = (seq, data)
        return seq, ref

    async def _tip_by_listing(self, branch: str) -> tuple[int, bytes | None]:
        prefix = f"refs/branch.{branch}/"
        seqs = [
            int(k[len(prefix) : -5])
            for k in await self.storage.list(prefix)
            if k.endswith(".json") and k[len(prefix) : -5].isdigit()
        ]
        if not seqs:
            return -1, None
        seq = max(seqs)
        return seq, await self.storage.get(branch_ref_key(branch, seq))

    async def try_advance_branch(
        self, branch: str, seq: int, snapshot_id: str | None, parent_id: str | None, **kw: Any
    ) -> bool:
        """Append entry ``seq`` to a branch log; ``False`` if another writer got there first."""
        ref = BranchRef(snapshot_id, parent_id, uuid.uuid4().hex, now_iso(), **kw)
        key, data = branch_ref_key(branch, seq), ref.encode(branch, seq)
        try:
            won = await self.storage.put_if_absent(key, data)
        except StorageError as e:
            # The entry may have landed with its acknowledgement lost. It carries a unique
            # token, so reading it back tells whether this writer won.
            try:
                won = await self.storage.get(key) == data
            except IcechunkDaskError:
                raise e from None
        if won:
            self._tips[branch] = (seq, data)
            with contextlib.suppress(IcechunkDaskError):  # the hint is only an optimisation
                await self.storage.put(f"refs/branch.{branch}/hint.json", str(seq).encode())
        return won

    async def lookup_branch(self, branch: str) -> tuple[int, str]:
        """Return ``(seq, snapshot id)`` of a branch's tip.

        Raises
        ------
        NotFoundError
            If the branch does not exist.
        """
        validate_ref_name(branch, "branch")
        seq, ref = await self.branch_tip(branch)
        if ref is None or ref.deleted or ref.snapshot_id is None:
            hint = ""
            if ID_PATTERN.fullmatch(branch):
                hint = (
                    f"; {branch!r} looks like a snapshot id: pass it as snapshot_id= "
                    f"(repo.readonly_session(snapshot_id={branch!r}))"
                )
            raise NotFoundError(
                f"branch {branch!r} does not exist; existing branches: "
                f"{sorted(await self.list_branches())}{hint}"
            )
        return seq, ref.snapshot_id

    async def list_branches(self) -> set[str]:
        """The names of all live branches."""
        names = {
            k[len("refs/branch.") :].split("/", 1)[0]
            for k in await self.storage.list("refs/branch.")
        }
        out = set()
        for name in names:
            _, ref = await self.branch_tip(name)
            if ref is not None and not ref.deleted:
                out.add(name)
        return out

    # -- tags -----------------------------------------------------------------

    async def lookup_tag(self, tag: str) -> str:
        """The snapshot id a tag points at.

        Raises
        ------
        NotFoundError
            If the tag does not exist (or was deleted).
        """
        validate_ref_name(tag, "tag")
        try:
            data = await self.storage.get(tag_key(tag))
        except NotFoundError:
            raise NotFoundError(f"tag {tag!r} does not exist") from None
        if await self.storage.exists(tag_key(tag, deleted=True)):
            raise NotFoundError(f"tag {tag!r} was deleted")
        return TagRef.decode(data, tag_key(tag)).snapshot_id

    async def list_tags(self) -> set[str]:
        """The names of all live tags."""
        keys = set(await self.storage.list("refs/tag."))
        live = set()
        for k in keys:
            if k.endswith(".deleted.json"):
                continue
            name = k[len("refs/tag.") : -len(".json")]
            if tag_key(name, deleted=True) not in keys:
                live.add(name)
        return live

    # -- references -----------------------------------------------------------

    async def resolve(
        self, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> str:
        """Turn exactly one of branch / tag / snapshot id into a snapshot id.

        Raises
        ------
        InvalidInputError
            If not exactly one is given.
        NotFoundError
            If it names nothing in this repository.
        """
        given = [x is not None for x in (branch, tag, snapshot_id)]
        if sum(given) != 1:
            raise InvalidInputError("give exactly one of branch=, tag= or snapshot_id=")
        if branch is not None:
            return (await self.lookup_branch(branch))[1]
        if tag is not None:
            return await self.lookup_tag(tag)
        assert snapshot_id is not None
        await self.get_snapshot(validate_snapshot_id(snapshot_id))
        return snapshot_id


_SHARED: weakref.WeakValueDictionary[tuple[str, str], AssetManager] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def shared_assets(storage: Storage, config: RepoConfig) -> AssetManager:
    """The process's asset manager for this repository (created on first use).

    Every Dask task unpickles its own copy of the target; without sharing,
    each would start with empty snapshot and manifest caches.

    Parameters
    ----------
    storage : Storage
        Where the repository lives.
    config : RepoConfig
        Its settings.

    Returns
    -------
    AssetManager
        The shared instance.
    """
    key = (storage.url, config.repo_id)
    with _SHARED_LOCK:
        assets = _SHARED.get(key)
        if assets is None or assets.storage != storage:
            assets = AssetManager(storage, config)
            _SHARED[key] = assets
        return assets
