"""zarr internals used by icechunk_dask, for every zarr from 3.1.6 to the newest.

Public zarr API is imported directly elsewhere (``zarr.abc.store``,
``zarr.storage``, ``zarr.core.buffer`` as zarr documents it for store
authors). What lives here is not public: the event-loop runner, the codec
pipeline and chunk specs used by the synchronous encoder, and the chunk-grid
metadata classes, whose names changed in zarr 3.2 (``RegularChunkGrid`` ->
``RegularChunkGridMetadata``, ``ArrayV3Metadata.get_chunk_spec`` removed).
"""

from __future__ import annotations

from typing import Any

from zarr.codecs import ShardingCodec
from zarr.core.array import AsyncArray
from zarr.core.array_spec import ArrayConfig, ArraySpec
from zarr.core.buffer import BufferPrototype
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync

# mypy checks against one zarr at a time: each branch is "unused" on the other versions
try:  # zarr >= 3.2
    from zarr.core.chunk_utils import (  # type: ignore[import-not-found, unused-ignore]
        fill_value_or_default,
    )
except ImportError:  # zarr 3.1
    from zarr.core.codec_pipeline import (  # type: ignore[attr-defined, no-redef, unused-ignore]
        fill_value_or_default,
    )
try:  # zarr >= 3.2
    from zarr.core.metadata.v3 import (  # type: ignore[attr-defined, unused-ignore]
        RegularChunkGridMetadata as _RegularGrid,
    )
except ImportError:  # zarr 3.1
    from zarr.core.chunk_grids import (  # type: ignore[attr-defined, no-redef, unused-ignore]
        RegularChunkGrid as _RegularGrid,
    )

__all__ = [
    "RECTILINEAR",
    "ArrayConfig",
    "ArrayV3Metadata",
    "AsyncArray",
    "BatchedCodecPipeline",
    "chunk_spec",
    "fill_value_or_default",
    "parse_array_metadata",
    "regular_chunk_shape",
    "sync",
    "sync_codecs",
]


#: The name of zarr 3.4's variable chunk grid in ``zarr.json``.
RECTILINEAR = "rectilinear"


def parse_array_metadata(document: dict[str, Any]) -> ArrayV3Metadata:
    """Parse a Zarr v3 array document as zarr does, whatever this process's zarr config.

    zarr 3.4 refuses rectilinear chunk grids unless its experimental switch is
    on in the *reading* process; a repository must still accept (and
    validate the rest of) documents that another process wrote with it. Such
    a document is checked with a regular grid of the same rank in its place.

    Raises
    ------
    Exception
        Whatever zarr raises for an invalid document.
    """
    grid = document.get("chunk_grid")
    if isinstance(grid, dict) and grid.get("name") == RECTILINEAR:
        shape = document.get("shape")
        rank = len(shape) if isinstance(shape, list) else 0
        regular = {"name": "regular", "configuration": {"chunk_shape": [1] * rank}}
        document = {**document, "chunk_grid": regular}
    return ArrayV3Metadata.from_dict(document)  # type: ignore[arg-type, unused-ignore]


def regular_chunk_shape(metadata: object) -> tuple[int, ...] | None:
    """The chunk shape of a Zarr v3 array with a regular chunk grid, else ``None``.

    ``None`` for Zarr v2 metadata and for zarr 3.4's rectilinear (variable) grids.
    """
    if not isinstance(metadata, ArrayV3Metadata):
        return None
    grid = metadata.chunk_grid
    if not isinstance(grid, _RegularGrid):
        return None
    return tuple(int(c) for c in grid.chunk_shape)


def chunk_spec(
    metadata: ArrayV3Metadata, config: ArrayConfig, prototype: BufferPrototype
) -> ArraySpec:
    """The spec that zarr's codecs see for a (full) chunk of a regular-grid array.

    What ``ArrayV3Metadata.get_chunk_spec`` returned in zarr 3.1.
    """
    shape = regular_chunk_shape(metadata)
    if shape is None:
        raise TypeError("chunk_spec needs an array with a regular chunk grid")
    return ArraySpec(
        shape=shape,
        dtype=metadata.dtype,
        fill_value=metadata.fill_value,
        config=config,
        prototype=prototype,
    )


def sync_codecs(pipeline: object) -> list[Any] | None:
    """The codecs of zarr's default pipeline, in order, if all of them encode synchronously.

    ``None`` for any other pipeline, if a codec has no ``_encode_sync``, and
    for sharding (zarr 3.4 encodes shards synchronously, but a shard's inner
    chunks and their empty-chunk rules stay zarr's business here).
    """
    if not isinstance(pipeline, BatchedCodecPipeline):
        return None
    if isinstance(pipeline.array_bytes_codec, ShardingCodec):
        return None
    codecs = [
        *pipeline.array_array_codecs,
        pipeline.array_bytes_codec,
        *pipeline.bytes_bytes_codecs,
    ]
    if not all(callable(getattr(c, "_encode_sync", None)) for c in codecs):
        return None
    if not all(getattr(c, "_sync_capable", True) for c in codecs):  # zarr >= 3.4
        return None
    return codecs
