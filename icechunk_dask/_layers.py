"""One box's manifest layers after a commit: what to write, what to merge.

A commit that changes ``n`` references of a box writes one new layer. To
keep the number of layers (and so the cost of a lookup) small without
making a commit pay for the whole box, it merges into the new layer the
newest existing layers while their combined size stays within ``2 n``
(:data:`MERGE_BUDGET`): every commit then writes at most ``3 n`` entries, and
repeated appends of equal size end up in layers of about ``3 n``. A box with
more than ``manifest_max_layers`` layers is compacted into one (the only
case where a commit pays for a whole box, which holds about
``manifest_box_refs`` references). Tombstones are dropped whenever the
merge reaches the box's oldest layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from icechunk_dask._assets import AssetManager
from icechunk_dask.format import (
    ChunkRef,
    Layer,
    encode_manifest,
    encode_manifest_columns,
    new_id,
    ref_columns,
)

__all__ = ["MERGE_BUDGET", "KeyBlob", "LayerWriter", "stack_box", "write_box"]

_Refs = list[ChunkRef | None]

#: A layer's keys as its manifest stores them (prefix removed, joined by NUL, UTF-8), or a
#: function that makes them: called in the encoding thread, so that only the layers being
#: encoded hold theirs.
KeyBlob = bytes | Callable[[], bytes]

#: A new layer absorbs the newest layers while their size is at most this many times its own.
MERGE_BUDGET = 2
#: Manifests written at once by one commit.
_CONCURRENCY = 32


class LayerWriter:
    """Encodes and stores manifest layers for one commit (bounded concurrency).

    Parameters
    ----------
    assets : AssetManager
        The repository's objects.
    """

    def __init__(self, assets: AssetManager) -> None:
        self.assets = assets
        self.max_layers = assets.config.manifest_max_layers
        self._sem = asyncio.Semaphore(_CONCURRENCY)

    async def load(
        self, node: str, box: str, layers: Sequence[Layer]
    ) -> dict[str, ChunkRef | None]:
        """The entries of ``layers`` (newest first), merged: newer layers win."""
        async with self._sem:
            loaded = await asyncio.gather(
                *(self.assets.get_manifest(layer.id, node, box) for layer in layers)
            )
        out: dict[str, ChunkRef | None] = {}
        for entries in reversed(loaded):
            out.update(entries)
        return out

    async def write(
        self,
        node: str,
        box: str,
        keys: list[str],
        refs: _Refs,
        strip: str = "",
        key_blob: KeyBlob | None = None,
    ) -> Layer:
        """Store the entries ``keys`` -> ``refs`` (distinct) as a new manifest.

        ``strip`` is a prefix of every key that the manifest does not store;
        ``key_blob`` is, if the caller has it, the keys as the manifest stores
        them (see :data:`KeyBlob`).
        """
        mid = new_id()

        def encode() -> tuple[bytes, int]:
            columns = ref_columns(refs)
            if columns is not None:  # only references to chunk objects: straight from columns
                blob = key_blob() if callable(key_blob) else key_blob
                data = encode_manifest_columns(mid, node, box, keys, columns, strip, blob)
                return data, 0
            suffixes = [k[len(strip) :] for k in keys] if strip else keys
            n_del = sum(1 for r in refs if r is None)
            return encode_manifest(mid, node, box, dict(zip(suffixes, refs, strict=True))), n_del

        data, n_del = await asyncio.to_thread(encode)
        async with self._sem:
            await self.assets.storage.put(f"manifests/{mid}", data)
        return Layer(mid, len(keys) - n_del, n_del)


async def write_box(
    writer: LayerWriter,
    node: str,
    box: str,
    layers: Sequence[Layer],
    keys: list[str],
    refs: _Refs,
    strip: str = "",
    key_blob: KeyBlob | None = None,
) -> tuple[Layer, ...]:
    """Write ``changes`` into a box whose layers are ``layers``; return the new layers.

    Parameters
    ----------
    writer : LayerWriter
        The commit's manifest writer.
    node, box : str
        Where.
    layers : sequence of Layer
        The box's current layers, newest first.
    keys, refs : list of str, list of ChunkRef or None
        The changed key suffixes (distinct) and their new references (``None``: deleted).
    strip : str
        A prefix every key of ``keys`` has, to remove to get the suffix.
    key_blob : bytes or callable, optional
        The suffixes joined by NUL (UTF-8), or what makes them (:data:`KeyBlob`).

    Returns
    -------
    tuple of Layer
        The box's layers after the commit, newest first (empty: the box is empty).
    """
    budget = MERGE_BUDGET * len(keys)
    taken = 0
    absorbed = 0
    for layer in layers:
        if absorbed + layer.size > budget:
            break
        absorbed += layer.size
        taken += 1
    rest = tuple(layers[taken:])
    if len(rest) + 1 > writer.max_layers:  # too many layers: compact the whole box
        taken, rest = len(layers), ()
    if not taken:  # a new layer of just the changes (the common case of big writes)
        if not rest and None in refs:  # nothing older to hide: tombstones can go
            pairs = [(k, r) for k, r in zip(keys, refs, strict=True) if r is not None]
            keys, refs, key_blob = [k for k, _ in pairs], [r for _, r in pairs], None
        if not keys:
            return rest
        return (await writer.write(node, box, keys, refs, strip, key_blob), *rest)
    merged = await writer.load(node, box, layers[:taken])
    suffixes = [k[len(strip) :] for k in keys] if strip else keys
    merged.update(zip(suffixes, refs, strict=True))
    if not rest:  # nothing older to hide: tombstones can go
        merged = {k: v for k, v in merged.items() if v is not None}
    if not merged:
        return rest
    return (await writer.write(node, box, list(merged), list(merged.values())), *rest)


async def stack_box(
    writer: LayerWriter, node: str, box: str, layers: Sequence[Layer]
) -> tuple[Layer, ...]:
    """A box's layers after pre-built layers were stacked on it: compacted if too many.

    Parameters
    ----------
    writer : LayerWriter
        The commit's manifest writer.
    node, box : str
        Where.
    layers : sequence of Layer
        The box's layers, newest first, the pre-built ones included.

    Returns
    -------
    tuple of Layer
        ``layers``, or one layer with their live entries when there are more than
        ``manifest_max_layers`` (empty: the box is empty).
    """
    if len(layers) <= writer.max_layers:
        return tuple(layers)
    merged = {k: v for k, v in (await writer.load(node, box, layers)).items() if v is not None}
    if not merged:
        return ()
    return (await writer.write(node, box, list(merged), list(merged.values())),)
