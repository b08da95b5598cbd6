"""SessionStatus: what a session changed, by group and array."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from icechunk_dask.format import ChunkRef
from icechunk_dask.format._locate import array_paths, node_of

__all__ = ["SessionStatus", "compute_status"]


@dataclass(frozen=True, slots=True)
class SessionStatus:
    """What a session changed relative to its base snapshot."""

    new_groups: set[str] = field(default_factory=set)
    new_arrays: set[str] = field(default_factory=set)
    updated_groups: set[str] = field(default_factory=set)
    updated_arrays: set[str] = field(default_factory=set)
    deleted_groups: set[str] = field(default_factory=set)
    deleted_arrays: set[str] = field(default_factory=set)
    updated_chunks: dict[str, int] = field(default_factory=dict)
    """Number of chunks written or deleted, per array path."""
    deleted_chunks: dict[str, int] = field(default_factory=dict)
    """Of those, how many were deleted."""

    def is_empty(self) -> bool:
        """Whether nothing changed."""
        return not any(
            (
                self.new_groups,
                self.new_arrays,
                self.updated_groups,
                self.updated_arrays,
                self.deleted_groups,
                self.deleted_arrays,
                self.updated_chunks,
            )
        )


def _node_type(doc: bytes | None, key: str) -> str:
    name = key.rpartition("/")[2]
    if name == ".zarray":
        return "array"
    if name == ".zgroup":
        return "group"
    if doc is None:
        return "unknown"
    try:
        parsed = json.loads(doc)
    except ValueError:
        return "unknown"
    return str(parsed.get("node_type", "unknown")) if isinstance(parsed, dict) else "unknown"


def compute_status(
    committed: dict[str, bytes],
    meta: dict[str, bytes | None],
    chunks: dict[str, ChunkRef | None],
) -> SessionStatus:
    """Compare changed metadata documents and chunks with the committed ones."""
    out = SessionStatus()
    arrays = array_paths({**committed, **meta})
    for key, doc in meta.items():
        path = key.rpartition("/")[0]
        before = committed.get(key)
        kind = _node_type(doc if doc is not None else before, key)
        if kind not in ("array", "group"):
            continue
        if doc is None:
            target = out.deleted_arrays if kind == "array" else out.deleted_groups
            if before is not None:
                target.add(path)
        elif before is None:
            (out.new_arrays if kind == "array" else out.new_groups).add(path)
        elif before != doc:
            (out.updated_arrays if kind == "array" else out.updated_groups).add(path)
    for key, ref in chunks.items():
        node, _ = node_of(key, arrays)
        out.updated_chunks[node] = out.updated_chunks.get(node, 0) + 1
        if ref is None:
            out.deleted_chunks[node] = out.deleted_chunks.get(node, 0) + 1
    return out
