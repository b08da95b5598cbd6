"""Run the async core from synchronous public methods."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from icechunk_dask._compat.zarr import sync

__all__ = ["run"]


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on zarr's I/O event loop and return its result."""
    return sync(coro)
