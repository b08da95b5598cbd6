"""Read-only inspection of a repository: resolve references, summarise snapshots.

These helpers back the ``icechunk-dask`` commands (diffs are
:mod:`icechunk_dask._diff`). They work on the asset layer only, so the
command line starts without importing zarr, and nothing here writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from icechunk_dask import _history
from icechunk_dask._assets import AssetManager
from icechunk_dask._exceptions import ExpiredSnapshotError, InvalidInputError, NotFoundError
from icechunk_dask._manifests import load_node
from icechunk_dask._sync import run
from icechunk_dask.format import ID_PATTERN, NodeManifests, Snapshot

__all__ = [
    "ArraySummary",
    "SnapshotSummary",
    "ancestry",
    "labels",
    "resolve_ref",
    "snapshot_summary",
]

_ANCESTOR = re.compile(r"^(?P<base>.+?)~(?P<n>\d*)$")


# -- references ------------------------------------------------------------------------------


def resolve_ref(repo: AssetManager, ref: str) -> str:
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
    m = _ANCESTOR.fullmatch(ref)
    if m:
        base, steps = m["base"], int(m["n"] or 1)
    snapshot_id = _resolve_base(repo, base)
    history = _history.ancestry(repo, snapshot_id)
    for i in range(steps + 1):
        snap = next(history, None)
        if snap is None:
            raise NotFoundError(
                f"{ref!r} goes back {steps} commits, but the history of {base!r} has only "
                f"{i} snapshots"
            )
        snapshot_id = snap.id
    return snapshot_id


def ancestry(repo: AssetManager, snapshot_id: str) -> Iterator[Snapshot]:
    """The snapshot and its history, newest first (expired snapshots skipped, a cycle reported).

    See :mod:`icechunk_dask._history`.
    """
    return _history.ancestry(repo, snapshot_id)


def labels(repo: AssetManager) -> dict[str, list[str]]:
    """Branch and tag names by the snapshot they point at (git's "decorations")."""
    out: dict[str, list[str]] = {}
    for b in sorted(run(repo.list_branches())):
        out.setdefault(run(repo.lookup_branch(b))[1], []).append(b)
    for t in sorted(run(repo.list_tags())):
        out.setdefault(run(repo.lookup_tag(t)), []).append(f"tag: {t}")
    return out


def _resolve_base(repo: AssetManager, name: str) -> str:
    branches, tags = run(repo.list_branches()), run(repo.list_tags())
    if name in branches:
        return run(repo.lookup_branch(name))[1]
    if name in tags:
        return run(repo.lookup_tag(name))
    if ID_PATTERN.fullmatch(name):
        try:
            run(repo.get_snapshot(name))
        except ExpiredSnapshotError:
            raise
        except NotFoundError:
            pass
        else:
            return name
    raise NotFoundError(
        f"{name!r} is not a branch, tag or snapshot id of this repository; branches: "
        f"{sorted(branches)}, tags: {sorted(tags)}"
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


async def _stored_chunks(repo: AssetManager, node: str, nm: NodeManifests | None) -> int:
    """Exactly how many references a node holds (manifests read only when layers hide some)."""
    if nm is None:
        return 0
    if nm.exact:
        return nm.upper_count
    return len(await load_node(repo, node, nm))


def snapshot_summary(repo: AssetManager, snapshot_id: str) -> SnapshotSummary:
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
    snap = run(repo.get_snapshot(snapshot_id))
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
