"""Which manifest shard of a node holds a chunk key (format version 1: by hash)."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["shard_of", "shard_order"]


def shard_of(suffix: str, nshards: int) -> int:
    """Which shard of a node holds ``suffix``."""
    return zlib.crc32(suffix.encode()) % nshards if nshards > 1 else 0


def shard_order(suffixes: list[str], nshards: int) -> tuple[np.ndarray, list[int]]:
    """Group ``suffixes`` by :func:`shard_of`, hashing in C.

    Returns
    -------
    tuple of (ndarray, list of int)
        A stable order of the indices of ``suffixes`` by shard, and the
        ``nshards + 1`` boundaries of each shard's run in that order.
    """
    n = len(suffixes)
    if nshards <= 1:
        return np.arange(n), [0, n]
    hashes = np.fromiter(map(zlib.crc32, map(str.encode, suffixes)), dtype=np.uint32, count=n)
    shard = hashes % np.uint32(nshards)
    order = np.argsort(shard, kind="stable")
    return order, [0, *np.cumsum(np.bincount(shard, minlength=nshards)).tolist()]
