"""Which node a chunk key belongs to: the array whose path prefixes it, else its directory.

The rule depends only on the key and on which paths are arrays in the same
view (the metadata documents of a snapshot plus a session's changes), so an
array named ``c`` (or ``g/c``, ``c/c``) owns its chunks like any other.
Keys under no array (any key can be stored) are grouped by the older rule of
:func:`~icechunk_dask.format._keys.split_key`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from icechunk_dask.format._keys import split_key

__all__ = ["array_paths", "node_of"]


def array_paths(meta: Mapping[str, bytes | None]) -> frozenset[str]:
    """The paths of the arrays described by a view's metadata documents.

    Parameters
    ----------
    meta : mapping of str to bytes or None
        Metadata documents by key (``None``: deleted, ignored).

    Returns
    -------
    frozenset of str
        Array paths (``""`` for an array at the root).
    """
    out = set()
    for key, doc in meta.items():
        if doc is None:
            continue
        path, _, name = key.rpartition("/")
        if name == ".zarray":
            out.add(path)
        elif name == "zarr.json" and b'"array"' in doc:
            try:
                parsed = json.loads(doc)
            except ValueError:
                continue
            if isinstance(parsed, dict) and parsed.get("node_type") == "array":
                out.add(path)
    return frozenset(out)


def node_of(key: str, arrays: Collection[str]) -> tuple[str, str]:
    """Split a chunk key into ``(node, suffix)`` given the view's array paths.

    Parameters
    ----------
    key : str
        A store key that is not a metadata document.
    arrays : collection of str
        The array paths of the view.

    Returns
    -------
    tuple of (str, str)
        The node (the longest array path that prefixes ``key``, else the rule
        of :func:`split_key`) and the rest of the key.
    """
    if arrays:
        dirname = key.rpartition("/")[0]
        while True:
            if dirname in arrays:
                return dirname, key[len(dirname) + 1 :] if dirname else key
            if not dirname:
                break
            dirname = dirname.rpartition("/")[0]
    return split_key(key)
