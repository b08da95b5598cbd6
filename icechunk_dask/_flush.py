"""Write a new snapshot: the parent's state plus a change set.

Chunk references are grouped by node (the array that owns them) and by box
of the array's chunk grid; each touched box gets one new manifest layer
holding what changed in it (see :mod:`icechunk_dask._layers` for when older
layers are merged in). Untouched boxes and nodes are reused by id, so a
commit costs what it changed, not what the repository holds.

A node is rewritten whole (its references re-grouped) only when its layout
changes: a format-1 node the first time it changes, an array that replaced
a plain directory of keys (or the reverse), a ``delete_dir`` inside it.

Pre-built layers of the change set (whole boxes a Dask job stored as
manifests on its workers) are stacked on their boxes as they are, when
the node keeps the layout they were built for (:func:`planned_layout`);
otherwise they are loaded and written like any other change.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Collection
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from icechunk_dask._bynode import Refs, group_by_node
from icechunk_dask._layers import KeyBlob, LayerWriter, stack_box, write_box
from icechunk_dask._manifests import load_node
from icechunk_dask._prebuilt import layered_keys
from icechunk_dask.format import (
    FLAT,
    Encoding,
    NodeManifests,
    Snapshot,
    TransactionLog,
    array_layout,
    group_boxes,
    group_joined,
    new_id,
)
from icechunk_dask.format._locate import array_paths
from icechunk_dask.format._refs_codec import strip_joined

if TYPE_CHECKING:
    from icechunk_dask._assets import AssetManager
    from icechunk_dask._changeset import ChangeSet
    from icechunk_dask.format import ChunkRef, RepoConfig

__all__ = ["planned_layout", "write_snapshot"]

_Layout = tuple[Encoding, tuple[int, ...]] | None


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


def planned_layout(
    snap: Snapshot,
    meta: dict[str, bytes],
    cleared: set[str] | frozenset[str],
    cfg: RepoConfig,
    node: str,
) -> _Layout:
    """The layout a commit gives ``node`` if it changes only chunks of that node.

    ``meta`` is the view's metadata (the snapshot's plus the uncommitted
    changes), ``cleared`` the uncommitted ``delete_dir`` prefixes. ``None``
    when the node has no box layout or would be rewritten whole.
    """
    arrays = array_paths(meta)
    layout = _layout_of(node, meta, arrays, cfg)
    nm = snap.nodes.get(node)
    if nm is None or any(_under(node, c) for c in cleared):
        return layout
    if node not in snap.arrays or not _keeps_layout(nm, layout):
        return None
    return nm.encoding, nm.split  # type: ignore[return-value]


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
            snap_id,
            parent.id,
            changes.meta.keys(),
            chunk_keys,
            changes.cleared,
            {n: {b: tuple(x.id for x in st) for b, st in k.boxes.items()} for n, k in kept.items()},
        )
        data = await asyncio.to_thread(txlog.encode, txlog_keys)
        await assets.storage.put(f"transactions/{snap_id}", data)

    nodes = dict(parent.nodes)
    cleared = changes.cleared
    for path in [p for p in nodes if any(_under(p, c) for c in cleared)]:
        del nodes[path]  # everything committed under a cleared prefix is gone
    chunks = changes.chunks
    joined: dict[str, bytes] = {}  # nodes' keys joined by NUL, where the grouping made them
    by_node = await asyncio.to_thread(group_by_node, chunks, arrays, joined)
    touched = {*by_node, *changes.layers}
    layouts = {n: _layout_of(n, meta, arrays, cfg) for n in {*nodes, *touched}}
    redo = _nodes_to_rewrite(nodes, touched, layouts, arrays, parent.arrays, cleared)
    kept: dict[str, NodeManifests] = {}  # pre-built layers added as they are
    for node, lnm in changes.layers.items():
        old = nodes.get(node)
        target = layouts[node] if old is None else (old.encoding, old.split)
        if node not in redo and lnm.encoding is not None and target == (lnm.encoding, lnm.split):
            kept[node] = lnm
    if len(kept) < len(changes.layers):  # the others are loaded: older than the chunk changes
        loaded = await layered_keys(assets, changes.layers, changes.layers.keys() - kept.keys())
        chunks = {**loaded, **chunks}
        joined = {}
        by_node = await asyncio.to_thread(group_by_node, chunks, arrays, joined)
    chunk_keys = chunks.keys()
    # the transaction log's keys: the nodes' joins, if every node has one (else it joins them)
    txlog_keys = (
        [joined[n] for n in by_node] if by_node and joined.keys() == by_node.keys() else None
    )

    async def write_manifests() -> dict[str, NodeManifests]:
        nonlocal by_node
        base: dict[str, ChunkRef | None] = {}
        for path in redo:
            head = f"{path}/" if path else ""
            for suffix, ref in (await load_node(assets, path, nodes.pop(path))).items():
                key = head + suffix
                if not any(c == "" or key.startswith(c + "/") for c in cleared):
                    base[key] = ref
        if base:  # re-group the rewritten nodes' keys; the changes win over them
            base.update(chunks)
            joined.clear()
            by_node = await asyncio.to_thread(group_by_node, base, arrays, joined)
            layouts.update({n: _layout_of(n, meta, arrays, cfg) for n in by_node})
        writer = LayerWriter(assets)
        names = [*by_node, *(n for n in kept if n not in by_node)]
        results = await asyncio.gather(
            *(
                _write_node(
                    writer,
                    n,
                    nodes.get(n),
                    layouts[n],
                    *by_node.get(n, ([], [], "")),
                    kept.get(n),
                    joined.get(n),
                )
                for n in names
            )
        )
        for name, nm in zip(names, results, strict=True):
            if nm is None:
                nodes.pop(name, None)
            else:
                nodes[name] = nm
        return nodes

    _, nodes = await asyncio.gather(write_txlog(), write_manifests())
    snap = Snapshot(snap_id, parent.id, written_at, message, metadata, meta, nodes)
    await assets.storage.put(f"snapshots/{snap.id}", await asyncio.to_thread(snap.encode))
    return snap


_Box = tuple[list[str], Refs, KeyBlob | None]


def _per_box(
    keys: list[str],
    refs: Refs,
    strip: str,
    encoding: Encoding | None,
    split: tuple[int, ...] | None,
    blob: bytes | None = None,
) -> dict[str, _Box]:
    """The changes of one node, by box (CPU-bound: run in a worker thread).

    ``keys`` keep the prefix ``strip`` (every key has it) when the grouping
    can skip it in bulk; the result's keys keep it too. ``blob`` is ``keys``
    joined by NUL (see :func:`group_by_node`): parsed instead of the keys; the
    third item of a box makes its keys as its manifest stores them out of it
    (``strip`` removed), by slices (``None``: the manifest joins the keys).
    """
    if split is None or encoding is None:
        return {FLAT: (keys, refs, None)}
    lead = strip.count("/")
    grouped = None
    if blob is not None and encoding[1] == "/":
        grouped = group_joined(blob, len(keys), encoding, split, lead=lead)
    offsets = None
    if grouped is None:
        blob = None
        if strip and encoding[1] != "/":  # the bulk parser splits at "/" only: strip first
            keys, lead = [k[len(strip) :] for k in keys], 0
        names, order, bounds = group_boxes(keys, encoding, split, lead=lead)
    else:
        names, order, bounds, offsets = grouped
        del grouped
    if len(names) == 1:
        return {
            names[0]: (keys, refs, None if blob is None else partial(strip_joined, blob, strip))
        }
    runs = _runs(order, bounds)
    out: dict[str, _Box] = {}
    if runs is not None:  # boxes made of runs of neighbouring keys: copy slices
        starts, ends, first = runs
        if blob is not None and offsets is not None:  # each run's bytes: first to last key
            byte_lo = offsets[starts]
            byte_hi = offsets[ends] - 1
        del order, offsets  # 8 bytes a key each: gone before the boxes' lists grow
        for i, name in enumerate(names):
            box_keys: list[str] = []
            box_refs: Refs = []
            for run in range(first[i], first[i + 1]):
                box_keys += keys[starts[run] : ends[run]]
                box_refs += refs[starts[run] : ends[run]]
            box_blob = None
            if blob is not None:
                lo, hi = byte_lo[first[i] : first[i + 1]], byte_hi[first[i] : first[i + 1]]
                box_blob = partial(_spans, blob, lo, hi, strip)
            out[name] = (box_keys, box_refs, box_blob)
        return out
    idx = order.tolist()
    for i, name in enumerate(names):
        part = idx[bounds[i] : bounds[i + 1]]
        out[name] = (list(map(keys.__getitem__, part)), list(map(refs.__getitem__, part)), None)
    return out


def _spans(blob: bytes, lo: np.ndarray, hi: np.ndarray, strip: str) -> bytes:
    """The byte spans ``blob[lo[i]:hi[i]]`` (whole keys) joined by NUL, without ``strip``."""
    parts = map(blob.__getitem__, map(slice, lo.tolist(), hi.tolist()))
    return strip_joined(b"\0".join(parts), strip)


#: Boxes are copied as slices when their keys come in runs at least this long on average
#: (a slice costs a few hundred ns, a key fetched by index ~50-100 ns).
_MIN_RUN = 4


def _runs(order: np.ndarray, bounds: list[int]) -> tuple[list[int], list[int], list[int]] | None:
    """The runs of consecutive indices in ``order`` that do not cross a box bound.

    Returns ``(starts, ends, first)``: run ``j`` is ``keys[starts[j]:ends[j]]``, and box ``i``
    is runs ``first[i]`` to ``first[i + 1]``; ``None`` if the runs are short (keys in no
    useful order).
    """
    n = len(order)
    cut = np.empty(n, dtype=bool)
    cut[0] = True
    np.not_equal(np.diff(order), 1, out=cut[1:])
    cut[bounds[:-1]] = True  # a box starts a run
    at = np.flatnonzero(cut)
    if len(at) * _MIN_RUN > n:
        return None
    starts = order[at]
    ends = starts + np.diff(at, append=n)
    first = np.searchsorted(at, bounds).tolist()
    return starts.tolist(), ends.tolist(), first


def _nodes_to_rewrite(
    nodes: dict[str, NodeManifests],
    by_node: Collection[str],
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
    keys: list[str],
    refs: Refs,
    strip: str,
    prebuilt: NodeManifests | None = None,
    blob: bytes | None = None,
) -> NodeManifests | None:
    """The node's new manifests: one new layer per box that changed.

    ``prebuilt`` layers (of the node's layout) go on top of their boxes, under
    the layer of the box's chunk changes. ``blob`` is ``keys`` joined by NUL
    (see :func:`group_by_node`), if the grouping made it.
    """
    if old is not None:
        encoding, split = old.encoding, old.split  # a layout is kept for the node's life
    elif layout is not None:
        encoding, split = layout
    else:
        encoding, split = None, None
    boxes = dict(old.boxes) if old is not None else {}
    stacked = []
    if prebuilt is not None:
        for b, stack in prebuilt.boxes.items():
            boxes[b] = (*stack, *boxes.get(b, ()))
            stacked.append(b)
    per_box: dict[str, _Box] = {}
    if keys:
        per_box = await asyncio.to_thread(_per_box, keys, refs, strip, encoding, split, blob)
    if strip and encoding is not None and encoding[1] != "/":
        strip = ""  # _per_box stripped the keys
    names = list(per_box)
    only_stacked = [b for b in stacked if b not in per_box]
    written = await asyncio.gather(
        *(
            write_box(writer, node, b, boxes.get(b, ()), k, r, strip, key_blob)
            for b, (k, r, key_blob) in per_box.items()
        ),
        *(stack_box(writer, node, b, boxes[b]) for b in only_stacked),
    )
    names += only_stacked
    for b, layers in zip(names, written, strict=True):
        if layers:
            boxes[b] = layers
        else:
            boxes.pop(b, None)
    if not boxes:
        return None
    return NodeManifests(encoding=encoding, split=split, boxes=boxes)
