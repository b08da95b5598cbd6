"""Write a new snapshot: the parent's state plus a change set.

Chunk references are grouped by node (the array that owns them) and by box
of the array's chunk grid; each touched box gets one new manifest layer
holding what changed in it (see :mod:`icechunk_dask._layers` for when older
layers are merged in). Untouched boxes and nodes are reused by id, so a
commit costs what it changed, not what the repository holds.

A node is rewritten whole (its references re-grouped) only when its layout
changes: a format-1 node the first time it changes, an array that replaced
a plain directory of keys (or the reverse), a ``delete_dir`` inside it.
"""

from __future__ import annotations

import asyncio
import json
import operator
import re
from itertools import compress, repeat
from typing import TYPE_CHECKING, Any

from icechunk_dask._layers import LayerWriter, write_box
from icechunk_dask._manifests import load_node
from icechunk_dask.format import (
    FLAT,
    Encoding,
    NodeManifests,
    Snapshot,
    TransactionLog,
    array_layout,
    group_boxes,
    new_id,
)
from icechunk_dask.format._locate import array_paths, node_of

if TYPE_CHECKING:
    from icechunk_dask._assets import AssetManager
    from icechunk_dask._changeset import ChangeSet
    from icechunk_dask.format import ChunkRef, RepoConfig

__all__ = ["group_by_node", "write_snapshot"]

#: How many nodes ``group_by_node`` splits off with C-level prefix tests before it
#: falls back to one ``node_of`` per directory (each fast step is a pass over the keys left).
_FAST_NODES = 16

_Refs = list["ChunkRef | None"]
_Layout = tuple[Encoding, tuple[int, ...]] | None


def group_by_node(
    chunks: dict[str, ChunkRef | None], arrays: frozenset[str]
) -> dict[str, tuple[list[str], _Refs]]:
    """Group chunk changes by node: ``{node: (suffixes, refs)}`` (parallel lists).

    Keys in Zarr v3's default encoding (``<array>/c/...``) are split off per
    array with C-level prefix tests, no Python bytecode per key; anything else
    goes through :func:`node_of` once per directory. Both give exactly
    ``node_of``'s grouping.
    """
    out: dict[str, tuple[list[str], _Refs]] = {}
    keys = list(chunks)
    refs = list(chunks.values())
    nested = {a for a in arrays if any(b != a and b.startswith(a + "/") for b in arrays)}
    for _ in range(_FAST_NODES):
        if not keys:
            return out
        node, suffix = node_of(keys[0], arrays)
        if node not in arrays or node in nested or not suffix.startswith("c/"):
            break
        prefix = f"{node}/c/" if node else "c/"
        mask = list(map(str.startswith, keys, repeat(prefix)))
        if all(mask):
            mine_k, mine_r, keys, refs = keys, refs, [], []
        else:
            mine_k, mine_r = list(compress(keys, mask)), list(compress(refs, mask))
            rest = list(map(operator.not_, mask))
            keys, refs = list(compress(keys, rest)), list(compress(refs, rest))
        cut = operator.itemgetter(slice(len(node) + 1 if node else 0, None))
        group = out.setdefault(node, ([], []))
        group[0].extend(map(cut, mine_k))
        group[1].extend(mine_r)
    # the general case; memo: directory -> (node's lists, length of the node prefix to strip)
    memo: dict[str, tuple[list[str], _Refs, int]] = {}
    for key, ref in zip(keys, refs, strict=True):
        dirname, _, name = key.rpartition("/")
        hit = memo.get(dirname) if name != "c" else None
        if hit is None:
            node, suffix = node_of(key, arrays)
            group = out.setdefault(node, ([], []))
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


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` (a node path) lies under directory ``prefix`` ("" = everything)."""
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def _layout_of(
    node: str, meta: dict[str, bytes], arrays: frozenset[str], cfg: RepoConfig
) -> _Layout:
    """The box layout a node gets when it is (re)created: from its array's ``zarr.json``."""
    if node not in arrays:
        return None
    doc = meta.get(f"{node}/zarr.json" if node else "zarr.json")
    if doc is None:
        return None
    try:
        parsed = json.loads(doc)
    except ValueError:
        return None
    overrides = None
    for pattern, dims in cfg.manifest_splits.items():
        if re.fullmatch(pattern, node):
            overrides = dims
            break
    return array_layout(parsed, cfg.manifest_box_refs, overrides)


def _keeps_layout(nm: NodeManifests, layout: _Layout) -> bool:
    """Whether an existing node can keep its boxes under the node's current metadata."""
    if nm.legacy:
        return False
    if nm.split is None or layout is None:
        return nm.split is None and layout is None
    return nm.encoding == layout[0] and len(nm.split) == len(layout[1])


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
    arrays = array_paths(meta)
    cfg = assets.config
    snap_id = new_id()

    async def write_txlog() -> None:
        # independent of the manifests: encode and store it while they are written
        txlog = TransactionLog(
            snap_id, parent.id, changes.meta.keys(), changes.chunks.keys(), changes.cleared
        )
        await assets.storage.put(f"transactions/{snap_id}", await asyncio.to_thread(txlog.encode))

    async def write_manifests() -> dict[str, NodeManifests]:
        nodes = dict(parent.nodes)
        cleared = changes.cleared
        for path in [p for p in nodes if any(_under(p, c) for c in cleared)]:
            del nodes[path]  # everything committed under a cleared prefix is gone
        by_node = await asyncio.to_thread(group_by_node, changes.chunks, arrays)
        layouts = {n: _layout_of(n, meta, arrays, cfg) for n in {*nodes, *by_node}}
        redo = _nodes_to_rewrite(nodes, by_node, layouts, arrays, parent.arrays, cleared)
        base: dict[str, ChunkRef | None] = {}
        for path in redo:
            head = f"{path}/" if path else ""
            for suffix, ref in (await load_node(assets, path, nodes.pop(path))).items():
                key = head + suffix
                if not any(c == "" or key.startswith(c + "/") for c in cleared):
                    base[key] = ref
        if base:  # re-group the rewritten nodes' keys; the changes win over them
            base.update(changes.chunks)
            by_node = await asyncio.to_thread(group_by_node, base, arrays)
            layouts.update({n: _layout_of(n, meta, arrays, cfg) for n in by_node})
        writer = LayerWriter(assets)
        results = await asyncio.gather(
            *(_write_node(writer, n, nodes.get(n), layouts[n], *by_node[n]) for n in by_node)
        )
        for name, nm in zip(by_node, results, strict=True):
            if nm is None:
                nodes.pop(name, None)
            else:
                nodes[name] = nm
        return nodes

    _, nodes = await asyncio.gather(write_txlog(), write_manifests())
    snap = Snapshot(snap_id, parent.id, written_at, message, metadata, meta, nodes)
    await assets.storage.put(f"snapshots/{snap.id}", await asyncio.to_thread(snap.encode))
    return snap


def _per_box(
    suffixes: list[str], refs: _Refs, encoding: Encoding | None, split: tuple[int, ...] | None
) -> dict[str, tuple[list[str], _Refs]]:
    """The changes of one node, by box (CPU-bound: run in a worker thread)."""
    if split is None or encoding is None:
        return {FLAT: (suffixes, refs)}
    names, order, bounds = group_boxes(suffixes, encoding, split)
    if len(names) == 1:
        return {names[0]: (suffixes, refs)}
    idx = order.tolist()
    out = {}
    for i, name in enumerate(names):
        part = idx[bounds[i] : bounds[i + 1]]
        out[name] = (list(map(suffixes.__getitem__, part)), list(map(refs.__getitem__, part)))
    return out


def _nodes_to_rewrite(
    nodes: dict[str, NodeManifests],
    by_node: dict[str, tuple[list[str], _Refs]],
    layouts: dict[str, _Layout],
    arrays: frozenset[str],
    before: frozenset[str],
    cleared: set[str],
) -> set[str]:
    """Existing nodes whose references must be re-grouped (see the module docstring)."""
    redo = set()
    added, removed = arrays - before, before - arrays
    for path, nm in nodes.items():
        if path in by_node and not _keeps_layout(nm, layouts[path]):
            redo.add(path)  # format 1, or an array replaced a directory of keys (or the reverse)
        elif path in removed or any(_under(path, a) or _under(a, path) for a in added):
            redo.add(path)  # which node owns these keys changed
        elif any(c != path and _under(c, path) for c in cleared):
            redo.add(path)  # a delete_dir inside the node
    return redo


async def _write_node(
    writer: LayerWriter,
    node: str,
    old: NodeManifests | None,
    layout: _Layout,
    suffixes: list[str],
    refs: _Refs,
) -> NodeManifests | None:
    """The node's new manifests: one new layer per box that changed."""
    if old is not None:
        encoding, split = old.encoding, old.split  # a layout is kept for the node's life
    elif layout is not None:
        encoding, split = layout
    else:
        encoding, split = None, None
    per_box = await asyncio.to_thread(_per_box, suffixes, refs, encoding, split)
    boxes = dict(old.boxes) if old is not None else {}
    names = list(per_box)
    written = await asyncio.gather(
        *(write_box(writer, node, b, boxes.get(b, ()), *per_box[b]) for b in names)
    )
    for b, layers in zip(names, written, strict=True):
        if layers:
            boxes[b] = layers
        else:
            boxes.pop(b, None)
    if not boxes:
        return None
    return NodeManifests(encoding=encoding, split=split, boxes=boxes)
