"""Garbage collection: delete what no branch or tag needs and nobody wrote recently.

``garbage_collect(delete_object_older_than)`` deletes an object only if

1. no live ref needs it: it is not reachable from any branch tip or tag
   (:mod:`icechunk_dask._reach`: histories with expired snapshots skipped,
   their transaction logs, manifests and chunk objects; a pack is kept whole
   while any reachable reference points into it), **and**
2. it was written before the cutoff (its storage time, ``last_modified``).

Rule 2 is what keeps the writers that run meanwhile safe: a session writes
its chunks, a commit its manifests, transaction log and snapshot, all before
they become reachable, so everything they write after the cutoff is kept.
The cutoff is clamped to the time the collection starts and rounded down
to a whole second (object stores report times in whole seconds). Records of write
jobs that are still in use (``jobs/<job>/...``, any object of the job newer
than the cutoff) and recent scratch objects keep the chunks they reference,
and the manifest layers their workers built with the chunks those reference,
so a resumed job never commits a reference to a deleted chunk; the markers
of one session (``sessions/<id>/...``) go together, when all are old.

Kinds are deleted in an order that never leaves a kept object pointing at a
deleted one: snapshots, transaction logs, manifests, job records, scratch
objects, markers, commit-queue tickets (:mod:`icechunk_dask._queue`; they
point at nothing), then chunks and the temporary files of interrupted writes.
If a reachable object is missing or damaged the collection stops before
deleting anything (what it references is unknown). Branch logs, tags, expiry
markers and ``config.json`` are never deleted. Memory holds the reachable
ids (chunk objects as 8-byte hashes) and one page of the listing at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet
from icechunk_dask._exceptions import CorruptObjectError, IcechunkDaskError, NotFoundError
from icechunk_dask._queue import QUEUE_PREFIX
from icechunk_dask._reach import KindCount, Reachable, as_utc, manifest_chunks, reachable
from icechunk_dask.format import decode_scratch
from icechunk_dask.storage import ObjectInfo, ObjectPage

__all__ = ["GC_KINDS", "GCSummary", "garbage_collect"]

#: The kinds garbage collection deletes, in the order it deletes them.
GC_KINDS = (
    "snapshots",
    "transaction_logs",
    "manifests",
    "jobs",
    "scratch",
    "markers",
    "queue",
    "chunks",
    "temporary",
)
_PREFIX = {
    "snapshots": "snapshots/",
    "transaction_logs": "transactions/",
    "manifests": "manifests/",
    "jobs": "jobs/",
    "scratch": "scratch/",
    "markers": "sessions/",
    "queue": QUEUE_PREFIX,
    "chunks": "chunks/",
}
#: Keys per delete call, and delete calls in flight.
_BATCH = 1000
_DELETERS = 4


def _counts() -> dict[str, KindCount]:
    return {k: KindCount() for k in GC_KINDS}


@dataclass(frozen=True)
class GCSummary:
    """What :meth:`~icechunk_dask.Repository.garbage_collect` deleted (or would delete).

    Each parameter is also an attribute of the same name.

    Parameters
    ----------
    deleted : dict of str to KindCount
        Objects and bytes deleted, by kind: ``chunks`` (packs included),
        ``manifests``, ``snapshots``, ``transaction_logs``, ``markers``,
        ``scratch``, ``jobs`` (records of write jobs), ``queue`` (tickets of the
        commit queue, left by killed processes) and ``temporary`` (files of
        interrupted writes). With ``dry_run``: what would be deleted.
    reachable : dict of str to KindCount
        Objects kept because a branch or tag needs them.
    recent : dict of str to KindCount
        Objects kept, although nothing references them, because they were
        written after the cutoff (or belong to a job or session that was).
    cutoff : datetime
        The cutoff used (clamped to the start of the collection).
    dry_run : bool
        Whether nothing was deleted.
    """

    deleted: dict[str, KindCount] = field(default_factory=_counts)
    reachable: dict[str, KindCount] = field(default_factory=_counts)
    recent: dict[str, KindCount] = field(default_factory=_counts)
    cutoff: datetime = field(default_factory=lambda: datetime.now(UTC))
    dry_run: bool = False

    @property
    def bytes_deleted(self) -> int:
        """Bytes deleted, all kinds together."""
        return sum(c.bytes for c in self.deleted.values())

    @property
    def objects_deleted(self) -> int:
        """Objects deleted, all kinds together."""
        return sum(c.objects for c in self.deleted.values())

    @property
    def chunks_deleted(self) -> int:
        """Chunk objects (and packs) deleted (Icechunk's name)."""
        return self.deleted["chunks"].objects

    @property
    def manifests_deleted(self) -> int:
        """Manifests deleted."""
        return self.deleted["manifests"].objects

    @property
    def snapshots_deleted(self) -> int:
        """Snapshots deleted."""
        return self.deleted["snapshots"].objects

    @property
    def transaction_logs_deleted(self) -> int:
        """Transaction logs deleted."""
        return self.deleted["transaction_logs"].objects

    @property
    def attributes_deleted(self) -> int:
        """Always 0: attributes live in snapshots here (Icechunk's field, kept for scripts)."""
        return 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form.

        Returns
        -------
        dict
            The summary as plain JSON types (the cutoff as ISO 8601 text).
        """
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "objects_deleted": self.objects_deleted,
            "bytes_deleted": self.bytes_deleted,
            "deleted": {k: c.to_dict() for k, c in self.deleted.items()},
            "reachable": {k: c.to_dict() for k, c in self.reachable.items()},
            "recent": {k: c.to_dict() for k, c in self.recent.items()},
        }


class _Deleter:
    """Deletes keys in batches, a few batches in flight (nothing at all on a dry run)."""

    def __init__(self, assets: AssetManager, dry_run: bool) -> None:
        self.storage = assets.storage
        self.dry_run = dry_run
        self.batch: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def add(self, keys: list[str]) -> None:
        if self.dry_run:
            return
        self.batch.extend(keys)
        while len(self.batch) >= _BATCH:
            await self._send(_BATCH)

    async def _send(self, count: int | None = None) -> None:
        cut = len(self.batch) if count is None else count
        batch, self.batch = self.batch[:cut], self.batch[cut:]
        if batch:
            self.tasks.add(asyncio.ensure_future(self.storage.delete(batch)))
        if len(self.tasks) >= _DELETERS:
            done, self.tasks = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

    async def flush(self) -> None:
        """Wait until every key added so far is deleted."""
        await self._send()
        tasks, self.tasks = self.tasks, set()
        for task in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(task, BaseException):
                raise task


def _record_refs(data: bytes, key: str) -> tuple[list[str], list[str]]:
    """Chunk objects and pre-built manifests a job record or scratch object references.

    Both lists are empty if the object cannot be read (whoever reads it fails
    anyway: nothing to protect).
    """
    manifests: list[str] = []
    try:
        if key.startswith("scratch/"):
            refs = list(decode_scratch(data, key).values())
        else:
            cs = ChangeSet.from_bytes(data)
            refs = [*cs.chunks.values(), *cs.prev_chunks.values()]
            manifests = [m for nm in cs.layers.values() for m in nm.manifest_ids()]
    except (IcechunkDaskError, ValueError, KeyError, TypeError):
        return [], []
    return [r[0] for r in refs if r is not None and isinstance(r[0], str)], manifests


async def _listing(assets: AssetManager, prefix: str) -> list[ObjectInfo]:
    return [info async for info in assets.storage.list_objects(prefix)]


async def _in_use(
    assets: AssetManager, cutoff: datetime
) -> tuple[dict[str, list[ObjectInfo]], set[str], Reachable]:
    """The small kinds, listed; the keys of those in use; the chunks those reference."""
    listed = {k: await _listing(assets, _PREFIX[k]) for k in ("jobs", "scratch", "markers")}
    in_use: set[str] = set()
    for kind in ("jobs", "markers"):  # a job (a session's markers) goes as a whole
        groups: dict[str, list[ObjectInfo]] = {}
        for info in listed[kind]:
            groups.setdefault("/".join(info.key.split("/")[:2]), []).append(info)
        for infos in groups.values():
            if any(i.last_modified >= cutoff for i in infos):
                in_use.update(i.key for i in infos)
    in_use.update(i.key for i in listed["scratch"] if i.last_modified >= cutoff)
    records = [k for k in in_use if k.startswith("scratch/") or "/tasks/" in k]
    records += [k for k in in_use if k.startswith("jobs/") and k.endswith("/result")]
    held = Reachable()
    for key in records:
        try:
            data = await assets.storage.get(key)
        except NotFoundError:  # deleted meanwhile (its job was committed)
            continue
        chunks, manifests = await asyncio.to_thread(_record_refs, data, key)
        held.add_chunks(chunks)
        held.manifests.update(manifests)
    # the layers a job's workers built hold the job's chunk references: keep both
    for manifest_id in sorted(held.manifests):
        try:
            held.add_chunks(await manifest_chunks(assets, manifest_id))
        except CorruptObjectError:  # gone or damaged: committing that job fails anyway
            continue
    return listed, in_use, held


def _pages(assets: AssetManager, kind: str) -> AsyncIterator[ObjectPage]:
    """Listing pages of one kind (temporary files come from the storage's own listing)."""
    if kind == "temporary":
        return assets.storage.list_temporary_pages()
    return assets.storage.list_object_pages(_PREFIX[kind])


#: Says, for each object of a page, whether it is reachable (or held by work in progress).
_Judge = Callable[[ObjectPage], np.ndarray]


async def _sweep(
    kind: str,
    pages: AsyncIterator[ObjectPage],
    keep: _Judge,
    held: _Judge,
    cutoff: datetime,
    summary: GCSummary,
    deleter: _Deleter,
) -> None:
    """Count (and delete) one kind, a page at a time.

    ``keep(page)`` says which objects are reachable, ``held(page)`` which ones a
    job, session or scratch object still in use needs.
    """
    since = cutoff.timestamp()
    async for page in pages:
        needed = keep(page)
        recent = ~needed & (held(page) | (page.mtimes >= since))
        gone = ~needed & ~recent
        summary.reachable[kind].add_all(page.sizes[needed])
        summary.recent[kind].add_all(page.sizes[recent])
        summary.deleted[kind].add_all(page.sizes[gone])
        await deleter.add([key for key, g in zip(page.keys, gone.tolist(), strict=True) if g])
    await deleter.flush()


def _by_key(test: Callable[[str], bool]) -> _Judge:
    """A judge of pages that asks ``test`` about each key."""
    return lambda page: np.fromiter(map(test, page.keys), bool, len(page))


async def _one_page(infos: list[ObjectInfo]) -> AsyncIterator[ObjectPage]:
    if infos:
        yield ObjectPage.of(infos)


async def garbage_collect(
    assets: AssetManager, delete_object_older_than: datetime, *, dry_run: bool = False
) -> GCSummary:
    """Delete unreachable objects written before the cutoff (see the module docstring).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    delete_object_older_than : datetime
        The cutoff (naive means UTC); clamped to now.
    dry_run : bool
        Only count what would be deleted.

    Returns
    -------
    GCSummary
        Objects and bytes deleted, reachable and recent, by kind.

    Raises
    ------
    CorruptObjectError
        If a reachable object is missing or damaged (nothing is deleted then).
    """
    cutoff = min(as_utc(delete_object_older_than, "delete_object_older_than"), datetime.now(UTC))
    # object stores report times in whole seconds (truncated): an object written after the
    # cutoff must never look older than it
    cutoff = cutoff.replace(microsecond=0)
    reach = await reachable(assets)
    listed, in_use, held = await _in_use(assets, cutoff)
    summary = GCSummary(cutoff=cutoff, dry_run=dry_run)
    deleter = _Deleter(assets, dry_run)

    def none(page: ObjectPage) -> np.ndarray:
        return np.zeros(len(page), bool)

    def chunk_ids(page: ObjectPage) -> list[str]:
        return [key[len("chunks/") :] for key in page.keys]

    for kind in GC_KINDS:
        keep: _Judge = none
        hold: _Judge = none
        if kind in listed:
            pages = _one_page(listed[kind])
            hold = _by_key(in_use.__contains__)
        elif kind == "chunks":
            pages = _pages(assets, kind)
            keep = lambda page: reach.has_chunks(chunk_ids(page))
            hold = lambda page: held.has_chunks(chunk_ids(page))
        else:
            pages = _pages(assets, kind)
            if kind not in ("temporary", "queue"):  # neither is ever reachable
                keep = _by_key(partial(reach.keeps, kind))
                hold = _by_key(partial(held.keeps, kind))
        await _sweep(kind, pages, keep, hold, cutoff, summary, deleter)
    return summary
