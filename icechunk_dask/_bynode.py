"""Group a commit's chunk changes by node (the array that owns each key).

The commit (:mod:`icechunk_dask._flush`) and rebase (:mod:`icechunk_dask._rebase`)
both need ``{node: keys}``. Keys in Zarr v3's default encoding are split off per array
with C-level prefix tests; anything else goes through :func:`node_of` once per
directory. For a bulk node the keys are also joined by NUL once, and that join is
reused by the commit (box parse, manifest key columns, transaction log).
"""

from __future__ import annotations

import operator
from itertools import compress, repeat
from typing import TYPE_CHECKING

from icechunk_dask.format._locate import node_of

if TYPE_CHECKING:
    from icechunk_dask.format import ChunkRef

__all__ = ["Refs", "group_by_node"]

#: How many nodes ``group_by_node`` splits off with C-level prefix tests before it
#: falls back to one ``node_of`` per directory (each fast step is a pass over the keys left).
_FAST_NODES = 16

#: A node's references, parallel to its keys (``None``: a deleted chunk).
Refs = list["ChunkRef | None"]


def group_by_node(
    chunks: dict[str, ChunkRef | None],
    arrays: frozenset[str],
    joined: dict[str, bytes] | None = None,
) -> dict[str, tuple[list[str], Refs, str]]:
    """Group chunk changes by node: ``{node: (keys, refs, strip)}`` (parallel lists).

    Keys in Zarr v3's default encoding (``<array>/c/...``) are split off per
    array with C-level prefix tests, no Python bytecode per key, and stay
    whole: ``strip`` is the prefix (``"<array>/"``) to remove to get their
    suffixes within the node. Anything else goes through :func:`node_of` once
    per directory and is returned as suffixes (``strip`` is ``""``). Both give
    exactly ``node_of``'s grouping.

    With ``joined``, it also receives, for nodes grouped in bulk, the node's
    whole keys joined by NUL (UTF-8): what the commit parses, slices into its
    manifests and stores as its transaction log. When every key left belongs
    to one array, that join also serves as the prefix test.
    """
    out: dict[str, tuple[list[str], Refs, str]] = {}
    keys = list(chunks)
    refs = list(chunks.values())
    nested = {a for a in arrays if any(b != a and b.startswith(a + "/") for b in arrays)}
    for _ in range(_FAST_NODES):
        if not keys:
            return out
        node, suffix = node_of(keys[0], arrays)
        if node not in arrays or node in nested or not suffix.startswith("c/") or node in out:
            break
        head = f"{node}/" if node else ""
        prefix = head + "c/"
        if joined is not None and _looks_whole(keys, prefix):
            blob = _join(keys)
            if blob is not None and _all_start_with(blob, len(keys), prefix.encode()):
                out[node] = (keys, refs, head)
                joined[node] = blob
                return out
        mask = list(map(str.startswith, keys, repeat(prefix)))
        if all(mask):
            mine_k, mine_r, keys, refs = keys, refs, [], []
        else:
            mine_k, mine_r = list(compress(keys, mask)), list(compress(refs, mask))
            rest = list(map(operator.not_, mask))
            keys, refs = list(compress(keys, rest)), list(compress(refs, rest))
        out[node] = (mine_k, mine_r, head)
        if joined is not None and (blob := _join(mine_k)) is not None:
            joined[node] = blob
    # the general case; memo: directory -> (node's lists, length of the node prefix to strip)
    memo: dict[str, tuple[list[str], Refs, int]] = {}
    for key, ref in zip(keys, refs, strict=True):
        dirname, _, name = key.rpartition("/")
        hit = memo.get(dirname) if name != "c" else None
        if hit is None:
            node, suffix = node_of(key, arrays)
            group = out.get(node)
            if joined is not None:
                joined.pop(node, None)  # the node gets keys of its own: no join
            if group is None or group[2]:  # a fast-path node: turn it into suffixes
                old_k, old_r = (group[0], group[1]) if group else ([], [])
                cut = len(group[2]) if group else 0
                group = out[node] = ([k[cut:] for k in old_k], old_r, "")
            cut_at = len(key) - len(suffix)
            if name != "c":
                memo[dirname] = (group[0], group[1], cut_at)
            group[0].append(suffix)
            group[1].append(ref)
        else:
            sfx, rfs, cut_at = hit
            sfx.append(key[cut_at:])
            rfs.append(ref)
    return out


#: Keys sampled by :func:`_looks_whole` before a commit joins them all to test one prefix.
_SAMPLES = 64


def _looks_whole(keys: list[str], prefix: str) -> bool:
    """Whether a sample of ``keys`` (the last one included) all start with ``prefix``."""
    step = max(1, len(keys) // _SAMPLES)
    return keys[-1].startswith(prefix) and all(k.startswith(prefix) for k in keys[::step])


def _join(keys: list[str]) -> bytes | None:
    """``keys`` joined by NUL (UTF-8), or ``None`` if a key holds a NUL (or cannot be encoded)."""
    try:
        blob = "\0".join(keys).encode()
    except UnicodeEncodeError:
        return None
    return blob if blob.count(b"\0") == len(keys) - 1 else None


def _all_start_with(blob: bytes, n: int, prefix: bytes) -> bool:
    """Whether each of the ``n`` NUL-joined keys of ``blob`` (none holds a NUL) has ``prefix``.

    Every match of NUL + ``prefix`` is at a key's start (keys hold no NUL), and
    matches cannot overlap (``prefix`` holds no NUL): counting them counts the keys.
    """
    return blob.startswith(prefix) and blob.count(b"\0" + prefix) == n - 1
