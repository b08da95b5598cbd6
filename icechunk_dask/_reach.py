"""What the repository still needs, and what kind of object each stored key is.

*Reachable* objects are found from the live refs (the tip of every branch
and every tag): the snapshots of their histories (expired snapshots skipped,
as every history walk does, but the snapshot a ref names always included),
the transaction logs of those snapshots, the manifests they name, and the
chunk objects their *visible* references point into. A box's manifests are
layers, newest first: an entry that a newer layer of the same box replaces or
deletes is hidden in that stack, and a chunk whose references are hidden in
every reachable stack is not reachable (the manifest itself still is, while
a stack names it). Inline chunks live in their manifest and name no object;
a pack (one object holding many chunks) is reachable, whole, as soon as one
visible reference points into it.

Memory stays bounded for large repositories: snapshot and manifest ids are
kept as strings (there are few), chunk-object ids only as a sorted array of
64-bit hashes (8 bytes each). A hash collision can only make an unreachable
chunk look reachable, which keeps it: never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xxhash

from icechunk_dask._assets import CONFIG_KEY, AssetManager
from icechunk_dask._exceptions import (
    CorruptObjectError,
    ExpiredSnapshotError,
    InvalidInputError,
    NotFoundError,
)
from icechunk_dask._queue import QUEUE_PREFIX
from icechunk_dask.format import (
    EXPIRED_PREFIX,
    ChunkRef,
    NodeManifests,
    Snapshot,
    decode_manifest,
    key_id,
    manifest_object_ids,
)

__all__ = [
    "KINDS",
    "KindCount",
    "Reachable",
    "Stack",
    "as_utc",
    "history_snapshots",
    "kind_of",
    "live_refs",
    "lower_layers",
    "manifest_chunks",
    "needed_layers",
    "note_stacks",
    "reachable",
    "visible_keys",
]

#: Object kinds by key prefix, in the order garbage collection deletes them: what refers
#: to other objects goes before what it refers to.
_PREFIXES = {
    "snapshots/": "snapshots",
    "transactions/": "transaction_logs",
    "manifests/": "manifests",
    "jobs/": "jobs",
    "scratch/": "scratch",
    "sessions/": "markers",
    "chunks/": "chunks",
    "refs/": "refs",
    EXPIRED_PREFIX: "expiry_markers",
    QUEUE_PREFIX: "queue",
}
#: Every kind a usage report or a garbage-collection summary counts.
KINDS = (*_PREFIXES.values(), "config", "temporary", "other")

#: Manifests fetched and decoded at the same time.
_CONCURRENCY = 4


def as_utc(when: object, what: str = "older_than") -> datetime:
    """``when`` as a timezone-aware UTC datetime (a naive one is taken as UTC).

    Raises
    ------
    InvalidInputError
        If ``when`` is not a datetime.
    """
    if not isinstance(when, datetime):
        raise InvalidInputError(
            f"{what} must be a datetime, e.g. datetime.now(UTC) - timedelta(days=7), got {when!r}"
        )
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def kind_of(key: str) -> str:
    """The kind of the object stored at ``key`` (see :data:`KINDS`)."""
    head = key[: key.find("/") + 1]
    kind = _PREFIXES.get(head)
    if kind is not None:
        return kind
    return "config" if key == CONFIG_KEY else "other"


@dataclass(slots=True)
class KindCount:
    """Objects and bytes of one kind.

    Attributes
    ----------
    objects : int
        How many objects.
    bytes : int
        Their total size.
    """

    objects: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        """Count one more object of ``size`` bytes."""
        self.objects += 1
        self.bytes += size

    def add_all(self, sizes: np.ndarray) -> None:
        """Count one more object per entry of ``sizes`` (bytes)."""
        self.objects += len(sizes)
        self.bytes += int(sizes.sum())

    def to_dict(self) -> dict[str, int]:
        """A JSON-serialisable form."""
        return {"objects": self.objects, "bytes": self.bytes}


def _hash(ids: Iterable[str], count: int) -> np.ndarray:
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(i.encode()) for i in ids), dtype=np.uint64, count=count)


def chunk_hashes(ids: Iterable[str]) -> np.ndarray:
    """64-bit hashes of chunk-object ids (distinct, sorted)."""
    unique = set(ids)
    return np.unique(_hash(unique, len(unique)))


@dataclass
class Reachable:
    """The objects the live refs need.

    Attributes
    ----------
    refs : dict of str to str
        ``"branch <name>"`` / ``"tag <name>"`` -> the snapshot it names.
    snapshots : set of str
        Snapshots in the histories of the refs (their transaction logs are reachable too).
    manifests : set of str
        Manifests those snapshots name.
    """

    refs: dict[str, str] = field(default_factory=dict)
    snapshots: set[str] = field(default_factory=set)
    manifests: set[str] = field(default_factory=set)
    _parts: list[np.ndarray] = field(default_factory=list, repr=False)
    _chunks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64), repr=False)

    def add_chunks(self, ids: Iterable[str]) -> None:
        """Count the chunk objects ``ids`` as reachable."""
        self._parts.append(chunk_hashes(ids))

    def _merged(self) -> np.ndarray:
        if self._parts:
            self._chunks = np.unique(np.concatenate([self._chunks, *self._parts]))
            self._parts.clear()
        return self._chunks

    @property
    def chunk_objects(self) -> int:
        """How many distinct chunk objects are reachable."""
        return len(self._merged())

    def has_chunks(self, ids: list[str]) -> np.ndarray:
        """For each chunk-object id, whether it is reachable (a boolean array)."""
        table = self._merged()
        if not len(table) or not ids:
            return np.zeros(len(ids), dtype=bool)
        hashed = _hash(ids, len(ids))
        at = np.minimum(np.searchsorted(table, hashed), len(table) - 1)
        return table[at] == hashed  # type: ignore[no-any-return]

    def keeps(self, kind: str, key: str) -> bool:
        """Whether the object at ``key`` (of ``kind``, not a chunk) is reachable."""
        if kind in ("snapshots", "transaction_logs"):
            return key_id(key) in self.snapshots
        if kind == "manifests":
            return key_id(key) in self.manifests
        return False


async def live_refs(assets: AssetManager) -> dict[str, str]:
    """Every live branch tip and tag: ``"branch <name>"`` / ``"tag <name>"`` -> snapshot id."""
    branches, tags = await asyncio.gather(assets.list_branches(), assets.list_tags())
    out: dict[str, str] = {}
    for name in sorted(branches):
        try:
            out[f"branch {name}"] = (await assets.lookup_branch(name))[1]
        except NotFoundError:  # deleted meanwhile
            continue
    for name in sorted(tags):
        try:
            out[f"tag {name}"] = await assets.lookup_tag(name)
        except NotFoundError:
            continue
    return out


async def history_snapshots(
    assets: AssetManager, starts: Iterable[str], visited: set[str]
) -> AsyncIterator[Snapshot]:
    """Every snapshot in the histories of ``starts`` not visited yet, each once.

    A start is always included (even if it was expired); its ancestors are
    read only if they are not expired. ``visited`` (updated) holds the ids
    seen, expired ones included, so walks that meet stop there.

    Raises
    ------
    CorruptObjectError
        If a snapshot is damaged or missing, or a history has a cycle.
    """
    expired: set[str] = set()  # seen on a walk but not yielded: still read as a start
    for start in starts:
        if start in visited and start not in expired:
            continue
        visited.add(start)
        expired.discard(start)
        path = {start}
        snap: Snapshot | None = await assets.get_snapshot(start, expired_ok=True)
        while snap is not None:
            yield snap
            current, snap = snap.parent_id, None
            while current is not None and current not in visited:
                visited.add(current)
                path.add(current)
                try:
                    snap = await assets.get_snapshot(current)
                    break
                except ExpiredSnapshotError:
                    expired.add(current)
                    marker = await assets.get_expiry(current)
                    current = marker.next_id if marker is not None else None
                except NotFoundError:
                    raise CorruptObjectError(
                        f"snapshot {current} is in the history of {start} but does not exist: "
                        "the repository is damaged (run icechunk-dask verify)",
                        key=f"snapshots/{current}",
                    ) from None
            if current is not None and snap is None and current in path:
                raise CorruptObjectError(
                    f"the history of snapshot {start} has a cycle at {current}: the repository "
                    "is damaged (run icechunk-dask verify)",
                    key=f"snapshots/{current}",
                )


async def _get_manifest(assets: AssetManager, key: str) -> bytes:
    try:
        return await assets.storage.get(key)
    except NotFoundError:
        raise CorruptObjectError(
            f"manifest {key!r} is referenced but missing: the repository is damaged (run "
            "icechunk-dask verify)",
            key=key,
        ) from None


async def manifest_chunks(assets: AssetManager, manifest_id: str) -> list[str]:
    """Chunk objects manifest ``manifest_id`` references (``CorruptObjectError`` if missing)."""
    key = f"manifests/{manifest_id}"
    data = await _get_manifest(assets, key)
    return await asyncio.to_thread(manifest_object_ids, data, key)


#: Layer ids of one box, newest first.
Stack = tuple[str, ...]


async def _gather_bounded(jobs: Iterable[Any], at_once: int) -> None:
    """Await the coroutines ``jobs``, at most ``at_once`` pending; fail on the first error.

    An error is raised as soon as its job ends (the pending ones are cancelled), also
    among the last jobs: a walk that meets damage stops there.
    """
    pending: set[asyncio.Task[Any]] = set()

    async def settle() -> None:  # until one more has ended; its error is raised at once
        nonlocal pending
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    try:
        for job in jobs:
            pending.add(asyncio.ensure_future(job))
            if len(pending) >= at_once:
                await settle()
        while pending:
            await settle()
    finally:
        for task in pending:
            task.cancel()


def note_stacks(
    node: str, nm: NodeManifests, whole: set[str], stacks: dict[tuple[str, str], set[Stack]]
) -> None:
    """Add ``node``'s manifests read whole (box tops, format-1 shards) and its stacks of 2+."""
    whole.update(m for m in nm.legacy if m is not None)
    for box, layers in nm.boxes.items():
        if layers:
            whole.add(layers[0].id)
        if len(layers) > 1:
            stacks.setdefault((node, box), set()).add(tuple(x.id for x in layers))


def lower_layers(stacks: Iterable[Stack], whole: set[str]) -> set[str]:
    """Layers of ``stacks`` below the top that no stack shows whole (not in ``whole``)."""
    return {m for stack in stacks for m in stack[1:]} - whole


def needed_layers(stacks: Iterable[Stack], lower: set[str]) -> list[Stack]:
    """Each stack holding a layer of ``lower``, cut below its deepest such layer."""
    out = []
    for stack in stacks:
        deepest = max((i for i, m in enumerate(stack) if m in lower), default=-1)
        if deepest >= 0:
            out.append(stack[: deepest + 1])
    return out


def visible_keys(
    stacks: Iterable[Stack], entries: dict[str, dict[str, Any]], lower: set[str]
) -> dict[str, set[str]]:
    """The keys of each layer of ``lower`` that some stack shows (no newer layer has them).

    ``stacks`` are cut below their deepest layer of ``lower`` (:func:`needed_layers`);
    ``entries`` holds every layer they name: key -> reference or tombstone.
    """
    out: dict[str, set[str]] = {m: set() for m in lower}
    for stack in stacks:
        hidden: set[str] = set()
        for i, manifest_id in enumerate(stack):
            layer = entries[manifest_id]
            if manifest_id in lower:
                out[manifest_id].update(k for k in layer if k not in hidden)
            if i < len(stack) - 1:
                hidden.update(layer)
    return out


def _visible_objects(
    stacks: list[Stack], entries: dict[str, dict[str, ChunkRef | None]], lower: set[str]
) -> list[str]:
    """Chunk objects the layers ``lower`` reference where some stack shows them."""
    out: list[str] = []
    for manifest_id, keys in visible_keys(stacks, entries, lower).items():
        layer = entries[manifest_id]
        for key in keys:
            ref = layer[key]
            if ref is not None and isinstance(ref[0], str):
                out.append(ref[0])
    return out


async def reachable(assets: AssetManager, refs: dict[str, str] | None = None) -> Reachable:
    """Everything the live refs need (see the module docstring).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    refs : dict or None
        The refs to start from (default: :func:`live_refs`).

    Returns
    -------
    Reachable
        The reachable snapshots, manifests and chunk objects.

    Raises
    ------
    CorruptObjectError
        If a reachable object is missing or damaged: what it references is unknown.
    """
    out = Reachable(refs=dict(refs) if refs is not None else await live_refs(assets))
    whole: set[str] = set()  # manifests some stack shows entirely (its top, format-1 shards)
    stacks: dict[tuple[str, str], set[Stack]] = {}  # (node, box) -> stacks of 2+ layers
    async for snap in history_snapshots(assets, out.refs.values(), set()):
        out.snapshots.add(snap.id)
        for node, nm in snap.nodes.items():
            out.manifests.update(nm.manifest_ids())
            note_stacks(node, nm, whole, stacks)
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(manifest_id: str) -> None:
        async with limit:
            ids = await manifest_chunks(assets, manifest_id)
        out.add_chunks(ids)

    async def load(manifest_id: str, node: str, box: str) -> dict[str, ChunkRef | None]:
        key = f"manifests/{manifest_id}"
        async with limit:
            data = await _get_manifest(assets, key)
        return await asyncio.to_thread(decode_manifest, data, key, node=node, box=box)

    async def hidden_below(node: str, box: str, group: set[Stack]) -> None:
        lower = lower_layers(group, whole)
        chosen = needed_layers(group, lower)
        if not chosen:
            return  # every layer of the box is some stack's top: read whole above
        needed = sorted({m for st in chosen for m in st})
        loaded = await asyncio.gather(*(load(m, node, box) for m in needed))
        entries = dict(zip(needed, loaded, strict=True))
        out.add_chunks(await asyncio.to_thread(_visible_objects, chosen, entries, lower))

    await _gather_bounded((one(m) for m in sorted(whole)), 4 * _CONCURRENCY)
    # decoded layers are held per box while it is examined: few boxes at a time
    await _gather_bounded(
        (hidden_below(n, b, g) for (n, b), g in sorted(stacks.items())), _CONCURRENCY
    )
    return out
