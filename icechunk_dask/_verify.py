"""Verify a repository: every object the history needs exists, decodes and is in its place.

Checked, collecting every problem instead of stopping at the first:

* refs: every branch's newest log entry and every tag (and tombstone) decodes
  and names the key it is stored at; no ref points at an expired snapshot;
* snapshots: those in the histories of the refs (or every stored snapshot,
  ``all_snapshots``): each decodes and is the snapshot its key names, its
  transaction log too, the history has no cycle, expiry markers on the way
  decode and name their snapshot;
* manifests: each one a snapshot names decodes and is the manifest of the
  node and box the snapshot says;
* chunk objects: each one a visible reference points into exists and is long enough
  (a reference that a newer layer of its box hides in every stack checked is not
  visible: garbage collection may have deleted its chunk)
  (one streamed listing of ``chunks/``); with ``chunks``, every chunk is read
  and checked against its checksum (inline chunks too).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import ExpiredSnapshotError, IcechunkDaskError, NotFoundError
from icechunk_dask._reach import Stack, lower_layers, needed_layers, note_stacks, visible_keys
from icechunk_dask.format import (
    EXPIRED_PREFIX,
    ChunkRef,
    ExpiryMarker,
    Snapshot,
    TagRef,
    chunk_checksum,
    key_id,
)

__all__ = ["Problem", "VerifyReport", "verify_repository"]

#: Problems kept in a report (the rest are only counted).
MAX_PROBLEMS = 10_000
_CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a repository.

    Attributes
    ----------
    key : str
        The object concerned (``chunks/<id>``, ``manifests/<id>``, a ref, ...).
    kind : str
        ``missing``, ``corrupt`` (damaged, or another object than its key names),
        ``truncated``, ``checksum``, ``cycle`` or ``expired-ref``.
    message : str
        What is wrong.
    referenced_by : str
        Which object needs it ("" for refs and the objects listed directly).
    """

    key: str
    kind: str
    message: str
    referenced_by: str = ""

    def to_dict(self) -> dict[str, str]:
        """A JSON-serialisable form."""
        return {
            "key": self.key,
            "kind": self.kind,
            "message": self.message,
            "referenced_by": self.referenced_by,
        }


@dataclass
class VerifyReport:
    """What :meth:`~icechunk_dask.Repository.verify` checked and found.

    Each parameter is also an attribute of the same name.

    Parameters
    ----------
    refs : int
        Branch and tag objects checked.
    snapshots, manifests, chunk_objects : int
        Distinct objects of each kind checked.
    chunk_refs : int
        Chunk references checked (inline ones included).
    chunks_read : int
        Chunks read and checked against their checksum (``chunks=True``).
    problems : list of Problem
        What is wrong (the first 10,000; ``problems_total`` counts all).
    problems_total : int
        How many problems were found.
    """

    refs: int = 0
    snapshots: int = 0
    manifests: int = 0
    chunk_objects: int = 0
    chunk_refs: int = 0
    chunks_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return self.problems_total == 0

    def add(self, key: str, kind: str, message: str, referenced_by: str = "") -> None:
        """Record a problem.

        Parameters
        ----------
        key : str
            The object concerned.
        kind : str
            What is wrong: ``missing``, ``truncated``, ``checksum``, ``corrupt``,
            ``cycle`` or ``expired-ref``.
        message : str
            The details.
        referenced_by : str, optional
            The object that references it.
        """
        self.problems_total += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(key, kind, message, referenced_by))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form.

        Returns
        -------
        dict
            The report as plain JSON types.
        """
        return {
            "ok": self.ok,
            "refs": self.refs,
            "snapshots": self.snapshots,
            "manifests": self.manifests,
            "chunk_objects": self.chunk_objects,
            "chunk_refs": self.chunk_refs,
            "chunks_read": self.chunks_read,
            "problems_total": self.problems_total,
            "problems": [p.to_dict() for p in self.problems],
        }


def _kind(e: Exception) -> str:
    return "missing" if isinstance(e, NotFoundError) else "corrupt"


class _Verifier:
    def __init__(self, assets: AssetManager, check_chunks: bool) -> None:
        self.assets = assets
        self.check_chunks = check_chunks
        self.report = VerifyReport()
        self.seen: set[str] = set()  # snapshots visited (expired ones included)
        self.manifests: dict[str, tuple[str, str | None, str]] = {}  # id -> node, box, by
        self.whole: set[str] = set()  # manifests some stack shows entirely
        self.stacks: dict[tuple[str, str], set[Stack]] = {}  # (node, box) -> stacks of 2+
        self.needed: dict[str, tuple[int, str]] = {}  # chunk object -> end, referenced by
        self.verified: set[int] = set()

    # -- refs --------------------------------------------------------------------------

    async def refs(self) -> dict[str, str]:
        """Check every ref object; return the live refs and the snapshots they name."""
        storage, rep = self.assets.storage, self.report
        keys = await storage.list("refs/")
        head = "refs/branch."
        live: dict[str, str] = {}
        for name in sorted({k[len(head) :].split("/")[0] for k in keys if k.startswith(head)}):
            rep.refs += 1
            try:
                _, ref = await self.assets.branch_tip(name)
            except IcechunkDaskError as e:
                rep.add(f"{head}{name}/", "corrupt", str(e))
                continue
            if ref is not None and not ref.deleted and ref.snapshot_id is not None:
                live[f"branch {name}"] = ref.snapshot_id
        tags: dict[str, str] = {}
        tombstones: set[str] = set()
        for key in sorted(k for k in keys if k.startswith("refs/tag.")):
            rep.refs += 1
            try:
                tag = TagRef.decode(await storage.get(key), key)
            except IcechunkDaskError as e:
                rep.add(key, _kind(e), str(e))
                continue
            if key.endswith(".deleted.json"):
                tombstones.add(key[len("refs/tag.") : -len(".deleted.json")])
            else:
                tags[key[len("refs/tag.") : -len(".json")]] = tag.snapshot_id
        live.update({f"tag {t}": sid for t, sid in tags.items() if t not in tombstones})
        for label, sid in live.items():
            if await self._marker(sid, label) is not None:
                rep.add(f"snapshots/{sid}", "expired-ref", f"{label} points at an expired snapshot")
        return live

    async def _marker(self, sid: str, by: str) -> ExpiryMarker | None:
        try:
            return await self.assets.get_expiry(sid)
        except IcechunkDaskError as e:
            self.report.add(f"{EXPIRED_PREFIX}{sid}", "corrupt", str(e), by)
            return None

    # -- snapshots -----------------------------------------------------------------

    async def history(self, start: str, by: str) -> None:
        """Check ``start`` and its history (expired snapshots skipped through their markers)."""
        path: set[str] = set()
        current: str | None = start
        while current is not None and current not in self.seen:
            self.seen.add(current)
            path.add(current)
            snap = await self.snapshot(current, by, expired_ok=current == start)
            if snap is None:
                marker = await self._marker(current, by)
                current = marker.next_id if marker is not None else None
            else:
                by, current = f"snapshots/{snap.id}", snap.parent_id
        if current is not None and current in path:
            self.report.add(f"snapshots/{current}", "cycle", "the history has a cycle here", by)

    async def snapshot(self, sid: str, by: str, *, expired_ok: bool) -> Snapshot | None:
        """Check one snapshot and its transaction log; ``None`` if expired or unreadable."""
        key = f"snapshots/{sid}"
        try:
            snap = await self.assets.get_snapshot(sid, expired_ok=expired_ok)
        except ExpiredSnapshotError:
            return None
        except IcechunkDaskError as e:
            self.report.add(key, _kind(e), str(e), by)
            self.seen.add(sid)
            return None
        self.report.snapshots += 1
        if snap.parent_id is not None:
            try:
                await self.assets.get_transaction_log(sid)
            except IcechunkDaskError as e:
                self.report.add(f"transactions/{sid}", _kind(e), str(e), key)
        for node, nm in snap.nodes.items():
            for shard in (m for m in nm.legacy if m is not None):
                self.manifests.setdefault(shard, (node, None, key))
            for box, layers in nm.boxes.items():
                for layer in layers:
                    self.manifests.setdefault(layer.id, (node, box, key))
            note_stacks(node, nm, self.whole, self.stacks)
        return snap

    async def visible(self) -> dict[str, set[str]]:
        """The keys shown of each manifest that is below the top of every stack naming it."""
        out: dict[str, set[str]] = {}
        for (node, box), group in sorted(self.stacks.items()):
            lower = lower_layers(group, self.whole)
            chosen = needed_layers(group, lower)
            needed = sorted({m for st in chosen for m in st})
            loaded = await asyncio.gather(
                *(self.assets.get_manifest(m, node, box) for m in needed), return_exceptions=True
            )
            entries: dict[str, dict[str, Any]] = {}
            for m, x in zip(needed, loaded, strict=True):
                if not isinstance(x, BaseException):
                    entries[m] = x
                elif not isinstance(x, IcechunkDaskError):
                    raise x  # not damage to report: a failure of its own
            if len(entries) == len(needed):  # else the damage is reported when that manifest
                out.update(visible_keys(chosen, entries, lower))  # is checked; every key counts
        return out

    # -- manifests and chunks ----------------------------------------------------------

    async def manifest(
        self, mid: str, node: str, box: str | None, by: str, shown: set[str] | None = None
    ) -> None:
        """Check one manifest and note the chunk objects of its references (``shown`` only)."""
        key = f"manifests/{mid}"
        try:
            entries = await self.assets.get_manifest(mid, node, box)
        except IcechunkDaskError as e:
            kind = "missing" if "missing" in str(e) else "corrupt"
            self.report.add(key, kind, str(e), by)
            return
        self.report.manifests += 1
        refs = [
            (s, r) for s, r in entries.items() if r is not None and (shown is None or s in shown)
        ]
        self.report.chunk_refs += len(refs)
        where = f"{key} (node {node!r})"
        for _, (loc, off, length, _) in refs:
            if isinstance(loc, str):
                end = off + length
                if self.needed.get(loc, (-1, ""))[0] < end:
                    self.needed[loc] = (end, where)
        if self.check_chunks:
            await self.read_chunks(refs, where, node)

    async def read_chunks(self, refs: list[tuple[str, ChunkRef]], where: str, node: str) -> None:
        by_object: dict[str, list[tuple[str, ChunkRef]]] = {}
        for suffix, ref in refs:
            loc, off, length, crc = ref
            if isinstance(loc, bytes):
                self.report.chunks_read += 1
                if chunk_checksum(loc) != crc or len(loc) != length:
                    self.report.add(
                        f"{node}/{suffix}", "checksum", "inline chunk fails its checksum", where
                    )
                continue
            mark = hash((loc, off, length, crc))
            if mark not in self.verified:
                self.verified.add(mark)
                by_object.setdefault(loc, []).append((suffix, ref))
        for loc, parts in by_object.items():
            key = f"chunks/{loc}"
            try:
                whole = await self.assets.storage.get(key) if len(parts) > 1 else None
            except NotFoundError:
                continue  # reported by the listing
            for suffix, (_, off, length, crc) in parts:
                try:
                    data = (
                        whole[off : off + length]
                        if whole is not None
                        else await self.assets.storage.get_range(key, off, length)
                    )
                except NotFoundError:
                    break
                self.report.chunks_read += 1
                if len(data) != length or chunk_checksum(data) != crc:
                    self.report.add(
                        key,
                        "checksum",
                        f"chunk {node}/{suffix} (bytes {off}-{off + length}) fails its checksum",
                        where,
                    )

    async def chunk_objects(self) -> None:
        """Check that every chunk object referenced exists and is long enough."""
        needed = self.needed
        self.report.chunk_objects = len(needed)
        async for page in self.assets.storage.list_object_pages("chunks/"):
            for key, size in zip(page.keys, page.sizes.tolist(), strict=True):
                want = needed.pop(key_id(key), None)
                if want is not None and size < want[0]:
                    self.report.add(
                        key,
                        "truncated",
                        f"{size} bytes, but a reference reaches byte {want[0]}",
                        want[1],
                    )
        for loc, (_, where) in sorted(needed.items()):
            self.report.add(f"chunks/{loc}", "missing", "referenced chunk object is missing", where)


async def verify_repository(
    assets: AssetManager, *, all_snapshots: bool = False, chunks: bool = False
) -> VerifyReport:
    """Check the repository (see the module docstring).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    all_snapshots : bool
        Check every stored snapshot (and expiry marker), not only the histories of the refs.
    chunks : bool
        Read every chunk and check its checksum.

    Returns
    -------
    VerifyReport
        What was checked and every problem found.
    """
    v = _Verifier(assets, chunks)
    for label, sid in (await v.refs()).items():
        await v.history(sid, label)
    if all_snapshots:
        for key in sorted(await assets.storage.list("snapshots/")):
            if key_id(key) not in v.seen:
                v.seen.add(key_id(key))
                await v.snapshot(key_id(key), "", expired_ok=True)
        for key in sorted(await assets.storage.list(EXPIRED_PREFIX)):
            await v._marker(key_id(key), "")
    limit = asyncio.Semaphore(_CONCURRENCY)
    shown = await v.visible()

    async def one(mid: str, where: tuple[str, str | None, str]) -> None:
        async with limit:
            await v.manifest(mid, *where, shown.get(mid))

    await asyncio.gather(*(one(m, w) for m, w in sorted(v.manifests.items())))
    await v.chunk_objects()
    return v.report
