"""How store keys split into metadata documents and chunks, and chunks into nodes."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["METADATA_NAMES", "is_meta_key", "node_of", "split_key"]

#: Keys whose last component is one of these are metadata documents, kept in snapshots.
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def is_meta_key(key: str) -> bool:
    """Whether ``key`` is a metadata document (stored inline in snapshots)."""
    return key.rpartition("/")[2] in METADATA_NAMES


@lru_cache(maxsize=65536)
def node_of(dirname: str) -> str:
    """The node (array path) that chunk keys in directory ``dirname`` belong to.

    The rule depends only on the key, never on repository state: the node is
    everything before the first ``c`` component (Zarr v3's default chunk key
    encoding), else the key's directory. A key grouped "wrongly" (for example
    under a group literally named ``c``) is still stored and found correctly.
    """
    parts = dirname.split("/") if dirname else []
    for i, part in enumerate(parts):
        if part == "c":
            return "/".join(parts[:i])
    return dirname


def split_key(key: str) -> tuple[str, str]:
    """Split a chunk key into ``(node, suffix)``."""
    dirname, _, name = key.rpartition("/")
    if name == "c":  # a 0-d array's only chunk: "<node>/c"
        return dirname, name
    node = node_of(dirname)
    return node, key[len(node) + 1 :] if node else key
