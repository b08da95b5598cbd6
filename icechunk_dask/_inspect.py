"""Read-only inspection of a repository: resolve references, summarise and diff snapshots.

These helpers back the ``icechunk-dask show`` and ``diff`` commands. They
read snapshots and manifests only; nothing here writes. Chunk changes are
found by comparing manifests, so a diff is exact between *any* two snapshots
(also across branches or a reset), and costs what differs: manifest shards
that two snapshots share are recognised by id and never read.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from icechunk_dask._exceptions import InvalidInputError, NotFoundError
from icechunk_dask._manifests import load_box, load_node
from icechunk_dask._repository import Repository
from icechunk_dask._sync import run
from icechunk_dask.format import ID_PATTERN, ChunkRef, NodeManifests, Snapshot, same_chunk

__all__ = [
    "ArraySummary",
    "ChunkChanges",
    "SnapshotDiff",
    "SnapshotSummary",
    "diff_snapshots",
    "resolve_ref",
    "snapshot_summary",
]

_ANCESTOR = re.compile(r"^(?P<base>.+?)~(?P<n>\d*)$")


# -- references ------------------------------------------------------------------------------


def resolve_ref(repo: Repository, ref: str) -> str:
    """Turn a branch name, tag name or snapshot id (optionally ``~N``) into a snapshot id.

    Parameters
    ----------
    repo
        The repository.
    ref
        ``main``, ``v1``, ``0123456789ABCDEFGHJK``; a suffix ``~N`` walks ``N``
        parents back (``main~1`` is the commit before the tip of ``main``,
        ``main~`` is the same as ``main~1``). Branches win over tags, tags over
        snapshot ids.

    Returns
    -------
    str
        The snapshot id.

    Raises
    ------
    NotFoundError
        If ``ref`` names no branch, tag or snapshot, or the history is shorter than ``N``.
    """
    if not ref:
        raise InvalidInputError(f"expected a branch, tag or snapshot id, got {ref!r}")
    base, steps = ref, 0
    m = _ANCESTOR.match(ref)
    if m:
        base, steps = m["base"], int(m["n"] or 1)
    snapshot_id = _resolve_base(repo, base)
    for i in range(steps):
        parent = run(repo._assets.get_snapshot(snapshot_id)).parent_id
        if parent is None:
            raise NotFoundError(
                f"{ref!r} goes back {steps} commits, but the history of {base!r} has only "
                f"{i + 1} snapshots"
            )
        snapshot_id = parent
    return snapshot_id


def _resolve_base(repo: Repository, name: str) -> str:
    if name in repo.list_branches():
        return repo.lookup_branch(name)
    if name in repo.list_tags():
        return repo.lookup_tag(name)
    if ID_PATTERN.match(name):
        try:
            run(repo._assets.get_snapshot(name))
        except NotFoundError:
            pass
        else:
            return name
    raise NotFoundError(
        f"{name!r} is not a branch, tag or snapshot id of this repository; branches: "
        f"{sorted(repo.list_branches())}, tags: {sorted(repo.list_tags())}"
    )


# -- summaries -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArraySummary:
    """One array of a snapshot, as ``show`` prints it."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunk_shape: tuple[int, ...]
    """Shape of one stored object (a chunk, or a shard for sharded arrays)."""
    dimension_names: tuple[str | None, ...] | None
    chunks_stored: int
    """Chunks actually stored; the rest read as the fill value."""
    chunks_total: int
    """Chunks in the full chunk grid."""
    nbytes: int | None
    """Uncompressed size of the whole array (``None`` for variable-size types)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunk_shape": list(self.chunk_shape),
            "dimension_names": None if self.dimension_names is None else list(self.dimension_names),
            "chunks_stored": self.chunks_stored,
            "chunks_total": self.chunks_total,
            "nbytes": self.nbytes,
        }


@dataclass(frozen=True, slots=True)
class SnapshotSummary:
    """What a snapshot holds: its commit information, groups and arrays."""

    id: str
    parent_id: str | None
    written_at: datetime
    message: str
    metadata: dict[str, Any]
    groups: tuple[str, ...]
    arrays: tuple[ArraySummary, ...]

    @property
    def chunks_stored(self) -> int:
        """Chunks stored across all arrays."""
        return sum(a.chunks_stored for a in self.arrays)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "written_at": self.written_at.isoformat(),
            "message": self.message,
            "metadata": self.metadata,
            "groups": list(self.groups),
            "arrays": [a.to_dict() for a in self.arrays],
            "chunks_stored": self.chunks_stored,
        }


def _node_docs(snap: Snapshot) -> dict[str, dict[str, Any]]:
    """Parsed ``zarr.json`` documents by node path ("" is the root)."""
    out: dict[str, dict[str, Any]] = {}
    for key, doc in snap.meta.items():
        node, _, name = key.rpartition("/")
        if name != "zarr.json":
            continue
        try:
            parsed = json.loads(doc)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            out[node] = parsed
    return out


def _dtype_name(data_type: object) -> str:
    if isinstance(data_type, str):
        return data_type
    if isinstance(data_type, dict) and isinstance(data_type.get("name"), str):
        return str(data_type["name"])
    return json.dumps(data_type)


def _itemsize(dtype: str) -> int | None:
    try:
        np_dtype = np.dtype(dtype)
    except TypeError:
        return None
    return None if np_dtype.hasobject or np_dtype.itemsize == 0 else int(np_dtype.itemsize)


def _array_summary(path: str, doc: dict[str, Any], stored: int) -> ArraySummary:
    shape = tuple(int(n) for n in doc.get("shape", ()))
    grid = doc.get("chunk_grid", {})
    config = grid.get("configuration", {}) if isinstance(grid, dict) else {}
    chunk_shape = tuple(int(n) for n in config.get("chunk_shape", shape))
    total = math.prod(-(-s // c) if c else 0 for s, c in zip(shape, chunk_shape, strict=False))
    dims = doc.get("dimension_names")
    dtype = _dtype_name(doc.get("data_type"))
    itemsize = _itemsize(dtype)
    return ArraySummary(
        path=path,
        shape=shape,
        dtype=dtype,
        chunk_shape=chunk_shape,
        dimension_names=tuple(dims) if isinstance(dims, list) else None,
        chunks_stored=stored,
        chunks_total=total,
        nbytes=None if itemsize is None else itemsize * math.prod(shape),
    )


def snapshot_summary(repo: Repository, snapshot_id: str) -> SnapshotSummary:
    """Summarise one snapshot: commit information, groups, arrays and their chunk counts.

    Parameters
    ----------
    repo
        The repository.
    snapshot_id
        The snapshot (see :func:`resolve_ref` to accept branch and tag names).

    Returns
    -------
    SnapshotSummary
        Groups and arrays sorted by path.

    Raises
    ------
    NotFoundError
        If the snapshot does not exist.
    """
    snap = run(repo._assets.get_snapshot(snapshot_id))
    groups: list[str] = []
    arrays: list[ArraySummary] = []
    for node, doc in sorted(_node_docs(snap).items()):
        if doc.get("node_type") == "array":
            stored = run(_stored_chunks(repo, node, snap.nodes.get(node)))
            arrays.append(_array_summary(node, doc, stored))
        elif doc.get("node_type") == "group":
            groups.append(node)
    return SnapshotSummary(
        id=snap.id,
        parent_id=snap.parent_id,
        written_at=datetime.fromisoformat(snap.written_at),
        message=snap.message,
        metadata=dict(snap.metadata),
        groups=tuple(groups),
        arrays=tuple(arrays),
    )


# -- diffs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkChanges:
    """How the stored chunks of one array differ between two snapshots."""

    added: int = 0
    modified: int = 0
    removed: int = 0

    @property
    def total(self) -> int:
        """All changed chunks."""
        return self.added + self.modified + self.removed

    def to_dict(self) -> dict[str, int]:
        """A JSON-serialisable form."""
        return {"added": self.added, "modified": self.modified, "removed": self.removed}


@dataclass(frozen=True, slots=True)
class SnapshotDiff:
    """What changed from snapshot ``from_id`` to snapshot ``to_id``."""

    from_id: str
    to_id: str
    new_groups: tuple[str, ...] = ()
    deleted_groups: tuple[str, ...] = ()
    updated_groups: tuple[str, ...] = ()
    """Groups whose metadata (attributes) changed."""
    new_arrays: tuple[str, ...] = ()
    deleted_arrays: tuple[str, ...] = ()
    updated_arrays: tuple[str, ...] = ()
    """Arrays whose metadata (shape, attributes, codecs, ...) changed."""
    chunks: dict[str, ChunkChanges] = field(default_factory=dict)
    """Changed chunks per array path (arrays without chunk changes are left out)."""

    def is_empty(self) -> bool:
        """Whether the two snapshots hold the same data."""
        return not any(
            (
                self.new_groups,
                self.deleted_groups,
                self.updated_groups,
                self.new_arrays,
                self.deleted_arrays,
                self.updated_arrays,
                self.chunks,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {
            "from": self.from_id,
            "to": self.to_id,
            "new_groups": list(self.new_groups),
            "deleted_groups": list(self.deleted_groups),
            "updated_groups": list(self.updated_groups),
            "new_arrays": list(self.new_arrays),
            "deleted_arrays": list(self.deleted_arrays),
            "updated_arrays": list(self.updated_arrays),
            "chunks": {path: c.to_dict() for path, c in sorted(self.chunks.items())},
        }


def _node_meta(snap: Snapshot) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for key, doc in snap.meta.items():
        out.setdefault(key.rpartition("/")[0], {})[key] = doc
    return out


async def _stored_chunks(repo: Repository, node: str, nm: NodeManifests | None) -> int:
    """Exactly how many references a node holds (manifests read only when layers hide some)."""
    if nm is None:
        return 0
    if nm.exact:
        return nm.upper_count
    return len(await load_node(repo._assets, node, nm))


async def _chunk_changes(
    repo: Repository, node: str, old: NodeManifests | None, new: NodeManifests | None
) -> ChunkChanges:
    assets = repo._assets
    if old == new:
        return ChunkChanges()
    if old is not None and new is not None and not old.legacy and not new.legacy:
        # only the boxes whose layers differ need reading
        boxes = [
            b for b in old.boxes.keys() | new.boxes.keys() if old.boxes.get(b) != new.boxes.get(b)
        ]
        befores = await asyncio.gather(
            *(load_box(assets, node, b, old.boxes.get(b, ())) for b in boxes)
        )
        afters = await asyncio.gather(
            *(load_box(assets, node, b, new.boxes.get(b, ())) for b in boxes)
        )
        before: dict[str, ChunkRef] = {k: v for part in befores for k, v in part.items()}
        after: dict[str, ChunkRef] = {k: v for part in afters for k, v in part.items()}
    else:
        empty = NodeManifests()
        before, after = await asyncio.gather(
            load_node(assets, node, old or empty), load_node(assets, node, new or empty)
        )
    added = sum(1 for k in after if k not in before)
    removed = sum(1 for k in before if k not in after)
    modified = sum(1 for k, ref in after.items() if k in before and not same_chunk(before[k], ref))
    return ChunkChanges(added, modified, removed)


def diff_snapshots(repo: Repository, from_id: str, to_id: str) -> SnapshotDiff:
    """Compare two snapshots of a repository.

    Chunks count as modified when their bytes differ (compared by length and
    checksum), so rewriting a chunk with identical bytes is not a change.

    Parameters
    ----------
    repo
        The repository.
    from_id, to_id
        The snapshots to compare (any two; they need not be related).

    Returns
    -------
    SnapshotDiff
        Groups and arrays added, deleted or with changed metadata, and chunk
        changes per array.

    Raises
    ------
    NotFoundError
        If a snapshot does not exist.
    """
    return run(_diff(repo, from_id, to_id))


async def _diff(repo: Repository, from_id: str, to_id: str) -> SnapshotDiff:
    old, new = await asyncio.gather(
        repo._assets.get_snapshot(from_id), repo._assets.get_snapshot(to_id)
    )
    kinds = {n: d.get("node_type") for n, d in {**_node_docs(old), **_node_docs(new)}.items()}
    old_meta, new_meta = _node_meta(old), _node_meta(new)
    groups: dict[str, list[str]] = {"new": [], "deleted": [], "updated": []}
    arrays: dict[str, list[str]] = {"new": [], "deleted": [], "updated": []}
    for node in sorted(old_meta.keys() | new_meta.keys()):
        target = arrays if kinds.get(node) == "array" else groups
        if node not in old_meta:
            target["new"].append(node)
        elif node not in new_meta:
            target["deleted"].append(node)
        elif old_meta[node] != new_meta[node]:
            target["updated"].append(node)
    names = sorted(old.nodes.keys() | new.nodes.keys())
    changes = await asyncio.gather(
        *(_chunk_changes(repo, n, old.nodes.get(n), new.nodes.get(n)) for n in names)
    )
    return SnapshotDiff(
        from_id=from_id,
        to_id=to_id,
        new_groups=tuple(groups["new"]),
        deleted_groups=tuple(groups["deleted"]),
        updated_groups=tuple(groups["updated"]),
        new_arrays=tuple(arrays["new"]),
        deleted_arrays=tuple(arrays["deleted"]),
        updated_arrays=tuple(arrays["updated"]),
        chunks={n: c for n, c in zip(names, changes, strict=True) if c.total},
    )
