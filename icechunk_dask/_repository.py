"""Repository: open/create, branches, tags, ancestry and sessions.

Every object except branch hints is immutable; a branch is a create-only log
``refs/branch.<name>/<seq>.json`` whose highest entry is the tip, so moving a
branch is one atomic ``put_if_absent`` and exactly one concurrent committer
wins each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from icechunk_dask._exceptions import (
    FormatVersionError,
    IcechunkDaskError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from icechunk_dask._sync import run
from icechunk_dask.format import (
    FORMAT_VERSION,
    ID_PATTERN,
    BranchRef,
    ChunkRef,
    RepoConfig,
    Snapshot,
    TagRef,
    TransactionLog,
    branch_ref_key,
    decode_manifest,
    new_id,
    tag_key,
)
from icechunk_dask.storage import Storage

if TYPE_CHECKING:
    from icechunk_dask._session import Session

__all__ = ["Repository", "SnapshotInfo"]

CONFIG_KEY = "config.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def now_iso() -> str:
    """The current UTC time in ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat()


def validate_ref_name(name: object, what: str) -> str:
    """Return ``name`` if it is a valid branch or tag name, else raise."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or name.endswith("."):
        raise InvalidInputError(
            f"invalid {what} name {name!r}: use 1-255 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (for example 'main' or 'experiment-2')"
        )
    if what == "tag" and name.endswith(".deleted"):
        # refs/tag.<name>.deleted.json is the tombstone of tag <name>
        raise InvalidInputError(
            f"invalid tag name {name!r}: names ending in '.deleted' are reserved; choose "
            "another name"
        )
    return name


def _validate_snapshot_id(snapshot_id: object) -> str:
    if not isinstance(snapshot_id, str) or not ID_PATTERN.match(snapshot_id):
        raise NotFoundError(
            f"{snapshot_id!r} is not a snapshot id (20 characters, 0-9 and A-Z); list them "
            "with repo.ancestry(branch='main')"
        )
    return snapshot_id


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What :meth:`Repository.ancestry` yields for each snapshot."""

    id: str
    parent_id: str | None
    written_at: datetime
    message: str
    metadata: dict[str, Any]

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> SnapshotInfo:
        """Build from a decoded snapshot."""
        return cls(
            snap.id,
            snap.parent_id,
            datetime.fromisoformat(snap.written_at),
            snap.message,
            dict(snap.metadata),
        )


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


class Repository:
    """A versioned, transactional Zarr v3 repository.

    Create one with :meth:`create`, :meth:`open` or :meth:`open_or_create`;
    write through :meth:`writable_session`, read through
    :meth:`readonly_session`. A repository pickles (by storage location).
    """

    def __init__(self, storage: Storage, config: RepoConfig) -> None:
        self.storage = storage
        self.config = config
        self._snapshots = _LRU(256)
        self._manifests = _LRU(2_000_000)
        # chunk objects whose whole bytes passed their checksum: partial reads of them
        # (inner chunks of a shard) need no whole read to be trusted
        self.verified_chunks = _LRU(200_000)

    def __repr__(self) -> str:
        return f"<Repository {self.storage.url} id={self.config.repo_id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.storage, self.config))

    @property
    def repo_id(self) -> str:
        """The repository's unique id."""
        return self.config.repo_id

    # -- creation -------------------------------------------------------------

    @classmethod
    def create(cls, storage: Storage) -> Repository:
        """Create a new repository with an empty ``main`` branch.

        Parameters
        ----------
        storage
            Where the repository lives (for example ``local_filesystem_storage(path)``).

        Returns
        -------
        Repository
            The new repository.

        Raises
        ------
        InvalidInputError
            If a repository already exists there, or the location holds other data.
        """
        return run(cls._create(storage))

    @classmethod
    async def _create(cls, storage: Storage) -> Repository:
        _check_storage(storage)
        if await storage.exists(CONFIG_KEY):
            raise InvalidInputError(
                f"a repository already exists at {storage.url}; use Repository.open "
                "(or Repository.open_or_create)"
            )
        existing = [k for k in await storage.list("") if not k.startswith(("refs/", "snapshots/"))]
        if existing:
            raise InvalidInputError(
                f"{storage.url} is not empty ({len(existing)} objects, e.g. {existing[0]!r}) and "
                "is not a repository; choose an empty or new location"
            )
        config = RepoConfig(new_id(), FORMAT_VERSION, now_iso())
        repo = cls(storage, config)
        root = Snapshot(new_id(), None, now_iso(), "Repository initialized", {}, {}, {})
        await storage.put(f"snapshots/{root.id}", root.encode())
        await storage.durability_barrier()
        ref = BranchRef(root.id, None, uuid.uuid4().hex, now_iso())
        if not await storage.put_if_absent(branch_ref_key("main", 0), ref.encode()):
            raise InvalidInputError(
                f"another process is creating a repository at {storage.url} at the same time; "
                "open it with Repository.open once it exists"
            )
        if not await storage.put_if_absent(CONFIG_KEY, config.encode()):
            raise InvalidInputError(f"a repository was created concurrently at {storage.url}")
        return repo

    @classmethod
    def open(cls, storage: Storage) -> Repository:
        """Open an existing repository.

        Raises
        ------
        NotFoundError
            If there is no repository at that location.
        FormatVersionError
            If the repository was written by a newer icechunk_dask.
        """
        return run(cls._open(storage))

    @classmethod
    async def _open(cls, storage: Storage) -> Repository:
        _check_storage(storage)
        try:
            data = await storage.get(CONFIG_KEY)
        except NotFoundError:
            raise NotFoundError(
                f"no repository at {storage.url}; create one with Repository.create "
                "(or Repository.open_or_create)"
            ) from None
        config = RepoConfig.decode(data, CONFIG_KEY)
        if config.format_version > FORMAT_VERSION:
            raise FormatVersionError(
                f"the repository at {storage.url} uses format version {config.format_version}, "
                f"but this icechunk_dask reads up to version {FORMAT_VERSION}; upgrade "
                "icechunk_dask to open it"
            )
        return cls(storage, config)

    @classmethod
    def open_or_create(cls, storage: Storage) -> Repository:
        """Open the repository at ``storage``, creating it if there is none.

        Returns
        -------
        Repository
            The opened or new repository.
        """
        if cls.exists(storage):
            return cls.open(storage)
        try:
            return cls.create(storage)
        except InvalidInputError:
            if cls.exists(storage):  # lost a creation race: fine
                return cls.open(storage)
            raise

    @staticmethod
    def exists(storage: Storage) -> bool:
        """Whether a repository exists at ``storage``."""
        _check_storage(storage)
        return run(storage.exists(CONFIG_KEY))

    # -- objects --------------------------------------------------------------

    async def _get(self, key: str) -> bytes:
        return await self.storage.get(key)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot:
        """Fetch (and cache) a snapshot."""
        cached = self._snapshots.get(snapshot_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        key = f"snapshots/{snapshot_id}"
        try:
            data = await self._get(key)
        except NotFoundError:
            raise NotFoundError(f"snapshot {snapshot_id} does not exist in {self}") from None
        snap = Snapshot.decode(data, key)
        self._snapshots.put(snapshot_id, snap)
        return snap

    async def get_manifest(self, manifest_id: str) -> dict[str, ChunkRef]:
        """Fetch (and cache) one manifest shard."""
        cached = self._manifests.get(manifest_id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        key = f"manifests/{manifest_id}"
        data = await self._get(key)
        entries = await asyncio.to_thread(decode_manifest, data, key)
        self._manifests.put(manifest_id, entries, max(1, len(entries)))
        return entries

    async def get_transaction_log(self, snapshot_id: str) -> TransactionLog:
        """Fetch the transaction log of a commit."""
        key = f"transactions/{snapshot_id}"
        return TransactionLog.decode(await self._get(key), key)

    # -- branches -------------------------------------------------------------

    async def branch_tip(self, branch: str) -> tuple[int, BranchRef | None]:
        """Return ``(seq, ref)`` of a branch's newest log entry (``(-1, None)`` if none)."""
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
        while True:
            try:
                nxt = await self.storage.get(branch_ref_key(branch, seq + 1))
            except NotFoundError:
                break
            seq, data = seq + 1, nxt
        return seq, BranchRef.decode(data, branch_ref_key(branch, seq))

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
        key, data = branch_ref_key(branch, seq), ref.encode()
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
            with contextlib.suppress(IcechunkDaskError):  # the hint is only an optimisation
                await self.storage.put(f"refs/branch.{branch}/hint.json", str(seq).encode())
        return won

    async def _lookup_branch(self, branch: str) -> tuple[int, str]:
        validate_ref_name(branch, "branch")
        seq, ref = await self.branch_tip(branch)
        if ref is None or ref.deleted or ref.snapshot_id is None:
            raise NotFoundError(
                f"branch {branch!r} does not exist; existing branches: "
                f"{sorted(await self._list_branches())}"
            )
        return seq, ref.snapshot_id

    def lookup_branch(self, branch: str) -> str:
        """Return the snapshot id at the tip of ``branch``.

        Raises
        ------
        NotFoundError
            If the branch does not exist.
        """
        return run(self._lookup_branch(branch))[1]

    async def _list_branches(self) -> set[str]:
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

    def list_branches(self) -> set[str]:
        """Return the names of all branches."""
        return run(self._list_branches())

    async def _set_branch(self, branch: str, snapshot_id: str | None, *, create: bool) -> None:
        validate_ref_name(branch, "branch")
        if snapshot_id is not None:
            await self.get_snapshot(_validate_snapshot_id(snapshot_id))
        for _ in range(100):
            seq, ref = await self.branch_tip(branch)
            alive = ref is not None and not ref.deleted
            if create and alive:
                raise InvalidInputError(
                    f"branch {branch!r} already exists; use reset_branch to move it"
                )
            if not create and not alive:
                raise NotFoundError(f"branch {branch!r} does not exist")
            parent = ref.snapshot_id if ref is not None else None
            deleted = snapshot_id is None
            if await self.try_advance_branch(branch, seq + 1, snapshot_id, parent, deleted=deleted):
                return
        raise IcechunkDaskError(f"could not update branch {branch!r}: too much contention")

    def create_branch(self, branch: str, snapshot_id: str) -> None:
        """Create a branch pointing at ``snapshot_id``.

        Raises
        ------
        InvalidInputError
            If the name is invalid or the branch already exists.
        NotFoundError
            If the snapshot does not exist.
        """
        run(self._set_branch(branch, snapshot_id, create=True))

    def reset_branch(self, branch: str, snapshot_id: str) -> None:
        """Point an existing branch at ``snapshot_id`` (any snapshot of the repository).

        Raises
        ------
        NotFoundError
            If the branch or the snapshot does not exist.
        """
        run(self._set_branch(branch, snapshot_id, create=False))

    def delete_branch(self, branch: str) -> None:
        """Delete a branch (its snapshots stay reachable by id and by tags).

        Raises
        ------
        InvalidInputError
            For ``main``, which cannot be deleted.
        NotFoundError
            If the branch does not exist.
        """
        if branch == "main":
            raise InvalidInputError("the 'main' branch cannot be deleted")
        run(self._set_branch(branch, None, create=False))

    # -- tags -----------------------------------------------------------------

    def create_tag(self, tag: str, snapshot_id: str) -> None:
        """Create an immutable tag pointing at ``snapshot_id``.

        Raises
        ------
        InvalidInputError
            If the name is invalid or the tag exists (or existed: tags are never reused).
        NotFoundError
            If the snapshot does not exist.
        """
        run(self._create_tag(tag, snapshot_id))

    async def _create_tag(self, tag: str, snapshot_id: str) -> None:
        validate_ref_name(tag, "tag")
        await self.get_snapshot(_validate_snapshot_id(snapshot_id))
        if await self.storage.exists(tag_key(tag, deleted=True)):
            raise InvalidInputError(f"tag {tag!r} was deleted; deleted tag names cannot be reused")
        ref = TagRef(snapshot_id, uuid.uuid4().hex, now_iso())
        if not await self.storage.put_if_absent(tag_key(tag), ref.encode()):
            raise InvalidInputError(f"tag {tag!r} already exists; tags are immutable")

    async def _lookup_tag(self, tag: str) -> str:
        validate_ref_name(tag, "tag")
        try:
            data = await self.storage.get(tag_key(tag))
        except NotFoundError:
            raise NotFoundError(f"tag {tag!r} does not exist") from None
        if await self.storage.exists(tag_key(tag, deleted=True)):
            raise NotFoundError(f"tag {tag!r} was deleted")
        return TagRef.decode(data, tag_key(tag)).snapshot_id

    def lookup_tag(self, tag: str) -> str:
        """Return the snapshot id a tag points at.

        Raises
        ------
        NotFoundError
            If the tag does not exist.
        """
        return run(self._lookup_tag(tag))

    async def _list_tags(self) -> set[str]:
        keys = set(await self.storage.list("refs/tag."))
        live = set()
        for k in keys:
            if k.endswith(".deleted.json"):
                continue
            name = k[len("refs/tag.") : -len(".json")]
            if tag_key(name, deleted=True) not in keys:
                live.add(name)
        return live

    def list_tags(self) -> set[str]:
        """Return the names of all tags."""
        return run(self._list_tags())

    def delete_tag(self, tag: str) -> None:
        """Delete a tag. Its name cannot be used again.

        Raises
        ------
        NotFoundError
            If the tag does not exist.
        """

        async def go() -> None:
            snap = await self._lookup_tag(tag)
            ref = TagRef(snap, uuid.uuid4().hex, now_iso())
            await self.storage.put_if_absent(tag_key(tag, deleted=True), ref.encode())

        run(go())

    # -- history --------------------------------------------------------------

    async def resolve(
        self, branch: str | None = None, tag: str | None = None, snapshot_id: str | None = None
    ) -> str:
        """Turn exactly one of branch / tag / snapshot id into a snapshot id."""
        given = [x is not None for x in (branch, tag, snapshot_id)]
        if sum(given) != 1:
            raise InvalidInputError("give exactly one of branch=, tag= or snapshot_id=")
        if branch is not None:
            return (await self._lookup_branch(branch))[1]
        if tag is not None:
            return await self._lookup_tag(tag)
        assert snapshot_id is not None
        await self.get_snapshot(_validate_snapshot_id(snapshot_id))
        return snapshot_id

    def ancestry(
        self,
        *,
        branch: str | None = None,
        tag: str | None = None,
        snapshot_id: str | None = None,
    ) -> Iterator[SnapshotInfo]:
        """Yield the snapshots from the given one back to the repository's first.

        Parameters
        ----------
        branch, tag, snapshot_id
            Exactly one: where to start.

        Yields
        ------
        SnapshotInfo
            Newest first.
        """
        current: str | None = run(self.resolve(branch, tag, snapshot_id))
        while current is not None:
            snap = run(self.get_snapshot(current))
            yield SnapshotInfo.from_snapshot(snap)
            current = snap.parent_id

    # -- sessions -------------------------------------------------------------

    def writable_session(self, branch: str) -> Session:
        """Start a writable session on the tip of ``branch``.

        Raises
        ------
        NotFoundError
            If the branch does not exist.
        """
        from icechunk_dask._session import Session

        snapshot_id = self.lookup_branch(branch)
        run(self.get_snapshot(snapshot_id))  # fail early on a missing or damaged snapshot
        return Session(self, snapshot_id, branch=branch, read_only=False)

    def readonly_session(
        self,
        branch: str | None = None,
        *,
        tag: str | None = None,
        snapshot_id: str | None = None,
    ) -> Session:
        """Start a read-only session at a branch tip, a tag or a snapshot.

        Raises
        ------
        NotFoundError
            If the branch, tag or snapshot does not exist.
        """
        from icechunk_dask._session import Session

        snap = run(self.resolve(branch, tag, snapshot_id))
        run(self.get_snapshot(snap))  # fail early on a missing or damaged snapshot
        return Session(self, snap, branch=branch, read_only=True)


_OPEN: weakref.WeakValueDictionary[tuple[str, str], Repository] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def _reopen(storage: Storage, config: RepoConfig) -> Repository:
    """Unpickle a repository, sharing one instance (and its caches) per process.

    Every Dask task unpickles its own copy of the target; without this, each
    would start with empty snapshot and manifest caches.
    """
    key = (storage.url, config.repo_id)
    with _OPEN_LOCK:
        repo = _OPEN.get(key)
        if repo is None or repo.storage != storage:
            repo = Repository(storage, config)
            _OPEN[key] = repo
        return repo


def _check_storage(storage: object) -> None:
    if not isinstance(storage, Storage):
        raise InvalidInputError(
            f"expected a storage such as local_filesystem_storage(path), got {storage!r}"
        )
    storage.check_usable()
