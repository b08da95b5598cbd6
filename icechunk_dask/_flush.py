"""Write a new snapshot: the parent's state plus a change set.

Only the manifest shards that hold changed chunks are rewritten; every other
shard (and every untouched node) is reused by id, so a commit costs what it
changed, not what the repository holds.
"""

from __future__ import annotations

import asyncio
import operator
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from icechunk_dask.format import (
    ChunkRef,
    NodeManifests,
    Snapshot,
    TransactionLog,
    encode_manifest,
    encode_manifest_columns,
    new_id,
    ref_columns,
    shard_order,
)
from icechunk_dask.format._keys import split_key

if TYPE_CHECKING:
    from icechunk_dask._assets import AssetManager
    from icechunk_dask._changeset import ChangeSet

__all__ = ["group_by_node", "write_snapshot"]

_CONCURRENCY = 32

#: How many nodes ``group_by_node`` splits off with C-level prefix tests before it
#: falls back to one ``split_key`` per key (each fast step is a pass over the keys left).
_FAST_NODES = 16

_Refs = list[ChunkRef | None]


def group_by_node(chunks: dict[str, ChunkRef | None]) -> dict[str, tuple[list[str], _Refs]]:
    """Group chunk changes by node: ``{node: (suffixes, refs)}`` (parallel lists).

    Keys in Zarr v3's default encoding (``<node>/c/...``) are split off per
    node with C-level prefix tests, no Python bytecode per key; anything else
    goes through :func:`split_key` one key at a time. Both give exactly
    ``split_key``'s grouping.
    """
    out: dict[str, tuple[list[str], _Refs]] = {}
    keys = list(chunks)
    refs = list(chunks.values())
    # "<dir>/c" is a 0-d array's only chunk, grouped by its directory: not for the fast path
    if not any(map(str.endswith, keys, repeat("/c"))):
        for _ in range(_FAST_NODES):
            if not keys:
                return out
            node, suffix = split_key(keys[0])
            if not suffix.startswith("c/"):
                break
            # node has no "c" component, so every "<node>/c/..." key belongs to it
            prefix = f"{node}/c/" if node else "c/"
            mask = list(map(str.startswith, keys, repeat(prefix)))
            if all(mask):
                mine_k, mine_r, keys, refs = keys, refs, [], []
            else:
                mine_k, mine_r = list(compress(keys, mask)), list(compress(refs, mask))
                rest = list(map(operator.not_, mask))
                keys, refs = list(compress(keys, rest)), list(compress(refs, rest))
            cut = operator.itemgetter(slice(len(node) + 1 if node else 0, None))
            out[node] = (list(map(cut, mine_k)), mine_r)
    # the general case; memo: directory -> (node's lists, length of the node prefix to strip)
    memo: dict[str, tuple[list[str], _Refs, int]] = {}
    for key, ref in zip(keys, refs, strict=True):
        dirname, _, name = key.rpartition("/")
        hit = memo.get(dirname) if name != "c" else None
        if hit is None:
            node, suffix = split_key(key)
            group = out.get(node)
            if group is None:
                group = out[node] = ([], [])
            cut_at = len(key) - len(suffix)
            if name != "c":
                memo[dirname] = (*group, cut_at)
            group[0].append(suffix)
            group[1].append(ref)
        else:
            sfx, rfs, cut_at = hit
            sfx.append(key[cut_at:])
            rfs.append(ref)
    return out


async def _rewrite_node(
    assets: AssetManager,
    node: str,
    old: NodeManifests | None,
    suffixes: list[str],
    refs: _Refs,
    sem: asyncio.Semaphore,
) -> NodeManifests | None:
    shard_size = assets.config.manifest_shard_size
    old_shards: tuple[str | None, ...] = old.shards if old is not None else (None,)
    old_count = old.count if old is not None else 0
    n = len(old_shards)
    upper = old_count + len(refs) - operator.countOf(refs, None)
    reshard = upper > n * shard_size
    if reshard:
        while upper > n * shard_size // 2:
            n *= 2

    def plan() -> tuple[np.ndarray, list[int], tuple[Any, ...] | None]:
        # the changes' order by (new) shard, and the changes as columns if they are all
        # chunk objects (transposed in insertion order, where the refs sit close in memory)
        return (*shard_order(suffixes, n), ref_columns(refs))

    order, bounds, columns = await asyncio.to_thread(plan)

    async def load(mid: str | None) -> dict[str, ChunkRef]:
        if mid is None:
            return {}
        async with sem:
            return await assets.get_manifest(mid)

    def encode(i: int, base: dict[str, ChunkRef]) -> tuple[bytes | None, int]:
        idx = order[bounds[i] : bounds[i + 1]]
        pick = idx.tolist()
        keys = list(map(suffixes.__getitem__, pick))
        if not base and columns is not None:
            # new entries only, no deletions: straight from the columns
            ids, offsets, lengths, checksums = columns
            cols = (list(map(ids.__getitem__, pick)), offsets[idx], lengths[idx], checksums[idx])
            return encode_manifest_columns(node, i, n, keys, cols), len(keys)
        entries = dict(base)
        _apply(entries, keys, list(map(refs.__getitem__, pick)))
        if not entries:
            return None, 0
        return encode_manifest(node, i, n, entries), len(entries)

    async def write(i: int, base: dict[str, ChunkRef]) -> tuple[str | None, int]:
        """Write shard ``i``: ``base`` plus the changes that fall into it; (id, count)."""
        if not base and bounds[i] == bounds[i + 1]:
            return None, 0
        data, count = await asyncio.to_thread(encode, i, base)
        if data is None:
            return None, 0
        mid = new_id()
        async with sem:
            await assets.storage.put(f"manifests/{mid}", data)
        return mid, count

    changed = [i for i in range(n) if bounds[i] < bounds[i + 1]]
    if reshard:
        bases: list[dict[str, ChunkRef]] = [{} for _ in range(n)]
        for entries in await asyncio.gather(*(load(m) for m in old_shards)):
            if entries:
                await asyncio.to_thread(_redistribute, entries, bases)
        done = await asyncio.gather(*(write(i, bases[i]) for i in range(n)))
        ids: list[str | None] = [mid for mid, _ in done]
        count = sum(c for _, c in done)
    else:
        ids = list(old_shards)
        count = old_count

        async def redo(i: int) -> int:
            base = await load(old_shards[i])
            ids[i], after = await write(i, base)
            return after - len(base)

        count += sum(await asyncio.gather(*(redo(i) for i in changed)))
    if count == 0:
        return None
    return NodeManifests(tuple(ids), count)


def _redistribute(entries: dict[str, ChunkRef], bases: list[dict[str, ChunkRef]]) -> None:
    """Add ``entries`` (one old shard) to the new shards ``bases``."""
    keys = list(entries)
    vals = list(entries.values())
    order, bounds = shard_order(keys, len(bases))
    idx = order.tolist()
    keys = list(map(keys.__getitem__, idx))
    vals = list(map(vals.__getitem__, idx))
    for i, base in enumerate(bases):
        lo, hi = bounds[i], bounds[i + 1]
        if lo < hi:
            base.update(zip(keys[lo:hi], vals[lo:hi], strict=True))


def _apply(entries: dict[str, ChunkRef], suffixes: list[str], refs: _Refs) -> None:
    if None not in refs:  # no deletions: one C-level update
        entries.update(zip(suffixes, refs, strict=True))  # type: ignore[arg-type]
        return
    for suffix, ref in zip(suffixes, refs, strict=True):
        if ref is None:
            entries.pop(suffix, None)
        else:
            entries[suffix] = ref


async def write_snapshot(
    assets: AssetManager,
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
    snap_id = new_id()

    async def write_txlog() -> None:
        # independent of the manifests: encode and store it while they are written
        txlog = TransactionLog(snap_id, parent.id, changes.meta.keys(), changes.chunks.keys())
        await assets.storage.put(f"transactions/{snap_id}", await asyncio.to_thread(txlog.encode))

    async def write_manifests() -> list[tuple[str, NodeManifests | None]]:
        by_node = await asyncio.to_thread(group_by_node, changes.chunks)
        sem = asyncio.Semaphore(_CONCURRENCY)
        names = list(by_node)
        results = await asyncio.gather(
            *(_rewrite_node(assets, n, parent.nodes.get(n), *by_node[n], sem) for n in names)
        )
        return list(zip(names, results, strict=True))

    _, rewritten = await asyncio.gather(write_txlog(), write_manifests())
    nodes = dict(parent.nodes)
    for name, nm in rewritten:
        if nm is None:
            nodes.pop(name, None)
        else:
            nodes[name] = nm
    snap = Snapshot(snap_id, parent.id, written_at, message, metadata, meta, nodes)
    await assets.storage.put(f"snapshots/{snap.id}", await asyncio.to_thread(snap.encode))
    return snap
