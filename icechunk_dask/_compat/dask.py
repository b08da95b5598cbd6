"""dask internals used by icechunk_dask (dask >= 2026.8).

Graphs are ``dask._task_spec`` objects (private module); the low-level graph
of a collection is reached through ``collections_to_expr``; blocks are
assembled with ``concatenate3``.
"""

from __future__ import annotations

from dask._task_spec import (
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    convert_legacy_graph,
    execute_graph,
)
from dask.array.core import concatenate3
from dask.base import collections_to_expr

__all__ = [
    "DataNode",
    "GraphNode",
    "Task",
    "TaskRef",
    "collections_to_expr",
    "concatenate3",
    "convert_legacy_graph",
    "execute_graph",
]
