"""dask internals used by icechunk_dask (dask >= 2026.8).

Graphs are ``dask._task_spec`` objects (private module); the low-level graph
of a collection is reached through ``collections_to_expr``; blocks are
assembled with ``concatenate3`` (imported lazily, with ``dask.array``).
"""

from __future__ import annotations

from typing import Any

from dask._task_spec import (
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    convert_legacy_graph,
    execute_graph,
)
from dask.base import collections_to_expr

__all__ = [
    "DataNode",
    "GraphNode",
    "Task",
    "TaskRef",
    "array_optimize",
    "collections_to_expr",
    "concatenate3",
    "convert_legacy_graph",
    "execute_graph",
]


def concatenate3(arrays: Any) -> Any:
    """``dask.array.core.concatenate3`` (imported on first use: dask.array is heavy)."""
    from dask.array.core import concatenate3 as impl

    return impl(arrays)


def array_optimize(dsk: Any, keys: Any) -> Any:
    """``dask.array.optimization.optimize``: blockwise fusion and culling of an array graph."""
    from dask.array.optimization import optimize as impl

    return impl(dsk, keys)
