"""Diff: what changed between two snapshots, or in a session (Icechunk's ``Diff``).

Paths are absolute, as in Icechunk (``"/"`` is the root group, ``"/g/a"`` an
array). Chunk changes are listed by chunk coordinates per array; changed
keys that are not chunks of an array (any key can be stored) are listed in
``other_keys``. Chunks count as changed when their bytes differ (compared by
length and checksum), so rewriting a chunk with identical bytes is not a
change. Between snapshots only the manifest boxes whose layers differ are
read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from icechunk_dask._assets import AssetManager
from icechunk_dask._manifests import load_box, load_node
from icechunk_dask.format import (
    ChunkRef,
    Encoding,
    NodeManifests,
    Snapshot,
    array_layout,
    parse_chunk_suffix,
    same_chunk,
)
from icechunk_dask.format._locate import array_paths, node_of

__all__ = ["Diff", "chunk_coordinates", "diff_snapshots", "session_diff"]


@dataclass(frozen=True)
class Diff:
    """What changed: groups and arrays created, deleted or updated, and chunks written.

    Returned by :meth:`~icechunk_dask.Repository.diff` and
    :meth:`~icechunk_dask.Session.status`. Paths are absolute (``"/"`` is the
    root group, ``"/g/a"`` an array). Each parameter is also a (read-only)
    attribute of the same name; every one defaults to empty. ``str(diff)`` is
    a short summary for people.

    Parameters
    ----------
    new_groups, new_arrays : frozenset of str, optional
        Paths of groups and arrays created.
    deleted_groups, deleted_arrays : frozenset of str, optional
        Paths of groups and arrays deleted.
    updated_groups, updated_arrays : frozenset of str, optional
        Paths whose metadata (attributes, shape, codecs, ...) changed.
    updated_chunks : Mapping of str to list of tuple of int, optional
        Coordinates of the chunks written or deleted, per array path.
    other_keys : frozenset of str, optional
        Changed keys that are not chunks of an array.
    """

    new_groups: frozenset[str] = frozenset()
    new_arrays: frozenset[str] = frozenset()
    deleted_groups: frozenset[str] = frozenset()
    deleted_arrays: frozenset[str] = frozenset()
    updated_groups: frozenset[str] = frozenset()
    updated_arrays: frozenset[str] = frozenset()
    updated_chunks: Mapping[str, list[tuple[int, ...]]] = field(default_factory=dict)
    other_keys: frozenset[str] = frozenset()

    def is_empty(self) -> bool:
        """Whether nothing changed.

        Returns
        -------
        bool
            ``True`` if every field is empty.
        """
        return not any(
            (
                self.new_groups,
                self.new_arrays,
                self.deleted_groups,
                self.deleted_arrays,
                self.updated_groups,
                self.updated_arrays,
                self.updated_chunks,
                self.other_keys,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable form (sorted).

        Returns
        -------
        dict
            One entry per field: sorted lists of paths, and for
            ``updated_chunks`` a dict of array path to sorted lists of coordinates.
        """
        return {
            "new_groups": sorted(self.new_groups),
            "new_arrays": sorted(self.new_arrays),
            "deleted_groups": sorted(self.deleted_groups),
            "deleted_arrays": sorted(self.deleted_arrays),
            "updated_groups": sorted(self.updated_groups),
            "updated_arrays": sorted(self.updated_arrays),
            "updated_chunks": {
                p: [list(c) for c in sorted(cs)] for p, cs in sorted(self.updated_chunks.items())
            },
            "other_keys": sorted(self.other_keys),
        }

    def __str__(self) -> str:
        lines = []
        for name in ("new", "deleted", "updated"):
            for kind in ("groups", "arrays"):
                paths = getattr(self, f"{name}_{kind}")
                if paths:
                    lines.append(f"{name} {kind}: {', '.join(sorted(paths))}")
        for path, coords in sorted(self.updated_chunks.items()):
            lines.append(f"chunks of {path}: {len(coords)} written or deleted")
        if self.other_keys:
            lines.append(f"other keys: {len(self.other_keys)}")
        return "\n".join(lines) or "no changes"


def _abs(path: str) -> str:
    return "/" + path


def _node_docs(meta: Mapping[str, bytes | None]) -> dict[str, dict[str, Any] | None]:
    """Parsed ``zarr.json`` documents by node path (``None`` for a deletion or junk)."""
    out: dict[str, dict[str, Any] | None] = {}
    for key, doc in meta.items():
        path, _, name = key.rpartition("/")
        if name != "zarr.json":
            continue
        parsed = None
        if doc is not None:
            try:
                parsed = json.loads(doc)
            except ValueError:
                parsed = None
        out[path] = parsed if isinstance(parsed, dict) else None
    return out


def _node_changes(
    before: Mapping[str, bytes], after: Mapping[str, bytes | None]
) -> dict[str, set[str]]:
    """New, deleted and updated groups and arrays, by comparing metadata documents."""
    old_docs = _node_docs(before)
    new_docs = {**old_docs, **_node_docs(after)}
    changed_paths = {k.rpartition("/")[0] for k, v in after.items() if before.get(k) != v}
    out: dict[str, set[str]] = {
        f"{a}_{b}": set() for a in ("new", "deleted", "updated") for b in ("groups", "arrays")
    }
    for path in changed_paths:
        old, new = old_docs.get(path), new_docs.get(path)
        if old is None and new is None:
            continue
        kind = "arrays" if (new or old or {}).get("node_type") == "array" else "groups"
        if old is None:
            out[f"new_{kind}"].add(_abs(path))
        elif new is None:
            out[f"deleted_{kind}"].add(_abs(path))
        else:
            out[f"updated_{kind}"].add(_abs(path))
    return out


def _layouts(meta: Mapping[str, bytes | None]) -> dict[str, tuple[Encoding, int]]:
    """Chunk key encoding and rank of every array, from its metadata."""
    out: dict[str, tuple[Encoding, int]] = {}
    for path, doc in _node_docs(meta).items():
        if doc is None:
            continue
        layout = array_layout(doc, 1)
        if layout is not None:
            out[path] = (layout[0], len(layout[1]))
    return out


def chunk_coordinates(
    node: str, keys: Iterable[str], arrays: frozenset[str], meta: Mapping[str, bytes | None]
) -> list[tuple[int, ...]] | None:
    """Chunk coordinates of ``keys`` (all of ``node``), ``None`` if one is not a chunk key."""
    layout = _layouts({k: v for k, v in meta.items() if k.rpartition("/")[0] == node}).get(node)
    if layout is None:
        return None
    out = []
    for key in keys:
        coords = parse_chunk_suffix(node_of(key, arrays)[1], *layout)
        if coords is None:
            return None
        out.append(coords)
    return sorted(out)


def _collect(
    keys: Iterable[str], arrays: frozenset[str], layouts: Mapping[str, tuple[Encoding, int]]
) -> tuple[dict[str, list[tuple[int, ...]]], set[str]]:
    chunks: dict[str, list[tuple[int, ...]]] = {}
    other: set[str] = set()
    for key in keys:
        node, suffix = node_of(key, arrays)
        layout = layouts.get(node)
        coords = parse_chunk_suffix(suffix, *layout) if layout is not None else None
        if coords is None:
            other.add(key)
        else:
            chunks.setdefault(_abs(node), []).append(coords)
    for listed in chunks.values():
        listed.sort()
    return chunks, other


def session_diff(
    base: Snapshot, meta: Mapping[str, bytes | None], chunk_keys: Iterable[str]
) -> Diff:
    """What a session changed: its metadata documents and chunk keys against its base.

    Parameters
    ----------
    base : Snapshot
        The session's base snapshot.
    meta : mapping
        The session's metadata documents (``None``: deleted), inherited ones included.
    chunk_keys : iterable of str
        Chunk keys the session wrote or deleted.

    Returns
    -------
    Diff
        The changes.
    """
    view = {**base.meta, **meta}
    arrays = array_paths(view)
    chunks, other = _collect(chunk_keys, arrays, _layouts(view))
    nodes = _node_changes(base.meta, meta)
    return Diff(
        **{k: frozenset(v) for k, v in nodes.items()},
        updated_chunks=chunks,
        other_keys=frozenset(other),
    )


async def _changed_suffixes(
    assets: AssetManager, node: str, old: NodeManifests | None, new: NodeManifests | None
) -> set[str]:
    if old == new:
        return set()
    before: dict[str, ChunkRef]
    after: dict[str, ChunkRef]
    if old is not None and new is not None and not old.legacy and not new.legacy:
        boxes = [
            b for b in old.boxes.keys() | new.boxes.keys() if old.boxes.get(b) != new.boxes.get(b)
        ]
        olds = await asyncio.gather(
            *(load_box(assets, node, b, old.boxes.get(b, ())) for b in boxes)
        )
        news = await asyncio.gather(
            *(load_box(assets, node, b, new.boxes.get(b, ())) for b in boxes)
        )
        before = {k: v for part in olds for k, v in part.items()}
        after = {k: v for part in news for k, v in part.items()}
    else:
        empty = NodeManifests()
        before, after = await asyncio.gather(
            load_node(assets, node, old or empty), load_node(assets, node, new or empty)
        )
    changed = set(before.keys() ^ after.keys())
    changed.update(k for k, ref in after.items() if k in before and not same_chunk(before[k], ref))
    return changed


async def diff_snapshots(assets: AssetManager, old: Snapshot, new: Snapshot) -> Diff:
    """Compare two snapshots (any two; they need not be related).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    old, new : Snapshot
        From and to.

    Returns
    -------
    Diff
        What changed from ``old`` to ``new``.
    """
    names = sorted(old.nodes.keys() | new.nodes.keys())
    changed = await asyncio.gather(
        *(_changed_suffixes(assets, n, old.nodes.get(n), new.nodes.get(n)) for n in names)
    )
    keys = [
        f"{n}/{s}" if n else s for n, suffixes in zip(names, changed, strict=True) for s in suffixes
    ]
    # a key's node in the snapshot that holds it: the new one, else the old one
    arrays = new.arrays | old.arrays
    chunks, other = _collect(keys, arrays, {**_layouts(old.meta), **_layouts(new.meta)})
    after: dict[str, bytes | None] = dict(new.meta)
    after.update(dict.fromkeys(old.meta.keys() - new.meta.keys()))
    nodes = _node_changes(old.meta, after)
    return Diff(
        **{k: frozenset(v) for k, v in nodes.items()},
        updated_chunks=chunks,
        other_keys=frozenset(other),
    )
