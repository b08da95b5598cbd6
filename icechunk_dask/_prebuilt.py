"""Pre-built manifest layers in change sets: reading them, and loading them when needed.

A Dask job's tree reduction stores the references of whole boxes as
manifests on its workers (:mod:`icechunk_dask._buildboxes`) and hands the
session *layers* (``ChangeSet.layers``) instead of the references. Layers
stay unloaded on the way to the commit, which adds them to the snapshot as
they are. Everything else reads through them:

* a read looks a key up in its box's layers (manifests are cached);
* a listing loads the layers of the nodes it reaches into;
* a merge of two records that both change one box, a rebase onto commits
  that touched the node, or a commit whose layout differs from the one the
  layers were built for, first *materialize* those boxes: their entries
  become ordinary chunk entries of the change set (older than the entries
  already there), and the layers are dropped.

So layers change what a commit costs, never what any operation returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._changeset import ChangeSet, colliding_boxes
from icechunk_dask.format import FLAT, ChunkRef, Layer, NodeManifests, box_key, parse_chunk_suffix

__all__ = [
    "MISSING",
    "LoadedBoxes",
    "Needs",
    "apply_loaded",
    "box_entries",
    "layered_keys",
    "layered_node",
    "lookup_layered",
    "materialize",
    "merge_loaded",
    "merge_records",
    "node_entries",
    "preload",
    "without_boxes",
]

#: What :func:`lookup_layered` returns for a key no layer holds.
MISSING: Any = object()


def _head(node: str) -> str:
    return f"{node}/" if node else ""


def layered_node(layers: Mapping[str, NodeManifests], key: str) -> str | None:
    """The node of ``layers`` that owns ``key`` (the deepest one), ``None`` if none does."""
    best: str | None = None
    for node in layers:
        if key.startswith(_head(node)) and (best is None or len(node) > len(best)):
            best = node
    return best


def _box(suffix: str, nm: NodeManifests) -> str:
    if nm.encoding is None or nm.split is None:
        return FLAT
    coords = parse_chunk_suffix(suffix, nm.encoding, len(nm.split))
    return FLAT if coords is None else box_key(coords, nm.split)


async def box_entries(
    assets: AssetManager, node: str, box: str, layers: Iterable[Layer]
) -> dict[str, ChunkRef | None]:
    """The entries of a box's layers (newest first), by key suffix; newer layers win.

    Tombstones (``None``) are kept: they hide older values.
    """
    loaded = await asyncio.gather(*(assets.get_manifest(x.id, node, box) for x in layers))
    out: dict[str, ChunkRef | None] = {}
    for entries in reversed(loaded):
        out.update(entries)
    return out


async def node_entries(
    assets: AssetManager, node: str, nm: NodeManifests, boxes: Iterable[str] | None = None
) -> dict[str, ChunkRef | None]:
    """The entries of a node's layers (all boxes, or ``boxes``), by whole key."""
    names = list(nm.boxes) if boxes is None else [b for b in boxes if b in nm.boxes]
    parts = await asyncio.gather(*(box_entries(assets, node, b, nm.boxes[b]) for b in names))
    head = _head(node)
    return {head + s: ref for part in parts for s, ref in part.items()}


async def lookup_layered(
    assets: AssetManager, layers: Mapping[str, NodeManifests], key: str
) -> Any:
    """``key``'s entry in ``layers`` (a reference or ``None``), :data:`MISSING` if absent."""
    node = layered_node(layers, key)
    if node is None:
        return MISSING
    nm = layers[node]
    suffix = key[len(_head(node)) :]
    box = _box(suffix, nm)
    for layer in nm.boxes.get(box, ()):
        entries = await assets.get_manifest(layer.id, node, box)
        if suffix in entries:
            return entries[suffix]
    return MISSING


async def layered_keys(
    assets: AssetManager, layers: Mapping[str, NodeManifests], nodes: Iterable[str] | None = None
) -> dict[str, ChunkRef | None]:
    """Every entry of ``layers`` (of ``nodes`` only, if given), by whole key."""
    names = list(layers) if nodes is None else [n for n in nodes if n in layers]
    parts = await asyncio.gather(*(node_entries(assets, n, layers[n]) for n in names))
    return {k: v for part in parts for k, v in part.items()}


def without_boxes(
    layers: dict[str, NodeManifests], node: str, boxes: Iterable[str] | None
) -> dict[str, NodeManifests]:
    """``layers`` without ``boxes`` of ``node`` (all of them if ``None``), as a new dict."""
    out = dict(layers)
    nm = out.get(node)
    if nm is None:
        return out
    drop = set(nm.boxes) if boxes is None else set(boxes)
    rest = {b: v for b, v in nm.boxes.items() if b not in drop}
    if rest:
        out[node] = NodeManifests(nm.encoding, nm.split, rest)
    else:
        del out[node]
    return out


#: Loaded boxes: (node, box, layer ids) -> entries by whole key.
LoadedBoxes = dict[tuple[str, str, tuple[str, ...]], dict[str, ChunkRef | None]]
#: Boxes to load: (the layers they are in, node -> boxes or ``None`` for all).
Needs = list[tuple[dict[str, NodeManifests], dict[str, set[str] | None]]]


def _wanted(
    layers: Mapping[str, NodeManifests], where: Mapping[str, Iterable[str] | None]
) -> list[tuple[str, str, tuple[str, ...]]]:
    out: list[tuple[str, str, tuple[str, ...]]] = []
    for node, boxes in where.items():
        nm = layers.get(node)
        if nm is None:
            continue
        names = nm.boxes if boxes is None else [b for b in boxes if b in nm.boxes]
        out.extend((node, b, tuple(x.id for x in nm.boxes[b])) for b in names)
    return out


async def preload(assets: AssetManager, needs: Needs, cache: LoadedBoxes) -> None:
    """Load the boxes ``needs`` names into ``cache``."""
    todo = {w for layers, where in needs for w in _wanted(layers, where) if w not in cache}
    order = list(todo)
    parts = await asyncio.gather(
        *(
            box_entries(assets, node, box, _layers_of(needs, node, box, ids))
            for node, box, ids in order
        )
    )
    for (node, box, ids), entries in zip(order, parts, strict=True):
        head = _head(node)
        cache[(node, box, ids)] = {head + s: ref for s, ref in entries.items()}


def _layers_of(needs: Needs, node: str, box: str, ids: tuple[str, ...]) -> tuple[Layer, ...]:
    for layers, _ in needs:
        nm = layers.get(node)
        if nm is not None and tuple(x.id for x in nm.boxes.get(box, ())) == ids:
            return nm.boxes[box]
    raise KeyError((node, box))  # pragma: no cover - _wanted found it there


def apply_loaded(
    cs: ChangeSet, where: Mapping[str, Iterable[str] | None], cache: LoadedBoxes
) -> bool:
    """Materialize ``where`` in ``cs`` from ``cache``, in place.

    Returns ``False`` (and changes nothing) if a box is not loaded yet. The loaded entries are older than the chunk entries already in ``cs``: those win.
    """
    wanted = _wanted(cs.layers, where)
    if any(w not in cache for w in wanted):
        return False
    chunks = cs.chunks
    for w in wanted:
        for key, ref in cache[w].items():
            if key not in chunks:
                chunks[key] = ref
    layers = cs.layers
    for node, boxes in where.items():
        layers = without_boxes(layers, node, boxes)
    cs.layers = layers
    return True


async def materialize(
    assets: AssetManager, cs: ChangeSet, where: Mapping[str, Iterable[str] | None]
) -> None:
    """Turn the layers of ``where`` (node -> boxes, ``None``: all) into chunk entries, in place."""
    cache: LoadedBoxes = {}
    norm = {n: (None if b is None else set(b)) for n, b in where.items()}
    await preload(assets, [(cs.layers, norm)], cache)
    apply_loaded(cs, norm, cache)


def merge_loaded(
    into: ChangeSet, records: Iterable[ChangeSet], cache: LoadedBoxes, *, flatten: bool = False
) -> tuple[ChangeSet | None, Needs]:
    """Merge ``records`` into a copy of ``into`` with the boxes in ``cache``.

    Returns the merged record, or ``None`` and the boxes to load first
    (nothing is modified). See :func:`merge_records`.
    """
    out = into.copy()
    for rec in records:
        where: dict[str, set[str] | None] = {
            n: set(b) for n, b in colliding_boxes(out, rec).items()
        }
        if flatten:
            where.update(dict.fromkeys(rec.layers))
        if where:
            rec = rec.copy()
            if not (apply_loaded(out, where, cache) and apply_loaded(rec, where, cache)):
                return None, [(out.layers, where), (rec.layers, where)]
        out.update(rec)
    return out, []


async def merge_records(
    assets: AssetManager,
    into: ChangeSet,
    records: Iterable[ChangeSet],
    *,
    flatten: bool = False,
) -> ChangeSet:
    """Merge ``records`` into a copy of ``into``, loading colliding layers first.

    Parameters
    ----------
    assets : AssetManager
        Where the layers' manifests are.
    into : ChangeSet
        The record merged into (left unchanged).
    records : iterable of ChangeSet
        Records to merge, in order (left unchanged).
    flatten : bool
        Load every layer of ``records`` (a session that inherited uncommitted
        chunks keeps no layers of its own: see :mod:`icechunk_dask._workspace`).

    Returns
    -------
    ChangeSet
        The merged record.
    """
    recs = list(records)
    cache: LoadedBoxes = {}
    while True:
        out, needs = merge_loaded(into, recs, cache, flatten=flatten)
        if out is not None:
            return out
        await preload(assets, needs, cache)
