"""Write a new snapshot: the parent's state plus a change set.

Only the manifest shards that hold changed chunks are rewritten; every other
shard (and every untouched node) is reused by id, so a commit costs what it
changed, not what the repository holds.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING, Any

from icechunk_dask.format import (
    ChunkRef,
    NodeManifests,
    Snapshot,
    TransactionLog,
    encode_manifest,
    new_id,
)
from icechunk_dask.format._keys import split_key

if TYPE_CHECKING:
    from icechunk_dask._changeset import ChangeSet
    from icechunk_dask._repository import Repository

__all__ = ["group_by_node", "shard_of", "write_snapshot"]

_CONCURRENCY = 32


def shard_of(suffix: str, nshards: int) -> int:
    """Which shard of a node holds ``suffix``."""
    return zlib.crc32(suffix.encode()) % nshards if nshards > 1 else 0


def group_by_node(chunks: dict[str, ChunkRef | None]) -> dict[str, dict[str, ChunkRef | None]]:
    """Group chunk changes by node: ``{node: {suffix: ref}}``."""
    out: dict[str, dict[str, ChunkRef | None]] = {}
    # memo: directory -> (node's group, length of the node prefix to strip)
    memo: dict[str, tuple[dict[str, ChunkRef | None], int]] = {}
    for key, ref in chunks.items():
        dirname, _, name = key.rpartition("/")
        hit = memo.get(dirname) if name != "c" else None
        if hit is None:
            node, suffix = split_key(key)
            group = out.get(node)
            if group is None:
                group = out[node] = {}
            cut = len(key) - len(suffix)
            if name != "c":
                memo[dirname] = (group, cut)
            group[suffix] = ref
        else:
            group, cut = hit
            group[key[cut:]] = ref
    return out


async def _rewrite_node(
    repo: Repository,
    node: str,
    old: NodeManifests | None,
    changes: dict[str, ChunkRef | None],
    sem: asyncio.Semaphore,
) -> NodeManifests | None:
    shard_size = repo.config.manifest_shard_size
    old_shards: tuple[str | None, ...] = old.shards if old is not None else (None,)
    old_count = old.count if old is not None else 0
    n = len(old_shards)
    upper = old_count + sum(1 for r in changes.values() if r is not None)
    reshard = upper > n * shard_size
    if reshard:
        while upper > n * shard_size // 2:
            n *= 2
    # bucket the changes by (new) shard
    buckets: dict[int, dict[str, ChunkRef | None]] = {}
    for suffix, ref in changes.items():
        buckets.setdefault(shard_of(suffix, n), {})[suffix] = ref

    async def load(mid: str | None) -> dict[str, ChunkRef]:
        if mid is None:
            return {}
        async with sem:
            return await repo.get_manifest(mid)

    async def write(i: int, entries: dict[str, ChunkRef]) -> str | None:
        if not entries:
            return None
        mid = new_id()
        data = await asyncio.to_thread(encode_manifest, node, i, n, entries)
        async with sem:
            await repo.storage.put(f"manifests/{mid}", data)
        return mid

    if reshard:
        olds = await asyncio.gather(*(load(m) for m in old_shards))
        shards: list[dict[str, ChunkRef]] = [{} for _ in range(n)]
        for entries in olds:
            for suffix, ref in entries.items():
                shards[shard_of(suffix, n)][suffix] = ref
        for i, bucket in buckets.items():
            _apply(shards[i], bucket)
        ids = await asyncio.gather(*(write(i, s) for i, s in enumerate(shards)))
        count = sum(len(s) for s in shards)
    else:
        new_ids: list[str | None] = list(old_shards)
        count = old_count

        async def redo(i: int, bucket: dict[str, ChunkRef | None]) -> int:
            entries = dict(await load(old_shards[i]))
            before = len(entries)
            _apply(entries, bucket)
            new_ids[i] = await write(i, entries)
            return len(entries) - before

        deltas = await asyncio.gather(*(redo(i, b) for i, b in buckets.items()))
        count += sum(deltas)
        ids = new_ids
    if count == 0:
        return None
    return NodeManifests(tuple(ids), count)


def _apply(entries: dict[str, ChunkRef], changes: dict[str, ChunkRef | None]) -> None:
    for suffix, ref in changes.items():
        if ref is None:
            entries.pop(suffix, None)
        else:
            entries[suffix] = ref


async def write_snapshot(
    repo: Repository,
    parent: Snapshot,
    changes: ChangeSet,
    message: str,
    metadata: dict[str, Any],
    written_at: str,
) -> Snapshot:
    """Write manifests, the transaction log and the snapshot for a commit.

    Nothing becomes visible until the caller moves the branch to the returned
    snapshot.

    Returns
    -------
    Snapshot
        The new snapshot (already stored).
    """
    meta = dict(parent.meta)
    for key, doc in changes.meta.items():
        if doc is None:
            meta.pop(key, None)
        else:
            meta[key] = doc
    by_node = await asyncio.to_thread(group_by_node, changes.chunks)
    sem = asyncio.Semaphore(_CONCURRENCY)
    nodes = dict(parent.nodes)
    names = list(by_node)
    results = await asyncio.gather(
        *(_rewrite_node(repo, n, parent.nodes.get(n), by_node[n], sem) for n in names)
    )
    for name, nm in zip(names, results, strict=True):
        if nm is None:
            nodes.pop(name, None)
        else:
            nodes[name] = nm
    snap = Snapshot(new_id(), parent.id, written_at, message, metadata, meta, nodes)
    txlog = TransactionLog(snap.id, parent.id, changes.meta.keys(), changes.chunks.keys())
    tx_bytes = await asyncio.to_thread(txlog.encode)
    await repo.storage.put(f"transactions/{snap.id}", tx_bytes)
    await repo.storage.put(f"snapshots/{snap.id}", await asyncio.to_thread(snap.encode))
    return snap
