"""Reading a node's chunk references from its manifests (both formats).

A format-2 node keeps references in boxes of layers, newest first: the first
layer that has a key decides (a tombstone means deleted). A format-1 node
keeps them in hash shards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from icechunk_dask._assets import AssetManager
from icechunk_dask.format import (
    FLAT,
    ChunkRef,
    Layer,
    NodeManifests,
    box_key,
    parse_chunk_suffix,
    shard_of,
)

__all__ = ["box_of", "load_box", "load_node", "lookup"]


def box_of(suffix: str, nm: NodeManifests) -> str:
    """The box of node ``nm`` that holds key ``suffix`` (``FLAT`` if it is no chunk key)."""
    if nm.split is None or nm.encoding is None:
        return FLAT
    coords = parse_chunk_suffix(suffix, nm.encoding, len(nm.split))
    return FLAT if coords is None else box_key(coords, nm.split)


async def lookup(
    assets: AssetManager, node: str, nm: NodeManifests, suffix: str
) -> ChunkRef | None:
    """The committed reference of ``suffix`` in node ``node`` (``None`` if absent or deleted)."""
    if nm.legacy:
        mid = nm.legacy[shard_of(suffix, len(nm.legacy))]
        if mid is None:
            return None
        return (await assets.get_manifest(mid, node)).get(suffix)
    box = box_of(suffix, nm)
    for layer in nm.boxes.get(box, ()):
        entries = await assets.get_manifest(layer.id, node, box)
        if suffix in entries:
            return entries[suffix]
    return None


async def load_box(
    assets: AssetManager, node: str, box: str, layers: Sequence[Layer]
) -> dict[str, ChunkRef]:
    """Every live reference of one box (its layers resolved, tombstones applied)."""
    loaded = await asyncio.gather(*(assets.get_manifest(layer.id, node, box) for layer in layers))
    out: dict[str, ChunkRef | None] = {}
    for entries in reversed(loaded):  # oldest first; newer layers override
        out.update(entries)
    return {k: v for k, v in out.items() if v is not None}


async def load_node(assets: AssetManager, node: str, nm: NodeManifests) -> dict[str, ChunkRef]:
    """Every live reference of a node, by key suffix."""
    out: dict[str, ChunkRef] = {}
    if nm.legacy:
        parts = await asyncio.gather(
            *(assets.get_manifest(m, node) for m in nm.legacy if m is not None)
        )
        for part in parts:
            out.update({k: v for k, v in part.items() if v is not None})
    boxes = await asyncio.gather(
        *(load_box(assets, node, b, layers) for b, layers in nm.boxes.items())
    )
    for entries in boxes:
        out.update(entries)
    return out
