"""Encode whole chunks synchronously, in the calling thread.

Writing a box of blocks through ``AsyncArray.setitem`` costs zarr's pipeline
per chunk: a future per codec call, a thread hop for the compressor, a
gather, a copy into the store. For chunks of a few KiB that overhead is most
of the work, and for big ones it is still a few per cent. When a box
covers whole chunks (or the whole of the edge chunks at the array's end), of
a plain numeric array whose codecs all encode synchronously (zarr's
``SupportsSyncCodec``: ``bytes``, ``transpose``, ``zstd``, ``blosc``,
``gzip``, ``crc32c``, ...), :func:`encode_chunks` runs the same codecs, in the
same order, directly, and the caller stores the bytes in one batch. Anything
else (sharding, strings, datetimes, unaligned boxes, non-NumPy data)
returns ``None`` and goes through zarr.

The bytes are those zarr writes: edge chunks are padded with the fill value,
and chunks equal to the fill value are deleted unless the array's config says
``write_empty_chunks``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from zarr.core.buffer import default_buffer_prototype

from icechunk_dask._compat.zarr import (
    AsyncArray,
    chunk_spec,
    fill_value_or_default,
    regular_chunk_shape,
    sync_codecs,
)

__all__ = ["encode_chunks"]

_NUMERIC_KINDS = frozenset("biufc")


def _aligned(
    selection: tuple[Any, ...], shape: tuple[int, ...], chunks: tuple[int, ...]
) -> list[tuple[int, int]] | None:
    """``(start, stop)`` per axis if ``selection`` covers whole chunks, else ``None``."""
    if len(selection) != len(shape):
        return None
    bounds = []
    for sel, size, chunk in zip(selection, shape, chunks, strict=True):
        if not isinstance(sel, slice) or sel.step not in (None, 1):
            return None
        start, stop, _ = sel.indices(size)
        if start % chunk or (stop % chunk and stop != size) or stop <= start:
            return None
        bounds.append((start, stop))
    return bounds


def encode_chunks(
    array: AsyncArray[Any], selection: tuple[Any, ...], data: Any
) -> list[tuple[str, bytes | None]] | None:
    """Encode the chunks that ``data`` fills at ``selection``, or ``None`` to use zarr.

    Parameters
    ----------
    array
        The target array (Zarr v3).
    selection
        Where ``data`` goes: one slice per dimension.
    data
        The values, a NumPy array of the selection's shape and the array's dtype.

    Returns
    -------
    list of (str, bytes or None) or None
        Store keys (with the array's path) and their encoded bytes, ``None`` for a
        chunk to delete (equal to the fill value); ``None`` if this write must go
        through zarr's own pipeline.
    """
    meta = array.metadata
    grid_chunks = regular_chunk_shape(meta)
    if grid_chunks is None:
        return None
    if type(data) is not np.ndarray or data.ndim == 0 or data.dtype.kind not in _NUMERIC_KINDS:
        return None
    native = meta.dtype.to_native_dtype()
    if data.dtype != native:
        return None
    chunk_shape = grid_chunks
    bounds = _aligned(selection, meta.shape, chunk_shape)
    if bounds is None or data.shape != tuple(stop - start for start, stop in bounds):
        return None
    codecs = sync_codecs(array.codec_pipeline)
    if codecs is None:
        return None

    ranges = [
        range(start // c, -(-stop // c))
        for (start, stop), c in zip(bounds, chunk_shape, strict=True)
    ]
    prototype = default_buffer_prototype()
    spec0 = chunk_spec(meta, array.config, prototype)  # type: ignore[arg-type, unused-ignore]
    specs = [spec0]
    for codec in codecs:  # the spec each codec sees, as zarr's resolve_batched computes it
        specs.append(codec.resolve_metadata(specs[-1]))
    fill = fill_value_or_default(spec0)
    skip_empty = not array.config.write_empty_chunks
    origin = [start for start, _ in bounds]
    prefix = f"{array.store_path.path}/" if array.store_path.path else ""

    out: list[tuple[str, bytes | None]] = []
    for coords in itertools.product(*ranges):
        region = tuple(
            slice(c * size - o, min((c + 1) * size, n) - o)
            for c, size, o, n in zip(coords, chunk_shape, origin, meta.shape, strict=True)
        )
        block = data[region]
        if block.shape != chunk_shape:  # an edge chunk: zarr pads it with the fill value
            padded = np.full(chunk_shape, fill, dtype=native)
            padded[tuple(slice(0, k) for k in block.shape)] = block
            block = padded
        chunk: Any = prototype.nd_buffer.from_numpy_array(block)
        key = prefix + meta.encode_chunk_key(coords)
        if skip_empty and chunk.all_equal(fill):
            out.append((key, None))
            continue
        for codec, spec in zip(codecs, specs, strict=False):
            chunk = codec._encode_sync(chunk, spec)
            if chunk is None:  # zarr deletes a chunk that a codec encodes to nothing
                break
        out.append((key, None if chunk is None else chunk.to_bytes()))
    return out
